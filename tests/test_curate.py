"""`data curate`: Dolma's recipe on datatrove, ending in OLMo token files with provenance.

One generated corpus (tests/curate_support.py) carries one planted item per step; the full pipeline must remove or
mask exactly those, whatever the number of workers, and a run killed with SIGKILL and relaunched must finish with
the same bytes without redoing its finished tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("datatrove")
pytest.importorskip("lingua")

from curate_support import PARAGRAPH, build_corpus, write_eval_data  # noqa: E402

from olmo_jax.curate import pipeline, provenance  # noqa: E402
from olmo_jax.curate.dedup import BloomFilter  # noqa: E402
from olmo_jax.curate.spec import load_spec  # noqa: E402
from olmo_jax.curate.steps import EMAIL_TOKEN, IP_TOKEN, PHONE_TOKEN, Mixer  # noqa: E402
from olmo_jax.data.__main__ import main  # noqa: E402
from olmo_jax.data.tokenizer import load_tokenizer  # noqa: E402
from olmo_jax.data.tokenizer_formats import train_sentencepiece  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS = [
    "language",
    "gopher_quality",
    "gopher_repetition",
    "c4",
    "pii",
    "dedup_urls",
    "dedup_documents",
    "dedup_minhash",
    "dedup_paragraphs",
    "decontaminate",
    "mix",
]


def write_spec(root: Path, corpus, tokenizer: Path, eval_dir: Path, paloma: Path, marker: Path) -> Path:
    steps = [
        # Passes documents on; kills the run the first time task 1 of the first stage starts (see the kill test).
        {"custom": {"callable": "curate_support:KillOnce", "params": {"marker": str(marker), "rank": 1}}},
        {"language": {"candidates": ["en", "de", "fr"]}},
        "gopher_quality",
        "gopher_repetition",
        "c4",
        "pii",
        "dedup_urls",
        "dedup_documents",
        "dedup_minhash",
        "dedup_paragraphs",
        {"decontaminate": {"tasks": ["arc_easy"], "eval_dir": str(eval_dir), "paloma_dir": str(paloma)}},
        {"mix": {"weights": {"wiki": 2.0}}},
    ]
    spec = {
        "sources": corpus.sources,
        "tokenizer": str(tokenizer),
        "steps": steps,
        "executor": {"workers": 1, "start_method": "fork"},
    }
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """The corpus, its spec, and one uninterrupted in-process run with 1 worker."""
    root = tmp_path_factory.mktemp("curate")
    corpus = build_corpus(root / "data")
    eval_dir, paloma = write_eval_data(root)
    tokenizer = train_sentencepiece(list(corpus.texts.values()), root / "sp.model", vocab_size=600)
    marker = root / "killed-once"
    marker.touch()  # this run is not to be killed
    spec_path = write_spec(root, corpus, tokenizer, eval_dir, paloma, marker)
    report = pipeline.run(load_spec(spec_path), root / "out")
    del report["stage_seconds"]  # wall times, not part of report.json
    return {"root": root, "corpus": corpus, "spec": spec_path, "out": root / "out", "report": report}


def step_report(report: dict, label: str) -> dict:
    return next(s for s in report["steps"] if s["step"] == label)


def output_files(out: Path) -> dict[str, bytes]:
    """The token files and provenance tables, and the manifest's counts and checksums (not its timing)."""
    files = {p.name: p.read_bytes() for p in sorted((out / "tokens").iterdir()) if p.suffix in (".npy", ".npz")}
    manifest = json.loads((out / "tokens" / "manifest.json").read_text())
    files["manifest"] = json.dumps([manifest[k] for k in ("documents", "tokens", "files", "tokenizer")]).encode()
    return files


def curate_cli(spec: Path, out: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    paths = [str(REPO), str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, "-m", "olmo_jax.data", "curate", str(spec), "-o", str(out), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def decoded_documents(out: Path, tokenizer: str) -> dict[tuple[str, str, int], str]:
    """(source, id, copy) -> text, read back from the token files through their provenance tables."""
    tok = load_tokenizer(tokenizer)
    manifest = json.loads((out / "tokens" / "manifest.json").read_text())
    texts = {}
    for entry in manifest["files"]:
        path = out / "tokens" / entry["path"]
        tokens = np.fromfile(path, dtype=manifest["dtype"])
        table = provenance.load_table(path)
        for k in range(len(table)):
            row = table.row(k)
            ids = tokens[row.start : row.start + row.length].tolist()
            assert ids[-1] == tok.eos_token_id
            texts[(row.source, row.id, row.copy)] = tok.decode(ids[:-1])
    return texts


def test_each_planted_item_is_removed_or_masked_by_its_step_and_nothing_else(curated):
    corpus, report = curated["corpus"], curated["report"]
    for label in STEPS:
        removed = {row["id"] for row in step_report(report, label)["removed"]}
        assert removed == corpus.removed.get(label, set()), label
        changed = step_report(report, label)["total"].get("changed", 0)
        assert changed == {"c4": 1, "pii": 1, "dedup_paragraphs": 2}.get(label, 0), label
    read = step_report(report, "read")
    skipped = [(r["reason"], r["line"]) for r in read["removed"]]
    assert skipped == [("malformed: invalid JSON or UTF-8", 14), ("empty", 15)]
    pii = step_report(report, "pii")["engine_stats"]
    assert (pii["masked_email_address"], pii["masked_phone_number"], pii["masked_ip_address"]) == (1, 1, 1)
    # Per source, in and out: every source's survivors, wiki's twice (mix weight 2).
    mix = step_report(report, "mix")["sources"]
    assert (mix["web"]["docs_in"], mix["web"]["docs_out"]) == (corpus.kept["web"], corpus.kept["web"])
    assert (mix["wiki"]["docs_in"], mix["wiki"]["docs_out"]) == (corpus.kept["wiki"], 2 * corpus.kept["wiki"])
    language = step_report(report, "language")["sources"]["web"]
    assert language["docs_removed_percent"] == round(100 * 2 / language["docs_in"], 3)
    assert report["output"]["tokens"] == step_report(report, "mix")["total"]["tokens_out"]
    assert report["output"]["documents"] == corpus.kept["web"] + 2 * corpus.kept["wiki"]


def test_the_token_files_hold_the_survivors_with_pii_masked_and_duplicate_lines_gone(curated):
    corpus = curated["corpus"]
    texts = decoded_documents(curated["out"], str(curated["root"] / "sp.model"))
    planted = set().union(*corpus.removed.values())
    expected = {doc_id for doc_id in corpus.texts if doc_id not in planted}
    assert {doc_id for _, doc_id, _ in texts} == expected
    assert {copy for source, _, copy in texts if source == "wiki"} == {0, 1}
    pii = texts[("web", "pii-1", 0)]
    assert all(token in pii for token in (EMAIL_TOKEN, PHONE_TOKEN, IP_TOKEN)) and "jane.doe" not in pii
    assert "JavaScript" not in texts[("web", "js-1", 0)]
    assert PARAGRAPH in texts[("web", "web-b1", 0)]
    assert PARAGRAPH not in texts[("wiki", "wiki-2", 0)] and PARAGRAPH not in texts[("wiki", "wiki-4", 1)]
    assert texts[("web", "web-0", 0)] == corpus.texts["web-0"]


@pytest.mark.slow
def test_one_and_two_workers_give_byte_identical_token_files_and_provenance(curated, tmp_path):
    result = curate_cli(curated["spec"], tmp_path / "out", "--workers=2")
    assert result.returncode == 0, result.stderr
    assert output_files(tmp_path / "out") == output_files(curated["out"])
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == curated["report"]


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_to_the_same_output_without_redoing_finished_tasks(curated, tmp_path):
    marker = Path(load_spec(curated["spec"]).steps[0].params["params"]["marker"])
    marker.unlink()
    out = tmp_path / "out"
    killed = curate_cli(curated["spec"], out, start_new_session=True)  # task 1 of stage 1 kills the process group
    assert killed.returncode == -9 and marker.exists()
    stage = sorted((out / "work" / "stages").iterdir())[0]
    finished = [stage / "completions" / "00000", stage / "logs" / "task_00000.log"]
    assert [p.exists() for p in finished] == [True, True] and not (stage / "completions" / "00001").exists()
    assert not (out / "tokens").exists() and not (out / "report.json").exists()
    before = [p.stat().st_mtime_ns for p in finished]
    resumed = curate_cli(curated["spec"], out)
    assert resumed.returncode == 0, resumed.stderr
    assert [p.stat().st_mtime_ns for p in finished] == before  # task 0 was not run again
    assert output_files(out) == output_files(curated["out"])
    assert json.loads((out / "report.json").read_text()) == curated["report"]


def test_inspect_step_names_the_source_and_document_of_every_instance(curated, capsys):
    corpus = curated["corpus"]
    args = [
        "inspect",
        "--config=tiny",
        f"--config.data.paths={json.dumps([str(curated['out'] / 'tokens' / '*.npy')])}",
        f"--config.tokenizer.identifier={curated['root'] / 'sp.model'}",
        "--config.model.max_sequence_length=64",
        "--config.global_train_batch_size=4",
        "--step=3",
        "--format=json",
    ]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    for instance in record["instances"]:
        documents = instance["documents"]
        first = documents[0]
        assert first["start"] <= instance["offset"] < first["start"] + first["length"]
        assert all(doc["id"] in corpus.texts and doc["source"] in ("web", "wiki") for doc in documents)
        origin = provenance.document_at(instance["path"], instance["offset"])
        assert (origin.source, origin.id) == (documents[0]["source"], documents[0]["id"])
    assert main([*args[:-1], "--format=text"]) == 0
    assert "document [w" in capsys.readouterr().out


def test_provenance_lookup_at_document_boundaries(tmp_path):
    token_file = tmp_path / "part-00000.npy"
    rows = [{"source": "a", "id": "x", "file": "f", "line": 3}, {"source": "b", "id": "ÿ", "file": "g", "line": 1}]
    provenance.write_table(token_file, rows, np.array([5, 2]))
    assert [provenance.document_at(token_file, t).id for t in (0, 4, 5, 6)] == ["x", "x", "ÿ", "ÿ"]
    assert provenance.document_at(token_file, 7) is None
    assert [d.id for d in provenance.documents_in(token_file, 3, 6)] == ["x", "ÿ"]
    assert provenance.documents_in(tmp_path / "other.npy", 0, 1) is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["steps"].append("sharpen"), "unknown step 'sharpen'; steps: gopher_quality"),
        (lambda s: s["steps"].insert(0, {"c4": {"min_sentences": 2}}), "unknown parameter steps[0].c4.min_sentences"),
        (lambda s: s["steps"].insert(0, {"gopher_quality": {"min_doc_words": "many"}}), "expected an integer"),
        (lambda s: s["sources"][0].update(paths=["nowhere/*.jsonl"]), "sources[0].paths: "),
        (lambda s: s["steps"].insert(0, {"mix": {}}), "mix must be the last step"),
        (lambda s: s["steps"][-1]["mix"]["weights"].update(news=1.0), "names 'news', which is not a source"),
        (lambda s: s.update(executor={"type": "spark"}), "invalid value 'spark' for executor.type"),
        (lambda s: s["steps"].insert(0, {"language": {"languages": ["xx"]}}), "'xx' is not an ISO 639-1"),
    ],
)
def test_bad_specs_are_one_line_errors_and_write_nothing(curated, tmp_path, capsys, edit, message):
    spec = yaml.safe_load(curated["spec"].read_text())
    edit(spec)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["curate", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_relaunching_into_the_output_of_another_pipeline_is_refused(curated, tmp_path, capsys):
    spec = yaml.safe_load(curated["spec"].read_text())
    spec["steps"] = spec["steps"][1:3]
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["curate", str(path), "-o", str(curated["out"])]) == 2
    assert "holds a run of another pipeline" in capsys.readouterr().err


def test_slurm_stages_are_job_arrays_each_depending_on_the_previous(curated, tmp_path):
    from datatrove.executor import SlurmPipelineExecutor

    spec = yaml.safe_load(curated["spec"].read_text())
    spec["executor"] = {"type": "slurm", "slurm": {"partition": "cpu", "time": "01:00:00", "cpus_per_task": 2}}
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded = load_spec(path)
    plan = pipeline.plan(loaded, tmp_path / "out", workers=4)
    runners = pipeline.executors(plan, loaded, tmp_path / "out" / "work", workers=4)
    assert all(isinstance(r, SlurmPipelineExecutor) for r in runners)
    assert [r.depends for r in runners[1:]] == runners[:-1] and runners[0].depends is None
    assert [r.tasks for r in runners] == [s.tasks for s in plan.stages] and runners[0].cpus_per_task == 2
    assert runners[8].tasks == 14  # MinHash buckets: one task per bucket


@pytest.mark.slow
def test_ray_with_two_local_workers_gives_the_same_output(curated, tmp_path):
    pytest.importorskip("ray")
    spec = yaml.safe_load(curated["spec"].read_text())
    spec["executor"] = {"type": "ray", "workers": 2, "ray": {"num_cpus": 2}}
    path = tmp_path / "ray.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = curate_cli(path, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert output_files(tmp_path / "out") == output_files(curated["out"])


def test_bloom_filter_finds_every_repeat_and_false_positives_near_its_rate():
    bloom = BloomFilter(expected=20_000, rate=1e-3, seed=7)
    seen = [f"seen {i}".encode() for i in range(20_000)]
    first = np.concatenate([bloom.check_and_add(seen[i : i + 100]) for i in range(0, 20_000, 100)])
    assert first.sum() <= 30  # false positives while filling up, at a rate growing to 1e-3
    assert bloom.check_and_add([b"x", b"y", b"x", seen[5]]).tolist() == [False, False, True, True]
    assert all(item in bloom for item in seen[::20])  # no false negatives
    false_positives = sum(f"new {i}".encode() in bloom for i in range(5_000))
    assert false_positives <= 25  # 5 expected at 1e-3; 25 is ~9 standard deviations above


def test_a_fractional_mix_weight_keeps_a_fixed_share_whatever_the_order():
    from datatrove.data import Document

    docs = [Document(text="t", id=str(i), metadata={"source": "web", "file": "f", "line": i}) for i in range(2000)]
    mixer = Mixer({"web": 0.5}, seed=3)
    kept = [d.id for d in mixer.run(iter(docs))]
    assert 900 <= len(kept) <= 1100  # binomial(2000, 0.5): 4.5 standard deviations
    assert sorted(d.id for d in Mixer({"web": 0.5}, seed=3).run(iter(docs[::-1]))) == sorted(kept)
    assert len(list(Mixer({"web": 2.5}, seed=3).run(iter(docs)))) == 4000 + len(kept)
