"""Loader throughput: tokens/s of global batches of 2048-token instances, from a token file in the page cache.

Measures the full path the trainer sees (Grain prefetch thread → host batch → `jax.Array` on one device) and,
for comparison, the host side alone (order + memory-mapped reads). Prints the median of several repeats.

    python benchmarks/bench_loader.py [--tokens 50000000] [--seq-len 2048] [--batch-size 32] [--batches 40]
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
from jax.sharding import Mesh

from olmo_jax.config import DataConfig, ModelConfig, TrainConfig, data_spec
from olmo_jax.data.loader import build_train_loader
from olmo_jax.data.pipeline import build_pipeline


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=50_000_000, help="size of the synthetic token file (uint16 tokens)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per instance")
    p.add_argument("--batch-size", type=int, default=32, help="instances per global batch")
    p.add_argument("--batches", type=int, default=40, help="batches timed per repeat")
    p.add_argument("--repeats", type=int, default=5, help="repeats (the median is reported)")
    p.add_argument("--prefetch", type=int, default=2, help="data.prefetch")
    p.add_argument("--workers", type=int, default=1, help="data.num_workers (prefetch threads)")
    p.add_argument("--dir", help="folder for the token file (default: a temporary folder)")
    return p.parse_args()


def make_token_file(folder: Path, n_tokens: int) -> Path:
    path = folder / f"bench-{n_tokens}.npy"
    if not path.exists() or path.stat().st_size != 2 * n_tokens:
        rng = np.random.default_rng(0)
        tmp = path.with_name(path.name + ".tmp")
        rng.integers(0, 50280, n_tokens, dtype=np.uint16).tofile(tmp)
        tmp.replace(path)
    path.read_bytes()  # into the page cache
    return path


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = make_token_file(folder, args.tokens)
        config = TrainConfig(
            model=ModelConfig(max_sequence_length=args.seq_len),
            global_train_batch_size=args.batch_size,
            data=DataConfig(paths=[str(path)], prefetch=args.prefetch, num_workers=args.workers),
        )
        mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
        tokens_per_batch = args.batch_size * args.seq_len

        loader_rates = []
        for repeat in range(args.repeats):
            loader = build_train_loader(data_spec(config), mesh)
            jax.block_until_ready(next(loader).input_ids)  # start-up (threads, first epoch's permutation)
            start = time.perf_counter()
            for _ in range(args.batches):
                jax.block_until_ready(next(loader).input_ids)
            loader_rates.append(args.batches * tokens_per_batch / (time.perf_counter() - start))
            loader.close()
            print(f"repeat {repeat}: loader {loader_rates[-1] / 1e6:.2f}M tokens/s", flush=True)

        pipeline = build_pipeline(data_spec(config))
        host_rates = []
        for _ in range(args.repeats):
            cursor = pipeline.cursor_at(1)
            start = time.perf_counter()
            for _ in range(args.batches):
                cursor = pipeline.batch(cursor).next_cursor
            host_rates.append(args.batches * tokens_per_batch / (time.perf_counter() - start))

    result = {
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "instances": pipeline.instances_per_epoch,
        "loader_tokens_per_s_median": round(statistics.median(loader_rates)),
        "loader_tokens_per_s_min": round(min(loader_rates)),
        "host_only_tokens_per_s_median": round(statistics.median(host_rates)),
        "device": str(jax.devices()[0]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
