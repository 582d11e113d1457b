"""`python -m olmo_jax.bench`: time the real train step (optimizer included) on synthetic tokens.

    python -m olmo_jax.bench --config=1b --steps=20                      # one micro-batch of 8 x 2048 per device
    python -m olmo_jax.bench --config=1b --config.model.attention_impl=xla --config.model.remat=none --json
    python -m olmo_jax.bench --config=7b --config.model.n_layers=4 --config.device_train_microbatch_size=4
    python -m olmo_jax.bench --config=tiny --config.data.sequence_length=64 --steps=3   # CPU smoke test
    python -m olmo_jax.bench --table results.jsonl                       # Markdown table of earlier --json lines

Reports compile time, step time, tokens/s per device, MFU (6N + 12LdT FLOPs per token over the device's
dense bf16 peak) and peak device memory. Steps are dispatched back to back with no host work between
them, as in training; only the end of the timed run waits for the device. The record format is shared
with `benchmarks/torch_baseline.py`, so one table compares both.

This module imports neither the data pipeline (grain) nor the in-loop evaluation: the GPU image it runs
on has no grain.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from olmo_jax import atomic, cli, sharding, train
from olmo_jax.config import TrainConfig, load_config, preset_names
from olmo_jax.energy import PowerSampler, open_power_source
from olmo_jax.errors import ConfigError
from olmo_jax.model import DTYPES, attention_implementation, flops_per_token, num_params
from olmo_jax.monitor import mfu, peak_flops_per_device
from olmo_jax.runtime import configure_xla
from olmo_jax.sharding import mesh_shape

# Record fields shown by `--table`, with their column titles (`_fmt` formats the values).
TABLE_COLUMNS: list[tuple[str, str]] = [
    ("label", "run"),
    ("framework", "framework"),
    ("device_kind", "device"),
    ("micro_batch_size", "micro-batch"),
    ("seq_len", "seq"),
    ("compile_time_s", "compile s"),
    ("step_time_s", "step s"),
    ("tokens_per_second_per_device", "tokens/s/device"),
    ("mfu", "MFU"),
    ("peak_memory_bytes", "peak GiB"),
    ("power_w", "power W"),
    ("energy_per_step_j", "J/step"),
]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that the JAX bench and the PyTorch baseline share."""
    cli.add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=10, help="timed train steps (default: 10)")
    parser.add_argument(
        "--warmup_steps",
        type=int,
        default=2,
        help="untimed steps after compilation, so that one-off start-up work stays out of the timing (default: 2)",
    )
    parser.add_argument(
        "--micro_batches",
        type=int,
        default=1,
        help="gradient-accumulation micro-batches per step: the global batch is device_train_microbatch_size x "
        "batch-sharding devices x this, unless --config.global_train_batch_size is given or the config has no "
        "device_train_microbatch_size (then its global batch stands) (default: 1)",
    )
    parser.add_argument("--label", help="name of this run in the record and in --table (default: the config name)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line on stdout")
    cli.add_output_argument(parser, "also write the JSON record to this file (written atomically)", type=Path)
    cli.add_debug_argument(parser)


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject impossible run lengths with argparse's usage error (exit 2)."""
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.warmup_steps < 0:
        parser.error(f"--warmup_steps must be 0 or more, got {args.warmup_steps}")
    if args.micro_batches < 1:
        parser.error(f"--micro_batches must be at least 1, got {args.micro_batches}")


def parse_args(
    argv: list[str], prog: str = "python -m olmo_jax.bench"
) -> tuple[argparse.Namespace, str | None, dict[str, str]]:
    config_name, overrides, rest, _ = cli.parse_command_line(argv)
    parser = cli.ArgumentParser(
        prog=prog,
        description=__doc__,
        epilog=f"Presets: {', '.join(preset_names())}. Levers: --config.model.attention_impl=auto|xla|cudnn, "
        "--config.model.remat=none|save_dots|full, --config.model.scan_layers=true|false, "
        "--config.model.fp8=true|false, --config.loss_chunk_size=N, --xla_tuning=on|off.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--xla_tuning",
        choices=("on", "off"),
        default="on",
        help="on NVIDIA GPUs, add olmo_jax.runtime's XLA flags and memory fraction (the ones you did not set "
        "yourself) before JAX starts (default: on)",
    )
    parser.add_argument(
        "--table",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="print a Markdown table of the JSON records (one per line) in FILE... and exit; runs nothing",
    )
    args = parser.parse_args(rest)
    if args.table is None:
        if config_name is None:
            parser.error("--config=NAME|PATH is required")
        check_run_arguments(parser, args)
    return args, config_name, overrides


def bench_config(config_name: str, overrides: dict[str, str], num_devices: int, micro_batches: int) -> TrainConfig:
    """The config to time: the preset plus overrides, with the global batch sized for `num_devices` devices.

    Presets carry production global batches (2048 instances for OLMo-1B, hundreds of micro-batches per
    step on one device); a benchmark wants `micro_batches` micro-batches of the preset's
    `device_train_microbatch_size` per device, unless the command line sets the global batch itself.
    """
    config = load_config(config_name, overrides)
    micro = config.device_train_microbatch_size
    if "global_train_batch_size" not in overrides and micro is not None:
        data, fsdp, _ = mesh_shape(config.mesh, num_devices)
        config.global_train_batch_size = micro * data * fsdp * micro_batches
    return config


def peak_memory_bytes(devices: Iterable[Any]) -> int | None:
    """Largest peak allocation over `devices` from `memory_stats()` (GPUs), or None where not reported (CPUs)."""
    peaks = []
    for device in devices:
        stats = device.memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def make_record(
    *,
    framework: str,
    label: str,
    config: TrainConfig,
    device_kind: str,
    num_devices: int,
    num_params: int,
    flops_per_token: float,
    peak_flops: float | None,
    compile_time_s: float,
    step_time_s: float,
    steps: int,
    warmup_steps: int,
    micro_batch_size: int,
    micro_batches: int,
    peak_memory: int | None,
    final_loss: float,
    settings: dict[str, Any],
    power_w: float | None = None,
    energy_per_step_j: float | None = None,
) -> dict[str, Any]:
    """The result record both benchmarks print: throughput and MFU derived one way for both."""
    seq = config.sequence_length
    tokens_per_second = config.global_train_batch_size * seq / step_time_s
    per_device = tokens_per_second / num_devices
    return {
        "framework": framework,
        "label": label,
        "device_kind": device_kind,
        "num_devices": num_devices,
        "global_batch_size": config.global_train_batch_size,
        "micro_batch_size": micro_batch_size,
        "micro_batches": micro_batches,
        "seq_len": seq,
        "num_params": num_params,
        "flops_per_token": flops_per_token,
        "peak_flops_per_device": peak_flops,
        "compile_time_s": compile_time_s,
        "step_time_s": step_time_s,
        "tokens_per_second": tokens_per_second,
        "tokens_per_second_per_device": per_device,
        "mfu": mfu(per_device, flops_per_token, peak_flops),
        "peak_memory_bytes": peak_memory,
        "final_loss": final_loss,
        # What this process's devices drew over the timed steps (olmo_jax.energy; None where unreadable).
        "power_w": power_w,
        "energy_per_step_j": energy_per_step_j,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "settings": settings,
    }


def run(config: TrainConfig, *, label: str, steps: int, warmup_steps: int, xla_flags: list[str]) -> dict[str, Any]:
    """Compile and time the train step of `config` on synthetic tokens over all devices; return the record."""
    mesh = sharding.make_mesh(config.mesh)
    setup = train.build(config, mesh)
    seq = config.sequence_length
    batch_shape = (config.global_train_batch_size, seq)
    progress(f"bench: {label}: {dict(mesh.shape)} mesh, global batch {batch_shape[0]} x {seq} tokens, initialising")
    state = train.init_state(setup, config.seed)
    replicated = sharding.replicated(mesh)
    tokens = jax.jit(
        lambda key: jax.random.randint(key, batch_shape, 0, config.model.vocab_size, jnp.int32),
        out_shardings=setup.batch_sharding,
    )(jax.random.key(config.seed))
    # The schedule's values arrive as device scalars made once: nothing is computed on the host per step.
    lr = jax.device_put(jnp.float32(config.optimizer.learning_rate), replicated)
    clip = jax.device_put(jnp.float32(config.max_grad_norm or 0.0), replicated)
    # XLA's CPU collectives can deadlock with several sharded steps in flight (jax-environment notes).
    one_step_in_flight = jax.devices()[0].platform == "cpu"

    with jax.set_mesh(mesh):
        progress(f"bench: {label}: compiling")
        start = time.perf_counter()
        step = train.jit_train_step(setup).lower(state, tokens, lr, clip).compile()
        compile_time = time.perf_counter() - start
        progress(f"bench: {label}: compiled in {compile_time:.1f} s; {warmup_steps} warm-up steps")
        for _ in range(warmup_steps):
            state, metrics = step(state, tokens, lr, clip)
            jax.block_until_ready(metrics)
        source, power_line = open_power_source(config.energy, jax.local_devices())
        progress(f"bench: {label}: {power_line}; timing {steps} steps")
        sampler = PowerSampler(source, config.energy.sample_interval) if source is not None else None
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, tokens, lr, clip)
            if one_step_in_flight:
                jax.block_until_ready(metrics)
        jax.block_until_ready((state, metrics))
        step_time = (time.perf_counter() - start) / steps
        joules, seconds = None, 0.0
        if sampler is not None:
            joules, seconds = sampler.take()
            sampler.close()

    final_loss = float(metrics["loss"])
    if not math.isfinite(final_loss):
        progress(f"bench: {label}: warning: the loss is {final_loss}; the timing may not reflect real training")
    compute_dtype = DTYPES[config.model.compute_dtype]
    device = jax.devices()[0]
    return make_record(
        framework="jax",
        label=label,
        config=config,
        device_kind=device.device_kind,
        num_devices=jax.device_count(),
        num_params=num_params(config.model),
        flops_per_token=flops_per_token(config.model, seq),
        peak_flops=config.peak_flops_per_device or peak_flops_per_device(device),
        compile_time_s=compile_time,
        step_time_s=step_time,
        steps=steps,
        warmup_steps=warmup_steps,
        micro_batch_size=config.global_train_batch_size // sharding.batch_shards(mesh) // setup.micro_batches,
        micro_batches=setup.micro_batches,
        peak_memory=peak_memory_bytes(jax.local_devices()),
        final_loss=final_loss,
        power_w=joules / seconds if joules is not None and seconds > 0 else None,
        energy_per_step_j=joules / steps if joules is not None else None,
        settings={
            "attention": attention_implementation(config.model, compute_dtype),
            "remat": config.model.remat,
            "scan_layers": config.model.scan_layers,
            "fp8": config.model.fp8,
            "loss_chunk_size": config.loss_chunk_size,
            "compute_dtype": config.model.compute_dtype,
            "mesh": dict(mesh.shape),
            "xla_flags_added": xla_flags,
            "jax": jax.__version__,
        },
    )


def progress(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the result."""
    print(message, file=sys.stderr, flush=True)


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key == "mfu":
        return f"{100 * value:.1f}%"
    if key == "peak_memory_bytes":
        return f"{value / 1024**3:.1f}"
    if key == "tokens_per_second_per_device":
        return f"{value:,.0f}"
    if key == "step_time_s":
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_summary(record: dict[str, Any]) -> str:
    """A few human-readable lines for one record."""
    settings = ", ".join(f"{k}={v}" for k, v in record["settings"].items() if k != "xla_flags_added")
    power = record.get("power_w")
    energy = f" | {power:.0f} W, {record['energy_per_step_j']:.1f} J/step" if power is not None else ""
    lines = [
        f"{record['label']} ({record['framework']} on {record['num_devices']} x {record['device_kind']}): {settings}",
        f"  batch {record['global_batch_size']} x {record['seq_len']} tokens ({record['micro_batches']} micro-batches "
        f"of {record['micro_batch_size']} per device), {record['num_params']:,} parameters, "
        f"{record['flops_per_token'] / 1e9:.2f} GFLOP/token",
        f"  compile {record['compile_time_s']:.1f} s | step {record['step_time_s'] * 1e3:.1f} ms | "
        f"{record['tokens_per_second_per_device']:,.0f} tokens/s/device | MFU {_fmt(record['mfu'], 'mfu')} | "
        f"peak memory {_fmt(record['peak_memory_bytes'], 'peak_memory_bytes')} GiB | "
        f"loss {record['final_loss']:.4f}{energy}",
    ]
    return "\n".join(lines)


def format_table(records: list[dict[str, Any]]) -> str:
    """A Markdown table of records (results, or `{"label", "error"}` entries for runs that failed)."""
    lines = ["| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for record in records:
        if "error" in record:
            cells = [str(record.get("label", "?")), str(record["error"])] + [""] * (len(TABLE_COLUMNS) - 2)
        else:
            cells = [_fmt(record.get(key), key) for key, _ in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_ratios(records: list[dict[str, Any]]) -> str:
    """One line per JAX record that has a PyTorch record of the same shapes: the throughput ratio."""

    def shape(record: dict[str, Any]) -> tuple:
        return record["num_params"], record["seq_len"], record["global_batch_size"], record["device_kind"]

    done = [r for r in records if "error" not in r]
    lines = []
    for jax_record in (r for r in done if r["framework"] == "jax"):
        for torch_record in (r for r in done if r["framework"] == "torch" and shape(r) == shape(jax_record)):
            ratio = jax_record["tokens_per_second_per_device"] / torch_record["tokens_per_second_per_device"]
            lines.append(f"{jax_record['label']} / {torch_record['label']}: {ratio:.2f}x the tokens/s")
    return "\n".join(lines)


def read_records(paths: list[Path]) -> list[dict[str, Any]]:
    """JSON records, one per non-empty line, from each file in turn."""
    records = []
    for path in paths:
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ConfigError(f"{path}:{number} is not a JSON record") from None
    return records


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write `record` as one JSON line to `path` via a temporary file in the same folder."""
    atomic.write_text(path, json.dumps(record) + "\n")


def emit(record: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the record (JSON on stdout with --json, else the summary) and write --output."""
    if args.json:
        progress(format_summary(record))
        print(json.dumps(record), flush=True)
    else:
        print(format_summary(record), flush=True)
    if args.output is not None:
        write_record(args.output, record)


def main(argv: list[str] | None = None, prog: str = "python -m olmo_jax.bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run_command(lambda: _run(argv, prog), debug=cli.debug_enabled("--debug" in argv))


def _run(argv: list[str], prog: str) -> int:
    args, config_name, overrides = parse_args(argv, prog)
    if args.table is not None:
        records = read_records(args.table)
        print(format_table(records))
        ratios = format_ratios(records)
        if ratios:
            print("\n" + ratios)
        return 0
    # Before anything starts a JAX backend: XLA reads its flags once.
    xla_flags = configure_xla(enabled=args.xla_tuning == "on")
    config = bench_config(config_name, overrides, jax.device_count(), args.micro_batches)
    label = args.label or Path(config_name).stem
    record = run(config, label=label, steps=args.steps, warmup_steps=args.warmup_steps, xla_flags=xla_flags)
    emit(record, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
