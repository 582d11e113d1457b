"""Energy and carbon accounting, as the OLMo paper's §4.3 does it, and `olmo-jax energy`.

The paper samples each node's power every 25 ms, averages it over the run, multiplies by the number of nodes
and the hours to get the energy, then by the data centre's power usage effectiveness (PUE, 1.1) and the
grid's carbon intensity (kg CO2eq per kWh: 0.610 for its A100 cluster in Australia, 0 for LUMI's hydro power)
to get the emissions. Here:

- a `PowerSource` reads what this process trains on: NVIDIA GPUs through NVML (`nvidia-ml-py`), AMD GPUs
  through `amdsmi`, CPU packages through Linux's RAPL counters, or a power the user declares (`fixed`);
  where none can be read the power is unknown, never guessed;
- a `PowerSampler` reads it on a background thread every `energy.sample_interval` seconds and integrates
  the energy (differences of the hardware's energy counter where it has one, else the trapezoid rule);
- the `EnergyMeter`, which the training loop asks at each log line and each save like its throughput
  `Meter`, sums the processes' energy (one small all-gather, only with several processes) and keeps the
  run's totals, which travel in each checkpoint's meta item so that they accumulate across resumes.

What each number includes: `power_w` and `energy_kwh` are what the hardware drew (no PUE: the paper's
"power consumption" column); `co2_kg` and tCO2eq are energy x PUE x carbon intensity. `footprint` is the
arithmetic alone, on given inputs.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from olmo_jax import cli
from olmo_jax.checkpoint import read_checkpoint_metadata, read_train_meta, resolve_checkpoint
from olmo_jax.config import EnergyConfig
from olmo_jax.errors import CheckpointError, ConfigError, InputError

JOULES_PER_KWH = 3.6e6
POWERCAP_ROOT = Path("/sys/class/powercap")


# --------------------------------------------------------------------------------------------------
# Power sources
# --------------------------------------------------------------------------------------------------


class SourceUnavailable(Exception):
    """A power source that cannot be read here; the message says why (a missing library, no device...)."""


@dataclass(frozen=True)
class Reading:
    """One reading of a source, over all the devices it covers: the power now, or an energy counter (joules
    since the source opened) where the hardware keeps one, which is exact between readings."""

    watts: float | None = None
    joules: float | None = None


class PowerSource(abc.ABC):
    """The power of what this process trains on: its local devices, or its host for a host-level source."""

    name: str  # the `energy.source` value that selects it
    hardware: str  # what it measures, for the Table 7 row ("8 x NVIDIA H100 80GB HBM3")

    @abc.abstractmethod
    def read(self) -> Reading:
        """The current reading (cheap: the sampler calls it every few tens of milliseconds)."""

    def close(self) -> None:  # noqa: B027 (a source without a vendor library has nothing to release)
        """Release the vendor library."""


class FixedPower(PowerSource):
    """A power the user declares for what each process trains on (`energy.fixed_watts`; with JAX's usual one
    process per host, per host), e.g. a wall meter's average, for hardware no library can read. Its rows
    say "declared"."""

    name = "fixed"

    def __init__(self, watts: float) -> None:
        self.watts = watts
        self.hardware = f"declared {watts:g} W per process"

    def read(self) -> Reading:
        return Reading(watts=self.watts)


class NvidiaPower(PowerSource):
    """NVIDIA GPUs through NVML: the total-energy counter (millijoules, Volta and later), else the power
    usage (milliwatts). `selectors` are NVML indices or UUIDs (see `nvidia_selectors`)."""

    name = "nvidia"

    def __init__(self, selectors: Sequence[int | str]) -> None:
        try:
            import pynvml
        except ImportError:
            raise SourceUnavailable("NVML needs nvidia-ml-py: pip install 'olmo_jax[energy]'") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise SourceUnavailable(f"NVML did not start: {e}") from None
        self._nvml = pynvml
        try:
            self._handles = [
                pynvml.nvmlDeviceGetHandleByUUID(s) if isinstance(s, str) else pynvml.nvmlDeviceGetHandleByIndex(s)
                for s in selectors
            ]
            if not self._handles:
                raise SourceUnavailable("NVML found no GPU of this process")
            names = {_text(pynvml.nvmlDeviceGetName(h)) for h in self._handles}
            self.hardware = f"{len(self._handles)} x {' + '.join(sorted(names))}"
            try:
                for handle in self._handles:
                    pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                self._counts_energy = True
            except pynvml.NVMLError:  # older GPUs have no energy counter
                self._counts_energy = False
            self.read()
        except pynvml.NVMLError as e:
            pynvml.nvmlShutdown()
            raise SourceUnavailable(f"NVML cannot read this process's GPUs: {e}") from None

    def read(self) -> Reading:
        nvml = self._nvml
        if self._counts_energy:
            return Reading(joules=sum(nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1e3)
        return Reading(watts=sum(nvml.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1e3)

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class AmdPower(PowerSource):
    """AMD GPUs through amdsmi: the energy accumulator (counts x resolution in microjoules), else the socket
    power in watts. `indices` are positions in amdsmi's list of GPUs, as reported by it per device (on MI250X,
    the power of a module's two dies may be reported on one of them)."""

    name = "amd"

    def __init__(self, indices: Sequence[int]) -> None:
        try:
            import amdsmi
        except ImportError:
            raise SourceUnavailable("amdsmi is not installed (it ships with ROCm: pip install amdsmi)") from None
        try:
            amdsmi.amdsmi_init()
        except amdsmi.AmdSmiException as e:
            raise SourceUnavailable(f"amdsmi did not start: {e}") from None
        self._smi = amdsmi
        try:
            every = amdsmi.amdsmi_get_processor_handles()
            self._handles = [every[i] for i in indices if i < len(every)]
            if not self._handles or len(self._handles) < len(indices):
                raise SourceUnavailable(f"amdsmi lists {len(every)} GPUs; this process uses {list(indices)}")
            names = {str(amdsmi.amdsmi_get_gpu_asic_info(h).get("market_name", "AMD GPU")) for h in self._handles}
            self.hardware = f"{len(self._handles)} x {' + '.join(sorted(names))}"
            self._counts_energy = all(self._energy(h) is not None for h in self._handles)
            self.read()
        except (amdsmi.AmdSmiException, KeyError, TypeError, ValueError) as e:
            amdsmi.amdsmi_shut_down()
            raise SourceUnavailable(f"amdsmi cannot read this process's GPUs: {e}") from None

    def _energy(self, handle: Any) -> float | None:
        """Joules of the energy accumulator, or None where the GPU has none."""
        try:
            count = self._smi.amdsmi_get_energy_count(handle)
        except self._smi.AmdSmiException:
            return None
        accumulated = count.get("energy_accumulator", count.get("power"))  # renamed in ROCm 6.1
        resolution = count.get("counter_resolution")
        if not isinstance(accumulated, (int, float)) or not isinstance(resolution, (int, float)):
            return None
        return accumulated * resolution / 1e6

    def _watts(self, handle: Any) -> float:
        info = self._smi.amdsmi_get_power_info(handle)
        for key in ("current_socket_power", "average_socket_power"):
            if isinstance(info.get(key), (int, float)):
                return float(info[key])
        raise ValueError(f"amdsmi reports no socket power: {info}")

    def read(self) -> Reading:
        if self._counts_energy:
            return Reading(joules=sum(self._energy(h) for h in self._handles))  # type: ignore[misc]
        return Reading(watts=sum(self._watts(h) for h in self._handles))

    def close(self) -> None:
        self._smi.amdsmi_shut_down()


class RaplPower(PowerSource):
    """The host's CPU packages through Linux's powercap RAPL counters (`intel-rapl:N/energy_uj`, also on AMD
    CPUs). Each package's counter wraps at `max_energy_range_uj`; reading it every few tens of milliseconds
    sees every wrap (a package drawing 200 W wraps a 2^32 uJ range every 21 s). Sub-zones (`intel-rapl:N:M`,
    the cores and DRAM inside a package) are not added: the package already contains them. One process per
    host should measure it: several would each count the whole host."""

    name = "rapl"

    def __init__(self, root: Path = POWERCAP_ROOT) -> None:
        zones = sorted(p for p in Path(root).glob("intel-rapl:*") if p.name.count(":") == 1)
        if not zones:
            raise SourceUnavailable(f"no RAPL package under {root}")
        self._zones: list[tuple[Path, int]] = []
        names = []
        for zone in zones:
            try:
                maximum = int((zone / "max_energy_range_uj").read_text())
                int((zone / "energy_uj").read_text())
                names.append((zone / "name").read_text().strip() if (zone / "name").exists() else zone.name)
            except (OSError, ValueError) as e:
                raise SourceUnavailable(f"{zone} is not readable: {getattr(e, 'strerror', None) or e}") from None
            self._zones.append((zone / "energy_uj", maximum))
        self.hardware = "CPU packages (RAPL): " + ", ".join(names)
        self._last = [self._raw(path) for path, _ in self._zones]
        self._microjoules = 0

    @staticmethod
    def _raw(path: Path) -> int:
        return int(path.read_text())

    def read(self) -> Reading:
        for i, (path, maximum) in enumerate(self._zones):
            raw = self._raw(path)
            delta = raw - self._last[i]
            if delta < 0:  # the counter wrapped past its range since the previous reading
                delta += maximum
            self._microjoules += delta
            self._last[i] = raw
        return Reading(joules=self._microjoules / 1e6)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def nvidia_selectors(devices: Sequence[jax.Device]) -> list[int | str]:
    """NVML's names for `devices`: CUDA numbers the GPUs that `CUDA_VISIBLE_DEVICES` lets it see, NVML all of
    the host's, so a device's CUDA ordinal is mapped through that list (indices or `GPU-...` UUIDs)."""
    ordinals = [int(d.local_hardware_id) for d in devices]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(ordinals)
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if any(entry.startswith("MIG-") for entry in entries):
        raise SourceUnavailable("NVML reports power per GPU, not per MIG instance")
    if max(ordinals, default=-1) >= len(entries):
        raise SourceUnavailable(f"CUDA_VISIBLE_DEVICES={visible!r} does not list this process's GPUs")
    return [int(entries[i]) if entries[i].isdigit() else entries[i] for i in ordinals]


def amd_indices(devices: Sequence[jax.Device]) -> list[int]:
    """amdsmi's positions for `devices`, through `HIP_VISIBLE_DEVICES` or `ROCR_VISIBLE_DEVICES` when set."""
    ordinals = [int(d.local_hardware_id) for d in devices]
    visible = os.environ.get("HIP_VISIBLE_DEVICES") or os.environ.get("ROCR_VISIBLE_DEVICES")
    if visible is None:
        return ordinals
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if not all(entry.isdigit() for entry in entries) or max(ordinals, default=-1) >= len(entries):
        raise SourceUnavailable(f"cannot map the visible AMD devices {visible!r} to amdsmi's")
    return [int(entries[i]) for i in ordinals]


def open_power_source(config: EnergyConfig, devices: Sequence[jax.Device]) -> tuple[PowerSource | None, str]:
    """The source `config.source` asks for on `devices` (this process's), and a line saying what it reads.

    `auto` tries the source that fits the devices' platform (NVML then amdsmi on GPUs, RAPL on CPUs) and
    gives None, with the reasons, when none can be read. A source asked for by name that cannot be read is a
    ConfigError. `none` measures nothing.
    """
    if config.source == "none":
        return None, "energy is not measured (energy.source=none)"
    if config.source == "fixed":
        assert config.fixed_watts is not None  # EnergyConfig.validate
        source = FixedPower(config.fixed_watts)
        return source, f"power: {source.hardware}"
    openers: dict[str, Callable[[], PowerSource]] = {
        "nvidia": lambda: NvidiaPower(nvidia_selectors(devices)),
        "amd": lambda: AmdPower(amd_indices(devices)),
        "rapl": RaplPower,
    }
    if config.source != "auto":
        try:
            source = openers[config.source]()
        except SourceUnavailable as e:
            raise ConfigError(
                f"energy.source={config.source} cannot be read here: {e}",
                hint="set energy.source=auto (unknown power where nothing can be read) or energy.source=none",
            ) from None
        return source, f"power: {source.hardware} ({source.name})"
    platform = devices[0].platform if devices else "cpu"
    names = {"gpu": ("nvidia", "amd"), "cuda": ("nvidia",), "rocm": ("amd",), "cpu": ("rapl",)}.get(platform, ())
    reasons = []
    for name in names:
        try:
            source = openers[name]()
        except SourceUnavailable as e:
            reasons.append(f"{name}: {e}")
            continue
        return source, f"power: {source.hardware} ({source.name})"
    why = "; ".join(reasons) or f"no power source for {platform} devices"
    return None, f"power: unknown ({why}); power_w and energy_kwh are logged as null"


# --------------------------------------------------------------------------------------------------
# Sampling and the training loop's meter
# --------------------------------------------------------------------------------------------------


class PowerSampler:
    """Reads `source` on a daemon thread and integrates the energy between readings: the trapezoid rule on
    the power every `interval` seconds, or, for a source with an energy counter, the counter's differences,
    which are exact at any rate: it is read every `COUNTER_INTERVAL` seconds at most as often (often enough
    to see every RAPL wrap, and 40 times fewer wake-ups of a thread that needs Python's GIL than at 25 ms).
    `take` ends the current interval with a reading of its own, so intervals meet exactly. A source that
    fails stops the sampling: later intervals are unknown (`failure` says why)."""

    COUNTER_INTERVAL = 1.0

    def __init__(self, source: PowerSource, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self._clock = source, clock
        self.failure: str | None = None
        self._lock = threading.Lock()
        self._previous = (clock(), source.read())
        counts_energy = self._previous[1].joules is not None
        self.interval = max(interval, self.COUNTER_INTERVAL) if counts_energy else interval
        self._since, self._joules = self._previous[0], 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="olmo_jax-power-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> float:
        """Integrate up to a reading taken now; returns its time. Under the lock, so readings stay in order."""
        with self._lock:
            now = self._clock()
            if self.failure is not None:
                return now
            try:
                reading = self.source.read()
            except Exception as e:  # a vendor library's error of any kind: the power is unknown from here on
                self.failure = f"{self.source.name} power reading failed: {e}"
                return now
            then, previous = self._previous
            if reading.joules is not None and previous.joules is not None:
                self._joules += reading.joules - previous.joules
            elif reading.watts is not None and previous.watts is not None:
                self._joules += (reading.watts + previous.watts) / 2 * (now - then)
            self._previous = (now, reading)
            return now

    def take(self) -> tuple[float | None, float]:
        """Joules (None once the source failed) and seconds since the previous `take`, or since the start."""
        now = self._sample()
        with self._lock:
            joules = None if self.failure is not None else self._joules
            seconds = now - self._since
            self._since, self._joules = now, 0.0
        return joules, seconds

    def close(self) -> None:
        """Stop the thread and release the source."""
        self._stop.set()
        self._thread.join()
        self.source.close()


@dataclass
class EnergyTotals:
    """A run's measured energy so far, over all processes: what the checkpoints' meta item holds."""

    joules: float = 0.0  # drawn by the hardware (no PUE)
    seconds: float = 0.0  # wall time during which the power was known
    hardware: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> EnergyTotals:
        joules, seconds, hardware = data.get("joules"), data.get("seconds"), data.get("hardware", "")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in (joules, seconds))
        if not numbers or not isinstance(hardware, str):
            raise CheckpointError(f"{where}: malformed energy totals {data!r}")
        return cls(float(joules), float(seconds), hardware)  # type: ignore[arg-type]

    def add_hardware(self, hardware: str) -> None:
        """Name `hardware` too (a run resumed on other machines lists each kind once)."""
        if hardware and hardware not in self.hardware.split(" + "):
            self.hardware = f"{self.hardware} + {hardware}" if self.hardware else hardware


class EnergyMeter:
    """Power since the previous measurement and the run's energy and emissions, for the training loop.

    `measure` (at each log line) gives `power_w` (mean over the interval, all processes' devices summed, no
    PUE), `energy_kwh` (the run's total so far, no PUE) and, with a carbon intensity, `co2_kg` (energy x PUE
    x intensity); each is None while the power is unknown on any process. `totals` (at each save) is what
    the checkpoint keeps. Every process must call both at the same steps: with several processes each
    call gathers every process's interval energy (two floats and a flag per process).
    """

    def __init__(self, sampler: PowerSampler | None, config: EnergyConfig, previous: dict[str, Any] | None) -> None:
        """`previous`: the totals a checkpoint's meta item holds, which this run continues (None: from zero)."""
        self._sampler, self._config, self.measuring = sampler, config, config.source != "none"
        self._totals = EnergyTotals.from_json(previous, "the checkpoint's meta item") if previous else None
        self._hardware = sampler.source.hardware if sampler is not None else ""
        if sampler is not None and jax.process_count() > 1:
            self._hardware += f" on each of {jax.process_count()} processes"
        self._interval: tuple[float, float] | None = (0.0, 0.0)  # joules, seconds; None: unknown

    def _collect(self) -> None:
        """Fold every process's energy since the previous call into the interval and the totals."""
        joules, seconds = self._sampler.take() if self._sampler is not None else (None, 0.0)
        local = np.array([joules or 0.0, seconds, float(joules is not None)], dtype=np.float32)
        # float32 (JAX's default) is exact enough: these are one interval's amounts, the totals stay float64.
        every = np.asarray(multihost_utils.process_allgather(local)) if jax.process_count() > 1 else local[None]
        if not every[:, 2].all():
            self._interval = None
            return
        # The processes' intervals differ a little (the first by their start-up times): the power is the sum
        # of each one's mean power, and the interval's length the time that power takes to draw their energy.
        each_joules, each_seconds = every[:, 0].astype(float), every[:, 1].astype(float)
        joules = float(each_joules.sum())
        power = float(sum(j / s for j, s in zip(each_joules, each_seconds, strict=True) if s > 0))
        seconds = joules / power if power > 0 else float(each_seconds.max())
        if self._interval is not None:
            self._interval = (self._interval[0] + joules, self._interval[1] + seconds)
        if self._totals is None:
            self._totals = EnergyTotals()
        self._totals.joules += joules
        self._totals.seconds += seconds
        self._totals.add_hardware(self._hardware)

    def measure(self) -> dict[str, float | None]:
        """The metrics of one log line (none when energy.source=none)."""
        if not self.measuring:
            return {}
        self._collect()
        interval, self._interval = self._interval, (0.0, 0.0)
        power = interval[0] / interval[1] if interval is not None and interval[1] > 0 else None
        energy_kwh = self._totals.joules / JOULES_PER_KWH if self._totals is not None and power is not None else None
        measured: dict[str, float | None] = {"power_w": power, "energy_kwh": energy_kwh}
        intensity = self._config.carbon_intensity
        if intensity is not None:
            measured["co2_kg"] = None if energy_kwh is None else energy_kwh * self._config.pue * intensity
        return measured

    def totals(self) -> dict[str, Any] | None:
        """The run's totals as a checkpoint's meta item stores them (None: never measured)."""
        if self.measuring:
            self._collect()
        return None if self._totals is None else self._totals.to_json()


def open_sampler(config: EnergyConfig, devices: Sequence[jax.Device]) -> tuple[PowerSampler | None, str]:
    """A started sampler of `config.source` on `devices` (this process's; the caller closes it), or None where
    nothing is measured, and a line saying what is."""
    source, line = open_power_source(config, devices)
    return (PowerSampler(source, config.sample_interval) if source is not None else None), line


# --------------------------------------------------------------------------------------------------
# The paper's arithmetic and `olmo-jax energy`
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """One row of the paper's Table 7."""

    hardware: str
    power_w: float  # average power of all the devices (or nodes) together
    energy_mwh: float  # power x hours: what the hardware drew (the table's "power consumption")
    pue: float
    facility_energy_mwh: float  # energy x PUE: what the data centre drew
    carbon_intensity: float | None  # kg CO2eq per kWh (= t per MWh); None: unknown
    co2_t: float | None  # facility energy x carbon intensity, tonnes CO2eq


def footprint(
    average_power_w: float,
    hours: float,
    nodes: int = 1,
    *,
    pue: float = 1.1,
    carbon_intensity: float | None = None,
    hardware: str = "",
) -> Footprint:
    """The paper's formula on given inputs: energy = average power of one node x `nodes` x `hours`; the
    data centre's energy = energy x `pue`; emissions = that x `carbon_intensity` (kg/kWh, i.e. t/MWh)."""
    for name, value in (("average power", average_power_w), ("hours", hours), ("nodes", nodes)):
        if not (_finite(value) and value >= 0):
            raise ConfigError(f"invalid {name} {value!r}; expected a finite number >= 0")
    if not (_finite(pue) and pue >= 1):
        raise ConfigError(f"invalid PUE {pue!r}; expected a number >= 1")
    if carbon_intensity is not None and not (_finite(carbon_intensity) and carbon_intensity >= 0):
        raise ConfigError(f"invalid carbon intensity {carbon_intensity!r}; expected a number >= 0 (kg CO2eq/kWh)")
    power = average_power_w * nodes
    energy_mwh = power * hours / 1e6
    facility = energy_mwh * pue
    co2 = None if carbon_intensity is None else facility * carbon_intensity
    return Footprint(hardware, power, energy_mwh, pue, facility, carbon_intensity, co2)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


TABLE_HEADER = (
    "| hardware | power (W) | energy (MWh) | PUE | energy x PUE (MWh) | carbon intensity (kg CO2eq/kWh) | tCO2eq |\n"
    "|---|---|---|---|---|---|---|"
)


def table_row(row: Footprint) -> str:
    """`row` as a Markdown row under `TABLE_HEADER` (unknown values as "?")."""
    unknown = "?"
    cells = [
        row.hardware or unknown,
        f"{row.power_w:,.1f}",
        f"{row.energy_mwh:.6g}",
        f"{row.pue:g}",
        f"{row.facility_energy_mwh:.6g}",
        unknown if row.carbon_intensity is None else f"{row.carbon_intensity:g}",
        unknown if row.co2_t is None else f"{row.co2_t:.6g}",
    ]
    return "| " + " | ".join(cells) + " |"


def run_footprint(
    run_dir: Path, *, pue: float | None = None, carbon_intensity: float | None = None, hardware: str | None = None
) -> tuple[Footprint, int]:
    """The Table 7 row of a run (from its latest checkpoint's totals) and the step they are as of. PUE and
    carbon intensity default to the run's config."""
    step_dir = resolve_checkpoint(run_dir)
    meta = read_train_meta(step_dir)
    if meta is None or meta.energy is None:
        raise InputError(
            f"checkpoint {step_dir} holds no energy totals (saved before olmo_jax measured energy, weights only, "
            "or trained with energy.source=none or an unknown power)",
            hint="give --power_w and --hours instead of a run directory to apply the formula by hand",
        )
    totals = EnergyTotals.from_json(meta.energy, str(step_dir))
    saved = read_checkpoint_metadata(step_dir)["config"].get("energy", {})
    pue = pue if pue is not None else saved.get("pue", EnergyConfig.pue)
    intensity = carbon_intensity if carbon_intensity is not None else saved.get("carbon_intensity")
    if totals.seconds <= 0:
        raise InputError(f"checkpoint {step_dir} has energy totals over no measured time")
    row = footprint(
        totals.joules / totals.seconds,
        totals.seconds / 3600,
        pue=pue,
        carbon_intensity=intensity,
        hardware=hardware or totals.hardware,
    )
    return row, meta.step


def build_parser(prog: str = "python -m olmo_jax.energy") -> argparse.ArgumentParser:
    """`olmo-jax energy`'s flags."""
    parser = cli.ArgumentParser(
        prog=prog,
        description="A run's energy and emissions as a row of the OLMo paper's Table 7, from the totals in its\n"
        "latest checkpoint; or, with --power_w and --hours instead of a run directory, the paper's formula\n"
        "applied to the inputs given. Energy is what the hardware drew; energy x PUE is the data centre's;\n"
        "tCO2eq = energy x PUE x carbon intensity.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR", help="a run directory (its checkpoints)")
    parser.add_argument("--power_w", type=float, help="without RUN_DIR: the average power of one node, in watts")
    parser.add_argument("--hours", type=float, help="without RUN_DIR: the run's length in hours")
    parser.add_argument("--nodes", type=int, default=1, help="without RUN_DIR: how many nodes (default: 1)")
    parser.add_argument(
        "--pue", type=float, help="power usage effectiveness (default: the run's energy.pue; without RUN_DIR 1.1)"
    )
    parser.add_argument(
        "--carbon_intensity",
        type=float,
        metavar="KG_PER_KWH",
        help="the grid's kg CO2eq per kWh, e.g. 0.610 (default: the run's energy.carbon_intensity; else no tCO2eq)",
    )
    parser.add_argument("--hardware", help="the hardware column (default: what the power source reported)")
    parser.add_argument("--json", action="store_true", help="print the row as one JSON object instead of Markdown")
    cli.add_debug_argument(parser)
    return parser


def _run(argv: list[str], prog: str) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(cli.normalize_flags(argv))
    by_hand = args.power_w is not None or args.hours is not None
    if (args.run_dir is None) == (not by_hand) or (by_hand and (args.power_w is None or args.hours is None)):
        parser.error("give RUN_DIR, or --power_w and --hours (not both)")
    if by_hand:
        pue = 1.1 if args.pue is None else args.pue
        row = footprint(
            args.power_w, args.hours, args.nodes, pue=pue, carbon_intensity=args.carbon_intensity,
            hardware=args.hardware or "",
        )  # fmt: skip
        note = None
    else:
        row, step = run_footprint(
            args.run_dir, pue=args.pue, carbon_intensity=args.carbon_intensity, hardware=args.hardware
        )
        note = f"{args.run_dir}: as of step {step}"
    if args.json:
        print(json.dumps(dataclasses.asdict(row)))
    else:
        print(TABLE_HEADER + "\n" + table_row(row) + (f"\n{note}" if note else ""))
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m olmo_jax.energy") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run_command(lambda: _run(argv, prog), debug=cli.debug_enabled("--debug" in argv))


if __name__ == "__main__":
    sys.exit(main())
