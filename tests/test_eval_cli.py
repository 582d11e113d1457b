"""`python -m olmo_jax.eval`: flags, errors, and a whole run on a tiny HF-format model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from eval_support import tiny_config, train_tokenizer, write_eval_data

from olmo_jax.eval.__main__ import main
from olmo_jax.eval.tasks import CORE9, METRICS

MAX_LENGTH = 32


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--tasks", "--ppl", "--limit", "--data_dir", "--out", "--save_requests", "--batch_size"):
        assert flag in out
    assert all(task in out for task in CORE9)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model=m", "--tasks=piqa,nope"], "unknown task 'nope'; known tasks: core9, arc_challenge"),
        (["--model=m"], "nothing to evaluate: give --tasks and/or --ppl"),
        (["--model=m", "--tasks=piqa", "--limit=0"], "--limit must be positive"),
        (["--model=m", "--tasks=piqa", "--save_requests"], "--save_requests needs --out"),
        (["--model=m", "--tasks=piqa", "--mesh=2,2"], "--mesh must be three integers DATA,FSDP,TENSOR"),
    ],
)
def test_bad_flags_exit_2_with_a_one_line_error(capsys, argv, message):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random OLMo written as an HF directory (config.json, safetensors, tokenizer.json)."""
    from flax import nnx
    from hf_support import host_params

    from olmo_jax.convert.hf import export_hf
    from olmo_jax.data.tokenizer import load_tokenizer
    from olmo_jax.model import OLMo

    root = tmp_path_factory.mktemp("cli")
    tokenizer_file = train_tokenizer(root / "tokenizer.json")
    tokenizer = load_tokenizer(str(tokenizer_file))
    config = tiny_config(tokenizer.vocab_size, MAX_LENGTH, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = OLMo(config, rngs=nnx.Rngs(0))
    model_dir = root / "model"
    model_dir.mkdir()
    export_hf(host_params(model), config, model_dir)
    shutil.copy(tokenizer_file, model_dir / "tokenizer.json")
    return root, model_dir, model, tokenizer


def test_a_run_writes_every_metric_and_each_requests_loglikelihood(hf_dir, capsys):
    from olmo_jax.eval.evaluator import Evaluator
    from olmo_jax.eval.tasks import resolve_tasks

    root, model_dir, model, tokenizer = hf_dir
    eval_config = write_eval_data(root / "run")
    out = root / "results.json"
    argv = [f"--model={model_dir}", "--tasks=copa,boolq", f"--data_dir={eval_config.data_dir}"]
    argv += [f"--ppl={eval_config.ppl_paths[0]}", f"--out={out}", "--save_requests", "--batch_size=4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "copa" in printed and "boolq" in printed and "bits_per_byte" in printed

    results = json.loads(out.read_text())
    assert results["max_length"] == MAX_LENGTH
    for task in ("copa", "boolq"):
        entry = results["tasks"][task]
        assert set(entry["metrics"]) == set(METRICS)
        assert entry["primary"] == entry["metrics"][entry["primary_metric"]] and entry["primary_metric"] == "acc"
        assert len(entry["request_log"]) == entry["requests"] // 2  # one entry per candidate, both scores in it
    assert results["perplexity"]["sources"]["ppl"]["bits_per_byte"] > 0

    # The CLI scored with the weights and tokenizer it loaded: the same numbers as the in-memory model.
    direct = Evaluator(tokenizer, resolve_tasks("copa"), MAX_LENGTH, data_dir=eval_config.data_dir, save_requests=True)
    log = direct.run(model, batch_size=4).tasks[0].request_log
    np.testing.assert_allclose(
        [e["loglikelihood"] for e in results["tasks"]["copa"]["request_log"]],
        [e["loglikelihood"] for e in log],
        atol=1e-5,
    )

    # --mesh places the parameters with the training layout and shards rows over it (one device here).
    meshed = root / "meshed.json"
    argv = [f"--model={model_dir}", "--tasks=copa", f"--data_dir={eval_config.data_dir}", "--mesh=1,-1,1"]
    assert main([*argv, f"--out={meshed}", "--save_requests"]) == 0
    np.testing.assert_allclose(
        [e["loglikelihood"] for e in json.loads(meshed.read_text())["tasks"]["copa"]["request_log"]],
        [e["loglikelihood"] for e in log],
        atol=1e-5,
    )


def test_missing_task_data_exits_2_with_the_expected_layout(hf_dir, capsys):
    root, model_dir, _, _ = hf_dir
    empty = root / "empty"
    empty.mkdir(exist_ok=True)
    assert main([f"--model={model_dir}", "--tasks=piqa", f"--data_dir={empty}"]) == 2
    assert f"error: no data for task 'piqa' in {empty}; expected {empty}/piqa/validation/" in capsys.readouterr().err
