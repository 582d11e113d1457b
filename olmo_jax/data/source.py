"""Token files → fixed-length training instances, exactly as OLMo chunks them.

OLMo's token files are raw little-endian arrays with no header (uint16 when the vocabulary fits, else uint32).
The files are taken in order; file `f` holds `len(f) // seq_len` instances (its trailing partial chunk is
dropped), and instance `i` is the `i`-th chunk of that concatenation of per-file chunk lists.

Several named sources (`data.sources`) are concatenated in name order (sorted, so that a config written back by
`yaml.safe_dump`, which sorts keys, gives the same instance indices). A source's `weight` is its sampling rate
per epoch, Dolma-style: weight 2 lists each of its instances twice, 0.5 lists a fixed random half (chosen with
`PCG64([seed, source_number])`), 0 leaves it out. With every weight 1 the index space is the plain concatenation.

A folder that `prepare` wrote is checked against its `manifest.json` (which `prepare` writes last): a folder with
prepare's part files and no manifest is an unfinished prepare and is refused, and each file's size must be the
manifest's (`verify_token_files` also compares sha256 sums). The built-in corpus keeps its manifests in the
`builtin.json` beside its token folders. Folders no manifest describes (OLMo's own token files) are used as they
are; a file starting with NumPy's `.npy` header (`np.save` output, not raw tokens) is refused.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from olmo_jax.errors import ConfigError, DataError

MANIFEST_NAME = "manifest.json"  # what `prepare` writes beside its token files, last
BUILTIN_INFO_NAME = "builtin.json"  # the built-in corpus's description, beside its token folders
NUMPY_MAGIC = b"\x93NUMPY"
# prepare's part files and the temporary names it writes them under (`atomic.temporary_name`).
_PREPARE_FILE = re.compile(r"^\.?part-\d{5}\.npy(\.\d+\.tmp)?$")


def token_dtype(vocab_size: int, override: str | None = None) -> np.dtype:
    """The token file dtype: `override` if given, else uint16 when every id fits (vocab ≤ 65,536), else uint32."""
    if override is not None:
        if override not in ("uint16", "uint32"):
            raise ConfigError(f"invalid value {override!r} for data.dtype; valid choices: 'uint16', 'uint32'")
        return np.dtype(override)
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def expand_paths(patterns: Sequence[str], key: str = "data.paths") -> list[str]:
    """Expand globs (each pattern's matches sorted, patterns kept in order); a pattern matching nothing is an error."""
    paths: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise ConfigError(f"{key}: the pattern {pattern!r} matches no file")
            paths.extend(matches)
        else:
            paths.append(pattern)
    return paths


@dataclass(frozen=True)
class TokenFile:
    """One token file: where it is, which named source it belongs to, and how many tokens it holds."""

    path: str
    source: str
    num_tokens: int
    dtype: np.dtype
    manifest: str | None = None  # the manifest that describes it, if any
    sha256: str | None = None  # the manifest's
    tokenizer_identity: str | None = None  # the manifest's: the tokenizer the file was made with


def folder_manifest(folder: str) -> tuple[str, dict[str, Any]] | None:
    """(where, manifest) describing the token files of `folder`, or None when none does (OLMo's own folders).

    Raises DataError for a folder holding prepare's part files but no manifest (a prepare that did not finish).
    """
    folder = folder or "."
    where = os.path.join(folder, MANIFEST_NAME)
    if os.path.isfile(where):
        return where, _read_json(where)
    builtin = os.path.join(os.path.dirname(os.path.abspath(folder)), BUILTIN_INFO_NAME)
    if os.path.isfile(builtin):
        entry = _read_json(builtin).get(os.path.basename(os.path.abspath(folder)))
        if isinstance(entry, dict) and isinstance(entry.get("files"), list):
            return builtin, entry
    if any(_PREPARE_FILE.match(name) for name in os.listdir(folder)):
        raise DataError(f"token folder {folder} holds part files but no {MANIFEST_NAME}: unfinished prepare: rerun it")
    return None


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read the token manifest {path}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"token manifest {path} does not hold a JSON object")
    return data


def _manifest_entry(path: str, size: int, dtype: np.dtype, described: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest's entry for token file `path`, checked against the file's size and `dtype`."""
    where, manifest = described
    name = os.path.basename(path)
    entry = next((f for f in manifest["files"] if isinstance(f, dict) and f.get("path") == name), None)
    if entry is None:
        raise DataError(f"token file {path} is not listed in {where} (added to the folder after prepare?)")
    if manifest.get("dtype") not in (None, dtype.name):
        raise DataError(f"token file {path} holds {manifest['dtype']} tokens ({where}) but is read as {dtype.name}")
    expected = int(entry.get("tokens", -1)) * dtype.itemsize
    if size != expected:
        raise DataError(
            f"token file {path} has {size} bytes but {where} says {expected} ({entry.get('tokens')} tokens): "
            "truncated or changed since prepare; rerun prepare"
        )
    return entry


def open_token_file(path: str, dtype: np.dtype, source: str = "", manifests: dict[str, Any] | None = None) -> TokenFile:
    """Check that `path` is a non-empty raw token file of `dtype` (and what its folder's manifest says of it, if
    any) and describe it. `manifests` caches `folder_manifest` per folder across calls."""
    if not os.path.exists(path):
        raise DataError(f"token file {path} does not exist")
    if not os.path.isfile(path):
        raise DataError(f"token file {path} is not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise DataError(f"token file {path} is empty")
    with open(path, "rb") as f:
        if f.read(len(NUMPY_MAGIC)) == NUMPY_MAGIC:
            raise DataError(
                f"token file {path} is a NumPy .npy file with a header (np.save output), not raw tokens: "
                "write token files with array.tofile(path), or use data prepare"
            )
    if size % dtype.itemsize:
        raise DataError(
            f"token file {path} has {size} bytes, not a multiple of the {dtype.name} item size {dtype.itemsize} "
            "(is data.dtype right?)"
        )
    manifests = {} if manifests is None else manifests
    folder = os.path.dirname(path)
    if folder not in manifests:
        manifests[folder] = folder_manifest(folder)
    described = manifests[folder]
    if described is None:
        return TokenFile(path=path, source=source, num_tokens=size // dtype.itemsize, dtype=dtype)
    entry = _manifest_entry(path, size, dtype, described)
    tokenizer = described[1].get("tokenizer")
    return TokenFile(
        path=path,
        source=source,
        num_tokens=size // dtype.itemsize,
        dtype=dtype,
        manifest=described[0],
        sha256=entry.get("sha256"),
        tokenizer_identity=tokenizer.get("identity") if isinstance(tokenizer, dict) else None,
    )


def verify_token_files(files: Sequence[TokenFile]) -> int:
    """Compare every file's sha256 with its manifest's; returns how many were checked (those with a manifest).
    Raises DataError naming the first file that differs."""
    checked = 0
    for f in files:
        if f.sha256 is None:
            continue
        digest = hashlib.sha256()
        with open(f.path, "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
        if digest.hexdigest() != f.sha256:
            raise DataError(f"token file {f.path} does not match the sha256 in {f.manifest}: it changed since prepare")
        checked += 1
    return checked


def check_tokenizer(files: Sequence[TokenFile], identity: str | None) -> None:
    """Refuse token files whose manifest names another tokenizer than the run's (`identity`; None: no check)."""
    if identity is None:
        return
    for f in files:
        if f.tokenizer_identity is not None and f.tokenizer_identity != identity:
            raise DataError(
                f"token file {f.path} was made with tokenizer {f.tokenizer_identity} ({f.manifest}) but the run's "
                f"tokenizer is {identity}; set tokenizer.identifier to the one prepare used"
            )


@dataclass(frozen=True)
class InstanceLocation:
    """Where instance `index` lives: its file and the offset (in tokens) of its first token there."""

    index: int
    path: str
    source: str
    offset: int


class InstanceSource:
    """Random access to the fixed-length instances of a list of token files (thread-safe reads)."""

    def __init__(
        self,
        files: Sequence[TokenFile],
        seq_len: int,
        *,
        vocab_size: int | None = None,
        mix: np.ndarray | None = None,
        mix_description: Any = None,
    ) -> None:
        """`mix`, if given, maps each (virtual) instance index to an index of the plain concatenation."""
        self.files = list(files)
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        counts = np.array([f.num_tokens // seq_len for f in self.files], dtype=np.int64)
        # starts[k] is the first concatenated instance index of file k; starts[-1] the total.
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.num_base_instances = int(self._starts[-1])
        if self.num_base_instances == 0:
            total = sum(f.num_tokens for f in self.files)
            raise DataError(
                f"the token files hold {total} tokens in all, not one instance of {seq_len} tokens "
                "(a file shorter than the sequence length holds none)"
            )
        self._mix = mix
        self._mix_description = mix_description
        self._memmaps: dict[int, np.memmap] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._mix) if self._mix is not None else self.num_base_instances

    @property
    def dtype(self) -> np.dtype:
        return self.files[0].dtype

    @functools.cached_property
    def identity(self) -> str:
        """16 hex digits naming the instance space: files (by name and length), dtype, seq_len and the mix."""
        description = {
            "files": [[f.source, os.path.basename(f.path), f.num_tokens] for f in self.files],
            "dtype": self.dtype.name,
            "seq_len": self.seq_len,
            "mix": self._mix_description,
        }
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]

    def _bases(self, indices: np.ndarray) -> np.ndarray:
        """Concatenated-instance indices of (virtual) `indices`, range-checked."""
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            bad = indices[(indices < 0) | (indices >= len(self))][0]
            raise IndexError(f"instance index {bad} is out of range for {len(self)} instances")
        return self._mix[indices] if self._mix is not None else indices

    def _file_and_offset(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bases = self._bases(np.asarray(indices, dtype=np.int64))
        files = np.searchsorted(self._starts, bases, side="right") - 1
        return files, (bases - self._starts[files]) * self.seq_len

    def locate(self, index: int) -> InstanceLocation:
        """The file and token offset of instance `index`."""
        files, offsets = self._file_and_offset(np.array([index]))
        f = self.files[int(files[0])]
        return InstanceLocation(index=int(index), path=f.path, source=f.source, offset=int(offsets[0]))

    def _memmap(self, k: int) -> np.memmap:
        with self._lock:
            if k not in self._memmaps:
                f = self.files[k]
                self._memmaps[k] = np.memmap(f.path, dtype=f.dtype, mode="r", shape=(f.num_tokens,))
            return self._memmaps[k]

    def read_fields(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Arrays besides the tokens: none for token files (fine-tuning rows have some, `olmo_jax.adapt.data`)."""
        return {}

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The tokens of `indices` as an int32 array [len(indices), seq_len]; ids ≥ vocab_size are an error."""
        indices = np.asarray(indices, dtype=np.int64)
        files, offsets = self._file_and_offset(indices)
        out = np.empty((len(indices), self.seq_len), dtype=np.int32)
        for row, (k, offset) in enumerate(zip(files.tolist(), offsets.tolist(), strict=True)):
            out[row] = self._memmap(k)[offset : offset + self.seq_len]
        if self.vocab_size is not None and out.size and int(out.max()) >= self.vocab_size:
            row, col = np.argwhere(out >= self.vocab_size)[0]
            location = self.locate(int(indices[row]))
            raise DataError(
                f"token file {location.path}: token id {int(out[row, col])} at token offset "
                f"{location.offset + int(col)} is >= model.vocab_size {self.vocab_size} "
                "(tokenized with another tokenizer, or the wrong data.dtype?)"
            )
        return out


def _source_entries(sources: dict[str, Any]) -> list[tuple[str, list[str], float]]:
    """Normalise `data.sources` ({name: {paths, weight}} or OLMo's {name: [paths]}) to sorted (name, paths, w)."""
    entries = []
    for name in sorted(sources):
        spec = sources[name]
        key = f"data.sources.{name}"
        if isinstance(spec, (list, tuple, str)):
            paths, weight = spec, 1.0
        elif isinstance(spec, dict):
            unknown = set(spec) - {"paths", "weight"}
            if unknown:
                raise ConfigError(f"unknown key {key}.{sorted(unknown)[0]}; valid keys: paths, weight")
            if "paths" not in spec:
                raise ConfigError(f"{key} needs 'paths'")
            paths, weight = spec["paths"], spec.get("weight", 1.0)
        else:
            raise ConfigError(f"{key} must be a list of paths or a mapping with 'paths' and 'weight'")
        if isinstance(paths, str):
            paths = [paths]
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"invalid value {weight!r} for {key}.weight; expected a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"invalid value {weight!r} for {key}.weight; expected a finite number >= 0")
        entries.append((name, expand_paths(paths, key=f"{key}.paths"), weight))
    return entries


def _mix_index(counts: list[int], weights: list[float], seed: int) -> np.ndarray:
    """Concatenated-index list where source `s` appears `weight` times (the fraction as a fixed random subset)."""
    parts = []
    start = 0
    for number, (count, weight) in enumerate(zip(counts, weights, strict=True)):
        whole = int(math.floor(weight))
        base = np.arange(start, start + count, dtype=np.int64)
        parts.extend([base] * whole)
        extra = int(round((weight - whole) * count))
        if extra:
            rng = np.random.Generator(np.random.PCG64([seed, number]))
            parts.append(start + np.sort(rng.choice(count, size=extra, replace=False)).astype(np.int64))
        start += count
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def build_instance_source(
    paths: Sequence[str],
    sources: dict[str, Any],
    *,
    seq_len: int,
    vocab_size: int,
    dtype: str | None = None,
    seed: int = 0,
) -> InstanceSource:
    """The instance space of `data.paths` or of the named `data.sources` (`DataConfig.validate` allows one).

    Having no data at all is legal in a config (a benchmark or a dry run needs none); training is not."""
    if not paths and not sources:
        raise ConfigError("no training data: set data.paths (token files, globs welcome) or data.sources")
    file_dtype = token_dtype(vocab_size, dtype)
    manifests: dict[str, Any] = {}
    if paths:
        files = [open_token_file(p, file_dtype, manifests=manifests) for p in expand_paths(paths)]
        return InstanceSource(files, seq_len, vocab_size=vocab_size)
    entries = _source_entries(sources)
    files, counts, weights = [], [], []
    for name, source_paths, weight in entries:
        source_files = [open_token_file(p, file_dtype, source=name, manifests=manifests) for p in source_paths]
        files.extend(source_files)
        counts.append(sum(f.num_tokens // seq_len for f in source_files))
        weights.append(weight)
    if all(w == 1.0 for w in weights):
        return InstanceSource(files, seq_len, vocab_size=vocab_size)
    mix = _mix_index(counts, weights, seed)
    if len(mix) == 0:
        raise ConfigError("data.sources: the weights leave no instance to train on")
    description = {"weights": dict(zip([e[0] for e in entries], weights, strict=True)), "seed": seed}
    return InstanceSource(files, seq_len, vocab_size=vocab_size, mix=mix, mix_description=description)
