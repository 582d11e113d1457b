"""Text → OLMo token files: JSON-lines documents (also .gz / .zst) and plain text, EOS after every document.

Output: `<output>/part-00000.npy`, `part-00001.npy`, ... (written by `olmo_jax.data.token_writer`, which
describes them and how encoding runs in worker processes) and `<output>/manifest.json` with the document and
token counts, the tokenizer's identity and every file's sha256. The manifest comes last, so a folder without
`manifest.json` is an unfinished run, which the trainer and `inspect` refuse. A failed run removes what it wrote;
the hidden temporary files a killed run leaves are removed by the next run into the same folder. Input with no
document at all is an error.

Malformed input (invalid JSON or UTF-8, a record without a string text field) is counted per file and reported
with file, line and byte offset; it is never silently dropped.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from olmo_jax import atomic
from olmo_jax.data.source import MANIFEST_NAME
from olmo_jax.data.token_writer import write_token_files
from olmo_jax.data.tokenizer import load_tokenizer
from olmo_jax.errors import PrepareError

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")
TEXT_UNITS = ("file", "paragraph", "line")
_MAX_EXAMPLES = 10


@dataclass
class InputStats:
    """What one input file gave: documents kept, empty documents skipped, malformed records reported."""

    path: str
    documents: int = 0
    empty: int = 0
    malformed: int = 0
    text_bytes: int = 0
    raw_bytes_read: int = 0


@dataclass
class MalformedRecord:
    """One skipped input record: where it was and why."""

    path: str
    line: int
    byte_offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} (byte offset {self.byte_offset}): {self.reason}"


@dataclass
class ReadReport:
    """Per-file statistics and the first malformed records, filled in while documents are read."""

    inputs: list[InputStats] = field(default_factory=list)
    malformed_examples: list[MalformedRecord] = field(default_factory=list)

    def malformed(self, stats: InputStats, record: MalformedRecord) -> None:
        stats.malformed += 1
        if len(self.malformed_examples) < _MAX_EXAMPLES:
            self.malformed_examples.append(record)

    @property
    def malformed_total(self) -> int:
        return sum(s.malformed for s in self.inputs)

    @property
    def raw_bytes_read(self) -> int:
        return sum(s.raw_bytes_read for s in self.inputs)


# --------------------------------------------------------------------------------------------------
# Reading documents
# --------------------------------------------------------------------------------------------------


def _strip_compression(name: str) -> tuple[str, str]:
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def input_files(patterns: Iterable[str]) -> list[str]:
    """Input files from paths, globs and folders (a folder gives its files, recursively, sorted)."""

    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise PrepareError(f"input pattern {pattern!r} matches no file")
        for match in matches:
            if os.path.isdir(match):
                files.extend(sorted(str(p) for p in Path(match).rglob("*") if p.is_file()))
            elif os.path.isfile(match):
                files.append(match)
            else:
                raise PrepareError(f"input file {match} does not exist")
    if not files:
        raise PrepareError("no input files")
    return files


def _open_binary(path: str, raw: BinaryIO) -> BinaryIO:
    _, compression = _strip_compression(path)
    if compression == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression in (".zst", ".zstd"):
        try:
            import zstandard
        except ImportError:
            raise PrepareError(f"reading {path} needs the zstandard package: pip install zstandard") from None
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


def _zstd_error() -> type[Exception]:
    try:
        import zstandard
    except ImportError:
        return OSError
    return zstandard.ZstdError


def read_documents(
    path: str, report: ReadReport, *, text_field: str = "text", text_unit: str = "file"
) -> Iterator[str]:
    """Documents of one input file, streamed; malformed records and empty documents are counted in `report`.

    JSON lines (`.jsonl`, `.json`, `.ndjson`, optionally `.gz`/`.zst`): one object per line, the document is
    `record[text_field]`. Anything else is UTF-8 text, one document per file, paragraph or line (`text_unit`).
    """
    if text_unit not in TEXT_UNITS:
        raise PrepareError(f"invalid text unit {text_unit!r}; valid choices: {', '.join(TEXT_UNITS)}")
    stats = InputStats(path=path)
    report.inputs.append(stats)
    base, _ = _strip_compression(path)
    is_json = base.endswith(JSON_SUFFIXES)
    with open(path, "rb") as raw:
        stream = _open_binary(path, raw)
        try:
            lines = _counted_lines(stream, raw, stats)
            if is_json:
                texts = _json_texts(lines, path, text_field, stats, report)
            else:
                texts = _plain_texts(lines, path, text_unit, stats, report)
            for text in texts:
                if not text:
                    stats.empty += 1
                    continue
                stats.documents += 1
                stats.text_bytes += len(text.encode("utf-8"))
                yield text
        except (OSError, EOFError, _zstd_error()) as e:
            # A truncated or corrupt compressed stream: the rest of the file is unknown, so stop loudly.
            raise PrepareError(f"input file {path} could not be read to the end: {e}") from None
        finally:
            if stream is not raw:
                stream.close()


def _counted_lines(stream: BinaryIO, raw: BinaryIO, stats: InputStats) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset in the decompressed stream, line bytes); keeps `stats.raw_bytes_read` current."""
    offset = 0
    buffered = io.BufferedReader(stream) if not isinstance(stream, io.BufferedIOBase) else stream
    for number, line in enumerate(buffered, start=1):
        yield number, offset, line
        offset += len(line)
        if number % 1024 == 0:
            stats.raw_bytes_read = raw.tell()
    stats.raw_bytes_read = raw.tell()


def _json_texts(lines, path: str, text_field: str, stats: InputStats, report: ReadReport) -> Iterator[str]:
    for number, offset, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            reason = "invalid UTF-8" if isinstance(e, UnicodeDecodeError) else f"invalid JSON ({e.msg})"
            report.malformed(stats, MalformedRecord(path, number, offset, reason))
            continue
        if not isinstance(record, dict):
            reason = f"not a JSON object but {type(record).__name__}"
            report.malformed(stats, MalformedRecord(path, number, offset, reason))
            continue
        if text_field not in record:
            report.malformed(stats, MalformedRecord(path, number, offset, f"no {text_field!r} field"))
            continue
        text = record[text_field]
        if not isinstance(text, str):
            reason = f"{text_field!r} is {type(text).__name__}, not a string"
            report.malformed(stats, MalformedRecord(path, number, offset, reason))
            continue
        yield text


def _plain_texts(lines, path: str, text_unit: str, stats: InputStats, report: ReadReport) -> Iterator[str]:
    pending: list[str] = []
    spoiled = False  # the current document had a line that is not UTF-8: reported once, then skipped whole
    for number, offset, line in lines:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            if not spoiled:
                report.malformed(stats, MalformedRecord(path, number, offset + e.start, "invalid UTF-8"))
            spoiled = text_unit != "line"
            continue
        if text_unit == "line":
            yield text.rstrip("\r\n")
        elif text_unit == "paragraph" and not text.strip():
            if pending and not spoiled:
                yield "".join(pending).rstrip("\r\n")
            pending, spoiled = [], False
        else:
            pending.append(text)
    if pending and not spoiled:
        yield "".join(pending) if text_unit == "file" else "".join(pending).rstrip("\r\n")


# --------------------------------------------------------------------------------------------------
# The command: read, tokenize and write (olmo_jax.data.token_writer), then the manifest
# --------------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress report on stderr, refreshed at most twice a second (every 10 s when not a terminal)."""

    def __init__(self, total_bytes: int | None, enabled: bool = True) -> None:
        self.total_bytes = total_bytes
        self.enabled = enabled
        self.start = time.perf_counter()
        self._last = self.start
        self._tty = sys.stderr.isatty()

    def update(self, done_bytes: int, documents: int, tokens: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self._last < (0.5 if self._tty else 10.0):
            return
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        percent = f"{100 * done_bytes / self.total_bytes:5.1f}% " if self.total_bytes else ""
        line = (
            f"{percent}{done_bytes / 1e6:,.1f} MB read, {documents:,} documents, {tokens:,} tokens, "
            f"{done_bytes / 1e6 / elapsed:,.1f} MB/s"
        )
        end = "\n" if final or not self._tty else ""
        print(("\r" if self._tty else "") + line, end=end, file=sys.stderr, flush=True)


def _check_output(output: Path, overwrite: bool) -> None:
    """Clear the output folder: what a killed run left (files with no manifest, temporary files) always, a
    finished run's output only with `overwrite`."""
    existing = sorted(output.glob("part-*.npy"))
    leftovers = [*output.glob(".part-*.npy.*.tmp"), *output.glob(f".{MANIFEST_NAME}.*.tmp")]
    if (output / MANIFEST_NAME).exists():
        if not overwrite:
            raise PrepareError(f"output folder {output} already holds token files and a manifest; pass --overwrite")
        existing.insert(0, output / MANIFEST_NAME)  # first: a folder is never left with a manifest but no parts
    else:
        leftovers += existing  # without a manifest, part files are what a killed run wrote
        existing = []
    for path in [*existing, *leftovers]:
        path.unlink()


def prepare(
    inputs: Iterable[str],
    tokenizer_identifier: str,
    output_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    max_tokens_per_file: int = 500_000_000,
    text_field: str = "text",
    text_unit: str = "file",
    overwrite: bool = False,
    progress: bool = True,
    on_documents: Callable[[np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Tokenize input files into OLMo token files plus `manifest.json` in `output_dir`; returns the manifest.

    `on_documents`: see `write_token_files`.
    """
    files = input_files(inputs)
    tokenizer = load_tokenizer(tokenizer_identifier)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    _check_output(output, overwrite)
    report = ReadReport()
    documents = chain.from_iterable(
        read_documents(path, report, text_field=text_field, text_unit=text_unit) for path in files
    )
    meter = Progress(sum(os.path.getsize(p) for p in files), enabled=progress)
    start = time.perf_counter()
    manifest = write_token_files(
        documents,
        tokenizer,
        output,
        workers=workers or os.cpu_count() or 1,
        max_tokens_per_file=max_tokens_per_file,
        on_progress=lambda docs, tokens: meter.update(report.raw_bytes_read, docs, tokens),
        on_documents=on_documents,
    )
    seconds = time.perf_counter() - start
    meter.update(report.raw_bytes_read, manifest["documents"], manifest["tokens"], final=True)
    if manifest["documents"] == 0:
        empty = sum(s.empty for s in report.inputs)
        raise PrepareError(
            f"the {len(files)} input file(s) hold no document ({empty} empty, {report.malformed_total} malformed "
            f"records): nothing to prepare"
        )
    manifest["tokenizer"]["identifier"] = tokenizer_identifier
    manifest.update(
        text_bytes=sum(s.text_bytes for s in report.inputs),
        seconds=round(seconds, 3),
        empty_documents=sum(s.empty for s in report.inputs),
        malformed=report.malformed_total,
        malformed_examples=[str(m) for m in report.malformed_examples],
        inputs=[{k: v for k, v in asdict(s).items() if k != "raw_bytes_read"} for s in report.inputs],
        text_field=text_field,
        text_unit=text_unit,
    )
    try:
        atomic.write_json(output / MANIFEST_NAME, manifest, indent=2)
    except BaseException:
        for f in manifest["files"]:
            (output / f["path"]).unlink(missing_ok=True)
        raise
    return manifest
