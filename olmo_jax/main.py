"""`python -m olmo_jax.main`: train OLMo (or, with --dry_run, compile and size the train step).

python -m olmo_jax.main --config=tiny                       # the offline demo (CPU, minutes)
python -m olmo_jax.main --config=7b --config.mesh.fsdp=-1 --workdir=runs/7b
python -m olmo_jax.main --config=path/to/OLMo-7B.yaml       # an original OLMo YAML, translated
XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m olmo_jax.main --config=7b --dry_run
launch/local_multiprocess.sh 2 --config=tiny                # 2 CPU processes x 4 fake devices
srun python -m olmo_jax.main --config=7b                    # one process per task (see launch/)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import jax

from olmo_jax import cli, distributed, loop, sharding, train
from olmo_jax.config import TrainConfig, load_config, preset_names
from olmo_jax.errors import ConfigError
from olmo_jax.runtime import configure_xla


def build_parser(prog: str = "python -m olmo_jax.main") -> argparse.ArgumentParser:
    """The train command's flags (`--config` and `--config.KEY=VALUE` are parsed by `cli.parse_command_line`)."""
    parser = cli.ArgumentParser(
        prog=prog,
        description="Train OLMo with JAX (or, with --dry_run, compile and size the train step).\n"
        "Configs: --config=NAME (a preset) or --config=PATH (our YAML or an original OLMo YAML), then any\n"
        "number of --config.KEY=VALUE overrides. Every value is checked before anything runs.",
        epilog=f"presets: {', '.join(preset_names())}\n"
        "exit status: 0 done (or stopped and saved on a signal or time_limit), 2 bad input, 1 the run failed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_config_arguments(parser)
    cli.add_output_argument(
        parser,
        "run directory for config.yaml, metrics.jsonl, TensorBoard events and checkpoints; rerunning with the "
        "same directory resumes (default: save_folder from the config, else runs/<run_name>; --workdir is the "
        "older spelling)",
        type=Path,
        metavar="DIR",
        aliases=("--workdir",),
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="compile the train step for the configured mesh from abstract shapes (nothing is allocated or "
        "written) and print parameter count, FLOPs/token and per-device memory, then exit",
    )
    add_distributed_args(parser)
    cli.add_debug_argument(parser)
    return parser


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """Flags that place this process in a multi-process (multi-host) run; see olmo_jax/distributed.py."""
    group = parser.add_argument_group(
        "multi-process runs",
        "Without these flags the layout comes from the cluster (an srun step of several tasks, or mpirun),\n"
        "else the run is a single process. Flags win over the config fields of the same name, which win over\n"
        "the cluster. Every process must get the same config: they refuse to start otherwise.",
    )
    group.add_argument(
        "--coordinator_address",
        metavar="HOST:PORT",
        help="address of process 0, where it serves the coordination service (any free port, same on every process)",
    )
    group.add_argument("--num_processes", type=int, metavar="N", help="how many processes the run has")
    group.add_argument("--process_id", type=int, metavar="I", help="this process's id, 0..N-1 (0 writes the logs)")
    group.add_argument(
        "--cluster",
        choices=distributed.CLUSTERS,
        default="auto",
        help="where to read the layout from: auto (SLURM, then Open MPI), none (only the flags), slurm, or one "
        "of JAX's detection methods (ompi, mpi4py, k8s, gcetpu, gketpu); default: %(default)s",
    )
    group.add_argument(
        "--init_timeout",
        type=int,
        default=distributed.DEFAULT_INIT_TIMEOUT_S,
        metavar="SECONDS",
        help="give up with an error when not every process has joined within this time; default: %(default)s",
    )
    group.add_argument(
        "--heartbeat_timeout",
        type=int,
        default=distributed.DEFAULT_HEARTBEAT_TIMEOUT_S,
        metavar="SECONDS",
        help="a process that has been silent this long counts as dead, and every other process then stops "
        "with an error; default: %(default)s",
    )


def process_layout(args: argparse.Namespace, config: TrainConfig) -> distributed.ProcessLayout:
    """This process's layout from the flags, else the config's fields, else the cluster environment."""

    def given(name: str):
        flag = getattr(args, name)
        return flag if flag is not None else getattr(config, name)

    return distributed.resolve_layout(
        given("coordinator_address"), given("num_processes"), given("process_id"), cluster=args.cluster
    )


def check_writable(run_dir: Path) -> None:
    """Refuse a run directory that cannot be created or written, before anything is built or written.

    The probe is a temporary file in the nearest folder that exists, removed at once: a read-only
    filesystem refuses even root, which permission bits would not.
    """
    existing = run_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"run directory {run_dir} cannot be created: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".olmo_jax-probe-", dir=existing)
    except OSError as e:
        raise ConfigError(f"run directory {run_dir} cannot be written: {e.strerror} ({existing})") from None
    os.close(fd)
    os.unlink(probe)


def main(argv: list[str] | None = None, prog: str = "python -m olmo_jax.main") -> int:
    argv = sys.argv[1:] if argv is None else argv
    config_name, overrides, rest, debug = cli.parse_command_line(argv)
    parser = build_parser(prog)
    args = parser.parse_args(rest)
    config_name = cli.require_config(parser, config_name)
    configure_xla()  # before JAX's backend starts: XLA reads its flags once
    return cli.run_command(
        lambda: _run(args, config_name, overrides), debug=debug, finish=distributed.exit_after_failure
    )


def _run(args: argparse.Namespace, config_name: str, overrides: dict[str, str]) -> int:
    config = load_config(config_name, overrides)
    if args.output is not None:
        config.save_folder = str(args.output)
    run_dir = Path(config.save_folder or Path("runs") / config.run_name)
    config.save_folder = str(run_dir)
    if not args.dry_run:
        check_writable(run_dir)
    layout = distributed.initialize(
        process_layout(args, config), init_timeout=args.init_timeout, heartbeat_timeout=args.heartbeat_timeout
    )
    digest = distributed.check_same_config(config)
    is_writer = jax.process_index() == 0
    if layout.is_multiprocess and is_writer:
        print(
            f"olmo_jax: {layout.num_processes} processes ({layout.source}), coordinator "
            f"{layout.coordinator_address or 'from JAX'} | {jax.device_count()} devices, "
            f"{jax.local_device_count()} per process | config hash {digest[:12]}",
            flush=True,
        )
    if args.dry_run:
        report = train.dry_run(config, sharding.make_mesh(config.mesh))
        if is_writer:
            print_dry_run(report)
        return 0
    loop.fit(config, run_dir)
    return 0


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
