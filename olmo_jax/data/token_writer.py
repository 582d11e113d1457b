"""Documents → OLMo token files: `write_token_files`, the encoding and writing half of `prepare`.

Output: `part-00000.npy`, `part-00001.npy`, ... (raw little-endian arrays with no header despite the suffix, as
OLMo names them; uint16 when the vocabulary fits, else uint32), with EOS after every document. Documents are never
split across files. Every file is written under a temporary name and renamed when complete; a failed run removes
what it wrote.

Encoding runs in `workers` processes on chunks of documents; at most `2 x workers` chunks are in flight, so
memory stays bounded whatever the input size, and the output does not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from olmo_jax import atomic
from olmo_jax.data.source import token_dtype
from olmo_jax.data.tokenizer_formats import SentencePieceTokenizer, Tokenizer, tokenizer_from_file
from olmo_jax.errors import PrepareError

MANIFEST_FORMAT = "olmo_jax.tokens/1"
_CHUNK_TEXT_BYTES = 1 << 20  # text per worker task: large enough to amortise pickling, small for memory
_CHUNK_DOCUMENTS = 4096

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    # One process per core already: keep each tokenizer single-threaded to avoid oversubscription.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = tokenizer_from_file(tokenizer_path)
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
