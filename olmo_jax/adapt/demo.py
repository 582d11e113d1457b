"""An offline instruction set for the fine-tuning demo, made from what the Python installation carries.

Questions ask what a standard-library module is for; the answer is the first sentence of the module's own
docstring (the same text the built-in pretraining corpus contains). Preference pairs put that answer
(chosen) against another module's (rejected: fluent, but about the wrong module). Nothing is downloaded.

`adapt.train_files` entries `builtin:sft` and `builtin:preferences` name these files; they are written on
first use into the built-in corpus's cache folder (atomically, so concurrent runs never read half a file).
"""

from __future__ import annotations

import ast
import json
import random
import re
import sys
import sysconfig
from pathlib import Path

from olmo_jax import atomic
from olmo_jax.data.builtin import cache_root
from olmo_jax.errors import DataError

DEMO_VERSION = 1
NAMES = ("sft", "preferences")
_QUESTIONS = (
    "What is the Python module {name} for?",
    "In one sentence, what does the {name} module do?",
    "Describe the standard-library module {name}.",
)


def _module_summaries() -> list[tuple[str, str]]:
    """(module name, first docstring sentence) of the pure-Python standard library's top-level modules."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(stdlib.glob("*.py")):
        if path.stem.startswith("_") or path.stem in ("this", "antigravity"):
            continue
        try:
            docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError):
            continue
        if not docstring:
            continue
        first = re.split(r"(?<=\.)\s", " ".join(docstring.split("\n\n")[0].split()), maxsplit=1)[0].strip()
        if 20 <= len(first) <= 160 and first.endswith("."):
            found.append((path.stem, first))
    return found


def demo_records() -> dict[str, list[dict]]:
    """The two sets: SFT conversations and preference pairs (fixed by the Python version's sources)."""
    summaries = _module_summaries()
    if len(summaries) < 20:
        raise DataError(f"only {len(summaries)} standard-library modules with a docstring were found in this Python")
    rng = random.Random(DEMO_VERSION)
    sft, preferences = [], []
    for i, (name, summary) in enumerate(summaries):
        question = _QUESTIONS[i % len(_QUESTIONS)].format(name=name)
        sft.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": summary}]})
        other = summaries[(i + rng.randrange(1, len(summaries))) % len(summaries)][1]
        preferences.append({"prompt": question, "chosen": summary, "rejected": other})
    return {"sft": sft, "preferences": preferences}


def demo_file(name: str) -> Path:
    """The path of demo set `name` (`sft` or `preferences`), written on first use."""
    if name not in NAMES:
        raise DataError(f"unknown built-in fine-tuning set builtin:{name}; known: builtin:sft, builtin:preferences")
    folder = cache_root() / f"adapt-demo-v{DEMO_VERSION}-py{sys.version_info[0]}.{sys.version_info[1]}"
    path = folder / f"{name}.jsonl"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for set_name, records in demo_records().items():
            text = "".join(json.dumps(record) + "\n" for record in records)
            atomic.write_text(folder / f"{set_name}.jsonl", text)
    return path


def resolve_train_file(path: str) -> str:
    """A path as is; `builtin:<name>` as the demo set's file."""
    return str(demo_file(path.removeprefix("builtin:"))) if path.startswith("builtin:") else path
