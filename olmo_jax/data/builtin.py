"""The built-in demo corpus: text that the Python installation itself carries, so the demo runs offline.

Documents: every topic of `pydoc_data.topics` (the Python language reference as plain text) and the source of
every pure-Python standard-library module outside the test suites (code, comments and docstrings), about
11 MB of text and 3M tokens. About 2% of the documents (chosen by a hash of their name) are held out for
validation. A SentencePiece BPE model (vocab 8000: pad 0, unk 1, eos 2, no BOS; see `train_sentencepiece`)
is trained on the training documents, which are then written as OLMo token files (uint16).

Everything is built on first use (seconds) into `$OLMO_JAX_CACHE/builtin/<key>` (else
`$XDG_CACHE_HOME/olmo_jax`, else `~/.cache/olmo_jax`), where the key names this recipe, the Python version and
the SentencePiece version. Building happens in a temporary folder renamed into place when complete, under a
file lock, so concurrent processes build it once and never see a half-built corpus.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_jax import atomic
from olmo_jax.data.token_writer import write_token_files
from olmo_jax.data.tokenizer_formats import SentencePieceTokenizer, train_sentencepiece
from olmo_jax.errors import DataError

RECIPE_VERSION = 1
VOCAB_SIZE = 8000
VALIDATION_ONE_IN = 50  # documents held out: those whose name hash is 0 modulo this
_TEST_DIRS = {"test", "tests", "idle_test", "idlelib", "lib2to3", "site-packages", "dist-packages"}


@dataclass(frozen=True)
class BuiltinCorpus:
    """Paths of the built corpus (all inside `directory`)."""

    directory: str
    tokenizer_path: str
    token_paths: list[str]
    validation_token_paths: list[str]
    validation_text_path: str  # held-out documents as JSON lines ({"id", "text"}), gzipped, Paloma's layout
    info: dict[str, Any]


def cache_root() -> Path:
    """`$OLMO_JAX_CACHE`, else `$XDG_CACHE_HOME/olmo_jax`, else `~/.cache/olmo_jax`."""
    if os.environ.get("OLMO_JAX_CACHE"):
        return Path(os.environ["OLMO_JAX_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "olmo_jax"
    return Path.home() / ".cache" / "olmo_jax"


def _corpus_key() -> str:
    import sentencepiece

    recipe = f"{RECIPE_VERSION}|{sys.version}|{sentencepiece.__version__}"
    return f"v{RECIPE_VERSION}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def builtin_documents() -> Iterator[tuple[str, str]]:
    """(name, text) of every document, in a fixed order: pydoc topics by name, then stdlib modules by path."""
    import pydoc_data.topics

    for name in sorted(pydoc_data.topics.topics):
        yield f"pydoc_data.topics/{name}", pydoc_data.topics.topics[name]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if _TEST_DIRS.intersection(relative.parts[:-1]) or relative.name.startswith("test_"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # unreadable or not UTF-8: not part of the corpus on this installation
        if text.strip():
            yield f"stdlib/{relative.as_posix()}", text


def _is_validation(name: str) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % VALIDATION_ONE_IN == 0


def _build(directory: Path) -> None:
    """Build the corpus into `directory` (which must be empty)."""
    documents = list(builtin_documents())
    train = [text for name, text in documents if not _is_validation(name)]
    validation = [(name, text) for name, text in documents if _is_validation(name)]
    # Every 4th line is plenty for an 8000-piece vocabulary and keeps training to about two seconds.
    tokenizer_path = train_sentencepiece(train, directory / "tokenizer.model", vocab_size=VOCAB_SIZE, sample_every=4)
    tokenizer = SentencePieceTokenizer(tokenizer_path)
    workers = min(4, os.cpu_count() or 1)
    train_manifest = write_token_files(train, tokenizer, directory / "train", workers=workers)
    validation_manifest = write_token_files([t for _, t in validation], tokenizer, directory / "validation")
    with gzip.open(directory / "validation.jsonl.gz", "wt", encoding="utf-8") as f:
        for name, text in validation:
            f.write(json.dumps({"id": name, "text": text}) + "\n")
    for manifest in (train_manifest, validation_manifest):
        manifest["tokenizer"]["path"] = "tokenizer.model"  # relative to the corpus folder, which gets renamed
    info = {
        "recipe_version": RECIPE_VERSION,
        "python": sys.version,
        "documents": {"train": len(train), "validation": len(validation)},
        "text_bytes": {
            "train": sum(len(t.encode()) for t in train),
            "validation": sum(len(t.encode()) for _, t in validation),
        },
        "train": train_manifest,
        "validation": validation_manifest,
    }
    atomic.write_json(directory / "builtin.json", info, indent=2)


def _load(directory: Path) -> BuiltinCorpus:
    info = json.loads((directory / "builtin.json").read_text())
    return BuiltinCorpus(
        directory=str(directory),
        tokenizer_path=str(directory / "tokenizer.model"),
        token_paths=[str(directory / "train" / f["path"]) for f in info["train"]["files"]],
        validation_token_paths=[str(directory / "validation" / f["path"]) for f in info["validation"]["files"]],
        validation_text_path=str(directory / "validation.jsonl.gz"),
        info=info,
    )


def ensure_builtin_corpus(seq_len: int | None = None) -> BuiltinCorpus:
    """The built-in corpus, built on first use. `seq_len`, if given, must leave at least one training instance."""
    root = cache_root() / "builtin"
    key = _corpus_key()
    final = root / key
    if not (final / "builtin.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait, then find it built
            if not (final / "builtin.json").is_file():
                print(f"olmo_jax: building the built-in corpus in {final} (once)", file=sys.stderr, flush=True)
                for stale in root.glob(f".{key}.*.tmp"):
                    shutil.rmtree(stale, ignore_errors=True)  # left by a builder that died
                shutil.rmtree(final, ignore_errors=True)  # an incomplete folder (no builtin.json) from elsewhere
                with atomic.atomic_directory(final) as tmp:
                    _build(tmp)
    corpus = _load(final)
    if seq_len is not None:
        tokens = corpus.info["train"]["tokens"]
        if tokens < seq_len:
            raise DataError(f"the built-in corpus has {tokens} tokens, not one instance of {seq_len} tokens")
    return corpus


def ensure_builtin_tokenizer() -> str:
    """Path of the built-in corpus's SentencePiece model (building the corpus on first use)."""
    return ensure_builtin_corpus().tokenizer_path
