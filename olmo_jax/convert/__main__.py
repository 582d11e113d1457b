"""`python -m olmo_jax.convert {to-hf,from-hf}`: olmo_jax checkpoints <-> Hugging Face OLMo directories."""

from __future__ import annotations

import argparse
import sys

from olmo_jax.convert.hf import DTYPES, parse_size

DESCRIPTION = """\
Convert between olmo_jax checkpoints and Hugging Face OLMo-1 (OlmoForCausalLM) directories.
Weights move one tensor at a time; the output appears only when the conversion has succeeded."""

EPILOG = """\
examples:
  python -m olmo_jax.convert to-hf runs/tiny hf/tiny                 # latest step of a run
  python -m olmo_jax.convert to-hf runs/tiny/checkpoints/150 hf/tiny --dtype=bfloat16
  python -m olmo_jax.convert from-hf ~/models/OLMo-1B-hf runs/olmo-1b"""


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m olmo_jax.convert",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{to-hf,from-hf}")

    to_hf = commands.add_parser(
        "to-hf",
        help="olmo_jax checkpoint -> HF directory (config.json, safetensors, tokenizer files)",
        description="Write an HF OLMo directory that transformers.OlmoForCausalLM.from_pretrained loads.",
    )
    to_hf.add_argument(
        "src",
        metavar="SRC",
        help="olmo_jax checkpoint: a run directory (its latest step), its checkpoints/ "
        "directory (latest step) or one step directory <run>/checkpoints/<step>",
    )
    to_hf.add_argument("out", metavar="OUT", help="HF directory to create; it must not exist yet")
    to_hf.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default=None,
        help="dtype of the written weights (default: the checkpoint's parameter dtype)",
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
        help="HF OLMo-1 directory: config.json (model_type 'olmo') and "
        "model.safetensors or model.safetensors.index.json with its shards; a tokenizer.json or "
        "tokenizer.model there is copied into OUT",
    )
    from_hf.add_argument("out", metavar="OUT", help="run directory to create; it must not exist yet")
    from_hf.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default=None,
        help="dtype of the saved parameters (default: bfloat16 if every HF tensor is bf16, else float32)",
    )
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for bad input, with one `error: ...` line on stderr)."""
    args = build_parser().parse_args(argv)
    # Imported here so that --help answers without starting JAX.
    from olmo_jax.checkpoint import CheckpointError
    from olmo_jax.convert import ConversionError, from_hf, to_hf
    from olmo_jax.errors import ConfigError

    try:
        if args.command == "to-hf":
            to_hf(args.src, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size, log=_log)
        else:
            step_dir = from_hf(args.hf_dir, args.out, dtype=args.dtype, log=_log)
            _log(f"wrote {step_dir}; train from it with --config.load_path={args.out} --config.load_weights_only=true")
    except (ConversionError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
