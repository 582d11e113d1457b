"""Faults lose nothing: non-finite states are never saved or resumed, only damage renames a step, one trainer
per run directory, and a failed background save stops the run at once with the previous checkpoint intact.

Runs are in-process `fit`s of a 2-layer, 64-wide model on one CPU device (as in test_checkpoint), except the
lock test, whose second trainer is a subprocess that stops before compiling anything.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P
from test_checkpoint import _random_state, checkpointer_for, save_state, small_setup, tiny

import olmo_jax.checkpoint
import olmo_jax.loop
from olmo_jax.checkpoint import all_finite, first_nonfinite, host_all_finite, restore_latest, restore_params
from olmo_jax.errors import CheckpointReadError, CheckpointSaveError, NonFiniteStateError, RunLockedError
from olmo_jax.loop import fit
from olmo_jax.run_lock import RunLock
from olmo_jax.train import abstract_state


def _steps_dir(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def _poisoned(state, name: str = "wte"):
    """`state` with one NaN in parameter `name`."""
    return state._replace(params={**state.params, name: state.params[name].at[0, 0].set(np.nan)})


# --------------------------------------------------------------------------------------------------
# Non-finite states
# --------------------------------------------------------------------------------------------------


def test_a_non_finite_state_is_never_saved_and_a_non_finite_checkpoint_counts_as_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config, setup = small_setup()
    config = dataclasses.replace(config, save_num_checkpoints_to_keep=1)  # step 2 would retire step 1
    abstract = abstract_state(setup)
    good = _random_state(abstract, 1)._replace(step=np.int32(1), nonfinite_steps=np.int32(0))
    bad = _poisoned(good._replace(step=np.int32(2)), "ff_out")
    with pytest.raises(NonFiniteStateError, match=r"after step 2 holds NaN or Inf in params/ff_out; it was not saved"):
        with checkpointer_for(tmp_path, config) as checkpointer:
            save_state(checkpointer, good)
            save_state(checkpointer, bad)  # returns at once: the check runs in the background
    assert [name for name in _steps_dir(tmp_path) if name.isdigit()] == ["1"]
    assert restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state).meta.step == 1

    # A NaN checkpoint from elsewhere (written without the check): restoring it warns, names the tensor, and
    # falls back to the previous step.
    monkeypatch.setattr(olmo_jax.checkpoint, "nonfinite_probe", lambda tree: lambda: None)
    with checkpointer_for(tmp_path, dataclasses.replace(config, save_num_checkpoints_to_keep=2)) as checkpointer:
        save_state(checkpointer, bad)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="olmo_jax.checkpoint"):
        start = restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state)
    assert start.meta.step == 1
    assert "holds NaN or Inf in params/ff_out" in caplog.text
    assert [name.split("-")[0] for name in _steps_dir(tmp_path)] == ["1", "2.corrupt"]


def test_a_step_is_published_only_once_its_state_is_known_to_be_finite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, setup = small_setup()
    config = dataclasses.replace(config, save_num_checkpoints_to_keep=1)
    abstract = abstract_state(setup)
    states = {step: _random_state(abstract, step)._replace(step=np.int32(step), nonfinite_steps=0) for step in (1, 2)}
    release = threading.Event()
    real_probe = olmo_jax.checkpoint.nonfinite_probe

    def held_probe(tree):  # the check of step 2 answers only when released
        answer = real_probe(tree)
        return lambda: answer() if release.wait(60) else "nothing: the test never released the check"

    with checkpointer_for(tmp_path, config) as checkpointer:
        save_state(checkpointer, states[1])
        checkpointer.wait_until_finished()
        monkeypatch.setattr(olmo_jax.checkpoint, "nonfinite_probe", held_probe)
        save_state(checkpointer, states[2])
        monkeypatch.undo()
        time.sleep(1.0)  # Orbax writes the arrays meanwhile
        # What a process killed now would leave: step 2 under Orbax's temporary name only, step 1 the latest
        # (and kept: retention waits for step 2 to be published).
        assert _steps_dir(tmp_path) == ["1", "2.orbax-checkpoint-tmp"]
        assert restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state).meta.step == 1
        release.set()
    assert _steps_dir(tmp_path) == ["2"]


def _tiny_run(**overrides: object):
    small = dict(
        model__n_layers=2,
        model__d_model=64,
        model__n_heads=2,
        model__vocab_size=256,
        model__embedding_size=256,
        tokenizer__identifier=None,
        data__builtin_corpus=False,
    )
    return tiny(**{**small, **overrides})


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens.npy"
    (np.arange(32 * 8 * 12) % 251).astype(np.uint16).tofile(path)
    return str(path)


def test_nan_parameters_in_a_run_stop_it_and_the_last_good_checkpoint_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token_file: str
) -> None:
    # skip with room for 100 skipped steps: the NaN state must stop the run anyway, not count as skips.
    config = _tiny_run(
        max_duration=5, save_interval=1, save_num_checkpoints_to_keep=1, nonfinite_policy="skip",
        max_nonfinite_steps=100, data__paths=f"['{token_file}']",
    )  # fmt: skip
    real = olmo_jax.loop.Steps.__call__

    def poisoning(self, state, update, batch):  # the weights turn NaN between steps 2 and 3
        return real(self, _poisoned(state) if update == 3 else state, update, batch)

    monkeypatch.setattr(olmo_jax.loop.Steps, "__call__", poisoning)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteStateError, match="parameters hold NaN or Inf at step 3"):
        fit(config, run_dir, devices=jax.devices()[:1])
    assert _steps_dir(run_dir) == ["2"]  # retention kept the newest good step; nothing after it was saved
    assert all(np.isfinite(v).all() for v in restore_params(run_dir / "checkpoints" / "2").values())


def test_a_non_finite_optimizer_state_in_a_run_is_never_saved_and_stops_it_at_the_next_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token_file: str
) -> None:
    # An Inf in an Adam second moment leaves losses and gradients finite (the update divides by its root), so
    # only the check of the saved state can see it.
    config = _tiny_run(max_duration=4, save_interval=1, save_num_checkpoints_to_keep=1, data__paths=f"['{token_file}']")
    real = olmo_jax.loop.Steps.__call__
    trained: list[int] = []

    def poisoning(self, state, update, batch):  # step 3 leaves an Inf in nu of wte
        state, metrics = real(self, state, update, batch)
        trained.append(update)
        if update == 3:
            adam = state.opt_state.inner_state[1][0]
            adam = adam._replace(nu={**adam.nu, "wte": adam.nu["wte"].at[0, 0].set(np.inf)})
            inner = (state.opt_state.inner_state[0], (adam, *state.opt_state.inner_state[1][1:]))
            state = state._replace(opt_state=state.opt_state._replace(inner_state=inner))
        return state, metrics

    monkeypatch.setattr(olmo_jax.loop.Steps, "__call__", poisoning)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteStateError, match=r"after step 3 holds NaN or Inf in opt_state/\S*nu/wte; it was not"):
        fit(config, run_dir, devices=jax.devices()[:1])
    assert trained == [1, 2, 3, 4]  # stopped at the first step boundary after the check, no later than the next save
    assert [name for name in _steps_dir(run_dir) if name.isdigit()] == ["2"]  # the newest good step, kept
    abstract = abstract_state(small_setup()[1])
    assert restore_latest(run_dir / "checkpoints", abstract.params, abstract.opt_state).meta.step == 2


def test_bytes_flipped_in_a_checkpoint_array_fall_back_to_the_previous_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, setup = small_setup()
    abstract = abstract_state(setup)
    states = {step: _random_state(abstract, step)._replace(step=np.int32(step), nonfinite_steps=0) for step in (1, 2)}
    with checkpointer_for(tmp_path, config) as checkpointer:
        for state in states.values():
            save_state(checkpointer, state)
    step_dir = tmp_path / "checkpoints" / "2"
    assert (step_dir / "checksums.json").is_file()
    chunks = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(chunks, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(255 - b for b in data[len(data) // 2 : len(data) // 2 + 8])
    largest.write_bytes(bytes(data))  # Orbax alone reads these bytes back without a word (other weights)

    with caplog.at_level(logging.WARNING, logger="olmo_jax.checkpoint"):
        start = restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state)
    assert start.meta.step == 1
    np.testing.assert_array_equal(np.asarray(start.params["wte"]), np.asarray(states[1].params["wte"]))
    assert f"{largest.name} does not match its checksum" in caplog.text


# --------------------------------------------------------------------------------------------------
# Only damage renames a step
# --------------------------------------------------------------------------------------------------


def test_an_os_error_during_restore_renames_nothing_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, setup = small_setup()
    abstract = abstract_state(setup)
    with checkpointer_for(tmp_path, config) as checkpointer:
        for step in (1, 2):
            save_state(checkpointer, _random_state(abstract, step)._replace(step=np.int32(step), nonfinite_steps=0))

    def failing(self, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing)
    with pytest.raises(CheckpointReadError, match=r"checkpoints/2 \(OSError: \[Errno 5\] Input/output error\)"):
        restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state)
    assert _steps_dir(tmp_path) == ["1", "2"]

    monkeypatch.setattr(ocp.CheckpointManager, "restore", lambda self, *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(CheckpointReadError, match="MemoryError"):
        restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state)
    assert _steps_dir(tmp_path) == ["1", "2"]


# --------------------------------------------------------------------------------------------------
# A failed background save
# --------------------------------------------------------------------------------------------------


def test_a_failed_save_stops_the_run_within_a_step_and_the_previous_checkpoint_restores_bit_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token_file: str
) -> None:
    config = _tiny_run(max_duration=8, save_interval=2, save_num_checkpoints_to_keep=1, data__paths=f"['{token_file}']")
    real_save = ocp.JsonCheckpointHandler._save_fn

    async def disk_full_at_step_4(self, x, directory):
        if isinstance(x, dict) and x.get("format") == olmo_jax.checkpoint.META_FORMAT and x["step"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        await real_save(self, x, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", disk_full_at_step_4)
    saved: dict[int, dict[str, np.ndarray]] = {}
    real_step = olmo_jax.loop.Steps.__call__

    def recording(self, state, update, batch):
        state, metrics = real_step(self, state, update, batch)
        saved[update] = {k: np.array(v) for k, v in state.params.items()}
        return state, metrics

    monkeypatch.setattr(olmo_jax.loop.Steps, "__call__", recording)
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointSaveError, match=r"saving checkpoint step 4 .* failed: .*No space left on device"):
        fit(config, run_dir, devices=jax.devices()[:1])
    assert max(saved) <= 6  # found before the next save was due, at the latest at its start
    assert [name for name in _steps_dir(run_dir) if name.isdigit()] == ["2"]
    restored = restore_params(run_dir / "checkpoints" / "2")
    for name, value in saved[2].items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)


# --------------------------------------------------------------------------------------------------
# One trainer per run directory
# --------------------------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from olmo_jax.run_lock import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_trainer_on_a_run_directory_exits_2_naming_the_first_and_changes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "3").mkdir(parents=True)  # a damaged step: a resume would move it aside
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 1.0}) + "\n")  # a resume would cut it
    before = {p: p.read_bytes() if p.is_file() else None for p in run_dir.rglob("*")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        second = subprocess.run(
            [sys.executable, "-m", "olmo_jax.main", "--config=tiny", f"--workdir={run_dir}", "--config.max_duration=2"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        assert f"is in use by another trainer (pid {holder.pid} on host" in second.stderr.strip().splitlines()[-1]
        assert {p: p.read_bytes() if p.is_file() else None for p in run_dir.rglob("*") if p.name != ".lock"} == before
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking (kill -9): its lock is stale, and the next trainer takes it over.
    with RunLock(run_dir):
        with pytest.raises(RunLockedError, match=r"pid \d+ on host"):
            RunLock(run_dir).__enter__()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_finiteness_checks_find_any_nan_or_inf_and_pass_large_finite_values(dtype):
    # Both checks: XLA's (`all_finite`, on devices) and numpy's (`host_all_finite`, on host buffers: what the
    # Checkpointer uses on CPU). Large arrays too: XLA's vectorised CPU max/min reductions lose NaNs there (a
    # check built on them passes the small case and misses every one of these), and the host check works in
    # chunks, so a bad value is placed in the first, a middle and the last one.
    for shape in ((4, 256), (2048, 4096)):
        for bad in (np.nan, np.inf, -np.inf):
            for position in (0, 517, int(np.prod(shape)) // 3, int(np.prod(shape)) - 1):
                values = np.ones(shape, np.float32)
                values.flat[position] = bad
                array = jax.numpy.asarray(values, dtype)
                assert not bool(all_finite(array)), (shape, bad, position)
                assert not host_all_finite(np.asarray(array)), (shape, bad, position)
    # The largest finite values of both signs are finite (nothing overflows).
    big = float(jax.numpy.finfo(dtype).max)
    for finite in (jax.numpy.asarray([big, -big, 0.0], dtype), jax.numpy.zeros((0, 3), dtype)):
        assert bool(all_finite(finite)) and host_all_finite(np.asarray(finite))
    tree = {"params": {"a": np.ones(3, np.float32), "b": np.array([1.0, np.nan], np.float32)}, "n": np.arange(3)}
    assert first_nonfinite(tree) == "params/b"
    # jax.Arrays sharded over several (fake CPU) devices: each shard is looked at.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("x",))
    values = np.ones((8, 64), np.float32)
    values[7, 63] = np.inf
    sharded = jax.device_put(jax.numpy.asarray(values, dtype), jax.sharding.NamedSharding(mesh, P("x")))
    assert len(sharded.addressable_shards) == 4
    assert first_nonfinite({"ok": sharded[:4], "bad": sharded}) == "bad"
