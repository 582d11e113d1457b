"""JSON-lines files (plain or gzipped), read with one-line errors naming the file and line."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from olmo_jax.errors import InputError


def iter_records(path: str | Path, *, error: type[InputError] = InputError) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; a line that is not JSON, or a file that cannot be
    read (missing, a bad or truncated gzip, not UTF-8), raises `error` naming it."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise error(f"{path}:{number}: not valid JSON ({e.msg})") from None
                yield number, record
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def read_string_field(
    path: str | Path, field: str, *, error: type[InputError] = InputError, what: str = "records"
) -> list[str]:
    """`field` of every line of a JSON-lines file (gzipped when its name ends in .gz); blank lines skipped.

    Besides `iter_records`' errors, a record without a string `field` or a file with no records raises
    `error` naming the file (and line)."""
    values = []
    for number, record in iter_records(path, error=error):
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise error(f"{path}:{number}: expected an object with a string {field!r} field")
        values.append(record[field])
    if not values:
        raise error(f"{path} holds no {what}")
    return values
