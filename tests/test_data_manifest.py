"""Complete data only: token folders that `prepare` wrote are checked against their manifest (completeness, sizes,
sha256 on request, the tokenizer), an unfinished prepare is refused and cleaned up by the next one, and a NumPy
`.npy` file with a header is never read as tokens. OLMo's own raw files (no manifest) keep working, and a killed
conversion's hidden folder is removed by the next one into the same place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from olmo_jax import atomic, cli
from olmo_jax.data.prepare import prepare
from olmo_jax.data.source import build_instance_source, verify_token_files
from olmo_jax.errors import DataError, PrepareError


def _instances(folder: Path, vocab_size: int = 8000):
    return build_instance_source([str(folder / "*.npy")], {}, seq_len=16, vocab_size=vocab_size)


def _inspect(folder: Path, *flags: str) -> int:
    """`data inspect --step=1` of the tiny config on the token files of `folder` (builtin tokenizer)."""
    return cli.main(["data", "inspect", "--config=tiny", f"--config.data.paths=['{folder}/*.npy']", "--step=1", *flags])


def test_a_prepare_killed_midway_is_refused_and_the_rerun_completes(tmp_path: Path, capsys) -> None:
    texts = (tmp_path / "in.jsonl").open("w")
    for i in range(40_000):
        texts.write(json.dumps({"text": f"document {i}: " + "some words to tokenize " * 8}) + "\n")
    texts.close()
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "olmo_jax.data", "prepare", str(tmp_path / "in.jsonl"), "--tokenizer=builtin",
        "-o", str(out), "--workers=1", "--max_tokens_per_file=2000", "--quiet",
    ]  # fmt: skip
    killed = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.npy"))) < 3 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert len(list(out.glob("part-*.npy"))) >= 3 and not (out / "manifest.json").exists()

    with pytest.raises(DataError, match="holds part files but no manifest.json: unfinished prepare: rerun it"):
        _instances(out)
    capsys.readouterr()
    assert _inspect(out) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("unfinished prepare: rerun it")

    (out / ".part-00999.npy.12345.tmp").write_bytes(b"\0" * 10)  # what a writer killed mid-file leaves
    prepare([str(tmp_path / "in.jsonl")], "builtin", out, workers=1, max_tokens_per_file=200_000, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no leftovers
    assert _inspect(out, "--verify") == 0
    assert "verified the sha256 of" in capsys.readouterr().err


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    (tmp_path / "in.txt").write_text("a few words of text, " * 400)
    prepare([str(tmp_path / "in.txt")], "builtin", tmp_path / "out", workers=1, progress=False)
    return tmp_path / "out"


def test_a_token_file_that_changed_since_prepare_is_refused(prepared: Path) -> None:
    part = prepared / "part-00000.npy"
    data = part.read_bytes()
    part.write_bytes(data[:-2])
    with pytest.raises(DataError, match="part-00000.npy has .* bytes but .*manifest.json says .*: truncated or"):
        _instances(prepared)
    part.write_bytes(data[:-2] + b"\xff\xff")  # same size, other content: only the sha256 shows it
    with pytest.raises(DataError, match="does not match the sha256"):
        verify_token_files(_instances(prepared).files)


def test_token_files_made_with_another_tokenizer_are_refused(prepared: Path, capsys) -> None:
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest["tokenizer"]["identity"] = "sentencepiece:0123456789abcdef"
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    assert _inspect(prepared) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was made with tokenizer sentencepiece:0123456789abcdef" in line and "but the run's tokenizer is" in line


def test_raw_files_without_a_manifest_work_and_np_save_files_are_refused(tmp_path: Path) -> None:
    (np.arange(256) % 100).astype(np.uint16).tofile(tmp_path / "part-000-00000.npy")  # OLMo's naming, no manifest
    assert len(_instances(tmp_path)) == 16
    np.save(tmp_path / "saved.npy", (np.arange(256) % 100).astype(np.uint32))
    with pytest.raises(DataError, match=r"saved.npy is a NumPy .npy file with a header \(np.save output\)"):
        build_instance_source([str(tmp_path / "saved.npy")], {}, seq_len=16, vocab_size=100_000)


def test_prepare_of_no_document_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(PrepareError, match=r"hold no document \(1 empty, 0 malformed"):
        prepare([str(tmp_path / "empty.jsonl")], "builtin", tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_killed_conversion_leaves_nothing_the_next_one_keeps(tmp_path: Path) -> None:
    leftover = tmp_path / ".hf.abc123.tmp"  # what kill -9 during `convert ... -o hf` leaves
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "model.safetensors").write_bytes(b"partial")
    with atomic.atomic_directory(tmp_path / "hf") as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert oct((tmp_path / "hf").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
