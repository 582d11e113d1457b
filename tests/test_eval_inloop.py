"""`evaluate_in_loop`: flat metric names, preparation and compilation paid once, same numbers on a mesh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from eval_support import tiny_config, train_tokenizer, write_eval_data

from olmo_jax.eval import evaluator
from olmo_jax.eval.tasks import METRICS

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from flax import nnx

    from olmo_jax.data.tokenizer import load_tokenizer
    from olmo_jax.model import OLMo

    root = tmp_path_factory.mktemp("inloop")
    tokenizer = load_tokenizer(str(train_tokenizer(root / "tokenizer.json")))
    config = tiny_config(tokenizer.vocab_size, MAX_LENGTH, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return tokenizer, OLMo(config, rngs=nnx.Rngs(0)), write_eval_data(root)


def test_in_loop_metrics_are_flat_and_cover_every_task_metric_and_source(setup):
    tokenizer, model, eval_config = setup
    metrics = evaluator.evaluate_in_loop(model, tokenizer, eval_config)
    expected = {f"eval/{task}/{m}" for task in ("copa", "boolq") for m in (*METRICS, "primary", "inloop")}
    # What OLMo's in-loop evaluator logs, under its names (olmo/eval/evaluator.py): acc for both tasks.
    expected |= {"eval/downstream/copa_acc", "eval/downstream/boolq_acc"}
    expected |= {"eval/ppl/ppl/bits_per_byte", "eval/ppl/ppl/perplexity"}
    assert set(metrics) == expected
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["eval/downstream/copa_acc"] == metrics["eval/copa/inloop"] == metrics["eval/copa/acc"]


def test_later_calls_reuse_the_prepared_data_and_compiled_scorer(setup):
    from flax import nnx

    from olmo_jax.model import OLMo

    tokenizer, model, eval_config = setup
    first = evaluator.evaluate_in_loop(model, tokenizer, eval_config)
    prepared = evaluator._IN_LOOP["evaluator"]
    compiled = prepared.scorer.compilations
    trained = OLMo(model.config, rngs=nnx.Rngs(5))  # stands in for the weights some steps later
    second = evaluator.evaluate_in_loop(trained, tokenizer, eval_config)
    assert evaluator._IN_LOOP["evaluator"] is prepared
    assert prepared.scorer.compilations == compiled
    assert second["eval/ppl/ppl/bits_per_byte"] != first["eval/ppl/ppl/bits_per_byte"]


MESH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import jax
    from flax import nnx
    from eval_support import tiny_config, train_tokenizer, write_eval_data
    from olmo_jax.config import MeshConfig
    from olmo_jax.data.tokenizer import load_tokenizer
    from olmo_jax.eval.evaluator import evaluate_in_loop
    from olmo_jax.model import OLMo
    from olmo_jax.sharding import make_mesh, param_shardings

    root = Path(sys.argv[1])
    tokenizer = load_tokenizer(str(train_tokenizer(root / "tokenizer.json")))
    config = tiny_config(tokenizer.vocab_size, 32, tokenizer.eos_token_id, tokenizer.pad_token_id)
    eval_config = write_eval_data(root)
    model = OLMo(config, rngs=nnx.Rngs(0))
    plain = evaluate_in_loop(model, tokenizer, eval_config)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=1))
    graphdef, state = nnx.split(model)
    shardings = param_shardings(state, mesh)
    for name, variable in state.items():
        variable.set_value(jax.device_put(variable.get_value(), shardings[name]))
    sharded_model = nnx.merge(graphdef, state)
    assert len(sharded_model.ff_proj.get_value().sharding.device_set) == 4
    sharded = evaluate_in_loop(sharded_model, tokenizer, eval_config, mesh=mesh)
    print(json.dumps({"plain": plain, "sharded": sharded}))
    """
)


@pytest.mark.slow
def test_scoring_sharded_on_a_data_fsdp_mesh_gives_the_same_metrics(tmp_path):
    """4 fake CPU devices, mesh data=2 x fsdp=2, fsdp-sharded parameters: same metrics (ppl to 1e-5)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    script = tmp_path / "mesh.py"
    script.write_text(MESH_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["plain"].keys() == result["sharded"].keys()
    for name, value in result["plain"].items():
        assert result["sharded"][name] == pytest.approx(value, rel=1e-5), name


@pytest.mark.slow
def test_the_trainer_logs_in_loop_metrics_every_eval_interval(tmp_path):
    eval_config = write_eval_data(tmp_path)
    args = [
        "--config=tiny",
        "--config.data.sequence_length=32",
        "--config.global_train_batch_size=8",
        "--config.max_duration=4",
        "--config.eval_interval=2",
        f"--config.evaluation.tasks={json.dumps(eval_config.tasks)}",
        f"--config.evaluation.ppl_paths={json.dumps(eval_config.ppl_paths)}",
        f"--config.evaluation.data_dir={eval_config.data_dir}",
        "--config.evaluation.limit=5",
        "--config.evaluation.batch_size=4",
        "--workdir=run",
    ]
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "olmo_jax.main", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "eval/copa/acc" in r]
    assert [r["step"] for r in evaluated] == [2, 4]
    for record in evaluated:
        assert 0.0 <= record["eval/boolq/primary"] <= 1.0
        assert record["eval/ppl/ppl/bits_per_byte"] > 0
    assert "eval at step 2: copa/primary" in result.stdout
