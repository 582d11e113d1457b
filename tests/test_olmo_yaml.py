"""Original OLMo YAML configs: what maps is translated, unsupported architectures are refused."""

import dataclasses

import pytest
import yaml

from olmo_jax.config import load_config
from olmo_jax.errors import ConfigError

# The shape of allenai/OLMo's configs/official/OLMo-7B.yaml (abridged; values as published).
OLMO_7B_YAML = """
run_name: OLMo-7B
seed: 6198
dry_run: false
wandb:
  name: ${run_name}
  project: olmo-medium
model:
  d_model: 4096
  n_heads: 32
  n_layers: 32
  mlp_hidden_size: 22016
  weight_tying: false
  alibi: false
  rope: true
  flash_attention: true
  attention_dropout: 0.0
  attention_layer_norm: false
  multi_query_attention: false
  include_bias: false
  block_type: sequential
  layer_norm_type: default
  layer_norm_with_affine: false
  bias_for_layer_norm: false
  attention_layer_norm_with_affine: false
  activation_type: swiglu
  residual_dropout: 0.0
  embedding_dropout: 0.0
  max_sequence_length: 2048
  vocab_size: 50280
  embedding_size: 50304
  eos_token_id: 50279
  pad_token_id: 1
  init_device: meta
  init_fn: mitchell
compile: null
optimizer:
  name: adamw
  learning_rate: 3.0e-4
  weight_decay: 0.1
  betas: [0.9, 0.95]
  metrics_log_interval: 10
scheduler:
  name: linear_with_warmup
  t_warmup: 5000
  alpha_f: 0.1
  grad_clip_warmup_steps: 1000
  grad_clip_warmup_factor: 10
tokenizer:
  identifier: tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json
  truncate_direction: right
save_folder: runs/${run_name}
save_interval: 1000
save_num_checkpoints_to_keep: -1
max_duration: 2e12T
global_train_batch_size: 2160
device_train_microbatch_size: 2
precision: amp_bf16
fsdp:
  wrapping_strategy: null
  precision: mixed
max_grad_norm: 1.0
speed_monitor:
  window_size: 20
eval_interval: ${save_interval}
evaluators:
  - label: piqa
    type: downstream
  - label: hellaswag
    type: downstream
  - label: mmlu_stem
    type: downstream
  - label: c4-validation
    data:
      datasets:
        c4_en-validation:
          - /data/eval/c4_en/val/part-0-00000.npy
data:
  pad_direction: right
  num_workers: 0
  drop_last: true
  paths:
    - /data/dolma/part-000-00000.npy
    - /data/dolma/part-000-00001.npy
"""


@pytest.fixture
def olmo_7b(tmp_path):
    path = tmp_path / "OLMo-7B.yaml"
    path.write_text(OLMO_7B_YAML)
    return path


def test_olmo_7b_yaml_translates_to_the_7b_preset_shapes(olmo_7b, capsys):
    config = load_config(str(olmo_7b))
    preset = load_config("7b")
    # The preset also turns on rematerialisation, a JAX-side choice OLMo's file cannot express.
    assert config.model == dataclasses.replace(preset.model, remat="none")
    assert config.run_name == "OLMo-7B" and config.save_folder == "runs/OLMo-7B"
    assert (config.global_train_batch_size, config.device_train_microbatch_size) == (2160, 2)
    assert config.max_duration == "2e12T"
    assert config.scheduler.name == "linear_with_warmup" and config.scheduler.grad_clip_warmup_factor == 10.0
    assert config.optimizer.learning_rate == 3e-4
    assert config.model.compute_dtype == "bfloat16"  # precision: amp_bf16
    assert config.eval_interval == 1000  # ${save_interval} resolved
    assert config.save_num_checkpoints_to_keep == 0  # OLMo's -1: keep all
    assert config.evaluation.tasks == ["piqa", "hellaswag"]
    assert config.evaluation.ppl_paths == ["/data/eval/c4_en/val/part-0-00000.npy"]
    assert config.data.paths[0] == "/data/dolma/part-000-00000.npy"
    assert config.tokenizer.identifier.endswith("pii-special.json")
    assert config.wandb is True
    # Untranslated keys are named, not dropped silently.
    err = capsys.readouterr().err
    for key in ("fsdp", "speed_monitor", "optimizer.metrics_log_interval", "evaluator mmlu_stem", "model.init_device"):
        assert key in err


def test_overrides_apply_after_translation(olmo_7b):
    config = load_config(str(olmo_7b), {"model.n_layers": "2"})
    assert config.model.n_layers == 2


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("alibi", True, r"model\.alibi=True is not supported"),
        ("block_type", "llama", r"model\.block_type='llama' is not supported"),
        ("layer_norm_type", "rms", r"model\.layer_norm_type='rms'"),
        ("include_bias", True, r"model\.include_bias=True"),
    ],
)
def test_architectures_olmo_jax_does_not_build_are_refused(tmp_path, key, value, message):
    data = yaml.safe_load(OLMO_7B_YAML)
    data["model"][key] = value
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def test_unresolvable_interpolation_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(OLMO_7B_YAML.replace("${save_interval}", "${nope}"))
    with pytest.raises(ConfigError, match=r"cannot resolve \$\{nope\}"):
        load_config(str(path))
