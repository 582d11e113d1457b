"""Every command fails the same way: `error: <one line>` last on stderr, no traceback, exit 2 when the
input is at fault and 1 when the run failed, and nothing new on disk for an error caught before training.

Each case runs `olmo-jax <command> ...` in-process through `olmo_jax.cli.main`, the function behind the
console script and behind every `python -m olmo_jax.*` form; one case runs the real console script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from olmo_jax import cli
from olmo_jax.checkpoint import write_params_checkpoint
from olmo_jax.config import ModelConfig, TrainConfig
from olmo_jax.model import OLMo

TINY_MODEL = {"d_model": 32, "n_heads": 2, "n_layers": 1, "vocab_size": 64, "embedding_size": 64}


def _tiny_checkpoint(run_dir: Path) -> Path:
    config = TrainConfig(model=ModelConfig(**TINY_MODEL, max_sequence_length=16, eos_token_id=2, pad_token_id=0))
    params = nnx.state(OLMo(config.model, rngs=nnx.Rngs(0)), nnx.Param).to_pure_dict()
    return write_params_checkpoint(run_dir, 1, params, config)


def _damage_params(step_dir: Path) -> None:
    """Truncate every data file of the params item: what a full disk or a torn copy leaves."""
    for path in (step_dir / "params").rglob("*"):
        if path.is_file() and path.stat().st_size > 4096:
            os.truncate(path, 100)


def _token_file(path: Path, tokens: np.ndarray, extra: bytes = b"") -> None:
    path.write_bytes(tokens.astype(np.uint16).tobytes() + extra)


@dataclass
class Case:
    argv: list[str]
    status: int
    message: str  # a piece of the error line
    setup: Callable[[Path], None] | None = None
    before_training: bool = True  # then the run directory must not appear


TRAIN = ["train", "--config=tiny", "--output=run", "--config.max_duration=2"]
CASES = {
    "unknown config key": Case([*TRAIN, "--config.optimizer.lr=1"], 2, "unknown config key 'optimizer.lr'"),
    "unknown preset": Case(["train", "--config=nope", "--output=run"], 2, "unknown config 'nope'"),
    "config file missing": Case(["train", "--config=missing.yaml", "--output=run"], 2, "missing.yaml does not exist"),
    "config file not UTF-8": Case(
        ["train", "--config=bad.yaml", "--output=run"],
        2,
        "bad.yaml is not UTF-8",
        lambda d: (d / "bad.yaml").write_bytes(b"model:\n  d_model: 64\n  \xff\xfe: 1\n"),
    ),
    "zero global batch": Case([*TRAIN, "--config.global_train_batch_size=0"], 2, "global_train_batch_size"),
    "negative micro-batch": Case(
        [*TRAIN, "--config.device_train_microbatch_size=-1"], 2, "device_train_microbatch_size"
    ),
    "read-only run directory": Case(
        ["train", "--config=tiny", "--output=/proc/olmo_jax_no_such_run"], 2, "cannot be written"
    ),
    "run directory under a file": Case(
        ["train", "--config=tiny", "--output=afile/run"], 2, "is not a folder", lambda d: (d / "afile").write_text("x")
    ),
    "missing token file": Case(
        [*TRAIN, "--config.data.paths=['missing.npy']"], 2, "token file missing.npy does not exist"
    ),
    "odd-length token file": Case(
        [*TRAIN, "--config.data.paths=['odd.npy']"],
        2,
        "not a multiple of the uint16 item size",
        lambda d: _token_file(d / "odd.npy", np.arange(3000) % 100, b"x"),
    ),
    "out-of-vocabulary token file": Case(
        [*TRAIN, "--config.data.paths=['oov.npy']"],
        2,
        "is >= model.vocab_size 8000",
        lambda d: _token_file(d / "oov.npy", np.arange(20000)),
        before_training=False,  # found when the batch is read: the run has started by then
    ),
    "inspect without a config": Case(["data", "inspect", "--step=1"], 2, "run directory or --config"),
    "prepare of nothing": Case(
        ["data", "prepare", "missing/*.jsonl", "--tokenizer=builtin", "-o", "out"], 2, "missing/*.jsonl"
    ),
    "--config outside inspect": Case(
        ["data", "prepare", "x.jsonl", "--tokenizer=builtin", "-o", "out", "--config=tiny"], 2, "apply to inspect only"
    ),
    "to-hf of a missing checkpoint": Case(["convert", "to-hf", "nowhere", "-o", "hf"], 2, "nowhere does not exist"),
    "to-hf of a damaged step": Case(
        ["convert", "to-hf", "ckpt", "-o", "hf"],
        1,
        "cannot read the parameters of ckpt/checkpoints/1",
        lambda d: _damage_params(_tiny_checkpoint(d / "ckpt")),
    ),
    "to-hf output exists": Case(
        ["convert", "to-hf", "ckpt", "-o", "hf"],
        2,
        "hf already exists",
        lambda d: (_tiny_checkpoint(d / "ckpt"), (d / "hf").mkdir()),
    ),
    "from-hf with a malformed size": Case(
        ["convert", "from-hf", "hfdir", "-o", "imported"],
        2,
        "hidden_size='256abc' is not an integer",
        lambda d: (
            (d / "hfdir").mkdir(),
            (d / "hfdir" / "config.json").write_text(
                json.dumps(
                    {"model_type": "olmo", "hidden_size": "256abc", "intermediate_size": 64, "num_attention_heads": 2}
                )
            ),
        ),
    ),
    "eval of an unknown task": Case(["eval", "--model=m", "--tasks=piqa,nope"], 2, "unknown task 'nope'"),
    "eval of a missing model": Case(["eval", "--model=nowhere", "--tasks=piqa"], 2, "nowhere does not exist"),
    "eval override outside its sections": Case(
        ["eval", "--model=m", "--tasks=piqa", "--config.model.d_model=8"], 2, "evaluation, mesh and tokenizer"
    ),
    "bench of an unknown preset": Case(["bench", "--config=nope"], 2, "unknown config 'nope'"),
    "bench --table of a missing file": Case(["bench", "--table", "nothing.jsonl"], 2, "cannot read nothing.jsonl"),
    "unknown command": Case(["nope"], 2, "unknown command 'nope'"),
}


def _snapshot(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_and_its_exit_status(name, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    if case.setup is not None:
        case.setup(tmp_path)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    try:
        status = cli.main(case.argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == case.status, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith("error: "), err[-2000:]
    assert case.message in lines[-1]
    if case.before_training:
        new = _snapshot(tmp_path) - before
        assert not new, f"created {sorted(map(str, new))}"


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["convert", "to-hf", "nowhere", "-o", "hf", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_hyphenated_flags_are_the_same_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.normalize_flags(["--max-shard-size=5GB", "-o", "a-b", "to-hf", "--config.x=a-b"]) == [
        "--max_shard_size=5GB",
        "-o",
        "a-b",
        "to-hf",
        "--config.x=a-b",
    ]
    with pytest.raises(SystemExit) as done:
        cli.main(["convert", "to-hf", "--max-shard-size=nonsense", "src", "-o", "out"])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: argument --max_shard_size")


def test_the_console_script_lists_every_subcommand_and_each_documents_its_flags():
    script = shutil.which("olmo-jax") or pytest.skip("the olmo-jax console script is not installed")
    top = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0
    for command in cli.COMMANDS:
        assert f"  {command} " in top.stdout
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    helps = {
        ("train",): ["--config", "--output", "--dry_run", "--num_processes", "--debug"],
        ("data", "prepare"): ["--tokenizer", "--output", "--workers", "--text_field", "--overwrite", "--debug"],
        ("data", "inspect"): ["--config", "--step", "--decode", "--format", "--debug"],
        ("data", "train-tokenizer"): ["--output", "--vocab_size", "--model_type", "--debug"],
        ("convert", "to-hf"): ["--output", "--dtype", "--max_shard_size", "--debug"],
        ("convert", "from-hf"): ["--output", "--dtype", "--debug"],
        ("eval",): ["--model", "--config", "--tasks", "--ppl", "--limit", "--mesh", "--output", "--compute_dtype"],
        ("bench",): ["--config", "--steps", "--output", "--table", "--xla_tuning", "--debug"],
        ("generate",): ["--model", "--prompt", "--prompts", "--max_new_tokens", "--temperature", "--top_p", "--stop"],
        ("energy",): [
            "RUN_DIR",
            "--power_w",
            "--hours",
            "--nodes",
            "--pue",
            "--carbon_intensity",
            "--hardware",
            "--json",
        ],
    }
    for words, flags in helps.items():
        result = subprocess.run(
            [sys.executable, "-m", "olmo_jax.cli", *words, "--help"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        missing = [flag for flag in flags if flag not in result.stdout]
        assert not missing, f"{' '.join(words)} --help lacks {missing}"
