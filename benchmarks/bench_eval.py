"""Evaluation throughput: requests/s of the scoring engine and the wall time of the core-9 validation sets.

By default a randomly initialised `tiny` preset model with its built-in tokenizer (throughput does not
depend on the weights); `--model` takes a trained checkpoint or HF directory instead. Reports, per task,
questions, requests, model rows after sharing and seconds, then the totals; compilation is done up front
(one program per bucket length) and reported separately. With `--limit`, each task's full scoring time
is extrapolated from its measured rate (labelled `_extrapolated`).

    python benchmarks/bench_eval.py [--tasks core9] [--data_dir ../shared/data/eval/jsonl] [--limit N]
    python benchmarks/bench_eval.py --tasks olmes_mc,olmes_rc,mmlu_val_mc_5shot --olmes_dir ../shared/data/eval/olmes \
        --max_length 2048 --limit 50

OLMES sets and MMLU (`--olmes_dir`) are scored as `python -m olmo_jax.eval` scores them; `--max_length`
lengthens the `tiny` preset (RoPE: no learned positions) so that 5-shot prompts are not cut to 256 tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import jax

from olmo_jax.eval import olmes_scoring
from olmo_jax.eval.downstream import prepare_task, score_task
from olmo_jax.eval.olmes import find_olmes_root
from olmo_jax.eval.scoring import Request, Scorer
from olmo_jax.eval.sources import load_rows
from olmo_jax.eval.tasks import resolve_tasks

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "jsonl"
DEFAULT_OLMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "olmes"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="olmo_jax checkpoint or HF OLMo directory (default: random-init `tiny` preset)")
    p.add_argument("--tasks", default="core9", help="tasks or groups, comma-separated (default core9)")
    p.add_argument("--data_dir", default=str(DEFAULT_DATA), help=f"local task data (default {DEFAULT_DATA})")
    p.add_argument("--olmes_dir", default=str(DEFAULT_OLMES), help=f"OLMES request files (default {DEFAULT_OLMES})")
    p.add_argument("--max_length", type=int, help="model length of the random `tiny` preset (default: its 256)")
    p.add_argument("--limit", type=int, help="questions per task (default: all)")
    p.add_argument("--batch_size", type=int, default=32, help="rows per forward pass (default 32)")
    p.add_argument("--out", type=Path, help="also write the measurements as JSON here")
    return p.parse_args()


def load_model(path: str | None, max_length: int | None = None):
    """(model, tokenizer, max_length) for a checkpoint, or a random-init `tiny` preset."""
    from flax import nnx

    from olmo_jax.config import load_config
    from olmo_jax.data.tokenizer import load_tokenizer
    from olmo_jax.model import OLMo

    if path is not None:
        from olmo_jax.pretrained import from_pretrained

        pretrained = from_pretrained(path)
        return pretrained.model, load_tokenizer(pretrained.tokenizer_identifier), pretrained.config.max_sequence_length
    config = load_config("tiny")
    if max_length is not None:
        config.model.max_sequence_length = max_length
    model = nnx.jit(lambda: OLMo(config.model, rngs=nnx.Rngs(0)))()
    return model, load_tokenizer(config.tokenizer.identifier), config.model.max_sequence_length


def main() -> None:
    args = parse_args()
    model, tokenizer, max_length = load_model(args.model, args.max_length)
    scorer = Scorer(model, max_length, args.batch_size, pad_token_id=tokenizer.pad_token_id or 0)

    started = time.perf_counter()
    # One batch per bucket length compiles every program the run can need, so timings exclude compilation.
    for length in scorer.buckets:
        scorer.score([Request((1,) * (length - 1), (1,))])
    compile_seconds = time.perf_counter() - started
    print(f"{jax.devices()[0].platform}: compiled {len(scorer.buckets)} buckets in {compile_seconds:.1f}s", flush=True)

    rows = []
    for task in resolve_tasks(args.tasks):
        if isinstance(task, olmes_scoring.ChoiceTask):
            all_rows, primary = olmes_scoring.load_instances(task, find_olmes_root(args.olmes_dir), None)
            kept, seen = [], Counter()  # the first --limit questions of each MMLU subject, as the CLI
            for instance in all_rows:
                seen[instance.group] += 1
                if args.limit is None or seen[instance.group] <= args.limit:
                    kept.append(instance)
            t0 = time.perf_counter()
            prepared = olmes_scoring.prepare_choice_task(task, kept, primary, tokenizer)
            score = olmes_scoring.score_choice_task
        else:
            all_rows = load_rows(task, args.data_dir)
            t0 = time.perf_counter()
            prepared = prepare_task(task, all_rows[: args.limit], tokenizer)
            score = score_task
        t1 = time.perf_counter()
        result = score(prepared, scorer)
        t2 = time.perf_counter()
        # Requests scale with questions (a fixed number of candidates per question, two requests each).
        full_requests = round(result.requests * len(all_rows) / result.questions)
        rows.append(
            {
                "task": task.name,
                "questions": result.questions,
                "requests": result.requests,
                "rows": result.rows,
                "tokens": result.tokens,
                "truncated": result.truncated,
                "prepare_s": round(t1 - t0, 2),
                "score_s": round(t2 - t1, 2),
                "requests_per_s": round(result.requests / (t2 - t1), 1),
                "tokens_per_s": round(result.tokens / (t2 - t1)),
                "primary": round(result.primary, 4),
                "full_requests": full_requests,
                "full_score_s_extrapolated": round((t2 - t1) * full_requests / result.requests, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    total_requests = sum(r["requests"] for r in rows)
    score_s = sum(r["score_s"] for r in rows)
    prepare_s = sum(r["prepare_s"] for r in rows)
    summary = {
        "device": str(jax.devices()[0]),
        "max_length": max_length,
        "batch_size": scorer.batch_size,
        "limit": args.limit,
        "compile_s": round(compile_seconds, 1),
        "prepare_s": round(prepare_s, 1),
        "score_s": round(score_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "requests": total_requests,
        "rows": sum(r["rows"] for r in rows),
        "tokens": sum(r["tokens"] for r in rows),
        "requests_per_s": round(total_requests / score_s, 1),
        "tokens_per_s": round(sum(r["tokens"] for r in rows) / score_s),
        # Scoring time of every question at this task's measured rate (equal to score_s without --limit).
        "full_score_s_extrapolated": round(sum(r["full_score_s_extrapolated"] for r in rows), 1),
    }
    print(json.dumps(summary), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "tasks": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
