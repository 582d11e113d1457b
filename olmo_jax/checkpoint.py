"""The olmo_jax checkpoint layout, on `orbax.checkpoint.CheckpointManager`.

    <run_dir>/checkpoints/<step>/     one CheckpointManager step with named items:
        params/    the parameter pytree as a pure nested dict, keys the model's attribute names
                   (wte, att_proj, attn_out, ff_proj, ff_out, lm_head), Orbax's standard array format
        config/    JSON {"config": to_dict(TrainConfig), "tokenizer": <tokenizer identity or null>}

Orbax writes each step under a temporary name and renames it when complete, so a step directory that
exists under its number is complete; readers still require both items to be present.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from olmo_jax.config import ConfigError, TrainConfig, from_dict, to_dict

CHECKPOINTS_DIR = "checkpoints"
PARAMS_ITEM = "params"
CONFIG_ITEM = "config"
REQUIRED_ITEMS = (PARAMS_ITEM, CONFIG_ITEM)


class CheckpointError(ValueError):
    """A missing or malformed checkpoint, reported as one line naming the path."""


class _DropReadOnlyNotice(logging.Filter):
    """Orbax logs a warning every time a manager opens read-only, which is how every reader opens one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_DropReadOnlyNotice())


def item_handlers() -> dict[str, ocp.CheckpointHandler]:
    """Handlers of the named items in a step directory."""
    return {PARAMS_ITEM: ocp.StandardCheckpointHandler(), CONFIG_ITEM: ocp.JsonCheckpointHandler()}


def checkpoint_manager(checkpoints_dir: Path, *, read_only: bool = False, **options: Any) -> ocp.CheckpointManager:
    """A CheckpointManager over `<run_dir>/checkpoints` with this layout's item handlers.

    `options` go to `CheckpointManagerOptions` (e.g. `max_to_keep`, `enable_async_checkpointing`).
    """
    if read_only:
        # Spelled out so that Orbax does not warn about each option it would otherwise override.
        options.update(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(
        checkpoints_dir.absolute(),
        item_handlers=item_handlers(),
        options=ocp.CheckpointManagerOptions(**options),
    )


def _is_complete_step(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit() and all((path / item).is_dir() for item in REQUIRED_ITEMS)


def _latest_step_dir(checkpoints_dir: Path) -> Path | None:
    steps = [p for p in checkpoints_dir.iterdir() if _is_complete_step(p)] if checkpoints_dir.is_dir() else []
    return max(steps, key=lambda p: int(p.name)) if steps else None


def resolve_checkpoint(path: str | Path) -> Path:
    """The step directory that `path` means: a run directory or its `checkpoints/` directory → the latest
    complete step; a step directory → itself. Raises CheckpointError when there is none."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if _is_complete_step(path):
        return path
    if path.is_dir() and path.name.isdigit() and (path / PARAMS_ITEM).exists():
        missing = [item for item in REQUIRED_ITEMS if not (path / item).is_dir()]
        raise CheckpointError(f"checkpoint step {path} is incomplete: missing {', '.join(missing)}/")
    for candidate in (path / CHECKPOINTS_DIR, path):
        step_dir = _latest_step_dir(candidate)
        if step_dir is not None:
            return step_dir
    raise CheckpointError(
        f"no complete checkpoint under {path} (expected <run_dir>/{CHECKPOINTS_DIR}/<step>/ "
        f"holding {' and '.join(i + '/' for i in REQUIRED_ITEMS)})"
    )


def _manager_for_step(step_dir: Path) -> tuple[ocp.CheckpointManager, int]:
    step_dir = Path(step_dir)
    if not _is_complete_step(step_dir):
        raise CheckpointError(f"{step_dir} is not a complete checkpoint step (use resolve_checkpoint on run dirs)")
    return checkpoint_manager(step_dir.parent, read_only=True), int(step_dir.name)


def read_checkpoint_metadata(step_dir: Path) -> dict[str, Any]:
    """The `config` item of a step: {"config": {...}, "tokenizer": identity or None}."""
    manager, step = _manager_for_step(step_dir)
    with manager:
        item = manager.restore(step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
    data = item[CONFIG_ITEM]
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise CheckpointError(f"{step_dir / CONFIG_ITEM} does not hold a {{'config': ...}} mapping")
    return data


def read_config(step_dir: Path) -> TrainConfig:
    """The TrainConfig saved with a checkpoint step."""
    data = read_checkpoint_metadata(step_dir)
    try:
        return from_dict(TrainConfig, data["config"])
    except ConfigError as e:
        raise CheckpointError(f"{step_dir / CONFIG_ITEM}: {e}") from None


def params_metadata(step_dir: Path) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a step's parameters, read from Orbax's metadata (no array is loaded)."""
    manager, step = _manager_for_step(step_dir)
    with manager:
        metadata = manager.item_metadata(step)[PARAMS_ITEM]
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)


def restore_params(step_dir: Path, abstract_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameter dict of a step.

    With `abstract_params` None, every array comes back as a host numpy array in its saved dtype.
    Otherwise pass a matching dict of `jax.ShapeDtypeStruct`s (with `sharding` set to restore sharded
    jax.Arrays straight onto devices, e.g. onto a different mesh than the one that saved them).
    """
    # A struct without a sharding makes Orbax restore that array as np.ndarray.
    abstract_params = params_metadata(step_dir) if abstract_params is None else abstract_params
    manager, step = _manager_for_step(step_dir)
    with manager:
        restored = manager.restore(
            step, args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(abstract_params)})
        )
    return restored[PARAMS_ITEM]


def host_device_arrays(params: dict[str, Any]) -> dict[str, jax.Array]:
    """Move numpy `params` into jax.Arrays on the host CPU, emptying `params` as it goes.

    Orbax copies numpy arrays once more while saving them but not CPU jax.Arrays, and popping each numpy
    array as soon as its copy exists keeps the peak at one copy of the weights plus one tensor.
    """
    try:
        host = jax.devices("cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS excludes the CPU backend: use the default device
        host = jax.devices()[0]
    return {name: jax.device_put(params.pop(name), host) for name in list(params)}


def write_params_checkpoint(
    run_dir: Path,
    step: int,
    params: dict[str, Any],
    config: TrainConfig,
    *,
    tokenizer_identity: str | None = None,
) -> Path:
    """Save `params` (numpy or jax arrays) and `config` as step `step` of `run_dir`; returns the step dir.

    For large numpy dicts pass `host_device_arrays(params)`: it saves the same values with less memory.
    """
    checkpoints_dir = Path(run_dir) / CHECKPOINTS_DIR
    metadata = {"config": to_dict(config), "tokenizer": tokenizer_identity}
    with checkpoint_manager(checkpoints_dir, max_to_keep=None, enable_async_checkpointing=False) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                **{PARAMS_ITEM: ocp.args.StandardSave(params), CONFIG_ITEM: ocp.args.JsonSave(metadata)}
            ),
            force=True,
        )
        manager.wait_until_finished()
    return checkpoints_dir / str(step)
