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

`--compare N` measures shared-context scoring (the default) against one row per request instead: N rounds,
each scoring every task unshared then shared (A B A B ...), and reports each mode's tokens fed to the model
and median wall time, their ratios, and whether both modes picked the same answers:

    python benchmarks/bench_eval.py --tasks core9 --limit 200 --max_length 2048 --compare 3

`--count` plans both modes without running the model (seconds, even for the full sets): tokens fed, rows,
and tokens with padding, as `--compare` reports them:

    python benchmarks/bench_eval.py --tasks core9 --max_length 2048 --count
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import jax

from olmo_jax.eval import olmes_scoring
from olmo_jax.eval.downstream import prepare_task, score_task
from olmo_jax.eval.evaluator import score_likelihood_tasks
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
    p.add_argument("--no_share_contexts", action="store_true", help="one row per request (see --compare)")
    p.add_argument("--compare", type=int, metavar="N", help="N alternating rounds of unshared vs shared scoring")
    p.add_argument("--count", action="store_true", help="plan both modes, run nothing: tokens, rows, padding")
    p.add_argument("--pack_length", type=int, help="packed row length (default: the scorer's choice for the model)")
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


def compile_buckets(scorer: Scorer) -> None:
    """One batch per bucket length compiles every program the run can need, so timings exclude compilation."""
    for length in scorer.buckets:
        scorer.score([Request((1,) * (length - 1), (1,))])


def prepare(task, args: argparse.Namespace, tokenizer):
    """(prepared task, its scoring function, the number of all its questions), as `olmo-jax eval` has it."""
    if isinstance(task, olmes_scoring.ChoiceTask):
        all_rows, primary = olmes_scoring.load_instances(task, find_olmes_root(args.olmes_dir), None)
        kept, seen = [], Counter()  # the first --limit questions of each MMLU subject, as the CLI
        for instance in all_rows:
            seen[instance.group] += 1
            if args.limit is None or seen[instance.group] <= args.limit:
                kept.append(instance)
        prepared = olmes_scoring.prepare_choice_task(task, kept, primary, tokenizer)
        return prepared, olmes_scoring.score_choice_task, len(all_rows)
    all_rows = load_rows(task, args.data_dir)
    return prepare_task(task, all_rows[: args.limit], tokenizer), score_task, len(all_rows)


def scorers_of(args: argparse.Namespace, model, tokenizer, max_length: int) -> dict[str, Scorer]:
    """The unshared (A) and shared (B) scorers."""
    return {
        mode: Scorer(
            model,
            max_length,
            args.batch_size,
            pad_token_id=tokenizer.pad_token_id or 0,
            share_contexts=share,
            pack_length=args.pack_length,
        )
        for mode, share in (("unshared", False), ("shared", True))
    }


def layout(scorers: dict[str, Scorer], tasks: list) -> dict:
    """Per mode: rows, tokens fed and tokens with padding of one pass over every task's requests."""
    requests = [r for prepared, _, _ in tasks for r in prepared.requests]
    out = {}
    for mode, scorer in scorers.items():
        rows, tokens, padded = scorer.count(requests)
        out[mode] = {"rows": rows, "tokens": tokens, "padded_tokens": padded}
    out["pack_length"] = scorers["shared"].pack_length
    out["tokens_ratio"] = round(out["unshared"]["tokens"] / out["shared"]["tokens"], 3)
    out["padded_ratio"] = round(out["unshared"]["padded_tokens"] / out["shared"]["padded_tokens"], 3)
    return out


def count(args: argparse.Namespace, model, tokenizer, max_length: int) -> dict:
    """Both modes planned over every task, the model not run: rows, tokens and padding."""
    tasks = [prepare(task, args, tokenizer) for task in resolve_tasks(args.tasks)]
    out = {"tasks": args.tasks, "limit": args.limit, "max_length": max_length}
    out["requests"] = sum(len(prepared.requests) for prepared, _, _ in tasks)
    out.update(layout(scorers_of(args, model, tokenizer, max_length), tasks))
    return out


def compare(args: argparse.Namespace, model, tokenizer, max_length: int) -> dict:
    """Unshared (A) and shared (B) scoring of every task, alternating A B A B ...; medians and ratios."""
    scorers = scorers_of(args, model, tokenizer, max_length)
    for scorer in scorers.values():
        compile_buckets(scorer)
    tasks = [prepare(task, args, tokenizer) for task in resolve_tasks(args.tasks)]
    seconds: dict[str, list[float]] = {mode: [] for mode in scorers}
    results: dict[str, list] = {}
    for _ in range(args.compare):
        for mode, scorer in scorers.items():
            started = time.perf_counter()
            results[mode] = score_likelihood_tasks([prepared for prepared, _, _ in tasks], scorer)
            seconds[mode].append(time.perf_counter() - started)
            print(f"{mode}: {seconds[mode][-1]:.1f}s", flush=True)
    out = {
        "device": str(jax.devices()[0]),
        "tasks": args.tasks,
        "limit": args.limit,
        "max_length": max_length,
        "batch_size": args.batch_size,
        "rounds": args.compare,
        "requests": sum(r.requests for r in results["shared"]),
    }
    out.update(layout(scorers, tasks))
    for mode in scorers:
        out[mode]["seconds"] = [round(s, 2) for s in seconds[mode]]
        out[mode]["median_s"] = round(statistics.median(seconds[mode]), 2)
    out["speedup"] = round(out["unshared"]["median_s"] / out["shared"]["median_s"], 3)
    out["same_metrics"] = all(
        a.metrics == b.metrics for a, b in zip(results["unshared"], results["shared"], strict=True)
    )
    return out


def main() -> None:
    args = parse_args()
    model, tokenizer, max_length = load_model(args.model, args.max_length)
    if args.count or args.compare:
        summary = (count if args.count else compare)(args, model, tokenizer, max_length)
        print(json.dumps(summary), flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps(summary, indent=1))
        return
    scorer = Scorer(
        model, max_length, args.batch_size, pad_token_id=tokenizer.pad_token_id or 0,
        share_contexts=not args.no_share_contexts,
    )  # fmt: skip

    started = time.perf_counter()
    compile_buckets(scorer)
    compile_seconds = time.perf_counter() - started
    print(f"{jax.devices()[0].platform}: compiled {len(scorer.buckets)} buckets in {compile_seconds:.1f}s", flush=True)

    rows = []
    for task in resolve_tasks(args.tasks):
        t0 = time.perf_counter()
        prepared, score, all_questions = prepare(task, args, tokenizer)
        t1 = time.perf_counter()
        result = score(prepared, scorer)
        t2 = time.perf_counter()
        # Requests scale with questions (a fixed number of candidates per question, two requests each).
        full_requests = round(result.requests * all_questions / result.questions)
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
