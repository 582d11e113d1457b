"""Perplexity and bits per byte on JSON-lines text sets in Paloma's layout.

Layout: `<source>/<split>/<domain>.jsonl.gz` (also `.jsonl`, `.json.gz`, `.json`), one `{"text": ...}` per
line. `--ppl=DIR` may be a Paloma root (every source under it; only the `val` split by default), one
source folder, or a single file (then source = domain = the file's name). Folders named like a split
(`val`, `test`, ...) are split levels: only the chosen split's files are read.

Metrics, as Paloma:
- per domain: bits per byte = sum of token NLL (nats) / (ln 2 x UTF-8 bytes of the texts), and
  perplexity = exp(sum NLL / tokens), summed over the domain's documents;
- per source: the plain mean over its domains of each (macro average), every domain weighing the same.

Each document is scored on its own, starting after an EOS token (documents are EOS-separated in
training). A document longer than the model length is cut into disjoint windows of `max_length`
tokens; every token is predicted exactly once, and a window's first token sees only the previous
window's last token (no overlap, no carried context) - the cheapest scheme, and Paloma's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_jax.errors import EvalError
from olmo_jax.eval.downstream import Tokenizer
from olmo_jax.eval.scoring import Request, Scorer
from olmo_jax.jsonl import read_string_field

SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json")
# Folder names read as a split level rather than a source (Paloma: <source>/<split>/<domain>).
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test"})


@dataclass(frozen=True)
class TextSet:
    """One Paloma domain: its source, its name and the file holding its documents."""

    source: str
    domain: str
    path: Path


def _strip_suffix(name: str) -> str | None:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def find_text_sets(path: str | Path, split: str = "val") -> list[TextSet]:
    """The domains under `path` (a Paloma root, a source folder or a file); see the module docstring."""
    path = Path(path)
    if path.is_file():
        domain = _strip_suffix(path.name)
        if domain is None:
            raise EvalError(f"--ppl file {path} is not JSON lines (expected one of {', '.join(SUFFIXES)})")
        return [TextSet(domain, domain, path)]
    if not path.is_dir():
        raise EvalError(f"--ppl path {path} does not exist")
    found = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        domain = _strip_suffix(file.name)
        if domain is None:
            continue
        folders = file.relative_to(path).parts[:-1]
        splits = [f for f in folders if f in SPLIT_NAMES]
        if splits and splits[-1] != split:
            continue
        sources = [f for f in folders if f not in SPLIT_NAMES]
        if sources:
            source = sources[0]
        else:  # `path` is a source folder (<split>/<domain>) or a split folder (<domain>)
            source = path.parent.name if path.name in SPLIT_NAMES else path.name
        found.append(TextSet(source, domain, file))
    if not found:
        raise EvalError(
            f"no text sets under {path}: expected <source>/{split}/<domain>.jsonl.gz files "
            "(Paloma's layout) or JSON-lines files with a 'text' field"
        )
    return found


def read_texts(path: Path) -> list[str]:
    """The "text" field of every line of a (gzipped) JSON-lines file."""
    return read_string_field(path, "text", error=EvalError, what="documents")


def document_requests(tokens: list[int], eos_token_id: int, max_length: int) -> list[Request]:
    """Disjoint windows covering every token of a document once (see the module docstring)."""
    requests = []
    for start in range(0, len(tokens), max_length):
        context = (eos_token_id,) if start == 0 else (tokens[start - 1],)
        requests.append(Request(context, tuple(tokens[start : start + max_length])))
    return requests


@dataclass
class PreparedTextSet:
    """A domain tokenized into window requests, with the totals its metrics divide by."""

    text_set: TextSet
    requests: list[Request]
    documents: int
    tokens: int
    bytes: int


def prepare_text_set(
    text_set: TextSet, tokenizer: Tokenizer, max_length: int, limit: int | None = None
) -> PreparedTextSet:
    """Tokenize the first `limit` documents (all when None) of a domain into window requests."""
    texts = read_texts(text_set.path)[:limit]
    requests: list[Request] = []
    tokens = n_bytes = 0
    for text in texts:
        ids = list(tokenizer.encode(text))
        requests += document_requests(ids, tokenizer.eos_token_id, max_length)
        tokens += len(ids)
        n_bytes += len(text.encode("utf-8"))
    if tokens == 0:
        raise EvalError(f"{text_set.path}: the documents hold no text to score")
    return PreparedTextSet(text_set, requests, len(texts), tokens, n_bytes)


def score_text_sets(prepared: list[PreparedTextSet], scorer: Scorer, progress=None) -> dict[str, Any]:
    """Per-domain and per-source (macro-averaged) bits per byte and perplexity."""
    all_requests = [r for p in prepared for r in p.requests]
    loglikelihood = scorer.score(all_requests, progress=progress).loglikelihood
    sources: dict[str, dict[str, Any]] = {}
    offset = 0
    for p in prepared:
        nll = -float(loglikelihood[offset : offset + len(p.requests)].sum())
        offset += len(p.requests)
        domain = {
            "bits_per_byte": nll / (math.log(2) * p.bytes),
            "perplexity": math.exp(nll / p.tokens),
            "nll": nll,
            "tokens": p.tokens,
            "bytes": p.bytes,
            "documents": p.documents,
            "windows": len(p.requests),
        }
        sources.setdefault(p.text_set.source, {"domains": {}})["domains"][p.text_set.domain] = domain
    for source in sources.values():
        domains = list(source["domains"].values())
        for metric in ("bits_per_byte", "perplexity"):
            source[metric] = sum(d[metric] for d in domains) / len(domains)
    return sources
