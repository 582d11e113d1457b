"""Validation first: `--dry_run` rejects every config value a real run would, before anything runs.

Each rejection is exit status 2 and one `error:` line that names the dotted key, the bad value and what is
allowed; nothing is written to disk, not even the run directory.
"""

import os
import subprocess
import sys

import pytest
import yaml

from olmo_jax.config import load_config
from olmo_jax.errors import ConfigError
from olmo_jax.main import main


def case(overrides: dict[str, str], key: str, shown: str):
    """`overrides` on the tiny preset must be rejected by a message naming `key` and showing `shown`."""
    label = ",".join(f"{k}={v}" for k, v in overrides.items())
    return pytest.param(overrides, key, shown, id=label)


INVALID = [
    # Optimizer.
    case({"optimizer.learning_rate": "0"}, "optimizer.learning_rate", "0"),
    case({"optimizer.learning_rate": "-3e-4"}, "optimizer.learning_rate", "-0.0003"),
    case({"optimizer.learning_rate": "nan"}, "optimizer.learning_rate", "nan"),
    case({"optimizer.learning_rate": "inf"}, "optimizer.learning_rate", "inf"),
    case({"optimizer.betas": "[1.0, 0.95]"}, "optimizer.betas[0]", "1.0"),
    case({"optimizer.betas": "[0.9, -0.1]"}, "optimizer.betas[1]", "-0.1"),
    case({"optimizer.eps": "0"}, "optimizer.eps", "0"),
    case({"optimizer.weight_decay": "-0.1"}, "optimizer.weight_decay", "-0.1"),
    case({"optimizer.weight_decay": ".inf"}, "optimizer.weight_decay", "inf"),
    # Batches.
    case({"global_train_batch_size": "0"}, "global_train_batch_size", "0"),
    case({"device_train_microbatch_size": "0"}, "device_train_microbatch_size", "0"),
    case({"batch_size_warmup.enabled": "true", "batch_size_warmup.start_instances": "0"}, "start_instances", "0"),
    case({"batch_size_warmup.enabled": "true", "batch_size_warmup.double_every_tokens": "-1"}, "double_every", "-1"),
    # Intervals and limits.
    case({"save_interval": "0"}, "save_interval", "0"),
    case({"save_interval_permanent": "-5"}, "save_interval_permanent", "-5"),
    case({"eval_interval": "0"}, "eval_interval", "0"),
    case({"log_interval": "0"}, "log_interval", "0"),
    case({"time_limit": "0"}, "time_limit", "0"),
    case({"time_limit": "nan"}, "time_limit", "nan"),
    case({"max_nonfinite_steps": "-1"}, "max_nonfinite_steps", "-1"),
    # Loss.
    case({"loss_chunk_size": "0"}, "loss_chunk_size", "0"),
    case({"max_grad_norm": "0"}, "max_grad_norm", "0"),
    case({"max_grad_norm": "nan"}, "max_grad_norm", "nan"),
    case({"auxiliary_loss_multiplier": "-1e-4"}, "auxiliary_loss_multiplier", "-0.0001"),
    case({"auxiliary_loss_multiplier": "inf"}, "auxiliary_loss_multiplier", "inf"),
    # Data.
    case({"data.prefetch": "-1"}, "data.prefetch", "-1"),
    case({"data.num_workers": "-1"}, "data.num_workers", "-1"),
    case({"data.sequence_length": "0"}, "data.sequence_length", "0"),
    case({"data.sequence_length": "512"}, "data.sequence_length", "512"),  # tiny's model.max_sequence_length: 256
    case({"data.seed": "-1"}, "data.seed", "-1"),
    case({"data.paths": '["a.npy"]', "data.sources": '{"b": ["b.npy"]}'}, "data.sources", "data.paths"),
    # Run length.
    case({"max_duration": "ten"}, "max_duration", "'ten'"),
    case({"max_duration": "0"}, "max_duration", "'0'"),
    case({"max_duration": "1.5"}, "max_duration", "'1.5'"),  # steps are whole
    case({"max_duration": "1e999T"}, "max_duration", "'1e999T'"),
    case({"max_duration": "-1ep"}, "max_duration", "'-1ep'"),
    # Schedule.
    case({"scheduler.t_warmup": "-1"}, "scheduler.t_warmup", "-1"),
    case({"scheduler.t_max": "0"}, "scheduler.t_max", "0"),
    case({"scheduler.t_warmup": "20", "scheduler.t_max": "10"}, "scheduler.t_max", "20"),
    case({"scheduler.alpha_f": "1.5"}, "scheduler.alpha_f", "1.5"),
    case({"scheduler.alpha_f": "nan"}, "scheduler.alpha_f", "nan"),
    case({"scheduler.warmup_min_lr": "-1e-5"}, "scheduler.warmup_min_lr", "-1e-05"),
    case({"scheduler.grad_clip_warmup_steps": "100"}, "scheduler.grad_clip_warmup_factor", "=null"),
    case(
        {"scheduler.grad_clip_warmup_steps": "100", "scheduler.grad_clip_warmup_factor": "0"},
        "scheduler.grad_clip_warmup_factor",
        "0",
    ),
    case({"scheduler.anneal_steps": "-1"}, "scheduler.anneal_steps", "-1"),
    # Mesh.
    case({"mesh.data": "0"}, "mesh.data", "0"),
    case({"mesh.tensor": "-2"}, "mesh.tensor", "-2"),
    case({"mesh.data": "-1", "mesh.fsdp": "-1"}, "mesh.data/fsdp/tensor", "data=-1 fsdp=-1"),
    # Evaluation, monitoring, processes.
    case({"evaluation.limit": "0"}, "evaluation.limit", "0"),
    case({"evaluation.batch_size": "0"}, "evaluation.batch_size", "0"),
    case({"peak_flops_per_device": "0"}, "peak_flops_per_device", "0"),
    case({"peak_flops_per_device": "nan"}, "peak_flops_per_device", "nan"),
    case({"num_processes": "0"}, "num_processes", "0"),
    case({"process_id": "-1"}, "process_id", "-1"),
    case({"num_processes": "2", "process_id": "2"}, "process_id", "2"),
    case({"coordinator_address": "localhost"}, "coordinator_address", "'localhost'"),
    case({"seed": "-1"}, "seed", "-1"),
    # Model.
    case({"model.n_heads": "0"}, "model.n_heads", "0"),
    case({"model.layer_norm_eps": "0"}, "model.layer_norm_eps", "0"),
    case({"model.rope_theta": "nan"}, "model.rope_theta", "nan"),
    case({"model.init_std": "-0.02"}, "model.init_std", "-0.02"),
]


@pytest.mark.parametrize("overrides, key, shown", INVALID)
def test_dry_run_rejects_the_value_in_one_line_naming_the_key(overrides, key, shown, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--config=tiny", "--dry_run", "--workdir=run", *(f"--config.{k}={v}" for k, v in overrides.items())]
    assert main(argv) == 2
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and key in last and shown in last and "expected" in last, last
    assert "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == []  # no run directory, no runs/, nothing


def test_a_batch_the_mesh_cannot_split_is_rejected_before_compiling(tmp_path, monkeypatch, capsys):
    # The session has 8 devices; tiny's mesh puts them all on fsdp, and 12 instances do not split 8 ways.
    monkeypatch.chdir(tmp_path)
    assert main(["--config=tiny", "--dry_run", "--workdir=run", "--config.global_train_batch_size=12"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: global_train_batch_size=12 is not divisible by the 8 batch shards")
    assert list(tmp_path.iterdir()) == []


def test_a_valid_dry_run_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # A one-layer model with a small vocabulary, data-parallel over the 8 devices: its train step compiles in
    # a few seconds (tiny's own takes half a minute on two busy cores).
    small = {"model.n_layers": "1", "model.d_model": "64", "model.n_heads": "2", "model.vocab_size": "256"}
    small |= {"model.embedding_size": "256", "data.sequence_length": "16", "mesh.data": "8", "mesh.fsdp": "1"}
    argv = ["--config=tiny", "--dry_run", "--workdir=run", *(f"--config.{k}={v}" for k, v in small.items())]
    assert main(argv) == 0
    assert "micro-batches per step" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_the_real_command_line_rejects_nan_with_exit_status_2(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "olmo_jax.main", "--config=tiny", "--dry_run", "--config.optimizer.learning_rate=nan"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: invalid value nan for optimizer.learning_rate; expected a finite number > 0"
    )
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer.betas": "[0, 0.999]"},
        {"optimizer.weight_decay": "0"},
        {"device_train_microbatch_size": "null"},
        {"max_grad_norm": "null", "save_interval": "null", "time_limit": "null", "loss_chunk_size": "null"},
        {"save_num_checkpoints_to_keep": "0"},  # 0 (or OLMo's -1): keep every checkpoint
        {"save_num_checkpoints_to_keep": "-1"},
        {"data.prefetch": "0", "data.num_workers": "0", "max_nonfinite_steps": "0", "auxiliary_loss_multiplier": "0"},
        {"data.sequence_length": "256"},  # == model.max_sequence_length
        {"scheduler.t_warmup": "0", "scheduler.alpha_f": "0"},
        {"scheduler.t_warmup": "10", "scheduler.t_max": "10", "scheduler.alpha_f": "1"},
        {"scheduler.grad_clip_warmup_steps": "100", "scheduler.grad_clip_warmup_factor": "5"},
        {"max_duration": "2e3"},
        {"max_duration": "2.5e6T"},
        {"max_duration": "0.5ep"},
        {"mesh.data": "2", "mesh.fsdp": "-1", "mesh.tensor": "1"},
        {"num_processes": "2", "process_id": "1", "coordinator_address": "10.0.0.1:1234"},
    ],
    ids=lambda overrides: ",".join(f"{k}={v}" for k, v in overrides.items()),
)
def test_edge_values_that_a_run_can_use_are_accepted(overrides):
    load_config("tiny", overrides)


def test_an_olmo_yaml_is_validated_like_our_own(tmp_path):
    path = tmp_path / "OLMo.yaml"
    olmo_1 = {"rope": True, "include_bias": False, "layer_norm_with_affine": False}
    no_dropout = {"attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0}
    olmo = {
        "precision": "amp_bf16",
        "model": {"d_model": 64, "n_heads": 4, **olmo_1, **no_dropout},
        "optimizer": {"name": "adamw", "learning_rate": -1.0},
    }
    path.write_text(yaml.safe_dump(olmo))
    with pytest.raises(ConfigError, match=r"invalid value -1.0 for optimizer.learning_rate"):
        load_config(str(path))
