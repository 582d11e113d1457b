"""The olmo_jax checkpoint layout, on `orbax.checkpoint.CheckpointManager`.

    <run_dir>/checkpoints/<step>/     one CheckpointManager step with named items:
        params/     the parameter pytree as a pure nested dict, keys the model's attribute names
                    (wte, att_proj, attn_out, ff_proj, ff_out, lm_head), Orbax's standard array format
        config/     JSON {"config": to_dict(TrainConfig), "tokenizer": <tokenizer identity or null>}
        opt_state/  the optimizer state pytree (Orbax's standard array format)       } training
        data/       JSON: the data loader's state (`TrainLoader.state()`)             } checkpoints
        meta/       JSON: step, skipped steps, tokens, seed, energy (`TrainMeta`)     } only
        verified/   JSON: params and opt_state were found finite (written last; `FiniteCheckHandler`) }
        checksums.json  xxh3-64 of every file of the items (training checkpoints; see `write_checksums`)

`params/` and `config/` are what every reader needs (`to-hf`, `from_pretrained`, a weights-only start); a
`from-hf` conversion writes only those. The training loop's `Checkpointer` writes them all.

Orbax writes each step under a temporary name (`<step>.orbax-checkpoint-tmp`) and renames it when complete, so
a step directory that exists under its number is complete; readers still require both `params/` and `config/`.
Training checkpoints carry `checksums.json`, written by a background thread once Orbax has finished the step
(a step killed in between has none, and is read unverified); every restore verifies the files of the items it
reads against it first, because Orbax stores no checksums and a flipped bit would otherwise load silently.

A step that exists but is damaged is moved aside as `<step>.corrupt-<time>` when the trainer resumes, and the
previous step is used. Damage means: missing or truncated files, unreadable metadata, a checksum mismatch, or
parameters and optimizer state that hold NaN or Inf (`first_nonfinite`). Any other error while reading (an I/O
error, out of memory) stops the run and moves nothing, so that a transient fault cannot discard a run's
checkpoints. The `Checkpointer` never publishes a non-finite state: it checks the state in the background and
Orbax renames the step into place only once `verified/` is written, which the check gates. A non-finite state,
like a save that failed in the background, is reported at the next step (`raise_if_failed`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import xxhash
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from olmo_jax import atomic
from olmo_jax.config import TrainConfig, from_dict, to_dict
from olmo_jax.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointReadError,
    CheckpointSaveError,
    ConfigError,
    NonFiniteStateError,
)

CHECKPOINTS_DIR = "checkpoints"
PARAMS_ITEM = "params"
CONFIG_ITEM = "config"
OPT_STATE_ITEM = "opt_state"
DATA_ITEM = "data"
META_ITEM = "meta"
REQUIRED_ITEMS = (PARAMS_ITEM, CONFIG_ITEM)
TRAINING_ITEMS = (OPT_STATE_ITEM, DATA_ITEM, META_ITEM)
META_FORMAT = "olmo_jax.train_meta/1"
VERIFIED_ITEM = "verified"  # must sort after every other item name (see FiniteCheckHandler)
VERIFIED_FORMAT = "olmo_jax.finite_check/1"
CHECKSUMS_FILE = "checksums.json"
CHECKSUMS_FORMAT = "olmo_jax.checksums/1"
_HASH_THREADS = 8  # files are hashed in parallel: xxhash and file reads release the GIL

log = logging.getLogger(__name__)


class _DropReadOnlyNotice(logging.Filter):
    """Orbax logs a warning every time a manager opens read-only, which is how every reader opens one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


class _DropNonFiniteSaveTraces(logging.Filter):
    """Orbax logs a traceback from each of its threads when a save fails; for a save refused because the state
    is not finite the trainer reports it, once, as NonFiniteStateError (`Checkpointer`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[1] is not None and _nonfinite_cause(record.exc_info[1]))


logging.getLogger("absl").addFilter(_DropReadOnlyNotice())
logging.getLogger("absl").addFilter(_DropNonFiniteSaveTraces())


class FiniteCheckHandler(ocp.JsonCheckpointHandler):
    """The `verified/` item: a save waits, in Orbax's background commit, for a `nonfinite_probe` of the state
    saved beside it, and writes the JSON only when it found nothing; otherwise it fails with
    NonFiniteStateError(name of the first non-finite array).

    Orbax publishes a step (renames it from its temporary name) and applies the retention policy only after every
    item was written, so a failed check leaves no step and retires none: a non-finite state never becomes a
    checkpoint, not even when the process dies during the check, and never displaces the newest good one.
    Orbax waits for the items in the order of their names, and `verified` sorts last, so when the check fails
    every other write has ended and no thread is left running into the process's exit.
    """

    async def async_save(self, directory: Any, item: Any = None, args: Any = None) -> Any:
        async def write_if_finite() -> None:
            bad = await asyncio.to_thread(args.first_nonfinite)
            if bad is not None:
                raise NonFiniteStateError(bad)
            await self._save_fn(args.item, directory)

        return [ocp.future.CommitFutureAwaitingContractedSignals(write_if_finite(), name="olmo_jax_finite_check")]


@ocp.args.register_with_handler(FiniteCheckHandler, for_save=True)
@dataclass
class FiniteCheckSave(ocp.args.CheckpointArgs):
    """Write `verified/` if `first_nonfinite()` (a `nonfinite_probe`) returns None."""

    first_nonfinite: Callable[[], str | None]
    item: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"format": VERIFIED_FORMAT, "finite": [PARAMS_ITEM, OPT_STATE_ITEM]}
    )


@ocp.args.register_with_handler(FiniteCheckHandler, for_restore=True)
@dataclass
class FiniteCheckRestore(ocp.args.JsonRestore):
    """Read `verified/` (as `ocp.args.JsonRestore`: Orbax pairs each handler with args classes of its own)."""


def item_handlers() -> dict[str, ocp.CheckpointHandler]:
    """Handlers of the named items in a step directory."""
    return {
        PARAMS_ITEM: ocp.StandardCheckpointHandler(),
        CONFIG_ITEM: ocp.JsonCheckpointHandler(),
        OPT_STATE_ITEM: ocp.StandardCheckpointHandler(),
        DATA_ITEM: ocp.JsonCheckpointHandler(),
        META_ITEM: ocp.JsonCheckpointHandler(),
        VERIFIED_ITEM: FiniteCheckHandler(),
    }


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
        raise CheckpointNotFoundError(f"checkpoint path {path} does not exist")
    if _is_complete_step(path):
        return path
    if path.is_dir() and path.name.isdigit() and (path / PARAMS_ITEM).exists():
        missing = [item for item in REQUIRED_ITEMS if not (path / item).is_dir()]
        raise CheckpointError(f"checkpoint step {path} is incomplete: missing {', '.join(missing)}/")
    for candidate in (path / CHECKPOINTS_DIR, path):
        step_dir = _latest_step_dir(candidate)
        if step_dir is not None:
            return step_dir
    raise CheckpointNotFoundError(
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
    return _checked_metadata(item[CONFIG_ITEM], step_dir)


def read_train_meta(step_dir: Path) -> TrainMeta | None:
    """The `meta` item of a training checkpoint step (no array is read); None for a weights-only step."""
    if not (Path(step_dir) / META_ITEM).is_dir():
        return None
    manager, step = _manager_for_step(step_dir)
    with manager:
        item = manager.restore(step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))
    return TrainMeta.from_json(item[META_ITEM], Path(step_dir) / META_ITEM)


def _checked_metadata(data: Any, step_dir: Path) -> dict[str, Any]:
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
    verify_checksums(Path(step_dir), (PARAMS_ITEM,))
    manager, step = _manager_for_step(step_dir)
    with manager:
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(abstract_params)})
            )
        except _BUG_ERRORS:
            raise
        except Exception as e:  # Orbax and TensorStore raise ValueError/RuntimeError/OSError for damaged data
            raise CheckpointError(f"cannot read the parameters of {step_dir}: {_first_line(e)}") from e
    return restored[PARAMS_ITEM]


def _file_digest(path: Path) -> str:
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _item_files(step_dir: Path, items: tuple[str, ...]) -> list[Path]:
    return sorted(
        p for item in items if (step_dir / item).is_dir() for p in (step_dir / item).rglob("*") if p.is_file()
    )


def write_checksums(step_dir: Path) -> None:
    """Write `<step_dir>/checksums.json`: size and xxh3-64 of every file of the step's items."""
    files = _item_files(step_dir, REQUIRED_ITEMS + TRAINING_ITEMS)
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        digests = list(pool.map(_file_digest, files))
    listing = {
        str(path.relative_to(step_dir)): [path.stat().st_size, digest]
        for path, digest in zip(files, digests, strict=True)
    }
    atomic.write_json(step_dir / CHECKSUMS_FILE, {"format": CHECKSUMS_FORMAT, "files": listing}, indent=None)


def verify_checksums(step_dir: Path, items: tuple[str, ...]) -> bool:
    """Check the files of `items` against the step's checksums.json; False when it has none (nothing checked).
    Raises CheckpointError naming the first file that is missing, of another size or of other content."""
    path = step_dir / CHECKSUMS_FILE
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
        listing = {name: (int(size), str(digest)) for name, (size, digest) in data["files"].items()}
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    wanted = {name: entry for name, entry in listing.items() if name.split("/", 1)[0] in items}
    for name, (size, _) in wanted.items():
        file = step_dir / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing (listed in {CHECKSUMS_FILE})")
        if file.stat().st_size != size:
            raise CheckpointError(f"checkpoint file {file} has {file.stat().st_size} bytes, {size} when saved")
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        digests = pool.map(lambda name: _file_digest(step_dir / name), wanted)
        for (name, (_, expected)), digest in zip(wanted.items(), digests, strict=True):
            if digest != expected:
                raise CheckpointError(
                    f"checkpoint file {step_dir / name} does not match its checksum: its bytes changed"
                )
    return True


def _first_line(error: BaseException, limit: int = 300) -> str:
    """The gist of a (often many-line) storage error, for a one-line message: its root cause, which names
    the damaged array and what is wrong with it (Orbax's own wrapper names only slices)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split())
    return text[:limit] + ("..." if len(text) > limit else "") or type(error).__name__


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


# --------------------------------------------------------------------------------------------------
# Training checkpoints: the whole state, saved asynchronously, resumed from the latest readable step
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainMeta:
    """The scalar training state in `meta/`: everything that is neither an array nor the loader's position.

    The train step draws no random numbers, so the run's randomness is `seed` (parameter initialisation)
    and the data order, whose seed travels in the loader state.
    """

    step: int  # batches consumed (the step directory's number)
    nonfinite_steps: int  # updates the non-finite guard skipped so far
    tokens_seen: int
    seed: int
    # The run's energy so far (`olmo_jax.energy.EnergyTotals.to_json()`); None when never measured. Optional
    # in the JSON: checkpoints saved before energy was measured have no such key.
    energy: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": META_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Any, where: Path) -> TrainMeta:
        if not isinstance(data, dict) or data.get("format") != META_FORMAT:
            raise CheckpointError(f"{where} is not an olmo_jax training meta item (format {META_FORMAT!r})")
        values: dict[str, Any] = {}
        for name in ("step", "nonfinite_steps", "tokens_seen", "seed"):
            value = data.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise CheckpointError(f"{where} lacks an integer {name!r}")
            values[name] = value
        energy = data.get("energy")
        if energy is not None and not isinstance(energy, dict):
            raise CheckpointError(f"{where} holds energy totals that are not a mapping: {energy!r}")
        return cls(**values, energy=energy)


@dataclass
class TrainCheckpoint:
    """What a run restores from a step: always the weights and the saved config; the optimizer state, loader
    state and meta unless it is weights-only (asked for, or the step holds weights only)."""

    step_dir: Path
    params: dict[str, Any]
    metadata: dict[str, Any]  # the config item: {"config": {...}, "tokenizer": identity or None}
    opt_state: Any = None
    data_state: dict[str, Any] | None = None
    meta: TrainMeta | None = None

    @property
    def weights_only(self) -> bool:
        return self.opt_state is None


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flat_leaves(tree: Any) -> dict[str, Any]:
    """{"inner_state/0/mu/wte": leaf} for the array leaves of `tree` (arrays, ShapeDtypeStructs or Orbax's
    ArrayMetadata). Orbax's metadata turns namedtuples into dicts and tuples into lists; writing every key,
    field and index as a plain path component makes a saved tree and a target tree comparable."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"inner_state/0/mu/wte": shape} for the array leaves of `tree` (see `_flat_leaves`)."""
    return {name: tuple(leaf.shape) for name, leaf in _flat_leaves(tree).items()}


def all_finite(array: jax.Array) -> jax.Array:
    """Whether `array` holds no NaN or Inf, as a traced bool: 0 * x is 0 for finite x and NaN otherwise, so the
    sum is 0 exactly when every element is finite (and cannot overflow). About 4x faster than
    `all(isfinite(x))` on XLA's CPU backend, which reduces booleans slowly. Not max/min: ~2x faster still, but
    XLA's vectorised CPU reductions drop NaNs (tests/test_faults.py checks large arrays for that)."""
    return jnp.isfinite(jnp.sum(array * 0))


@jax.jit
def _finite_flags(arrays: list[jax.Array]) -> jax.Array:
    return jnp.stack([all_finite(a) for a in arrays])


_FINITE_CHUNK = 1 << 18  # elements per numpy pass: small enough to stay in cache, large enough to be cheap


def host_all_finite(array: np.ndarray) -> bool:
    """Whether a host array holds no NaN or Inf: `np.isfinite` over cache-sized chunks, stopping at the first bad
    one. Elementwise, so unlike XLA's vectorised CPU max/min reductions it cannot lose a NaN; ~6 GB/s on one core
    of this project's CPU for float32 (bfloat16 goes through ml_dtypes' slower loop)."""
    flat = np.asarray(array).reshape(-1)
    return all(bool(np.isfinite(flat[i : i + _FINITE_CHUNK]).all()) for i in range(0, flat.size, _FINITE_CHUNK))


def _host_views(leaf: Any) -> list[np.ndarray] | None:
    """Zero-copy numpy views of the buffers of a numpy array or a jax.Array of this process on the CPU backend
    (one per distinct shard); None for any other array. A view keeps its buffer alive: XLA does not reuse a
    donated buffer that numpy still references."""
    if isinstance(leaf, np.ndarray):
        return [leaf]
    if isinstance(leaf, jax.Array) and leaf.is_fully_addressable and all(d.platform == "cpu" for d in leaf.devices()):
        return [np.asarray(shard.data) for shard in leaf.addressable_shards if shard.replica_id == 0]
    return None


def nonfinite_probe(tree: Any) -> Callable[[], str | None]:
    """Start looking for NaN or Inf in the floating-point arrays of `tree`; returns a function that waits for the
    answer: the name of the first non-finite array (e.g. "opt_state/0/mu/wte"), or None when all are finite.

    The caller may donate or delete the arrays as soon as this returns, and the answer may be awaited on another
    thread. Arrays in host memory (numpy, or jax.Arrays of this process on the CPU backend) are checked by numpy
    (`host_all_finite`) on zero-copy views, in the thread that waits, so the caller does no pass over them. Any
    other arrays get one jitted reduction where they live (`all_finite`; sharded arrays stay sharded, a pass at
    memory bandwidth on an accelerator), dispatched without waiting; only on the CPU backend with several
    processes does it finish first, since XLA's CPU collectives can deadlock with two computations in flight.
    """
    leaves = {
        name: leaf for name, leaf in _flat_leaves(tree).items() if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    }
    views = {name: _host_views(leaf) for name, leaf in leaves.items()}
    if all(parts is not None for parts in views.values()):
        return lambda: next((name for name, parts in views.items() if not all(map(host_all_finite, parts))), None)
    flags = _finite_flags(list(leaves.values()))
    if all(d.platform == "cpu" for d in flags.devices()):
        flags.block_until_ready()
    return lambda: next((name for name, ok in zip(leaves, np.asarray(flags).tolist(), strict=True) if not ok), None)


def first_nonfinite(tree: Any) -> str | None:
    """The name of the first floating-point array of `tree` that holds a NaN or Inf (e.g. "opt_state/0/mu/wte"),
    or None when all are finite (`nonfinite_probe`, waited for)."""
    return nonfinite_probe(tree)()


def _check_fits(what: str, saved: dict, wanted: dict, step_dir: Path, hint: str) -> None:
    """Raise CheckpointMismatchError naming the first tensor of `wanted` whose saved shape differs."""
    for name, shape in wanted.items():
        if name not in saved:
            raise CheckpointMismatchError(
                f"checkpoint {step_dir} has no {what} {name} (shape {list(shape)}) that the config needs; {hint}"
            )
        if saved[name] != shape:
            raise CheckpointMismatchError(
                f"checkpoint {step_dir} does not fit the config: {what} {name} has shape {list(saved[name])} "
                f"in the checkpoint but {list(shape)} in the configured model; {hint}"
            )
    extra = [name for name in saved if name not in wanted]
    if extra:
        raise CheckpointMismatchError(
            f"checkpoint {step_dir} has {what} {extra[0]} that the configured model lacks; {hint}"
        )


def _saved_tree(metadata: Any, item: str) -> Any:
    item_metadata = metadata[item]
    return item_metadata.tree if hasattr(item_metadata, "tree") else item_metadata


def restore_train_checkpoint(
    step_dir: Path, abstract_params: dict[str, Any], abstract_opt_state: Any = None
) -> TrainCheckpoint:
    """Restore a step onto the shardings of `abstract_params` (and `abstract_opt_state`), whatever mesh saved it.

    Weights only when `abstract_opt_state` is None or the step holds weights only. Saved parameters are cast
    to the dtypes asked for. Raises CheckpointMismatchError, naming the first tensor and both shapes, when
    the step does not fit the targets, and CheckpointError (or the storage's own error) when it is damaged.
    """
    step_dir = Path(step_dir)
    present = [item for item in TRAINING_ITEMS if (step_dir / item).is_dir()]
    if present and len(present) < len(TRAINING_ITEMS):
        missing = [item + "/" for item in TRAINING_ITEMS if item not in present]
        raise CheckpointError(f"checkpoint step {step_dir} is incomplete: missing {', '.join(missing)}")
    weights_only = abstract_opt_state is None or not present
    verify_checksums(step_dir, REQUIRED_ITEMS if weights_only else REQUIRED_ITEMS + TRAINING_ITEMS)
    manager, step = _manager_for_step(step_dir)
    with manager:
        metadata = manager.item_metadata(step)
        if not _flat_shapes(_saved_tree(metadata, PARAMS_ITEM)):
            raise CheckpointError(f"checkpoint step {step_dir} lists no parameters (its params/ metadata is damaged)")
        model_hint = "train with the model settings the checkpoint was saved with (its config/ item)"
        _check_fits(
            "parameter",
            _flat_shapes(_saved_tree(metadata, PARAMS_ITEM)),
            _flat_shapes(abstract_params),
            step_dir,
            model_hint,
        )
        args = {PARAMS_ITEM: ocp.args.StandardRestore(abstract_params), CONFIG_ITEM: ocp.args.JsonRestore()}
        if not weights_only:
            _check_fits(
                "optimizer state entry",
                _flat_shapes(_saved_tree(metadata, OPT_STATE_ITEM)),
                _flat_shapes(abstract_opt_state),
                step_dir,
                "the optimizer settings differ from the checkpoint's (load_weights_only=true starts a fresh one)",
            )
            args.update(
                {
                    OPT_STATE_ITEM: ocp.args.StandardRestore(abstract_opt_state),
                    DATA_ITEM: ocp.args.JsonRestore(),
                    META_ITEM: ocp.args.JsonRestore(),
                }
            )
        restored = manager.restore(step, args=ocp.args.Composite(**args))
    checkpoint = TrainCheckpoint(step_dir, restored[PARAMS_ITEM], _checked_metadata(restored[CONFIG_ITEM], step_dir))
    arrays = (PARAMS_ITEM,) if weights_only else (PARAMS_ITEM, OPT_STATE_ITEM)
    bad = first_nonfinite({item: restored[item] for item in arrays})
    if bad is not None:
        raise CheckpointError(f"checkpoint step {step_dir} holds NaN or Inf in {bad}")
    if weights_only:
        return checkpoint
    meta = TrainMeta.from_json(restored[META_ITEM], step_dir / META_ITEM)
    data_state = restored[DATA_ITEM]
    if meta.step != step or not isinstance(data_state, dict) or data_state.get("step") != step:
        raise CheckpointError(f"{step_dir}: its meta/ and data/ items do not both describe step {step}")
    checkpoint.opt_state, checkpoint.data_state, checkpoint.meta = restored[OPT_STATE_ITEM], data_state, meta
    return checkpoint


# Errors that mean a bug rather than damaged storage: they propagate and never move a step aside.
_BUG_ERRORS = (TypeError, AttributeError, NameError, ImportError, AssertionError, CheckpointMismatchError)

# What damage looks like when reading a step: our own checks (incomplete step, non-finite values, malformed
# items), files that are gone, JSON that does not decode, and TensorStore's status codes for data that is
# missing, short or malformed (it raises ValueError("OUT_OF_RANGE: ...") for a truncated chunk). Everything
# else, a failing disk (EIO), a full memory, a network filesystem timing out, is no evidence against the step.
_DAMAGE_ERRORS = (CheckpointError, FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError)
_DAMAGE_STATUS = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT")


def is_damage(error: BaseException) -> bool:
    """Whether `error`, raised while reading a step, shows that the step itself is damaged.

    The error and its causes are looked at outermost first; the first one that is damage-shaped or
    transient-shaped (any other OSError, MemoryError) decides; unknown errors are not damage."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, _DAMAGE_ERRORS):
            return True
        if isinstance(seen, ValueError) and str(seen).split(":", 1)[0].strip() in _DAMAGE_STATUS:
            return True
        if isinstance(seen, (OSError, MemoryError)):
            return False
        seen = seen.__cause__ or seen.__context__
    return False


def restore_latest(
    checkpoints_dir: Path, abstract_params: dict[str, Any], abstract_opt_state: Any
) -> TrainCheckpoint | None:
    """The newest step of `checkpoints_dir` that can be read (None when there is no step at all).

    A damaged step (`is_damage`) is moved aside as `<step>.corrupt-<unix time>` with a warning, and the one
    before it is tried; any other error reading it raises CheckpointReadError and moves nothing; a step that
    reads but does not fit the targets raises CheckpointMismatchError. Orbax's unfinished saves
    (`<step>.orbax-checkpoint-tmp*`) are never considered.
    """
    checkpoints_dir = Path(checkpoints_dir)
    steps = (
        [p for p in checkpoints_dir.iterdir() if p.is_dir() and p.name.isdigit()] if checkpoints_dir.is_dir() else []
    )
    for step_dir in sorted(steps, key=lambda p: int(p.name), reverse=True):
        try:
            return restore_train_checkpoint(step_dir, abstract_params, abstract_opt_state)
        except _BUG_ERRORS:
            raise
        except Exception as e:
            if not is_damage(e):
                raise CheckpointReadError(
                    f"cannot read checkpoint {step_dir} ({type(e).__name__}: {_first_line(e)}); it does not look "
                    "damaged, so nothing was moved aside: fix the cause and rerun"
                ) from e
            moved = _move_aside(step_dir)
            reason = " ".join(str(e).split())[:300]
            log.warning(
                "checkpoint %s cannot be read (%s: %s); moved it to %s and trying the previous step",
                step_dir,
                type(e).__name__,
                reason,
                moved.name,
            )
    if steps:
        raise CheckpointError(
            f"none of the {len(steps)} checkpoints under {checkpoints_dir} could be read (each was moved aside as "
            "<step>.corrupt-*); rerun to start the run afresh, or set load_path"
        )
    return None


def starting_checkpoint(
    run_dir: Path,
    abstract_params: dict[str, Any],
    abstract_opt_state: Any,
    *,
    load_path: str | None = None,
    load_weights_only: bool = False,
) -> TrainCheckpoint | None:
    """Where a run starts: its own latest readable checkpoint; else `load_path` (the whole training state, or
    its weights only with `load_weights_only` or when it holds nothing else); else None (fresh)."""
    own = restore_latest(Path(run_dir) / CHECKPOINTS_DIR, abstract_params, abstract_opt_state)
    if own is not None or not load_path:
        return own
    step_dir = resolve_checkpoint(load_path)
    return restore_train_checkpoint(step_dir, abstract_params, None if load_weights_only else abstract_opt_state)


def _move_aside(step_dir: Path) -> Path:
    """Rename a damaged step so that neither Orbax nor a later resume takes it for a checkpoint (kept for
    inspection, never deleted). Process 0 renames; the others wait for it."""
    target = step_dir.with_name(f"{step_dir.name}.corrupt-{int(time.time())}")
    if jax.process_index() == 0:
        step_dir.rename(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"olmo_jax:move_aside:{step_dir.name}")
    return target


def _nonfinite_cause(error: BaseException) -> str | None:
    """The array named by the NonFiniteStateError that `error` (a failed background save) stems from, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, NonFiniteStateError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True)
class CheckpointSpec:
    """Where and when a run saves training checkpoints (the trainer builds it from the run's config)."""

    run_dir: Path
    save_interval: int | None  # steps between saves; None: only at the end and when stopped early
    save_interval_permanent: int | None  # every multiple of it is kept for good; None: none is
    keep: int  # the latest steps kept (besides the permanent ones); <= 0 keeps all


class Checkpointer:
    """Writes one run's training checkpoints asynchronously, on the spec's schedule.

    Keeps the last `spec.keep` steps (all when <= 0) and every multiple of `spec.save_interval_permanent`.
    `run_config` (the run's config as a plain dict, `to_dict(TrainConfig)`) is saved in every step's `config/`.
    `save` blocks only while the arrays are copied to host memory (and while a previous save is still being
    written); Orbax writes the files in a background thread, where the state is also checked for NaN and Inf
    (`nonfinite_probe`, `FiniteCheckHandler`), and renames the step into place when it is complete and finite.
    A save that fails in the background, or finds the state non-finite, publishes nothing and leaves the
    previous steps in place (Orbax deletes old steps only after a save completes); the next `raise_if_failed`,
    `save` or `wait_until_finished` raises CheckpointSaveError, or NonFiniteStateError naming the array.
    Creating one deletes unfinished saves left by a killed process (and by a refused one). Every process calls
    every method: Orbax coordinates the hosts.
    """

    def __init__(
        self, spec: CheckpointSpec, run_config: dict[str, Any], *, tokenizer_identity: str | None = None
    ) -> None:
        self.directory = Path(spec.run_dir) / CHECKPOINTS_DIR
        self._interval = spec.save_interval
        self._permanent = spec.save_interval_permanent
        self._metadata = {"config": run_config, "tokenizer": tokenizer_identity}
        self._unconfirmed: int | None = None  # the step of the last save not yet known to have succeeded
        self._checksums: threading.Thread | None = None  # writes the last step's checksums.json once it is written
        keep = spec.keep
        policies: list[checkpoint_managers.PreservationPolicy] = [
            checkpoint_managers.LatestN(keep if keep > 0 else None)
        ]
        if self._permanent:
            policies.append(checkpoint_managers.EveryNSteps(self._permanent))
        self._manager = checkpoint_manager(
            self.directory,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        )

    def is_due(self, step: int) -> bool:
        """Whether the schedule saves after `step` (every `save_interval`, and every `save_interval_permanent`)."""
        return any(interval and step % interval == 0 for interval in (self._interval, self._permanent))

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, params: Any, opt_state: Any, *, data_state: dict[str, Any], meta: TrainMeta) -> float:
        """Start writing step `meta.step`; returns the seconds the caller was blocked.

        The state is checked for NaN and Inf in the background (`nonfinite_probe`): a non-finite one is never
        published as a step, and is raised as NonFiniteStateError, like a failed write as CheckpointSaveError,
        by the next `raise_if_failed`, `save` or `wait_until_finished`."""
        started = time.perf_counter()
        self._wait_for_previous()
        self._join_checksums()  # before the next save's retention may delete the step being hashed
        probe = nonfinite_probe({PARAMS_ITEM: params, OPT_STATE_ITEM: opt_state})
        self._unconfirmed = meta.step
        self._manager.save(
            meta.step,
            args=ocp.args.Composite(
                **{
                    PARAMS_ITEM: ocp.args.StandardSave(params),
                    OPT_STATE_ITEM: ocp.args.StandardSave(opt_state),
                    CONFIG_ITEM: ocp.args.JsonSave(self._metadata),
                    DATA_ITEM: ocp.args.JsonSave(data_state),
                    META_ITEM: ocp.args.JsonSave(meta.to_json()),
                    VERIFIED_ITEM: FiniteCheckSave(probe),
                }
            ),
            force=True,
        )
        if jax.process_index() == 0:
            self._checksums = threading.Thread(
                target=self._write_checksums, args=(meta.step,), name=f"olmo_jax-checksums-{meta.step}", daemon=True
            )
            self._checksums.start()
        return time.perf_counter() - started

    def _write_checksums(self, step: int) -> None:
        """In the background: wait for Orbax to finish the step, then hash its files (a failed save is reported
        by the training thread, which sees the same error)."""
        try:
            self._manager.wait_until_finished()
        except Exception:
            return
        try:
            write_checksums(self.step_dir(step))
        except OSError as e:  # the step stays readable, unverified; a full disk surfaces at the next save
            log.warning("could not write the checksums of checkpoint %s: %s", self.step_dir(step), e)

    def _join_checksums(self) -> None:
        if self._checksums is not None:
            self._checksums.join()
            self._checksums = None

    def raise_if_failed(self) -> None:
        """Raise CheckpointSaveError if the last save failed in the background; never waits for one in progress
        (cheap enough to call after every step)."""
        if self._unconfirmed is not None and not self._manager.is_saving_in_progress():
            self._wait_for_previous()

    def wait_until_finished(self) -> None:
        """Block until every started save is complete on disk, checksums included (CheckpointSaveError if one
        failed)."""
        self._wait_for_previous()
        self._join_checksums()

    def _wait_for_previous(self) -> None:
        step, self._unconfirmed = self._unconfirmed, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            # Orbax drops the steps a save would retire from its list when the save starts, and deletes them
            # only once it succeeds: after a failure its list is short of steps that are still on disk.
            self._manager.reload()
            latest = _latest_step_dir(self.directory)
            bad = _nonfinite_cause(e)
            if bad is not None:
                kept = f"the last checkpoint, {latest}, is kept" if latest is not None else "there is no earlier one"
                raise NonFiniteStateError(
                    f"the training state after step {step} holds NaN or Inf in {bad}; it was not saved and {kept}"
                ) from None
            where = f"checkpoint step {step} ({self.step_dir(step)})" if step is not None else "a checkpoint"
            kept = f"; the previous checkpoint {latest} is intact" if latest is not None else ""
            raise CheckpointSaveError(f"saving {where} failed: {_first_line(e)}{kept}") from e

    def close(self) -> None:
        """Finish the saves in progress and release Orbax's threads (CheckpointSaveError if one failed)."""
        try:
            self._wait_for_previous()
        finally:
            self._join_checksums()
            self._manager.close()  # a failure is raised once (above): closing after it does not raise again

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
