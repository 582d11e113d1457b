"""The checkpoint layout: <run_dir>/checkpoints/<step>/{params,config}/ on Orbax's CheckpointManager."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from olmo_jax.checkpoint import (
    CheckpointError,
    read_checkpoint_metadata,
    read_config,
    resolve_checkpoint,
    restore_params,
    write_params_checkpoint,
)
from olmo_jax.config import TrainConfig, load_config
from olmo_jax.errors import CheckpointNotFoundError


def _params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "wte": rng.standard_normal((16, 4), dtype=np.float32),
        "att_proj": rng.standard_normal((2, 4, 3, 2, 2), dtype=np.float32),
    }


def test_run_dir_resolves_to_its_latest_complete_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in (2, 10):
        write_params_checkpoint(run, step, _params(step), TrainConfig())
    # What an interrupted save leaves behind must never be chosen: a step missing its config item and an
    # Orbax temporary directory with a higher step number.
    (run / "checkpoints" / "11" / "params").mkdir(parents=True)
    (run / "checkpoints" / "12.orbax-checkpoint-tmp-1234" / "params").mkdir(parents=True)

    assert resolve_checkpoint(run) == run / "checkpoints" / "10"
    assert resolve_checkpoint(run / "checkpoints") == run / "checkpoints" / "10"
    assert resolve_checkpoint(run / "checkpoints" / "2") == run / "checkpoints" / "2"
    np.testing.assert_array_equal(restore_params(resolve_checkpoint(run))["wte"], _params(10)["wte"])


def test_resolve_names_the_path_when_there_is_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="no complete checkpoint under .*empty"):
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "run" / "checkpoints" / "5" / "params").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="incomplete: missing config/"):
        resolve_checkpoint(tmp_path / "run" / "checkpoints" / "5")


def test_step_directory_holds_the_named_items(tmp_path: Path) -> None:
    config = load_config("tiny")
    step_dir = write_params_checkpoint(tmp_path, 7, _params(0), config, tokenizer_identity="sp:0123456789abcdef")

    assert step_dir == tmp_path / "checkpoints" / "7"
    assert {p.name for p in step_dir.iterdir() if p.is_dir()} == {"params", "config"}
    metadata = read_checkpoint_metadata(step_dir)
    assert metadata["tokenizer"] == "sp:0123456789abcdef"
    # The config item is plain JSON: other tools can read the run's settings without olmo_jax.
    assert json.loads(json.dumps(metadata["config"])) == metadata["config"]
    assert read_config(step_dir) == config


def test_params_restore_as_numpy_or_onto_given_shardings(tmp_path: Path) -> None:
    params = _params(0)
    step_dir = write_params_checkpoint(tmp_path, 1, params, TrainConfig())

    restored = restore_params(step_dir)
    assert set(restored) == set(params)
    for name, value in params.items():
        assert isinstance(restored[name], np.ndarray)
        np.testing.assert_array_equal(restored[name], value)  # bit-exact: a checkpoint must not round

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in params.items()}
    on_device = restore_params(step_dir, abstract)
    assert isinstance(on_device["att_proj"], jax.Array)
    assert on_device["att_proj"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(on_device["att_proj"]), params["att_proj"])
