"""How long a checkpoint save blocks the training loop, and how long the background write takes.

Builds a preset's full train state (fp32 parameters + AdamW moments) on one device, then saves it several
times through the trainer's `Checkpointer`. Between saves a jitted, donating update rewrites every array, as a
train step does, and the previous save is allowed to finish, so each save starts from the same situation.
Prints the median over saves of: the time `save` blocked the caller (the device-to-host copy, starting the
finiteness check, Orbax's bookkeeping), the time of the update that follows it while the files are written and
the state is checked in the background, against the same update with nothing in flight (what the background
work costs the loop beyond the block), and the time until the step was complete on disk with its checksums. Then
the cost of the checksums: the time to hash the last step's files (on the checksum thread, off the training
thread) and the time to restore it with and without verifying them (each after a warm-up restore, so that both
read from the page cache).

    python benchmarks/bench_checkpoint.py --config=tiny
    python benchmarks/bench_checkpoint.py --config=1b --set model.n_layers=4   # 1b shapes, fewer layers
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from olmo_jax import sharding
from olmo_jax.checkpoint import (
    CHECKSUMS_FILE,
    Checkpointer,
    TrainMeta,
    restore_train_checkpoint,
    write_checksums,
)
from olmo_jax.config import MeshConfig, load_config, to_dict
from olmo_jax.loop import checkpoint_spec
from olmo_jax.train import abstract_state, build, init_state


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="preset name or YAML path whose model is checkpointed")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable (e.g. model.n_layers=4 to fit a large preset in host memory)",
    )
    p.add_argument("--saves", type=int, default=5, help="saves timed (the median is reported)")
    p.add_argument("--dir", help="folder the checkpoints are written to (default: a temporary folder)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    config = load_config(args.config, {**overrides, "save_num_checkpoints_to_keep": "1"})
    setup = build(config, sharding.make_mesh(MeshConfig(), jax.devices()[:1]))
    state = init_state(setup, config.seed)
    arrays = (state.params, state.opt_state)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    n_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(arrays))
    print(f"{args.config} {overrides}: {n_params:,} parameters, {n_bytes / 1e9:.2f} GB of state", flush=True)
    # Stands in for a train step: new values in every buffer, the old buffers donated.
    touch = jax.jit(lambda tree: jax.tree.map(lambda x: x + 1, tree), donate_argnums=0)

    blocked, complete, update_alone, update_during = [], [], [], []
    with (
        tempfile.TemporaryDirectory(dir=args.dir) as tmp,
        Checkpointer(checkpoint_spec(config, Path(tmp)), to_dict(config)) as checkpointer,
    ):
        arrays = jax.block_until_ready(touch(arrays))  # compiles the update
        for step in range(1, args.saves + 1):
            update_start = time.perf_counter()  # the previous save has finished: nothing in flight
            arrays = jax.block_until_ready(touch(arrays))
            update_alone.append(time.perf_counter() - update_start)
            start = time.perf_counter()
            meta = TrainMeta(step, 0, 0, config.seed)
            blocked.append(checkpointer.save(*arrays, data_state={"step": step}, meta=meta))
            update_start = time.perf_counter()
            arrays = jax.block_until_ready(touch(arrays))
            update_during.append(time.perf_counter() - update_start)
            checkpointer.wait_until_finished()
            complete.append(time.perf_counter() - start)
            print(
                f"save {step}: blocked {blocked[-1]:.3f} s, next update {update_during[-1]:.3f} s "
                f"({update_alone[-1]:.3f} s alone), on disk after {complete[-1]:.3f} s",
                flush=True,
            )
        del arrays, state
        step_dir = checkpointer.step_dir(args.saves)
        costs = _checksum_costs(step_dir, abstract_state(setup))
    result = {
        "config": args.config,
        "overrides": overrides,
        "parameters": n_params,
        "state_bytes": n_bytes,
        "median_blocked_s": statistics.median(blocked),
        "median_update_alone_s": statistics.median(update_alone),
        "median_update_during_save_s": statistics.median(update_during),
        "median_complete_s": statistics.median(complete),
        **costs,
        "device": jax.devices()[0].device_kind,
    }
    print(json.dumps(result))


def _timed_restore(step_dir: Path, abstract) -> float:
    start = time.perf_counter()
    restored = restore_train_checkpoint(step_dir, abstract.params, abstract.opt_state)
    jax.block_until_ready((restored.params, restored.opt_state))
    return time.perf_counter() - start


def _checksum_costs(step_dir: Path, abstract) -> dict[str, float]:
    """Seconds to hash a step's files, and to restore it with and without verifying them."""
    start = time.perf_counter()
    write_checksums(step_dir)
    hash_s = time.perf_counter() - start
    _timed_restore(step_dir, abstract)  # warm-up: compiles the finiteness check, fills the page cache
    verified = statistics.median(_timed_restore(step_dir, abstract) for _ in range(3))
    (step_dir / CHECKSUMS_FILE).rename(step_dir.parent / CHECKSUMS_FILE)
    unverified = statistics.median(_timed_restore(step_dir, abstract) for _ in range(3))
    print(f"checksums: hashing {hash_s:.3f} s; restore {verified:.3f} s verified, {unverified:.3f} s not", flush=True)
    return {
        "checksum_hash_s": hash_s,
        "restore_verified_s": verified,
        "restore_unverified_s": unverified,
        "restore_growth": verified / unverified - 1,
    }


if __name__ == "__main__":
    main()
