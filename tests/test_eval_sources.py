"""Task data: both local layouts of ../shared/data/eval, clear errors for missing or empty data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from olmo_jax.eval.downstream import build_questions
from olmo_jax.eval.sources import load_rows
from olmo_jax.eval.tasks import CORE9, TASKS

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
ROWS = [{"goal": "g1", "sol1": "a", "sol2": "b", "label": 0}, {"goal": "g2", "sol1": "c", "sol2": "d", "label": 1}]
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


@pytest.fixture
def shared_eval() -> Path:
    if not SHARED_EVAL.is_dir():
        pytest.skip(f"reference eval data not present at {SHARED_EVAL} (only in the development checkout)")
    return SHARED_EVAL


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_layout_and_limit(tmp_path):
    _write_jsonl(tmp_path / "piqa.validation.jsonl", ROWS)
    assert load_rows(TASKS["piqa"], tmp_path) == ROWS
    assert load_rows(TASKS["piqa"], tmp_path, limit=1) == ROWS[:1]


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow (optional) is not installed")
def test_save_to_disk_layout(tmp_path):
    import pyarrow as pa

    folder = tmp_path / "piqa" / "validation"
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(ROWS)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    assert load_rows(TASKS["piqa"], tmp_path) == ROWS


def test_save_to_disk_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "piqa" / "validation").mkdir(parents=True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "pyarrow" else real_find_spec(name))
    with pytest.raises(ValueError, match="needs pyarrow: `pip install pyarrow`, or point --data_dir at the JSON"):
        load_rows(TASKS["piqa"], tmp_path)


def test_parent_folder_of_both_layouts_reads_jsonl_when_pyarrow_is_missing(tmp_path, monkeypatch):
    (tmp_path / "hf_save_to_disk" / "piqa" / "validation").mkdir(parents=True)
    (tmp_path / "jsonl").mkdir()
    _write_jsonl(tmp_path / "jsonl" / "piqa.validation.jsonl", ROWS)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "pyarrow" else real_find_spec(name))
    assert load_rows(TASKS["piqa"], tmp_path) == ROWS


def test_missing_dataset_error_shows_the_expected_layout(tmp_path):
    with pytest.raises(ValueError) as error:
        load_rows(TASKS["sciq"], tmp_path)
    message = str(error.value)
    assert f"no data for task 'sciq' in {tmp_path}" in message
    assert f"{tmp_path}/sciq/validation/ (datasets.save_to_disk)" in message
    assert f"{tmp_path}/sciq.validation.jsonl (JSON lines)" in message


def test_missing_data_dir_and_no_datasets_package(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="is not a directory"):
        load_rows(TASKS["sciq"], tmp_path / "nope")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "datasets" else real_find_spec(name))
    with pytest.raises(ValueError, match="pass --data_dir with DIR/sciq/validation/ .* or install `datasets`"):
        load_rows(TASKS["sciq"], None)


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "copa.validation.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="the dataset for task 'copa' at .*copa.validation.jsonl is empty"):
        load_rows(TASKS["copa"], tmp_path)


def test_bad_json_line_and_bad_row_name_their_place(tmp_path):
    (tmp_path / "copa.validation.jsonl").write_text('{"premise": "x."}\n{oops\n')
    with pytest.raises(ValueError, match=r"copa.validation.jsonl:2: not valid JSON"):
        load_rows(TASKS["copa"], tmp_path)
    with pytest.raises(ValueError, match="task 'copa': row 0 does not fit the template .*KeyError"):
        build_questions(TASKS["copa"], [{"premise": "x."}])


EXPECTED_ROWS = {
    "arc_challenge": 299,
    "arc_easy": 570,
    "boolq": 3270,
    "copa": 100,
    "hellaswag": 10042,
    "openbookqa": 500,
    "piqa": 1838,
    "sciq": 1000,
    "winogrande": 1267,
}


def test_shared_jsonl_copies_load_and_template(shared_eval):
    for name in CORE9:
        rows = load_rows(TASKS[name], shared_eval / "jsonl")
        assert len(rows) == EXPECTED_ROWS[name], name
        build_questions(TASKS[name], rows)  # every row fits its template


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow (optional) is not installed")
def test_shared_save_to_disk_copies_equal_the_jsonl_ones(shared_eval):
    for name in CORE9:
        assert load_rows(TASKS[name], shared_eval, limit=50) == load_rows(TASKS[name], shared_eval / "jsonl", limit=50)


def _fake_datasets(monkeypatch, load_dataset) -> None:
    import importlib.machinery
    import sys
    import types

    module = types.ModuleType("datasets")
    module.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_without_data_dir_the_hub_is_asked_by_task_path_and_config(monkeypatch):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return ROWS

    _fake_datasets(monkeypatch, load_dataset)
    assert load_rows(TASKS["arc_easy"], None, limit=1) == ROWS[:1]
    assert calls == [("allenai/ai2_arc", "ARC-Easy", "validation")]


def test_a_failing_hub_load_is_one_line_naming_the_local_layouts(monkeypatch):
    def load_dataset(path, name, split):
        raise ConnectionError("Couldn't reach 'ybisk/piqa' on the Hub\n(long details)")

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(ValueError) as error:
        load_rows(TASKS["piqa"], None)
    assert str(error.value) == (
        "datasets.load_dataset('ybisk/piqa', None) failed (Couldn't reach 'ybisk/piqa' on the Hub); "
        "pass --data_dir with DIR/piqa/validation/ (datasets.save_to_disk) or DIR/piqa.validation.jsonl (JSON lines)"
    )
