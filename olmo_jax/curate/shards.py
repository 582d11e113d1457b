"""Documents in and out of tasks: the source reader, the shard files between stages, the log of removed documents.

The corpus is cut into `tasks` shards once, when the sources are read: shard k holds a contiguous run of the input
files (in source order, then path order), so concatenating the shards in order keeps the input order. Every
later stage reads and writes the same shards (`<folder>/<k:05d>.jsonl.zst`, one JSON object per line with text,
id and metadata), which is what makes the output independent of how many workers run the tasks. A shard appears
under its final name only when complete (temporary name, fsync, rename), so a killed task leaves nothing that a
later stage could read.

Every document carries its provenance in `metadata`: `source`, `file` (the input file), `line` (1-based), `shard`,
`url` when the record has one, and `tokens` (its token count with the output tokenizer, 0 when not counted).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
import zstandard
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from olmo_jax import atomic
from olmo_jax.curate.steps import count_document, stat_key
from olmo_jax.errors import CurationError, RunError

SHARD_SUFFIX = ".jsonl.zst"
READ_LABEL = "read"


def shard_path(folder: str | Path, shard: int) -> Path:
    return Path(folder) / f"{shard:05d}{SHARD_SUFFIX}"


def shard_files(rank: int, tasks: int, count: int) -> range:
    """Indices of the input files that shard `rank` of `tasks` reads: a contiguous block, sizes differing by <= 1."""
    return range(rank * count // tasks, (rank + 1) * count // tasks)


def _record_document(record: dict[str, Any]) -> Document:
    return Document(text=record["text"], id=record["id"], metadata=record["metadata"])


def _document_record(doc: Document) -> bytes:
    metadata = {k: v for k, v in doc.metadata.items() if not k.startswith("_")}
    line = json.dumps({"text": doc.text, "id": doc.id, "metadata": metadata}, ensure_ascii=False)
    return line.encode("utf-8") + b"\n"


def _text_lines(handle: BinaryIO) -> Iterator[bytes]:
    yield from io.BufferedReader(handle) if not isinstance(handle, io.BufferedIOBase) else handle


class RemovalLog:
    """Where a step's removed documents are listed (datatrove's `exclusion_writer` interface): one JSON line per
    document with source, id, file, line and the reason (the step's, else `reason`), in `<folder>/<rank:05d>.jsonl`,
    published when the step finishes."""

    KEEP = ("language", "language_score", "contaminated_task", "contaminated_ngram")

    def __init__(self, folder: str | Path, reason: str = "") -> None:
        self.folder = str(folder)
        self.reason = reason
        self._handle: BinaryIO | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None

    def __enter__(self) -> RemovalLog:
        return self

    def write(self, doc: Document, rank: int = 0) -> None:
        if self._handle is None:
            self._final = Path(self.folder) / f"{rank:05d}.jsonl"
            self._final.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = atomic.temporary_name(self._final)
            self._handle = open(self._tmp, "wb")
        m = doc.metadata
        row = {"source": m["source"], "id": doc.id, "file": m["file"], "line": m["line"]}
        row["reason"] = m.get("filter_reason") or self.reason
        row.update({k: m[k] for k in self.KEEP if k in m})
        self._handle.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._handle is None:
            return
        self._handle.close()
        if exc_type is None:
            atomic.publish(self._tmp, self._final)
        else:
            self._tmp.unlink(missing_ok=True)
        self._handle = None


def read_removals(folder: str | Path) -> list[dict[str, Any]]:
    """Every removed-document row a step logged, in task order."""
    rows = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


class SourceReader(PipelineStep):
    """Reads the input files of shard `rank` (JSON lines, optionally .gz/.zst, on a filesystem every task sees).

    Blank lines are skipped; invalid JSON, a non-object line or a record without a string text field is a
    malformed record and an empty text an empty document: both are counted per source and logged (with file and
    line) in `log`, never silently dropped. A file that ends early (a truncated archive) stops the run."""

    type = "📖 - READER"
    name = "📖 Sources"

    def __init__(self, files: list[dict[str, str]], tasks: int, tokenizer: str | None, log: RemovalLog) -> None:
        super().__init__()
        self.files = files
        self.tasks = tasks
        self.tokenizer = tokenizer
        self.log = log

    def _count(self, source: str, metric: str, value: int = 1) -> None:
        self.stat_update(stat_key(READ_LABEL, source, metric), value=value)

    def _skip(self, writer: RemovalLog, entry: dict[str, str], line: int, reason: str, rank: int) -> None:
        doc = Document(text="", id="", metadata={"source": entry["source"], "file": entry["path"], "line": line})
        doc.metadata["filter_reason"] = reason
        writer.write(doc, rank)
        self._count(entry["source"], "malformed" if reason != "empty" else "empty")

    def _documents(self, entry: dict[str, str], rank: int, writer: RemovalLog) -> Iterator[Document]:
        path, source = entry["path"], entry["source"]
        text_field, id_field, url_field = entry["text_field"], entry["id_field"], entry["url_field"]
        try:
            with fsspec.open(path, "rb", compression="infer") as handle:
                for number, raw in enumerate(_text_lines(handle), start=1):
                    if not raw.strip():
                        continue
                    self._count(source, "docs_in")
                    try:
                        record = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        self._skip(writer, entry, number, "malformed: invalid JSON or UTF-8", rank)
                        continue
                    text = record.get(text_field) if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        self._skip(writer, entry, number, f"malformed: no string {text_field!r} field", rank)
                        continue
                    if not text.strip():
                        self._skip(writer, entry, number, "empty", rank)
                        continue
                    doc_id = record.get(id_field)
                    doc_id = f"{os.path.basename(path)}:{number}" if doc_id is None else str(doc_id)
                    metadata: dict[str, Any] = {"source": source, "file": path, "line": number, "shard": rank}
                    if isinstance(record.get(url_field), str):
                        metadata["url"] = record[url_field]
                    doc = Document(text=text, id=doc_id, metadata=metadata)
                    count_document(doc, self.tokenizer)
                    self._count(source, "docs_out")
                    self._count(source, "chars_out", len(text))
                    self._count(source, "tokens_out", doc.metadata["tokens"])
                    yield doc
        except (OSError, EOFError, zstandard.ZstdError) as e:
            raise CurationError(f"input file {path} could not be read to the end: {e}") from None

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.log as writer:
            for index in shard_files(rank, self.tasks, len(self.files)):
                yield from self._documents(self.files[index], rank, writer)


class ShardReader(PipelineStep):
    """Reads shard `rank` of `folder` (or, with `all_shards`, every shard in order, for a single-task stage)."""

    type = "📖 - READER"
    name = "📖 Shards"

    def __init__(self, folder: str | Path, tasks: int, all_shards: bool = False) -> None:
        super().__init__()
        self.folder = str(folder)
        self.tasks = tasks
        self.all_shards = all_shards

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for shard in range(self.tasks) if self.all_shards else [rank]:
            yield from read_shard(shard_path(self.folder, shard))


def read_shard(path: Path) -> Iterator[Document]:
    """The documents of one shard file."""
    if not path.is_file():
        raise RunError(f"shard {path} is missing (its stage did not complete)")
    with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
        for line in io.BufferedReader(stream):
            yield _record_document(json.loads(line))


class ShardWriter(PipelineStep):
    """Writes documents to the shard named by their `metadata["shard"]`: shard `rank`, or with `all_shards` every
    shard 0..tasks-1 (documents arrive in shard order). Every shard file is written, empty ones too."""

    type = "💽 - WRITER"
    name = "💽 Shards"

    def __init__(self, folder: str | Path, tasks: int, all_shards: bool = False) -> None:
        super().__init__()
        self.folder = str(folder)
        self.tasks = tasks
        self.all_shards = all_shards

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        shards = list(range(self.tasks)) if self.all_shards else [rank]
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        writer = _OneShard(self.folder, shards.pop(0))
        try:
            for doc in data or ():
                while doc.metadata["shard"] != writer.shard:
                    if not shards or doc.metadata["shard"] < writer.shard:
                        raise RunError(f"document {doc.id} of shard {doc.metadata['shard']} came out of order")
                    writer.close()
                    writer = _OneShard(self.folder, shards.pop(0))
                writer.write(_document_record(doc))
            writer.close()
            for shard in shards:
                _OneShard(self.folder, shard).close()
        except BaseException:
            writer.abort()
            raise
        return
        yield  # a pipeline step is a generator; this one yields nothing


class _OneShard:
    def __init__(self, folder: str, shard: int) -> None:
        self.shard = shard
        self.final = shard_path(folder, shard)
        self.tmp = atomic.temporary_name(self.final)
        self.raw = open(self.tmp, "wb")
        self.stream = zstandard.ZstdCompressor(level=3).stream_writer(self.raw, closefd=False)

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def close(self) -> None:
        self.stream.close()
        self.raw.close()
        atomic.publish(self.tmp, self.final)

    def abort(self) -> None:
        if not self.raw.closed:
            self.raw.close()
        self.tmp.unlink(missing_ok=True)
