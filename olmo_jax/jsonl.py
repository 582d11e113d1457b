"""JSON-lines files of records with one string field (documents, prompts), read with one-line errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from olmo_jax.errors import InputError


def read_string_field(
    path: str | Path, field: str, *, error: type[InputError] = InputError, what: str = "records"
) -> list[str]:
    """`field` of every line of a JSON-lines file (gzipped when its name ends in .gz); blank lines skipped.

    A line that is not JSON, a record without a string `field`, an unreadable file or a file with no
    records raises `error` naming the file (and line)."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    values = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise error(f"{path}:{number}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(field), str):
                    raise error(f"{path}:{number}: expected an object with a string {field!r} field")
                values.append(record[field])
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise error(f"cannot read {path}: {e}") from None
    if not values:
        raise error(f"{path} holds no {what}")
    return values
