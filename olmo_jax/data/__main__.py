"""`python -m olmo_jax.data {prepare,train-tokenizer,inspect,curate}`: the data pipeline's command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from itertools import chain

from olmo_jax import cli
from olmo_jax.data.inspect import format_json, format_text, inspect_step, resolve_data_spec
from olmo_jax.data.pipeline import build_pipeline
from olmo_jax.data.prepare import ReadReport, input_files, prepare, read_documents
from olmo_jax.data.source import verify_token_files
from olmo_jax.data.tokenizer_formats import SentencePieceTokenizer, train_sentencepiece
from olmo_jax.errors import ConfigError


def _add_document_args(p) -> None:
    """How documents are read from the inputs (shared by prepare and train-tokenizer)."""
    p.add_argument("--text_field", default="text", help="JSON field holding a document's text (default: text)")
    p.add_argument(
        "--text_unit",
        choices=("file", "paragraph", "line"),
        default="file",
        help="for plain-text inputs: one document per file, per blank-line-separated paragraph, or per line",
    )


def _prepare_parser(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenize documents into OLMo token files",
        description=(
            "Tokenize JSON-lines documents (.jsonl/.json/.ndjson, optionally .gz or .zst, one {'text': ...} "
            "object per line) and plain UTF-8 text into OLMo's raw token files (uint16 when the vocabulary fits, "
            "else uint32) with EOS after every document, plus manifest.json. Malformed lines are counted and "
            "reported with file, line and byte offset."
        ),
    )
    p.add_argument("inputs", nargs="+", help="input files, folders (read recursively) or globs")
    p.add_argument("--tokenizer", required=True, help="tokenizer JSON, SentencePiece .model, 'builtin' or owner/name")
    cli.add_output_argument(p, "output folder for part-NNNNN.npy and manifest.json", required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes (default: all cores)")
    p.add_argument(
        "--max_tokens_per_file",
        type=int,
        default=500_000_000,
        help="start a new part file beyond this many tokens; documents are never split (default: 500M)",
    )
    _add_document_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace token files and manifest already in --output")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def _train_tokenizer_parser(sub) -> None:
    p = sub.add_parser(
        "train-tokenizer",
        help="train a SentencePiece BPE model on text",
        description=(
            "Train a lossless SentencePiece model (pad 0, unk 1, eos 2, no BOS; byte fallback; whitespace and "
            "newlines kept) on the lines of the given documents, read as by 'prepare'."
        ),
    )
    p.add_argument("inputs", nargs="+", help="input files, folders or globs (JSON lines or plain text)")
    cli.add_output_argument(p, "path of the .model file to write", required=True)
    p.add_argument("--vocab_size", type=int, default=8000, help="number of pieces (default: 8000)")
    p.add_argument("--model_type", choices=("bpe", "unigram"), default="bpe", help="SentencePiece algorithm")
    p.add_argument(
        "--character_coverage",
        type=float,
        default=0.9995,
        help="share of characters given own pieces",
    )
    p.add_argument("--sample_every", type=int, default=1, help="train on every k-th non-empty line (default: 1)")
    _add_document_args(p)


def _inspect_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="print the instances of global batch N",
        description=(
            "Print the instances of global batch N (instance index, token file, token offset, tokens or text), "
            "recomputed from the config alone. Give a run directory (its config.yaml) or --config=NAME|PATH, and "
            "any --config.KEY=VALUE overrides (e.g. --config.data.paths='[\"a.npy\"]')."
        ),
    )
    p.add_argument("run_dir", nargs="?", help="run directory holding config.yaml (else use --config)")
    cli.add_config_arguments(p, required=False)
    p.add_argument(
        "--step",
        type=int,
        action="append",
        required=True,
        help="training step as logged in metrics.jsonl (1-based: step N trained on global batch N-1); repeatable",
    )
    p.add_argument("--decode", action="store_true", help="show decoded text (needs the tokenizer)")
    p.add_argument("--verify", action="store_true", help="first compare every token file's sha256 with its manifest")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help='text, or one JSON object per step: {"step", "instances": [{"index", "path", "offset", "tokens"}]}',
    )
    p.add_argument("--preview", type=int, default=80, help="text format: characters or tokens per instance (0: all)")


def _curate_parser(sub) -> None:
    p = sub.add_parser(
        "curate",
        help="run a curation pipeline (Dolma's recipe on datatrove) into OLMo token files with provenance",
        description=(
            "Run the curation pipeline PIPELINE.yaml: read its sources, run its steps (language, gopher_quality, "
            "gopher_repetition, c4, pii, dedup_urls, dedup_documents, dedup_minhash, dedup_paragraphs, "
            "decontaminate, mix, custom) on datatrove's local, SLURM or Ray executor, and write OLMo token files "
            "with a provenance table each, plus report.json and report.txt. Relaunching the same command resumes: "
            "finished tasks are not redone. Needs the curate extra: pip install 'olmo_jax[curate]'."
        ),
    )
    p.add_argument("pipeline", help="the pipeline spec (YAML)")
    cli.add_output_argument(p, "output folder (default: the spec's output); tokens/, report.json, work/")
    p.add_argument("--workers", type=int, default=None, help="tasks run at once (default: the spec's, else all cores)")
    p.add_argument("--restart", action="store_true", help="discard an earlier run in --output and start over")
    p.add_argument("--verbose", action="store_true", help="show datatrove's log of every task (always in work/)")


def build_parser(prog: str = "python -m olmo_jax.data") -> argparse.ArgumentParser:
    """The data command's argument parser (`--config*` flags are parsed by `cli.parse_command_line`)."""
    parser = cli.ArgumentParser(prog=prog, description="OLMo data pipeline tools.")
    cli.add_debug_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    _prepare_parser(sub)
    _train_tokenizer_parser(sub)
    _inspect_parser(sub)
    _curate_parser(sub)
    for subparser in sub.choices.values():
        cli.add_debug_argument(subparser)
    return parser


def _run_prepare(args: argparse.Namespace) -> None:
    manifest = prepare(
        args.inputs,
        args.tokenizer,
        args.output,
        workers=args.workers,
        max_tokens_per_file=args.max_tokens_per_file,
        text_field=args.text_field,
        text_unit=args.text_unit,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    mb = manifest["text_bytes"] / 1e6
    print(
        f"wrote {len(manifest['files'])} {manifest['dtype']} file(s) to {args.output}: {manifest['documents']:,} "
        f"documents, {manifest['tokens']:,} tokens from {mb:,.1f} MB of text "
        f"({mb / max(manifest['seconds'], 1e-9):,.1f} MB/s)"
    )
    if manifest["empty_documents"]:
        print(f"skipped {manifest['empty_documents']:,} empty document(s)", file=sys.stderr)
    if manifest["malformed"]:
        print(f"warning: skipped {manifest['malformed']:,} malformed record(s); the first:", file=sys.stderr)
        for example in manifest["malformed_examples"]:
            print(f"  {example}", file=sys.stderr)


def _run_train_tokenizer(args: argparse.Namespace) -> None:
    report = ReadReport()
    documents = chain.from_iterable(
        read_documents(path, report, text_field=args.text_field, text_unit=args.text_unit)
        for path in input_files(args.inputs)
    )
    path = train_sentencepiece(
        documents,
        args.output,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        sample_every=args.sample_every,
    )
    tokenizer = SentencePieceTokenizer(path)
    documents_read = sum(s.documents for s in report.inputs)
    print(f"wrote {path}: {tokenizer.vocab_size} pieces trained on {documents_read:,} documents ({tokenizer.identity})")
    if report.malformed_total:
        print(f"warning: skipped {report.malformed_total:,} malformed record(s); the first:", file=sys.stderr)
        for example in report.malformed_examples:
            print(f"  {example}", file=sys.stderr)


def _run_inspect(args: argparse.Namespace, config_name: str | None, overrides: dict[str, str]) -> None:
    pipeline = build_pipeline(resolve_data_spec(args.run_dir, config_name, overrides))
    if args.verify:
        checked = verify_token_files(pipeline.source.files)
        print(f"verified the sha256 of {checked} of {len(pipeline.source.files)} token files", file=sys.stderr)
    for step in args.step:
        record = inspect_step(pipeline, step, decode=args.decode)
        print(format_json(record) if args.format == "json" else format_text(record, args.preview), flush=True)


def _run_curate(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers <= 0:
        raise ConfigError(f"--workers must be positive, got {args.workers}")
    if not args.verbose:  # datatrove logs through loguru, whose default level is read from here when it is imported
        os.environ.setdefault("LOGURU_LEVEL", "WARNING")
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:  # here, not at the top: the pipeline needs datatrove, an optional extra that only `curate` uses
        from olmo_jax.curate import pipeline
        from olmo_jax.curate.report import format_table
        from olmo_jax.curate.spec import load_spec
    except ImportError as e:
        raise ConfigError(
            f"data curate needs the curate extra ({e.name} is missing): pip install 'olmo_jax[curate]'"
        ) from None

    report = pipeline.run(
        load_spec(args.pipeline), args.output, workers=args.workers, restart=args.restart, verbose=args.verbose
    )
    if report is not None:
        print(format_table(report))


def main(argv: Sequence[str] | None = None, prog: str = "python -m olmo_jax.data") -> int:
    """Run a subcommand; returns the exit status (2: bad input, 1: the run failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run_command(lambda: _run(argv, prog), debug=cli.debug_enabled("--debug" in argv))


def _run(argv: list[str], prog: str) -> int:
    config_name, overrides, rest, _ = cli.parse_command_line(argv)
    args = build_parser(prog).parse_args(rest)
    if args.command != "inspect" and (config_name is not None or overrides):
        raise ConfigError(f"--config and --config.KEY=VALUE apply to inspect only, not {args.command}")
    if args.command == "prepare":
        _run_prepare(args)
    elif args.command == "train-tokenizer":
        _run_train_tokenizer(args)
    elif args.command == "curate":
        _run_curate(args)
    else:
        _run_inspect(args, config_name, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
