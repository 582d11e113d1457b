"""`python -m olmo_jax.convert {to-hf,from-hf}`: olmo_jax checkpoints <-> Hugging Face OLMo directories."""

from __future__ import annotations

import argparse
import sys

from olmo_jax import cli
from olmo_jax.convert.checkpoints import from_hf, to_hf
from olmo_jax.convert.hf import parse_size
from olmo_jax.model import PARAM_DTYPES

DESCRIPTION = """\
Convert between olmo_jax checkpoints and Hugging Face OLMo directories (OlmoForCausalLM,
Olmo2ForCausalLM, Olmo3ForCausalLM: the architecture follows from the model's config).
Weights move one tensor at a time; the output appears only when the conversion has succeeded."""

EPILOG = """\
examples:
  olmo-jax convert to-hf runs/tiny -o hf/tiny                        # latest step of a run
  olmo-jax convert to-hf runs/tiny/checkpoints/150 -o hf/tiny --dtype=bfloat16
  olmo-jax convert from-hf ~/models/OLMo-1B-hf -o runs/olmo-1b
  (OUT may also be given as a second positional argument, as in earlier versions)

exit status: 0 written, 2 bad input (nothing is written), 1 the conversion failed (nothing is written)"""


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_output(parser: argparse.ArgumentParser, what: str) -> None:
    cli.add_output_argument(parser, f"{what} to create; it must not exist yet", metavar="OUT")
    parser.add_argument("out", nargs="?", metavar="OUT", help="the same as --output (the older spelling)")
    cli.add_debug_argument(parser)


def build_parser(prog: str = "python -m olmo_jax.convert") -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{to-hf,from-hf}")

    to_hf = commands.add_parser(
        "to-hf",
        help="olmo_jax checkpoint -> HF directory (config.json, safetensors, tokenizer files)",
        description="Write an HF OLMo directory that transformers.AutoModelForCausalLM.from_pretrained loads.",
    )
    to_hf.add_argument(
        "src",
        metavar="SRC",
        help="olmo_jax checkpoint: a run directory (its latest step), its checkpoints/ "
        "directory (latest step) or one step directory <run>/checkpoints/<step>",
    )
    _add_output(to_hf, "HF directory")
    to_hf.add_argument(
        "--dtype",
        choices=list(PARAM_DTYPES),
        default=None,
        help=f"{cli.DTYPE_HELP} in OUT (default: the checkpoint's parameter dtype)",
    )
    to_hf.add_argument(
        "--max_shard_size",
        type=_size,
        default="5GB",
        help="largest safetensors file before the weights are split into numbered shards with "
        "model.safetensors.index.json, e.g. 5GB, 500MB, 2GiB (default: 5GB)",
    )

    from_hf = commands.add_parser(
        "from-hf",
        help="HF OLMo directory -> olmo_jax run directory with step 0 (training can start from it)",
        description="Write an olmo_jax run directory holding <OUT>/checkpoints/0 (params and config).",
    )
    from_hf.add_argument(
        "hf_dir",
        metavar="HF_DIR",
        help="HF OLMo directory: config.json (model_type 'olmo', 'olmo2' or 'olmo3') and "
        "model.safetensors or model.safetensors.index.json with its shards; a tokenizer.json or "
        "tokenizer.model there is copied into OUT",
    )
    _add_output(from_hf, "run directory")
    from_hf.add_argument(
        "--dtype",
        choices=list(PARAM_DTYPES),
        default=None,
        help=f"{cli.DTYPE_HELP} in OUT (default: bfloat16 if every HF tensor is bf16, else float32)",
    )
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, prog: str = "python -m olmo_jax.convert") -> int:
    """Run the CLI; returns the exit status (2 bad input, 1 a failed conversion; one `error: ...` line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _, _, rest, debug = cli.parse_command_line(argv)
    parser = build_parser(prog)
    args = parser.parse_args(rest)
    if (args.output is None) == (args.out is None):
        parser.error("give the output directory once: --output OUT (or a second positional OUT)")
    out = args.output or args.out
    return cli.run_command(lambda: _run(args, out), debug=debug)


def _run(args: argparse.Namespace, out: str) -> None:
    if args.command == "to-hf":
        to_hf(args.src, out, dtype=args.dtype, max_shard_size=args.max_shard_size, log=_log)
    else:
        step_dir = from_hf(args.hf_dir, out, dtype=args.dtype, log=_log)
        _log(f"wrote {step_dir}; train from it with --config.load_path={out} --config.load_weights_only=true")


if __name__ == "__main__":
    sys.exit(main())
