"""SFT packing: how full the rows are, and what packing buys in training speed.

    python benchmarks/bench_sft.py                       # the built-in demo set, the sft_tiny preset
    python benchmarks/bench_sft.py --files=chat.jsonl --sequence_length=1024 --rounds=5

For packed and one-conversation-per-row layouts of the same conversations: rows, the non-padding fraction
(packing efficiency), then the real jitted train step (AdamW, one device) timed over `--steps` batches,
alternating packed and unpacked rounds (A B A B ...). Reported: median step time, tokens/s of the rows,
trained (assistant) tokens/s and conversations per second, and the packed / unpacked ratio of the latter.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from olmo_jax import sharding
from olmo_jax.adapt.data import ConversationSource
from olmo_jax.config import load_config
from olmo_jax.data.tokenizer import load_tokenizer
from olmo_jax.train import build, init_state, jit_train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sft_tiny", help="an SFT preset or YAML file")
    parser.add_argument("--files", action="append", help="JSON-lines conversation files (default: the preset's)")
    parser.add_argument("--sequence_length", type=int, default=256, help="tokens per row")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per layout")
    args = parser.parse_args()

    overrides = {
        "data.sequence_length": str(args.sequence_length),
        "model.max_sequence_length": str(args.sequence_length),
    }
    if args.files:
        overrides["adapt.train_files"] = json.dumps(args.files)
    config = load_config(args.config, overrides)
    tokenizer = load_tokenizer(config.tokenizer.identifier or "builtin")
    files, template = config.adapt.train_files, config.adapt.chat_template
    sources = {
        layout: ConversationSource(files, tokenizer, template, args.sequence_length, packing=layout == "packed")
        for layout in ("packed", "unpacked")
    }
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = build(config, mesh)
    step = jit_train_step(setup)
    batch_size = config.global_train_batch_size
    times: dict[str, list[float]] = {layout: [] for layout in sources}
    with jax.set_mesh(mesh):
        state = init_state(setup, config.seed)
        for _ in range(args.rounds):
            for layout, source in sources.items():
                rows = np.arange(batch_size * (args.steps + 1)) % len(source)
                batches = [
                    jax.device_put({"input_ids": source.read(r), **source.read_fields(r)}, setup.batch_sharding)
                    for r in rows.reshape(args.steps + 1, batch_size)
                ]
                state, metrics = step(state, batches[0], 0.0, 1.0)  # warm-up (compiles in the first round)
                jax.block_until_ready(metrics)
                start = time.perf_counter()
                for batch in batches[1:]:
                    state, metrics = step(state, batch, 0.0, 1.0)  # lr 0: every round trains the same weights
                jax.block_until_ready(metrics)
                times[layout].append((time.perf_counter() - start) / args.steps)
    report = {}
    for layout, source in sources.items():
        step_time = statistics.median(times[layout])
        trained_per_row = float(source.label_mask.sum() / len(source))
        conversations_per_row = source.conversations / len(source)
        report[layout] = {
            "rows": len(source),
            "conversations": source.conversations,
            "non_pad_fraction": round(source.efficiency, 4),
            "step_ms_median": round(1e3 * step_time, 1),
            "row_tokens_per_s": round(batch_size * args.sequence_length / step_time),
            "trained_tokens_per_s": round(batch_size * trained_per_row / step_time),
            "conversations_per_s": round(batch_size * conversations_per_row / step_time, 1),
        }
        print(f"{layout:9s} " + "  ".join(f"{k}={v}" for k, v in report[layout].items()), flush=True)
    ratio = report["packed"]["conversations_per_s"] / report["unpacked"]["conversations_per_s"]
    print(f"packed / unpacked conversations per second: {ratio:.2f}x (medians of {args.rounds} alternating rounds)")


if __name__ == "__main__":
    main()
