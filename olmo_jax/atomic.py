"""Atomic file output: a file or folder appears under its final name complete, or not at all.

Every writer of a file that someone reads by name (configs, metrics, manifests, token files, JSON
results, converted models) goes through here: write under a temporary name in the same folder, fsync
the data, rename, then fsync the folder so that the rename itself survives a power cut. Temporary names
start with "." and carry ".tmp", so a killed writer leaves a hidden file and never a half-written one.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from olmo_jax.errors import InputError


def fsync_dir(path: Path) -> None:
    """Make the entries of folder `path` (a rename into it) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows) refuse fsync on a directory
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on success fsync it and rename it to `path`.

    On an exception the temporary file is removed and `path` is left as it was. `mode` is "w" (text,
    UTF-8) or "wb".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates the file 0600; give it the permissions an ordinary open() would (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def write_json(path: str | Path, payload: Any, *, indent: int | None = 1) -> None:
    """Write `payload` as JSON to `path` atomically (with a trailing newline)."""
    write_text(path, json.dumps(payload, indent=indent) + "\n")


@contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Yield a fresh hidden folder beside `out`; rename it to `out` on success, delete it on failure.

    `out` must not exist (a converted model or prepared folder is never merged into an older one). Hidden
    folders that a killed writer of the same `out` left behind are removed first.
    """
    out = Path(out)
    if out.exists():
        raise InputError(f"output {out} already exists; remove it or choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    for leftover in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700: colleagues on shared storage could not read it
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as handle:
                    os.fsync(handle.fileno())
            fsync_dir(Path(root))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)


def temporary_name(path: str | Path) -> Path:
    """The hidden temporary sibling that a streaming writer fills before `publish(tmp, path)`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def publish(tmp: str | Path, path: str | Path) -> None:
    """Give the finished file `tmp` its final name `path`: fsync, rename, fsync the folder."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)
