"""`python -m olmo_jax.main`: train OLMo (or, with --dry_run, compile and size the train step).

python -m olmo_jax.main --config=tiny                       # the offline demo (CPU, minutes)
python -m olmo_jax.main --config=7b --config.mesh.fsdp=-1 --workdir=runs/7b
python -m olmo_jax.main --config=path/to/OLMo-7B.yaml       # an original OLMo YAML, translated
XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m olmo_jax.main --config=7b --dry_run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from olmo_jax.config import ConfigError, load_config, preset_names, split_config_args

USAGE = __doc__


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, str, dict[str, str]]:
    config_name, overrides, rest = split_config_args(argv)
    parser = argparse.ArgumentParser(
        prog="python -m olmo_jax.main",
        description="Train OLMo with JAX. Configs: --config=NAME (a preset) or --config=PATH (our YAML or an "
        "original OLMo YAML), then any number of --config.KEY=VALUE overrides, e.g. "
        '--config.optimizer.learning_rate=3e-4 --config.data.paths=\'["a.npy","b.npy"]\'.',
        epilog=f"Presets: {', '.join(preset_names())}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="NAME|PATH", help="preset name or YAML path (required); see --config.KEY=VALUE above"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="run directory for config.yaml, metrics.jsonl, TensorBoard events and checkpoints "
        "(default: save_folder from the config, else runs/<run_name>)",
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="compile the train step for the configured mesh from abstract shapes (nothing is allocated) and "
        "print parameter count, FLOPs/token and per-device memory, then exit",
    )
    args = parser.parse_args(rest)
    if config_name is None:
        parser.error("--config=NAME|PATH is required")
    return args, config_name, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, config_name, overrides = parse_args(argv)
    try:
        config = load_config(config_name, overrides)
        if args.workdir is not None:
            config.save_folder = str(args.workdir)
        run_dir = Path(config.save_folder or Path("runs") / config.run_name)
        config.save_folder = str(run_dir)

        from olmo_jax import sharding, train

        if args.dry_run:
            report = train.dry_run(config, sharding.make_mesh(config.mesh))
            print_dry_run(report)
            return 0
        train.fit(config, run_dir)
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def print_dry_run(report: dict) -> None:
    gib = 1024**3
    mesh = " x ".join(f"{k}={v}" for k, v in report["mesh"].items())
    lines = [
        f"mesh:                      {mesh}",
        f"parameters:                {report['num_params']:,}",
        f"FLOPs per token:           {report['flops_per_token'] / 1e9:.2f} GFLOP",
        f"micro-batches per step:    {report['micro_batches']}",
        f"per-device parameters:     {report['param_bytes_per_device'] / gib:.2f} GiB",
        f"per-device optimizer:      {report['optimizer_bytes_per_device'] / gib:.2f} GiB",
    ]
    if "temp_bytes_per_device" in report:
        lines += [
            f"per-device arguments:      {report['argument_bytes_per_device'] / gib:.2f} GiB (XLA memory analysis)",
            f"per-device temporaries:    {report['temp_bytes_per_device'] / gib:.2f} GiB (XLA memory analysis)",
        ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
