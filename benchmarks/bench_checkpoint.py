"""How long a checkpoint save blocks the training loop, and how long the background write takes.

Builds a preset's full train state (fp32 parameters + AdamW moments) on one device, then saves it several
times through the trainer's `Checkpointer`. Between saves a jitted, donating update rewrites every array, as a
train step does, and the previous save is allowed to finish, so each save starts from the same situation.
Prints the median over saves of: the time `save` blocked the caller (the device-to-host copy plus Orbax's
bookkeeping) and the time until the step was complete on disk.

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
from olmo_jax.checkpoint import Checkpointer, TrainMeta
from olmo_jax.config import MeshConfig, load_config, to_dict
from olmo_jax.train import build, checkpoint_spec, init_state


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

    blocked, complete = [], []
    with (
        tempfile.TemporaryDirectory(dir=args.dir) as tmp,
        Checkpointer(checkpoint_spec(config, Path(tmp)), to_dict(config)) as checkpointer,
    ):
        for step in range(1, args.saves + 1):
            arrays = jax.block_until_ready(touch(arrays))
            start = time.perf_counter()
            meta = TrainMeta(step, 0, 0, config.seed)
            blocked.append(checkpointer.save(*arrays, data_state={"step": step}, meta=meta))
            checkpointer.wait_until_finished()
            complete.append(time.perf_counter() - start)
            print(f"save {step}: blocked {blocked[-1]:.3f} s, on disk after {complete[-1]:.3f} s", flush=True)
    result = {
        "config": args.config,
        "overrides": overrides,
        "parameters": n_params,
        "state_bytes": n_bytes,
        "median_blocked_s": statistics.median(blocked),
        "median_complete_s": statistics.median(complete),
        "device": jax.devices()[0].device_kind,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
