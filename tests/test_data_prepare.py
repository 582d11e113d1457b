"""`prepare`: documents → OLMo token files that decode back to the text, EOS after each, malformed lines reported."""

from __future__ import annotations

import gzip
import json
import pydoc_data.topics
from pathlib import Path

import numpy as np
import pytest

from olmo_jax.data.__main__ import main
from olmo_jax.data.prepare import prepare
from olmo_jax.data.token_writer import write_token_files
from olmo_jax.data.tokenizer import load_tokenizer
from olmo_jax.data.tokenizer_formats import train_sentencepiece
from olmo_jax.errors import PrepareError

DOCS = [
    "The first document.\nIt has two lines.",
    "def second():\n    return 'indented code'\n",
    "Third: ünïcode, emoji 🙂, and\ttabs.",
]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> str:
    texts = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)[:20]]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("sp") / "sp.model", vocab_size=600)


def split_documents(tokens: np.ndarray, eos: int) -> list[list[int]]:
    """Token lists between EOS tokens (the last document must end with EOS)."""
    assert tokens[-1] == eos, "the last document is not followed by EOS"
    ends = np.flatnonzero(tokens == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e].tolist() for s, e in zip(starts, ends, strict=True)]


def read_parts(output: Path, manifest: dict) -> np.ndarray:
    return np.concatenate([np.fromfile(output / f["path"], dtype=manifest["dtype"]) for f in manifest["files"]])


def test_jsonl_gz_and_text_inputs_round_trip_with_eos_after_every_document(tmp_path, sp_model):
    jsonl = tmp_path / "docs.jsonl.gz"
    with gzip.open(jsonl, "wt", encoding="utf-8") as f:
        for i, text in enumerate(DOCS):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    (tmp_path / "notes.txt").write_text("A plain text file\nis one document.\n")
    manifest = prepare([str(jsonl), str(tmp_path / "notes.txt")], sp_model, tmp_path / "out", progress=False, workers=1)
    tok = load_tokenizer(sp_model)
    tokens = read_parts(tmp_path / "out", manifest)
    decoded = [tok.decode(ids) for ids in split_documents(tokens, tok.eos_token_id)]
    assert decoded == [*DOCS, "A plain text file\nis one document.\n"]
    assert (manifest["documents"], manifest["tokens"], manifest["dtype"]) == (4, len(tokens), "uint16")
    assert manifest["tokenizer"]["identity"] == tok.identity
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == manifest


def test_zstd_inputs_are_read(tmp_path, sp_model):
    zstandard = pytest.importorskip("zstandard")
    path = tmp_path / "docs.jsonl.zst"
    path.write_bytes(
        zstandard.ZstdCompressor().compress("".join(json.dumps({"text": t}) + "\n" for t in DOCS).encode())
    )
    manifest = prepare([str(path)], sp_model, tmp_path / "out", progress=False, workers=1)
    assert manifest["documents"] == 3


def test_a_truncated_compressed_file_is_an_error_naming_it(tmp_path, sp_model):
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in DOCS * 50).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrepareError, match=f"input file {path} could not be read to the end"):
        prepare([str(path)], sp_model, tmp_path / "out", progress=False, workers=1)
    assert not list((tmp_path / "out").glob("*.npy"))


def test_malformed_lines_are_counted_with_file_and_line_and_the_rest_is_kept(tmp_path, sp_model):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"text": "good one"}).encode(),
        b"{not json",
        json.dumps({"id": 3}).encode(),  # no text
        json.dumps({"text": 42}).encode(),
        json.dumps(["a list"]).encode(),
        b'{"text": "bad \xff utf8"}',
        json.dumps({"text": ""}).encode(),  # empty: skipped and counted separately
        json.dumps({"text": "good two"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    manifest = prepare([str(path)], sp_model, tmp_path / "out", progress=False, workers=1)
    assert (manifest["documents"], manifest["malformed"], manifest["empty_documents"]) == (2, 5, 1)
    examples = manifest["malformed_examples"]
    assert [e.split(" ")[0] for e in examples] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "no 'text' field" in examples[1] and "byte offset" in examples[1]
    assert manifest["inputs"][0]["malformed"] == 5


def test_files_roll_over_between_documents_and_workers_do_not_change_the_output(tmp_path, sp_model):
    tok = load_tokenizer(sp_model)
    texts = [pydoc_data.topics.topics[name][:300] for name in sorted(pydoc_data.topics.topics)[:30]]
    one = write_token_files(texts, tok, tmp_path / "one", workers=1, max_tokens_per_file=400)
    assert len(one["files"]) > 1 and all(f["tokens"] <= 400 for f in one["files"])
    for f in one["files"]:  # every file ends with a whole document
        assert np.fromfile(tmp_path / "one" / f["path"], dtype=np.uint16)[-1] == tok.eos_token_id
    assert sum(f["documents"] for f in one["files"]) == 30
    two = write_token_files(texts, tok, tmp_path / "two", workers=2, max_tokens_per_file=400)
    assert [f["sha256"] for f in two["files"]] == [f["sha256"] for f in one["files"]]


def test_a_failure_leaves_no_token_files_behind(tmp_path, sp_model):
    def documents():
        yield from ["a document"] * 5000
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError, match="input broke"):
        write_token_files(documents(), load_tokenizer(sp_model), tmp_path / "out", max_tokens_per_file=1000)
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path, sp_model):
    (tmp_path / "in.txt").write_text("text")
    prepare([str(tmp_path / "in.txt")], sp_model, tmp_path / "out", progress=False, workers=1)
    with pytest.raises(PrepareError, match="--overwrite"):
        prepare([str(tmp_path / "in.txt")], sp_model, tmp_path / "out", progress=False, workers=1)
    prepare([str(tmp_path / "in.txt")], sp_model, tmp_path / "out", progress=False, workers=1, overwrite=True)


def test_cli_reports_a_missing_input_as_an_error(tmp_path, sp_model, capsys):
    code = main(["prepare", str(tmp_path / "missing.jsonl"), "--tokenizer", sp_model, "-o", str(tmp_path / "o")])
    assert code == 2  # the input is at fault
    assert capsys.readouterr().err.startswith("error: input file")


def test_olmo_tokenizer_on_the_ppl_samples_round_trips_in_uint16(tmp_path, shared_data):
    tokenizer = shared_data / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"
    inputs = sorted(str(p) for p in (shared_data / "ppl").glob("*.gz"))
    manifest = prepare(inputs, str(tokenizer), tmp_path / "out", progress=False, workers=1)
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == 50280
    tok = load_tokenizer(str(tokenizer))
    tokens = read_parts(tmp_path / "out", manifest)
    expected = []
    for path in inputs:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            expected.extend(json.loads(line)["text"] for line in f if line.strip())
    decoded = [tok.decode(ids) for ids in split_documents(tokens, 50279)]
    assert decoded == expected
