"""Text → OLMo token files: JSON-lines documents (also .gz / .zst) and plain text, EOS after every document.

Output: `<output>/part-00000.npy`, `part-00001.npy`, ... (raw little-endian arrays with no header despite the
suffix, as OLMo names them; uint16 when the vocabulary fits, else uint32) and `<output>/manifest.json` with the
document and token counts, the tokenizer's identity and every file's sha256. Documents are never split across
files. Every file is written under a temporary name and renamed when complete; the manifest comes last, so a
folder without `manifest.json` is an unfinished run. A failed run removes what it wrote.

Encoding runs in `workers` processes on chunks of documents; at most `2 x workers` chunks are in flight, so
memory stays bounded whatever the input size, and the output does not depend on the number of workers.
Malformed input (invalid JSON or UTF-8, a record without a string text field) is counted per file and reported
with file, line and byte offset; it is never silently dropped.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from olmo_jax import atomic
from olmo_jax.data.source import token_dtype
from olmo_jax.data.tokenizer import SentencePieceTokenizer, Tokenizer, load_tokenizer
from olmo_jax.errors import PrepareError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "olmo_jax.tokens/1"
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")
TEXT_UNITS = ("file", "paragraph", "line")
_CHUNK_TEXT_BYTES = 1 << 20  # text per worker task: large enough to amortise pickling, small for memory
_CHUNK_DOCUMENTS = 4096
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
    import glob

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
# Encoding (in worker processes) and writing
# --------------------------------------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    # One process per core already: keep each tokenizer single-threaded to avoid oversubscription.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = load_tokenizer(tokenizer_path)
    if isinstance(_worker_tokenizer, SentencePieceTokenizer):
        _worker_tokenizer.num_threads = 1


def _encode_chunk(texts: list[str], eos_token_id: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of `texts` with EOS after each, and each document's length (EOS included)."""
    assert _worker_tokenizer is not None
    return _pack(_worker_tokenizer.encode_batch(texts), eos_token_id, np.dtype(dtype))


def _pack(encoded: list[list[int]], eos_token_id: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
    eos = (eos_token_id,)
    tokens = np.fromiter(chain.from_iterable(chain(ids, eos) for ids in encoded), dtype=dtype, count=int(lengths.sum()))
    return tokens, lengths


def _chunks(documents: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for text in documents:
        chunk.append(text)
        size += len(text)
        if size >= _CHUNK_TEXT_BYTES or len(chunk) >= _CHUNK_DOCUMENTS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _PartWriter:
    """Writes `part-NNNNN.npy` files, rolling over between documents; each file appears only when complete."""

    def __init__(self, output_dir: Path, dtype: np.dtype, max_tokens_per_file: int) -> None:
        self.output_dir = output_dir
        self.dtype = dtype
        self.max_tokens = max_tokens_per_file
        self.files: list[dict[str, Any]] = []
        self._handle: BinaryIO | None = None
        self._tmp: Path | None = None
        self._hash = hashlib.sha256()
        self._tokens = 0
        self._documents = 0

    def _final_path(self) -> Path:
        return self.output_dir / f"part-{len(self.files):05d}.npy"

    def _open(self) -> None:
        final = self._final_path()
        self._tmp = atomic.temporary_name(final)
        self._handle = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self._tokens = self._documents = 0

    def _close(self) -> None:
        assert self._handle is not None and self._tmp is not None
        self._handle.close()
        final = self._final_path()
        atomic.publish(self._tmp, final)
        self.files.append(
            {"path": final.name, "tokens": self._tokens, "documents": self._documents, "sha256": self._hash.hexdigest()}
        )
        self._handle = self._tmp = None

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append whole documents (`lengths` splits `tokens`), starting a new file when this one is full."""
        ends = np.cumsum(lengths)
        start_doc, start_tok = 0, 0
        while start_doc < len(lengths):
            if self._handle is None:
                self._open()
            room = self.max_tokens - self._tokens
            # Documents that fit: the largest k with ends[k-1] - start_tok <= room.
            k = int(np.searchsorted(ends[start_doc:] - start_tok, room, side="right"))
            if k == 0:
                if self._tokens == 0:
                    k = 1  # a document longer than a whole file gets a file of its own
                else:
                    self._close()
                    continue
            stop_tok = int(ends[start_doc + k - 1])
            block = tokens[start_tok:stop_tok].astype(self.dtype.newbyteorder("<"), copy=False)
            data = block.tobytes()
            self._handle.write(data)
            self._hash.update(data)
            self._tokens += stop_tok - start_tok
            self._documents += k
            start_doc += k
            start_tok = stop_tok

    def finish(self) -> None:
        if self._handle is not None:
            self._close()

    def abort(self) -> None:
        """Remove everything this writer wrote (the temporary file and completed parts)."""
        if self._handle is not None:
            self._handle.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        for f in self.files:
            (self.output_dir / f["path"]).unlink(missing_ok=True)


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


def write_token_files(
    documents: Iterable[str],
    tokenizer: Tokenizer,
    output_dir: str | os.PathLike,
    *,
    workers: int = 1,
    max_tokens_per_file: int = 500_000_000,
    on_progress: Callable[[int, int], None] | None = None,
    on_documents: Callable[[np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Tokenize `documents` (EOS after each) into part files in `output_dir`; returns the manifest's core.

    `on_progress(documents, tokens)` is called after each chunk; `on_documents(lengths)` too, with the token
    count (EOS included) of each of the chunk's documents, in input order (curation builds provenance tables
    from it). Nothing is left behind on failure.
    """
    if max_tokens_per_file <= 0:
        raise PrepareError(f"max tokens per file must be positive, got {max_tokens_per_file}")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    writer = _PartWriter(output, dtype, max_tokens_per_file)
    documents_done = tokens_done = 0

    def consume(result: tuple[np.ndarray, np.ndarray]) -> None:
        nonlocal documents_done, tokens_done
        tokens, lengths = result
        writer.add(tokens, lengths)
        if on_documents is not None:
            on_documents(lengths)
        documents_done += len(lengths)
        tokens_done += len(tokens)
        if on_progress is not None:
            on_progress(documents_done, tokens_done)

    try:
        if workers <= 1:
            for chunk in _chunks(documents):
                consume(_pack(tokenizer.encode_batch(chunk), tokenizer.eos_token_id, dtype))
        else:
            # spawn, not fork: the caller may be a JAX process, and forking one with threads running is unsafe.
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer.path,)) as pool:
                pending: deque = deque()
                for chunk in _chunks(documents):
                    pending.append(pool.apply_async(_encode_chunk, (chunk, tokenizer.eos_token_id, dtype.name)))
                    while len(pending) >= 2 * workers:
                        consume(pending.popleft().get())
                while pending:
                    consume(pending.popleft().get())
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return {
        "format": MANIFEST_FORMAT,
        "dtype": dtype.name,
        "tokenizer": {
            "path": tokenizer.path,
            "identity": tokenizer.identity,
            "vocab_size": tokenizer.vocab_size,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        "documents": documents_done,
        "tokens": tokens_done,
        "files": writer.files,
    }


def _check_output(output: Path, overwrite: bool) -> None:
    existing = sorted(output.glob("part-*.npy"))
    if (output / MANIFEST_NAME).exists():
        existing.append(output / MANIFEST_NAME)
    if existing and not overwrite:
        raise PrepareError(f"output folder {output} already holds token files or a manifest; pass --overwrite")
    for path in existing:
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
