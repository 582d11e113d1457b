"""Training checkpoints: what a step holds, resharding on restore, damaged and mismatched checkpoints, the
non-finite guard in the loop, and the readers (`to-hf`, `from_pretrained`) on training checkpoints.

Process-level behaviour (kill -9, SIGTERM, bit-exact resume through the CLI) is in test_resume.py.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import olmo_jax.loop
from olmo_jax import sharding
from olmo_jax.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatchError,
    TrainMeta,
    read_config,
    read_train_meta,
    restore_latest,
    restore_params,
    starting_checkpoint,
    write_params_checkpoint,
)
from olmo_jax.config import MeshConfig, TrainConfig, load_config, to_dict
from olmo_jax.errors import NonFiniteLossError
from olmo_jax.loop import checkpoint_spec, fit, state_from_checkpoint
from olmo_jax.train import abstract_state, build, init_state, jit_train_step

# tiny's model on short sequences and small batches: quick on 2 CPU cores, 8 fake devices included.
SMALL = {"data.sequence_length": "32", "global_train_batch_size": "8", "log_interval": "1"}


def tiny(**overrides: object):
    return load_config("tiny", {**SMALL, **{k.replace("__", "."): str(v) for k, v in overrides.items()}})


def mesh_of(data: int, fsdp: int) -> jax.sharding.Mesh:
    return sharding.make_mesh(MeshConfig(data=data, fsdp=fsdp), jax.devices()[: data * fsdp])


def host(tree):
    return jax.tree.map(np.asarray, tree)


def checkpointer_for(run_dir: Path, config: TrainConfig) -> Checkpointer:
    """The trainer's checkpointer for `config`'s run in `run_dir`."""
    return Checkpointer(checkpoint_spec(config, run_dir), to_dict(config))


def save_state(checkpointer: Checkpointer, state, *, tokens_seen: int = 0) -> None:
    step = int(state.step)
    meta = TrainMeta(step, int(state.nonfinite_steps), tokens_seen, seed=0)
    checkpointer.save(state.params, state.opt_state, data_state={"step": step}, meta=meta)


def small_setup(n_layers: int = 2):
    """A 2-layer, 64-wide OLMo on a 256-token vocabulary: quick to compile and run on 8 fake devices."""
    config = tiny(
        model__n_layers=n_layers,
        model__d_model=64,
        model__n_heads=2,
        model__vocab_size=256,
        model__embedding_size=256,
        tokenizer__identifier=None,
    )
    return config, build(config, mesh_of(1, 1))


def random_batches(n: int, batch: int = 8, seq: int = 32, vocab: int = 8000, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, (batch, seq), dtype=np.int32) for _ in range(n)]


def train(setup, state, batches, step=None):
    """Train on `batches` with `step` (default: a freshly jitted step; pass one to reuse its compilation)."""
    step = step or jit_train_step(setup)
    losses = []
    with jax.set_mesh(setup.mesh):
        for tokens in batches:
            state, metrics = step(state, jax.device_put(tokens, setup.batch_sharding), 1e-3, 1.0)
            losses.append(float(metrics["loss"]))  # blocks: one step in flight on CPU
    return state, losses


# --------------------------------------------------------------------------------------------------
# Resharding
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_checkpoint_saved_on_fsdp8_resumes_on_one_device_and_on_data2_fsdp4(tmp_path: Path) -> None:
    config, _ = small_setup()
    batches = random_batches(4, vocab=config.model.vocab_size)
    setup8 = build(config, mesh_of(1, 8))
    step8 = jit_train_step(setup8)
    state, _ = train(setup8, init_state(setup8, seed=0), batches[:2], step8)
    saved_params = host(state.params)
    with checkpointer_for(tmp_path, config) as checkpointer:
        save_state(checkpointer, state)
    _, reference = train(setup8, state, batches[2:], step8)

    for data, fsdp in [(1, 1), (2, 4)]:
        setup = build(config, mesh_of(data, fsdp))
        abstract = abstract_state(setup)
        start = restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state)
        restored = state_from_checkpoint(setup, start)
        assert int(restored.step) == 2
        for name, value in restored.params.items():
            assert value.sharding == setup.state_shardings.params[name], name
            np.testing.assert_array_equal(np.asarray(value), saved_params[name])  # resharding moves, never rounds
        _, losses = train(setup, restored, batches[2:])
        # The same math with another reduction order over devices: the bound, 1e-6 relative.
        np.testing.assert_allclose(losses, reference, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Damaged and mismatched checkpoints
# --------------------------------------------------------------------------------------------------


def _random_state(abstract, seed: int):
    """Random values of the right shapes: distinct enough that a restore from the wrong step shows."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jax.device_put(rng.standard_normal(s.shape).astype(s.dtype), s.sharding), abstract)


def _two_steps(tmp_path: Path):
    config, setup = small_setup()
    abstract = abstract_state(setup)
    states = {step: _random_state(abstract, step)._replace(step=np.int32(step)) for step in (1, 2)}
    with checkpointer_for(tmp_path, config) as checkpointer:
        for state in states.values():
            save_state(checkpointer, state._replace(nonfinite_steps=np.int32(0)))
    return abstract, states


def _truncate_arrays(step_dir: Path) -> None:
    for path in (step_dir / "params").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # array chunk files of Orbax's OCDBT store
            path.write_bytes(path.read_bytes()[:20])


def _garble_meta(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text('{"format": "olmo_jax.train_meta/1", "st')


def _drop_optimizer_state(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "opt_state")


@pytest.mark.parametrize("damage", [_truncate_arrays, _garble_meta, _drop_optimizer_state])
def test_a_damaged_latest_checkpoint_is_moved_aside_with_a_warning_and_the_previous_one_restored(
    tmp_path: Path, damage, caplog: pytest.LogCaptureFixture
) -> None:
    abstract, states = _two_steps(tmp_path)
    damage(tmp_path / "checkpoints" / "2")

    with caplog.at_level(logging.WARNING, logger="olmo_jax.checkpoint"):
        start = restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state)

    assert start.meta.step == 1
    np.testing.assert_array_equal(np.asarray(start.params["wte"]), np.asarray(states[1].params["wte"]))
    assert "checkpoints/2 cannot be read" in caplog.text
    # Kept for inspection under a name that is not a step, so the run can save step 2 again.
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2.corrupt"]


def test_an_unfinished_save_is_ignored_and_an_unreadable_run_is_an_error(tmp_path: Path) -> None:
    abstract, _ = _two_steps(tmp_path)
    # What kill -9 during an async save leaves: Orbax's temporary directory for the step being written.
    shutil.copytree(tmp_path / "checkpoints" / "2", tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp")
    assert restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state).meta.step == 2

    for step in ("1", "2"):
        _garble_meta(tmp_path / "checkpoints" / step)
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints under .* could be read"):
        restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state)


def test_a_checkpoint_of_another_model_shape_is_refused_naming_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    _two_steps(tmp_path)
    _, deeper = small_setup(n_layers=3)
    abstract = abstract_state(deeper)
    with pytest.raises(CheckpointMismatchError) as error:
        restore_latest(tmp_path / "checkpoints", abstract.params, abstract.opt_state)
    message = str(error.value)
    first_stacked = next(name for name, s in abstract.params.items() if s.shape[0] == 3)
    assert f"parameter {first_stacked} has shape [2, " in message and "but [3, " in message
    # A mismatch is the config's fault, not damage: the checkpoint stays where it is.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


# --------------------------------------------------------------------------------------------------
# Where a run starts: its own checkpoints, else load_path (full state or weights only)
# --------------------------------------------------------------------------------------------------


def test_load_path_gives_the_full_state_or_the_weights_alone(tmp_path: Path) -> None:
    abstract, states = _two_steps(tmp_path / "other")
    config, _ = small_setup()

    new, targets = tmp_path / "new", (abstract.params, abstract.opt_state)
    assert starting_checkpoint(new, *targets) is None  # nothing of its own, nothing to load: a fresh start

    full = starting_checkpoint(new, *targets, load_path=str(tmp_path / "other"))
    assert not full.weights_only and full.meta.step == 2 and full.data_state == {"step": 2}

    weights = starting_checkpoint(new, *targets, load_path=str(tmp_path / "other"), load_weights_only=True)
    assert weights.weights_only and weights.meta is None and weights.data_state is None
    np.testing.assert_array_equal(np.asarray(weights.params["wte"]), np.asarray(states[2].params["wte"]))

    # A from-hf conversion holds weights only: a weights-only start even when the whole state was asked for.
    write_params_checkpoint(tmp_path / "hf", 0, host(states[1].params), config)
    assert starting_checkpoint(new, *targets, load_path=str(tmp_path / "hf")).weights_only

    # The run's own checkpoints win over load_path: that is how a restarted run resumes.
    shutil.copytree(tmp_path / "other", new)
    own = starting_checkpoint(new, *targets, load_path=str(tmp_path / "hf"))
    assert own.step_dir == new / "checkpoints" / "2"


def test_training_checkpoints_keep_the_last_n_and_the_permanent_ones(tmp_path: Path) -> None:
    config, setup = small_setup()
    config.save_num_checkpoints_to_keep, config.save_interval_permanent = 2, 4
    state = _random_state(abstract_state(setup), 0)
    with checkpointer_for(tmp_path, config) as checkpointer:
        for step in range(1, 8):
            save_state(checkpointer, state._replace(step=np.int32(step), nonfinite_steps=np.int32(0)))
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 6, 7]


# --------------------------------------------------------------------------------------------------
# The loop's non-finite guard
# --------------------------------------------------------------------------------------------------


class PoisonedLoader:
    """The real loader, except that the batches of `bad_steps` (0-based) hold a token id past the embedding:
    its embedding lookup gives NaN, so the loss and gradients are NaN."""

    def __init__(self, loader, bad_steps: set[int], bad_token: int) -> None:
        self._loader, self._bad_steps, self._bad_token = loader, bad_steps, bad_token

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._loader)
        if batch.step in self._bad_steps:
            batch = dataclasses.replace(batch, input_ids=batch.input_ids.at[0, 5].set(self._bad_token))
        return batch

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_nan_batch_never_reaches_the_parameters_or_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    config = tiny(max_duration=3, save_interval=1, save_num_checkpoints_to_keep=0, nonfinite_policy=policy)
    real = olmo_jax.loop.build_train_loader
    monkeypatch.setattr(
        olmo_jax.loop,  # where the loop looks the loader up
        "build_train_loader",
        lambda *args, **kwargs: PoisonedLoader(real(*args, **kwargs), {1}, config.model.padded_vocab_size),
    )
    checkpoints = tmp_path / "checkpoints"

    if policy == "stop":
        with pytest.raises(NonFiniteLossError, match=r"non-finite loss or gradient at step 2 \(loss=nan"):
            fit(config, tmp_path, devices=jax.devices()[:1])
        assert sorted(p.name for p in checkpoints.iterdir()) == ["1"]
        return

    fit(config, tmp_path, devices=jax.devices()[:1])
    params = {step: restore_params(checkpoints / str(step)) for step in (1, 2, 3)}
    for name in params[1]:
        np.testing.assert_array_equal(params[2][name], params[1][name], err_msg=name)  # skipped: bit-identical
    assert not np.array_equal(params[3]["wte"], params[2]["wte"])  # the next good batch trains again
    assert [read_train_meta(checkpoints / str(step)).nonfinite_steps for step in (1, 2, 3)] == [0, 1, 1]


# --------------------------------------------------------------------------------------------------
# Readers of training checkpoints
# --------------------------------------------------------------------------------------------------


def test_to_hf_and_from_pretrained_read_training_checkpoints(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    import olmo_jax
    from olmo_jax.convert.checkpoints import to_hf

    _, states = _two_steps(tmp_path / "run")
    step_dir = tmp_path / "run" / "checkpoints" / "2"
    assert read_config(step_dir).model.n_layers == 2

    pretrained = olmo_jax.from_pretrained(tmp_path / "run")
    np.testing.assert_array_equal(
        np.asarray(pretrained.model.wte[...]), np.asarray(states[2].params["wte"])
    )  # the latest step, bit for bit
    files = to_hf(tmp_path / "run", tmp_path / "hf")
    assert "config.json" in files and any(name.endswith(".safetensors") for name in files)
