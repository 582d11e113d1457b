"""`python -m olmo_jax.main` end to end: the embedded default run, its log, and what inspect says it fed."""

import json
import os
import subprocess
import sys

import pytest

from olmo_jax.main import main


def run_main(args, tmp_path, timeout=600):
    """The CLI in a fresh process on one CPU device (the test session itself has 8 fake devices)."""
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "olmo_jax.main", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The first README command's run, shortened to 20 steps, logging every step."""
    tmp_path = tmp_path_factory.mktemp("demo")
    result = run_main(
        ["--config=tiny", "--config.max_duration=20", "--config.log_interval=1", "--workdir=run"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return tmp_path / "run", records, result


@pytest.mark.slow
def test_embedded_default_run_learns(demo_run):
    _, records, result = demo_run
    assert [r["step"] for r in records] == list(range(1, 21))
    # The bar: the loss falls by at least one nat (it starts near ln(8064) ~ 9).
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    for key in ("step", "loss", "z_loss", "lr", "grad_norm", "tokens_per_second", "mfu", "step_time"):
        assert key in records[-1]
    assert "step 20/20" in result.stdout and "ETA" in result.stdout


@pytest.mark.slow
def test_inspect_shows_exactly_what_the_trainer_fed(demo_run, capsys):
    run_dir, records, _ = demo_run
    from olmo_jax.data.__main__ import main as data_main

    steps = [1, 2, 7, 20]
    assert data_main(["inspect", str(run_dir), "--format=json", *[f"--step={s}" for s in steps]]) == 0
    inspected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    logged = {r["step"]: r["batch_fingerprint"] for r in records}
    assert [r["step"] for r in inspected] == steps
    assert [r["fingerprint"] for r in inspected] == [logged[s] for s in steps]


def test_unknown_key_is_one_line_and_exit_2(capsys):
    assert main(["--config=tiny", "--config.optimizer.lr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown config key 'optimizer.lr'")


def test_config_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--workdir=x"])
    assert exit_info.value.code == 2
    assert "--config=NAME|PATH is required" in capsys.readouterr().err
