"""`prepare` throughput in MB of text per second (start-up of the worker processes included).

The text is the built-in corpus's documents (Python's reference documentation and standard library), repeated to
`--megabytes`, written as JSON lines. Each tokenizer given is timed `--repeats` times; the median is reported.

    python benchmarks/bench_prepare.py [--tokenizer builtin] [--tokenizer allenai/gpt-neox-olmo-dolma-v1_5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from olmo_jax.data.builtin import builtin_documents
from olmo_jax.data.prepare import prepare


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tokenizer",
        action="append",
        help="tokenizer to time; repeatable (default: builtin and allenai/gpt-neox-olmo-dolma-v1_5)",
    )
    p.add_argument("--megabytes", type=float, default=16, help="MB of text to tokenize per run")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="runs per tokenizer (the median is reported)")
    return p.parse_args()


def write_corpus(path: Path, megabytes: float) -> int:
    documents = [text for _, text in builtin_documents()]
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < megabytes * 1e6:
            for text in documents:
                f.write(json.dumps({"text": text}) + "\n")
                written += len(text.encode())
                if written >= megabytes * 1e6:
                    break
    return written


def main() -> None:
    args = parse_args()
    tokenizers = args.tokenizer or ["builtin", "allenai/gpt-neox-olmo-dolma-v1_5"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        text_bytes = write_corpus(corpus, args.megabytes)
        for tokenizer in tokenizers:
            rates = []
            for repeat in range(args.repeats):
                manifest = prepare(
                    [str(corpus)],
                    tokenizer,
                    Path(tmp) / "out",
                    workers=args.workers,
                    overwrite=True,
                    progress=False,
                )
                rates.append(manifest["text_bytes"] / 1e6 / manifest["seconds"])
                print(f"{tokenizer} repeat {repeat}: {rates[-1]:.2f} MB/s", flush=True)
            results.append(
                {
                    "tokenizer": tokenizer,
                    "text_mb": round(text_bytes / 1e6, 1),
                    "tokens": manifest["tokens"],
                    "workers": args.workers,
                    "mb_per_s_median": round(statistics.median(rates), 2),
                }
            )
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
