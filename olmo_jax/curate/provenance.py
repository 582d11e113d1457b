"""Provenance tables: for each token file, which document of which source every token range came from.

`part-00000.npy` gets `part-00000.provenance.npz` beside it, a numpy archive with one row per document, in file
order: `starts` and `lengths` (token offset and token count, EOS included), `source_index` and `file_index` (into the
archive's `names`: a JSON object {"sources": [...], "files": [...]} stored as UTF-8 bytes), `line` (1-based line of
the original input file), `copy` (0, or the copy number `mix` gave an up-sampled document) and the document ids
(`ids`: UTF-8 bytes, document k is `ids[id_offsets[k]:id_offsets[k + 1]]`). It answers "which source and
document did step N see" (`olmo-jax data inspect --step N`) without any index written during training.

This module needs numpy only, so inspect reads tables without the curation extra installed.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from olmo_jax import atomic

SUFFIX = ".provenance.npz"


@dataclass(frozen=True)
class DocumentOrigin:
    """Where the document holding a token came from, and where it sits in its token file."""

    source: str
    id: str
    file: str
    line: int
    copy: int
    start: int
    length: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "id": self.id,
            "file": self.file,
            "line": self.line,
            "copy": self.copy,
            "start": self.start,
            "length": self.length,
        }


def table_path(token_file: str | os.PathLike) -> Path:
    """`part-00000.npy` -> `part-00000.provenance.npz`."""
    path = Path(token_file)
    return path.with_name(path.name.removesuffix(".npy") + SUFFIX)


def write_table(token_file: str | os.PathLike, rows: list[dict[str, Any]], lengths: np.ndarray) -> None:
    """Write the table of `token_file`: `rows` (source, id, file, line, copy) and their token `lengths`, in order."""
    sources = sorted({r["source"] for r in rows})
    files = sorted({r["file"] for r in rows})
    source_index = {s: i for i, s in enumerate(sources)}
    file_index = {f: i for i, f in enumerate(files)}
    ids = [r["id"].encode("utf-8") for r in rows]
    lengths = np.asarray(lengths, dtype=np.int64)
    arrays = {
        "starts": (np.cumsum(lengths) - lengths).astype(np.int64),
        "lengths": lengths,
        "source_index": np.array([source_index[r["source"]] for r in rows], dtype=np.uint32),
        "file_index": np.array([file_index[r["file"]] for r in rows], dtype=np.uint32),
        "line": np.array([r["line"] for r in rows], dtype=np.int64),
        "copy": np.array([r.get("copy", 0) for r in rows], dtype=np.uint32),
        "ids": np.frombuffer(b"".join(ids), dtype=np.uint8),
        "id_offsets": np.concatenate([[0], np.cumsum([len(i) for i in ids])]).astype(np.int64),
        "names": np.frombuffer(json.dumps({"sources": sources, "files": files}).encode("utf-8"), dtype=np.uint8),
    }
    with atomic.atomic_file(table_path(token_file), "wb") as handle:
        np.savez(handle, **arrays)


class Table:
    """A loaded provenance table."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as archive:
            self.arrays = {key: archive[key] for key in archive.files}
        names = json.loads(self.arrays["names"].tobytes().decode("utf-8"))
        self.sources, self.files = names["sources"], names["files"]

    def __len__(self) -> int:
        return len(self.arrays["starts"])

    def row(self, k: int) -> DocumentOrigin:
        a = self.arrays
        offsets = a["id_offsets"]
        return DocumentOrigin(
            source=self.sources[int(a["source_index"][k])],
            id=a["ids"][offsets[k] : offsets[k + 1]].tobytes().decode("utf-8"),
            file=self.files[int(a["file_index"][k])],
            line=int(a["line"][k]),
            copy=int(a["copy"][k]),
            start=int(a["starts"][k]),
            length=int(a["lengths"][k]),
        )

    def rows_in(self, start: int, stop: int) -> list[DocumentOrigin]:
        """The documents with a token in [start, stop)."""
        starts = self.arrays["starts"]
        first = max(int(np.searchsorted(starts, start, side="right")) - 1, 0)
        last = int(np.searchsorted(starts, stop, side="left"))
        return [self.row(k) for k in range(first, min(last, len(self)))]


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int) -> Table:
    return Table(Path(path))


def load_table(token_file: str | os.PathLike) -> Table | None:
    """The provenance table beside `token_file`, or None when it has none (cached while unchanged)."""
    path = table_path(token_file)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _load(str(path), mtime)


def documents_in(token_file: str | os.PathLike, start: int, stop: int) -> list[DocumentOrigin] | None:
    """The documents behind tokens [start, stop) of `token_file`, or None when it has no provenance table."""
    table = load_table(token_file)
    return None if table is None else table.rows_in(start, stop)


def document_at(token_file: str | os.PathLike, offset: int) -> DocumentOrigin | None:
    """(source, document id, original file, line, ...) of the document holding token `offset` of `token_file`;
    None when the file has no provenance table or the offset is past its end."""
    found = documents_in(token_file, offset, offset + 1)
    if not found or not found[0].start <= offset < found[0].start + found[0].length:
        return None
    return found[0]
