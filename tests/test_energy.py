"""Energy and carbon accounting: what a run logs and keeps across resumes, the paper's arithmetic, and the
power sources' readers (RAPL on a fake powercap tree, NVML on a stand-in for its Python module).

The training runs are in-process `fit`s of a 2-layer, 64-wide model on one CPU device (as in test_faults),
with `energy.source=fixed`: a declared wattage, the one source whose true power is known exactly here.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from test_checkpoint import tiny

from olmo_jax import energy
from olmo_jax.checkpoint import read_train_meta
from olmo_jax.config import EnergyConfig, load_config
from olmo_jax.energy import EnergyMeter, PowerSampler, RaplPower, footprint
from olmo_jax.errors import ConfigError
from olmo_jax.loop import fit

WATTS = 250.0


def _records(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record for record in map(json.loads, lines)}


def _joules(record: dict) -> float:
    return record["energy_kwh"] * energy.JOULES_PER_KWH


def _run_config(token_file: Path, **overrides: object):
    return tiny(
        model__n_layers=2, model__d_model=64, model__n_heads=2, model__vocab_size=256, model__embedding_size=256,
        tokenizer__identifier=None, data__builtin_corpus=False, data__paths=f"['{token_file}']",
        save_interval=2, energy__source="fixed", energy__fixed_watts=WATTS, energy__pue=1.2,
        energy__carbon_intensity=0.61, **overrides,
    )  # fmt: skip


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained to step 4, then resumed (a new process would do the same) and trained to step 6: two
    compilations, most of this file's time; the tests that read it protect the resume promise."""
    root = tmp_path_factory.mktemp("energy")
    token_file = root / "tokens.npy"
    (np.arange(32 * 8 * 8) % 251).astype(np.uint16).tofile(token_file)
    run_dir = root / "run"
    fit(_run_config(token_file, max_duration=4), run_dir, devices=jax.devices()[:1])
    fit(_run_config(token_file, max_duration=6), run_dir, devices=jax.devices()[:1])
    return run_dir


@pytest.mark.slow
def test_logged_energy_is_the_wattage_times_the_wall_time(resumed_run: Path) -> None:
    records = _records(resumed_run)
    assert sorted(records) == [1, 2, 3, 4, 5, 6]
    # Between two log lines the meter's wall clock (step_time, log_interval=1) and the sampler's intervals
    # cover the same time; 2% leaves room for the microseconds between the two clock readings.
    for step in (2, 3, 4, 6):
        drawn = _joules(records[step]) - _joules(records[step - 1])
        assert drawn == pytest.approx(WATTS * records[step]["step_time"], rel=0.02), step
    for record in records.values():
        assert record["power_w"] == pytest.approx(WATTS, rel=0.02)
        # co2 includes the PUE, energy does not.
        assert record["co2_kg"] == pytest.approx(record["energy_kwh"] * 1.2 * 0.61, rel=1e-9)


@pytest.mark.slow
def test_totals_survive_a_resume_and_keep_accumulating(resumed_run: Path) -> None:
    records = _records(resumed_run)
    saved = {step: read_train_meta(resumed_run / "checkpoints" / str(step)).energy for step in (4, 6)}
    # The first run's totals went into its last checkpoint (a save collects up to itself, after the log line).
    assert saved[4]["joules"] == pytest.approx(_joules(records[4]), rel=0.01)
    # The resumed run starts from them: its first interval (start-up and compiling included) adds at least
    # that step's wall time at the declared power.
    added = _joules(records[5]) - saved[4]["joules"]
    assert added >= 0.98 * WATTS * records[5]["step_time"]
    assert saved[6]["joules"] == pytest.approx(_joules(records[6]), rel=0.01)
    assert saved[6]["seconds"] > saved[4]["seconds"]
    assert saved[6]["hardware"] == f"declared {WATTS:g} W per process"


@pytest.mark.slow
def test_the_table_7_row_of_a_run_applies_the_formula_to_its_totals(
    resumed_run: Path, capsys: pytest.CaptureFixture
) -> None:
    assert energy.main([str(resumed_run), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    totals = read_train_meta(resumed_run / "checkpoints" / "6").energy
    assert row["power_w"] == pytest.approx(WATTS, rel=0.02)
    assert row["energy_mwh"] == pytest.approx(totals["joules"] / 3.6e9, rel=1e-12)
    assert row["facility_energy_mwh"] == pytest.approx(row["energy_mwh"] * 1.2, rel=1e-12)  # the run's PUE
    assert row["co2_t"] == pytest.approx(row["facility_energy_mwh"] * 0.61, rel=1e-12)
    # Flags override the run's settings; the Markdown row names the hardware and the step.
    assert energy.main([str(resumed_run), "--carbon_intensity=0", "--hardware=CPU"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| hardware | power (W) | energy (MWh) | PUE |")
    hardware, power, _, pue, _, intensity, co2 = out[2].strip("| ").split(" | ")
    assert (hardware, power, pue, intensity, co2) == ("CPU", "250.0", "1.2", "0", "0")
    assert out[3] == f"{resumed_run}: as of step 6"


def test_the_formula_on_given_inputs_and_on_the_paper_s_7b_rows(capsys: pytest.CaptureFixture) -> None:
    # 4 nodes at 2 kW for 10 h: 80 kWh drawn, 88 kWh with PUE 1.1, 53.68 kg CO2eq at 0.610 kg/kWh.
    assert energy.main(["--power_w=2000", "--hours=10", "--nodes=4", "--carbon_intensity=0.610", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["power_w"] == 8000
    assert row["energy_mwh"] == pytest.approx(0.08, rel=1e-12)
    assert row["facility_energy_mwh"] == pytest.approx(0.088, rel=1e-12)
    assert row["co2_t"] == pytest.approx(0.05368, rel=1e-12)
    # Table 7's OLMo 7B rows: 104 MWh on A100-40GB in Australia (PUE 1.1, 0.610) -> 70 tCO2eq as printed
    # (69.78 before rounding); 135 MWh on LUMI's MI250X (0 kg/kWh) -> 0; together the 239 MWh of §4.3.
    a100 = footprint(104e6, 1, pue=1.1, carbon_intensity=0.610)
    lumi = footprint(135e6, 1, pue=1.1, carbon_intensity=0.0)
    assert round(a100.co2_t) == 70 and a100.co2_t == pytest.approx(104 * 1.1 * 0.610, rel=1e-12)
    assert lumi.co2_t == 0
    assert a100.energy_mwh + lumi.energy_mwh == pytest.approx(239)
    assert footprint(100, 1).co2_t is None  # no carbon intensity, no emissions figure


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--power_w=100"], "give RUN_DIR, or --power_w and --hours"),
        (["--power_w=100", "--hours=-1"], "invalid hours -1.0"),
        (["--power_w=100", "--hours=1", "--pue=0.9"], "invalid PUE 0.9"),
    ],
)
def test_bad_input_is_one_error_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    try:
        status = energy.main(argv)
    except SystemExit as done:  # argparse's own errors
        status = done.code
    assert status == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_a_run_directory_without_checkpoints_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert energy.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no complete checkpoint under")


def test_rapl_adds_the_packages_and_sees_each_wrap(tmp_path: Path) -> None:
    def zone(name: str, label: str, energy_uj: int, maximum: int = 1000) -> Path:
        path = tmp_path / name
        path.mkdir(exist_ok=True)
        (path / "name").write_text(label + "\n")
        (path / "max_energy_range_uj").write_text(f"{maximum}\n")
        (path / "energy_uj").write_text(f"{energy_uj}\n")
        return path

    zone("intel-rapl:0", "package-0", 900)
    zone("intel-rapl:1", "package-1", 100)
    zone("intel-rapl:0:0", "core", 50)  # inside package 0: never added again
    source = RaplPower(tmp_path)
    assert source.hardware == "CPU packages (RAPL): package-0, package-1"
    assert source.read().joules == 0
    zone("intel-rapl:0", "package-0", 200)  # wrapped: 900 -> 1000 -> 0 -> 200 is 300 uJ
    zone("intel-rapl:1", "package-1", 150)
    zone("intel-rapl:0:0", "core", 10_000)
    assert source.read().joules == pytest.approx((300 + 50) / 1e6)
    zone("intel-rapl:0", "package-0", 250)
    assert source.read().joules == pytest.approx((300 + 50 + 50) / 1e6)


def test_rapl_that_cannot_be_read_is_unavailable_not_guessed(tmp_path: Path) -> None:
    with pytest.raises(energy.SourceUnavailable, match="no RAPL package"):
        RaplPower(tmp_path)
    (tmp_path / "intel-rapl:0").mkdir()
    with pytest.raises(energy.SourceUnavailable, match="is not readable"):
        RaplPower(tmp_path)
    meter = EnergyMeter(None, EnergyConfig(carbon_intensity=0.5), previous=None)
    assert meter.measure() == {"power_w": None, "energy_kwh": None, "co2_kg": None}
    assert meter.totals() is None
    assert EnergyMeter(None, EnergyConfig(source="none"), previous=None).measure() == {}


def _fake_nvml(energy_counter: bool) -> types.ModuleType:
    """The part of `pynvml` that `NvidiaPower` calls, for two GPUs (10 W and 20 W; counters 1 and 2 J)."""
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def total_energy(handle: int) -> int:
        if not energy_counter:
            raise NVMLError("Not Supported")
        return 1000 * (handle + 1)  # millijoules

    nvml.NVMLError = NVMLError
    nvml.nvmlInit = nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda index: index
    nvml.nvmlDeviceGetName = lambda handle: b"NVIDIA H100 80GB HBM3"
    nvml.nvmlDeviceGetTotalEnergyConsumption = total_energy
    nvml.nvmlDeviceGetPowerUsage = lambda handle: 10_000 * (handle + 1)  # milliwatts
    return nvml


def test_nvml_reads_the_energy_counter_else_the_power(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(energy_counter=True))
    counted = energy.NvidiaPower([0, 1])
    assert counted.hardware == "2 x NVIDIA H100 80GB HBM3"
    assert counted.read() == energy.Reading(joules=3.0)
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(energy_counter=False))
    assert energy.NvidiaPower([0, 1]).read() == energy.Reading(watts=30.0)


def test_a_process_s_gpus_are_named_to_nvml_through_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [types.SimpleNamespace(local_hardware_id=i) for i in (0, 1)]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert energy.nvidia_selectors(devices) == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-5f2c")
    assert energy.nvidia_selectors(devices) == [3, "GPU-5f2c"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(energy.SourceUnavailable, match="does not list"):
        energy.nvidia_selectors(devices)


def test_the_sampler_integrates_power_by_the_trapezoid_rule() -> None:
    class Ramp(energy.PowerSource):
        """1 W per second of a fake clock that the test advances."""

        name, hardware = "ramp", "ramp"

        def read(self) -> energy.Reading:
            return energy.Reading(watts=now[0])

    now = [0.0]
    sampler = PowerSampler(Ramp(), interval=3600, clock=lambda: now[0])  # the thread never samples by itself
    try:
        now[0] = 2.0
        assert sampler.take() == (pytest.approx(2.0), 2.0)  # the integral of t from 0 to 2
        now[0] = 4.0
        assert sampler.take() == (pytest.approx(6.0), 2.0)  # from 2 to 4
    finally:
        sampler.close()


def test_the_sampler_adds_counter_differences_and_reads_a_counter_once_a_second() -> None:
    class Counter(energy.PowerSource):
        name, hardware = "counter", "counter"

        def read(self) -> energy.Reading:
            return energy.Reading(joules=counter[0])

    counter = [5.0]
    sampler = PowerSampler(Counter(), interval=0.025)
    try:
        assert sampler.interval == PowerSampler.COUNTER_INTERVAL  # exact at any rate: fewer wake-ups
        counter[0] = 12.5
        assert sampler.take()[0] == 7.5
    finally:
        sampler.close()


def test_energy_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="fixed_watts set exactly when source is fixed"):
        load_config("tiny", {"energy.fixed_watts": "100"})
    with pytest.raises(ConfigError, match=r"invalid value 0.9 for energy.pue; expected a number >= 1"):
        load_config("tiny", {"energy.pue": "0.9"})
    with pytest.raises(ConfigError, match=r"energy.sample_interval"):
        load_config("tiny", {"energy.sample_interval": "0"})
    with pytest.raises(ConfigError, match=r"energy.carbon_intensity"):
        load_config("tiny", {"energy.carbon_intensity": "-0.1"})
    assert load_config("tiny").energy == EnergyConfig(source="auto", pue=1.1, carbon_intensity=None)


def test_a_named_source_that_cannot_be_read_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    with pytest.raises(ConfigError, match=r"energy.source=nvidia cannot be read here: NVML needs nvidia-ml-py"):
        energy.open_power_source(EnergyConfig(source="nvidia"), jax.devices()[:1])
