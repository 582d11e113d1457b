"""Where a task's rows come from: a local copy (two layouts) or `datasets.load_dataset`.

Local layouts under `--data_dir=DIR`:
- `DIR/<task>/validation/`: what `datasets.Dataset.save_to_disk` writes (Arrow IPC stream files listed in
  `state.json`), read with pyarrow, which is optional (`pip install pyarrow`);
- `DIR/<task>.validation.jsonl`: one JSON object per line.
`DIR/hf_save_to_disk/...` and `DIR/jsonl/...` are looked at too, so the parent folder of both works
(reading the JSON-lines copy when pyarrow is missing).
Without `--data_dir`, `datasets.load_dataset(task.hf_path, task.hf_name)` is used when `datasets` is installed
(it needs the HF hub or its cache).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from olmo_jax.errors import EvalError

if TYPE_CHECKING:  # a type only: tasks imports this module's readers (through mmlu)
    from olmo_jax.eval.tasks import Task


def expected_layout(task: Task, data_dir: str | Path = "DIR") -> str:
    """The accepted local layouts for `task`, for error messages."""
    return (
        f"{data_dir}/{task.name}/{task.split}/ (datasets.save_to_disk) or "
        f"{data_dir}/{task.name}.{task.split}.jsonl (JSON lines)"
    )


def _local_candidates(task: Task, data_dir: Path) -> list[Path]:
    roots = [data_dir, data_dir / "hf_save_to_disk", data_dir / "jsonl"]
    found = []
    for root in roots:
        found += [root / task.name / task.split, root / f"{task.name}.{task.split}.jsonl"]
    return found


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped); a bad line is an error naming file and line."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{number}: not valid JSON ({e.msg})") from None
    return rows


def read_save_to_disk(directory: Path) -> list[dict[str, Any]]:
    """Rows of a `datasets.Dataset.save_to_disk` directory, read with pyarrow's IPC stream reader."""
    if importlib.util.find_spec("pyarrow") is None:
        raise EvalError(
            f"reading {directory} (datasets.save_to_disk layout) needs pyarrow: `pip install pyarrow`, "
            "or point --data_dir at the JSON-lines copy (<task>.validation.jsonl)"
        )
    import pyarrow as pa

    state_file = directory / "state.json"
    if state_file.is_file():
        files = [directory / entry["filename"] for entry in json.loads(state_file.read_text())["_data_files"]]
    else:
        files = sorted(directory.glob("*.arrow"))
    if not files:
        raise EvalError(f"{directory} holds no .arrow files (expected a datasets.save_to_disk directory)")
    rows: list[dict[str, Any]] = []
    for file in files:
        with pa.memory_map(str(file)) as source:
            rows += pa.ipc.open_stream(source).read_all().to_pylist()
    return rows


def _load_from_hub(task: Task) -> list[dict[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(task.hf_path, task.hf_name, split=task.split)
    except Exception as e:  # network, cache and dataset-script failures all surface as different types
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvalError(
            f"datasets.load_dataset({task.hf_path!r}, {task.hf_name!r}) failed ({first_line}); "
            f"pass --data_dir with {expected_layout(task)}"
        ) from None
    return [dict(row) for row in dataset]


def load_rows(task: Task, data_dir: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows (all when None) of `task`'s split, from `data_dir` or the HF hub."""
    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise EvalError(f"--data_dir {data_dir} is not a directory")
        found = [c for c in _local_candidates(task, data_dir) if c.exists()]
        if not found:
            raise EvalError(f"no data for task {task.name!r} in {data_dir}; expected {expected_layout(task, data_dir)}")
        if importlib.util.find_spec("pyarrow") is None:  # prefer a copy we can read without pyarrow
            found.sort(key=lambda c: c.is_dir())
        candidate = found[0]
        rows = read_save_to_disk(candidate) if candidate.is_dir() else read_jsonl(candidate)
        where = str(candidate)
    elif importlib.util.find_spec("datasets") is not None:
        rows = _load_from_hub(task)
        where = f"datasets.load_dataset({task.hf_path!r}, {task.hf_name!r}, split={task.split!r})"
    else:
        raise EvalError(
            f"no data for task {task.name!r}: pass --data_dir with {expected_layout(task)}, "
            "or install `datasets` to load it from the HF hub"
        )
    if not rows:
        raise EvalError(f"the dataset for task {task.name!r} at {where} is empty")
    return rows if limit is None else rows[:limit]
