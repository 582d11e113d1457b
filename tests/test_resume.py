"""Fault tolerance of `python -m olmo_jax.main`, one process at a time: kill -9 (during an async save too),
SIGTERM and `time_limit`, each followed by a restart of the same command.

Every run is a subprocess on one CPU device (conftest's 8 fake devices are removed from its environment).
The runs share a persistent compilation cache so that only the first one pays for compiling; a cached
executable is the one the first run compiled, so it cannot change any number.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from olmo_jax.checkpoint import read_train_meta

RUN = [
    "--config=tiny",
    "--config.data.sequence_length=32",
    "--config.global_train_batch_size=8",
    "--config.log_interval=1",
]
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a step being written


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


class Run:
    """`python -m olmo_jax.main` on `run_dir` in the background, its output in `<run_dir>.log`."""

    def __init__(self, run_dir: Path, env: dict[str, str], *overrides: str) -> None:
        self.run_dir = run_dir
        self.log = run_dir.with_name(run_dir.name + ".log")
        with open(self.log, "a") as out:
            command = [sys.executable, "-m", "olmo_jax.main", *RUN, f"--workdir={run_dir}", *overrides]
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 300) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text()

    def losses(self) -> dict[int, float]:
        path = self.run_dir / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return {record["step"]: record["loss"] for record in records}

    def checkpoints(self) -> list[str]:
        directory = self.run_dir / "checkpoints"
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def finish(run: Run) -> Run:
    assert run.wait() == 0, run.output()
    return run


def complete_steps(names: list[str]) -> list[int]:
    return sorted(int(name) for name in names if name.isdigit())


@pytest.mark.slow
def test_kill_9_during_an_async_save_then_restart_continues_bit_exactly(tmp_path: Path, env: dict[str, str]) -> None:
    energy = ("--config.energy.source=fixed", "--config.energy.fixed_watts=100")  # a known power: 100 W
    overrides = ("--config.max_duration=8", "--config.save_interval=2", *energy)
    reference = finish(Run(tmp_path / "reference", env, *overrides)).losses()
    assert sorted(reference) == list(range(1, 9))

    victim = Run(tmp_path / "victim", env, *overrides)
    # Kill the moment a save is seen in progress while an earlier checkpoint is complete.
    while victim.process.poll() is None:
        names = victim.checkpoints()
        writing = [int(name.split(".")[0]) for name in names if TMP_SUFFIX in name]
        if writing and complete_steps(names):
            victim.process.kill()
            break
        time.sleep(0.001)
    else:
        pytest.fail(f"the run ended before a save was seen in progress:\n{victim.output()}")
    assert victim.wait() == -signal.SIGKILL
    names = victim.checkpoints()
    assert any(name.startswith(f"{writing[0]}{TMP_SUFFIX}") for name in names), f"the save had finished: {names}"
    resumed_from = max(complete_steps(names))
    saved_joules = read_train_meta(tmp_path / "victim" / "checkpoints" / str(resumed_from)).energy["joules"]

    restarted = finish(Run(tmp_path / "victim", env, *overrides))
    assert f"resuming from {tmp_path / 'victim' / 'checkpoints' / str(resumed_from)}" in restarted.output()
    # Bit-exact: same parameters, optimizer state, data order and schedule as if nothing had happened.
    assert restarted.losses() == reference
    assert not [name for name in restarted.checkpoints() if not name.isdigit()]  # the unfinished save is gone
    assert complete_steps(restarted.checkpoints())[-1] == 8
    # The energy totals went on from the checkpoint's: the killed run's logged total up to it is the saved one,
    # and the restart adds its own time at 100 W on top (start-up and compiling included).
    records = {r["step"]: r for r in map(json.loads, (tmp_path / "victim" / "metrics.jsonl").read_text().splitlines())}
    joules = {step: record["energy_kwh"] * 3.6e6 for step, record in records.items()}
    assert joules[resumed_from] == pytest.approx(saved_joules, rel=0.01)
    assert joules[resumed_from + 1] - saved_joules >= 0.98 * 100 * records[resumed_from + 1]["step_time"]
    final = read_train_meta(tmp_path / "victim" / "checkpoints" / "8").energy["joules"]
    assert final == pytest.approx(joules[8], rel=0.01)


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_it_and_exits_0(tmp_path: Path, env: dict[str, str]) -> None:
    run = Run(tmp_path / "run", env, "--config.max_duration=1000", "--config.save_interval=1000")
    while len(run.losses()) < 2:
        assert run.process.poll() is None, run.output()
        time.sleep(0.05)
    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == 0, run.output()

    last = max(run.losses())
    step_dir = tmp_path / "run" / "checkpoints" / str(last)
    assert f"received SIGTERM: stopped after step {last} and saved {step_dir}" in run.output()
    assert run.checkpoints() == [str(last)]
    assert read_train_meta(step_dir).step == last


@pytest.mark.slow
def test_time_limit_stops_with_a_checkpoint_and_a_restart_goes_on(tmp_path: Path, env: dict[str, str]) -> None:
    # The first step alone (compilation included) takes longer than the limit.
    run = finish(Run(tmp_path / "run", env, "--config.max_duration=3", "--config.time_limit=0.5"))
    assert "reached time_limit=0.5 s: stopped after step 1" in run.output()
    assert run.checkpoints() == ["1"]

    again = finish(Run(tmp_path / "run", env, "--config.max_duration=3"))
    assert sorted(again.losses()) == [1, 2, 3]
    assert complete_steps(again.checkpoints()) == [1, 3]  # tiny keeps the last two
