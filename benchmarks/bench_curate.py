"""Throughput of each curation step (MB of text per second per core) and the pipeline's overhead.

    python benchmarks/bench_curate.py --megabytes 4

1. Each document-level step's filter, called directly on in-memory documents in one process (the engine alone).
2. The whole recipe through `olmo-jax data curate` with one worker: every stage's wall time, so the dedup steps
   (which are stages of their own) get a throughput too.
3. The overhead: the same three datatrove filters (Gopher quality, Gopher repetition, C4) through the pipeline
   (reading the JSON-lines source, counting, writing shards, one stage) against calling them directly.

The corpus is random English sentences (every document passes every filter, so each filter does all its work).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LOGURU_LEVEL", "WARNING")
os.environ.setdefault("TQDM_DISABLE", "1")

WORDS = (
    "the of and to in with for on at by from garden river teacher market window doctor village engine farmer "
    "mountain library student painter harbor kitchen forest museum station bridge captain lantern orchard valley "
    "carried painted watched followed answered visited repaired opened closed measured gathered cleaned quiet "
    "narrow ancient bright heavy gentle careful golden modern patient silver simple honest wooden curious"
).split()


def make_corpus(path: Path, megabytes: float, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts, size = [], 0
    while size < megabytes * 1e6:
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 20))).capitalize() + "." for _ in range(8)]
        text = "\n".join(" ".join(lines[i : i + 2]) for i in range(0, 8, 2))
        texts.append(text)
        size += len(text.encode())
    with path.open("w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": text, "url": f"https://x.example/{i}"}) + "\n")
    return texts


def direct(kind: str, texts: list[str]) -> float:
    """Seconds for the step's filter on every document, in this process."""
    from datatrove.data import Document

    from olmo_jax.curate.steps import build_document_step, step_defaults

    params = step_defaults(kind)
    if kind == "language":
        params["candidates"] = ["en", "de", "fr", "es"]
    step, _ = build_document_step(kind, params, None)
    docs = [Document(text=t, id=str(i), metadata={"source": "s", "file": "f", "line": i}) for i, t in enumerate(texts)]
    step.filter(docs[0])  # loads models (lingua) outside the timing
    start = time.perf_counter()
    for doc in docs:
        step.filter(doc)
    return time.perf_counter() - start


def run_pipeline(corpus: Path, tokenizer: str, steps: list, out: Path) -> dict:
    from olmo_jax.curate import pipeline
    from olmo_jax.curate.spec import parse_spec

    raw = {
        "sources": [{"name": "bench", "paths": [str(corpus)]}],
        "tokenizer": tokenizer,
        "steps": steps,
        "count_tokens": False,
        "executor": {"workers": 1},
    }
    return pipeline.run(parse_spec(raw, corpus.parent), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=4.0, help="corpus size (default: 4)")
    args = parser.parse_args()
    from olmo_jax.data.tokenizer_formats import train_sentencepiece

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = root / "corpus.jsonl"
        texts = make_corpus(corpus, args.megabytes)
        mb = sum(len(t.encode()) for t in texts) / 1e6
        tokenizer = str(train_sentencepiece(texts[:200], root / "sp.model", vocab_size=500))
        print(f"corpus: {len(texts):,} documents, {mb:.1f} MB, 1 process")
        print("\n1. engine filters called directly (MB/s per core)")
        for kind in ("language", "gopher_quality", "gopher_repetition", "c4", "pii"):
            subset = texts if kind != "language" else texts[: max(1, len(texts) // 8)]
            sub_mb = sum(len(t.encode()) for t in subset) / 1e6
            print(f"  {kind:<20} {sub_mb / direct(kind, subset):8.2f}")
        print("\n2. every stage of the recipe through the pipeline (1 worker; MB/s of the stage's input)")
        steps = ["gopher_quality", "pii", "dedup_urls", "dedup_documents", "dedup_minhash", "dedup_paragraphs"]
        report = run_pipeline(corpus, tokenizer, steps, root / "recipe")
        for stage, seconds in report["stage_seconds"].items():
            print(f"  {stage:<34} {seconds:6.2f} s  {mb / seconds:8.2f} MB/s")
        print("\n3. overhead: Gopher quality + Gopher repetition + C4")
        engine = sum(direct(kind, texts) for kind in ("gopher_quality", "gopher_repetition", "c4"))
        report = run_pipeline(corpus, tokenizer, ["gopher_quality", "gopher_repetition", "c4"], root / "filters")
        stage = next(seconds for name, seconds in report["stage_seconds"].items() if name.startswith("01-"))
        print(f"  engine alone {engine:.2f} s ({mb / engine:.2f} MB/s); pipeline stage {stage:.2f} s")
        print(f"  ({mb / stage:.2f} MB/s): overhead {100 * (stage / engine - 1):.0f}%")


if __name__ == "__main__":
    main()
