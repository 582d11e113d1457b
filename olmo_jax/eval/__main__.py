"""`python -m olmo_jax.eval`: zero-shot downstream tasks and perplexity for a saved model.

    python -m olmo_jax.eval --model=runs/tiny --tasks=core9 --data_dir=../shared/data/eval/jsonl \\
        --out=results.json
    python -m olmo_jax.eval --model=path/to/hf/OLMo-1B --tasks=piqa,hellaswag --limit=200 --ppl=paloma/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from olmo_jax import atomic
from olmo_jax.eval.tasks import METRICS, TASK_GROUPS, TASKS, resolve_tasks

if TYPE_CHECKING:
    from olmo_jax.eval.evaluator import EvalResults


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m olmo_jax.eval",
        description="Evaluate an OLMo model: OLMo's zero-shot multiple-choice tasks (every normalisation, the "
        "paper's choice marked primary) and bits per byte / perplexity on Paloma-layout text sets.",
        epilog=f"Tasks: {', '.join(sorted(TASKS))}; groups: "
        + ", ".join(f"{g} ({', '.join(t)})" for g, t in TASK_GROUPS.items())
        + f". Metrics per task: {', '.join(METRICS)}.",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="an olmo_jax run/checkpoint directory, or an HF OLMo directory (config.json + safetensors)",
    )
    parser.add_argument(
        "--tasks",
        default="",
        metavar="core9|NAME,...",
        help="comma-separated task names or groups (core9 = the paper's 9 tasks); default: none",
    )
    parser.add_argument(
        "--ppl",
        action="append",
        default=[],
        metavar="PATH",
        help="perplexity sets: a Paloma root (<source>/<split>/<domain>.jsonl.gz), a source folder or a JSON-lines "
        'file of {"text": ...}; repeatable',
    )
    parser.add_argument("--ppl_split", default="val", help="the split folder read under a Paloma root (default val)")
    parser.add_argument(
        "--limit", type=int, metavar="N", help="at most N questions per task and N documents per perplexity domain"
    )
    parser.add_argument(
        "--data_dir",
        metavar="DIR",
        help="local task data: DIR/<task>/validation/ (datasets.save_to_disk) or DIR/<task>.validation.jsonl; "
        "default: datasets.load_dataset from the HF hub (needs `datasets` and network or its cache)",
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="write every metric (JSON) to FILE")
    parser.add_argument(
        "--save_requests",
        action="store_true",
        help="also write each request's log-likelihood (conditional and unconditional) to --out",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="rows per forward pass (default 32)")
    parser.add_argument(
        "--max_length",
        type=int,
        metavar="N",
        help="truncate inputs to N tokens (default and maximum: the model's max_sequence_length)",
    )
    parser.add_argument(
        "--tokenizer", metavar="ID", help="tokenizer file or name (default: the one recorded with the model)"
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="compute dtype (default: the model's; logits are float32 always)",
    )
    parser.add_argument(
        "--mesh",
        metavar="DATA,FSDP,TENSOR",
        help="shard the model and the rows over a device mesh, e.g. 1,-1,1 (default: one device, or fsdp over "
        "all devices when there are several)",
    )
    args = parser.parse_args(argv)
    if not args.tasks.strip() and not args.ppl:
        parser.error("nothing to evaluate: give --tasks and/or --ppl")
    for name in ("limit", "batch_size", "max_length"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive, got {value}")
    if args.save_requests and args.out is None:
        parser.error("--save_requests needs --out")
    try:
        args.task_list = resolve_tasks(args.tasks)
    except ValueError as e:
        parser.error(str(e))
    if args.mesh is not None:
        try:
            args.mesh = tuple(int(x) for x in args.mesh.split(","))
        except ValueError:
            args.mesh = ()
        if len(args.mesh) != 3:
            parser.error("--mesh must be three integers DATA,FSDP,TENSOR (one may be -1), e.g. 1,-1,1")
    return args


def print_table(results: EvalResults, stream: TextIO | None = None) -> None:
    """The results as aligned text tables (on stdout by default)."""
    stream = stream or sys.stdout
    if results.tasks:
        header = ["task", "primary", "value", *METRICS, "questions", "truncated", "seconds"]
        lines = [header]
        for r in results.tasks:
            values = [f"{r.metrics[m]:.4f}" for m in METRICS]
            lines.append(
                [
                    r.task,
                    r.primary_metric,
                    f"{r.primary:.4f}",
                    *values,
                    str(r.questions),
                    str(r.truncated),
                    f"{r.seconds:.1f}",
                ]
            )
        _print_aligned(lines, stream)
    if results.perplexity:
        lines = [["source", "domains", "bits_per_byte", "perplexity"]]
        for source, values in results.perplexity.items():
            lines.append(
                [source, str(len(values["domains"])), f"{values['bits_per_byte']:.4f}", f"{values['perplexity']:.3f}"]
            )
        print(file=stream)
        _print_aligned(lines, stream)


def _print_aligned(lines: list[list[str]], stream: TextIO) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip(), file=stream)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` through a temporary file in the same directory (never half-written)."""
    atomic.write_json(path, payload)


def _mesh(sizes: tuple[int, int, int] | None):
    """The --mesh mesh; without one, fsdp over all devices when there are several, else none."""
    import jax

    from olmo_jax.config import MeshConfig
    from olmo_jax.sharding import make_mesh

    if sizes is None:
        return make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1)) if jax.device_count() > 1 else None
    data, fsdp, tensor = sizes
    return make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor))


def _shard(model, mesh):
    """Place `model`'s parameters on `mesh` with the training layout (fsdp-sharded)."""
    import jax
    from flax import nnx

    from olmo_jax.sharding import param_shardings

    graphdef, state = nnx.split(model)
    shardings = param_shardings(state, mesh)
    for name, variable in state.items():
        variable.set_value(jax.device_put(variable.get_value(), shardings[name]))
    return nnx.merge(graphdef, state)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from olmo_jax.data.tokenizer import load_tokenizer
    from olmo_jax.eval.evaluator import Evaluator
    from olmo_jax.pretrained import from_pretrained

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    pretrained = from_pretrained(args.model, compute_dtype=args.dtype)
    config = pretrained.config
    identifier = args.tokenizer or pretrained.tokenizer_identifier
    if identifier is None:
        raise ValueError(f"no tokenizer is recorded with {args.model}; pass --tokenizer")
    tokenizer = load_tokenizer(identifier)
    max_length = args.max_length or config.max_sequence_length
    if max_length > config.max_sequence_length:
        raise ValueError(
            f"--max_length {max_length} exceeds the model's max_sequence_length {config.max_sequence_length}"
        )
    mesh = _mesh(args.mesh)
    model = _shard(pretrained.model, mesh) if mesh is not None else pretrained.model
    say(f"loaded {args.model} in {time.perf_counter() - started:.1f}s; preparing data")
    evaluator = Evaluator(
        tokenizer,
        args.task_list,
        max_length,
        data_dir=args.data_dir,
        limit=args.limit,
        ppl_paths=args.ppl,
        ppl_split=args.ppl_split,
        save_requests=args.save_requests,
    )
    results = evaluator.run(model, args.batch_size, mesh, printer=say)
    print_table(results)
    payload = {
        "model": str(args.model),
        "tokenizer": getattr(tokenizer, "identity", identifier),
        "max_length": max_length,
        "compute_dtype": config.compute_dtype,
        "limit": args.limit,
        "seconds": round(time.perf_counter() - started, 3),
        "tasks": {r.task: r.to_json() for r in results.tasks},
    }
    if results.perplexity is not None:
        payload["perplexity"] = {
            "windows": "disjoint windows of max_length tokens; each document starts after EOS",
            "sources": results.perplexity,
        }
    if args.out is not None:
        write_json(args.out, payload)
        say(f"wrote {args.out}")
    return payload


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ValueError as e:  # our errors (ConfigError, TokenizerError, CheckpointError, ...) are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
