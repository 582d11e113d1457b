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
  - label: openbook_qa
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
    # The preset also turns on rematerialisation, a JAX-side choice OLMo's file cannot express; the file
    # leaves init_cutoff_factor at OLMo's None, which Mitchell init reads as 3 (the preset's value).
    assert config.model == dataclasses.replace(preset.model, remat="none", init_cutoff_factor=None)
    assert config.run_name == "OLMo-7B" and config.save_folder == "runs/OLMo-7B"
    assert (config.global_train_batch_size, config.device_train_microbatch_size) == (2160, 2)
    assert config.max_duration == "2e12T"
    assert config.scheduler.name == "linear_with_warmup" and config.scheduler.grad_clip_warmup_factor == 10.0
    assert config.optimizer.learning_rate == 3e-4
    assert config.model.compute_dtype == "bfloat16"  # precision: amp_bf16
    assert config.eval_interval == 1000  # ${save_interval} resolved
    assert config.save_num_checkpoints_to_keep == 0  # OLMo's -1: keep all
    # OLMo's label openbook_qa (olmo/eval/downstream.py `label_to_task_map`) is our openbookqa.
    assert config.evaluation.tasks == ["piqa", "hellaswag", "openbookqa"]
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
        ("alibi", True, r"does not support model\.alibi=True"),
        ("block_type", "llama", r"does not support model\.block_type='llama'"),
        ("layer_norm_type", "rms", r"model\.layer_norm_type='rms'"),
        ("include_bias", True, r"model\.include_bias=True"),
        ("layer_norm_with_affine", True, r"model\.layer_norm_type='default', model\.layer_norm_with_affine=True"),
        ("attention_layer_norm", True, r"model\.attention_layer_norm=True"),  # a LayerNorm over q and k
        ("n_kv_heads", 8, r"n_kv_heads=8 contradicts model\.multi_query_attention=False"),
        ("rope_full_precision", False, r"model\.rope_full_precision=False"),
        ("attention_dropout", 0.1, r"model\.attention_dropout=0\.1"),
        ("emb_init_std", 0.01, r"model\.emb_init_std=0\.01"),
        ("init_fn", "kaiming_normal", r"model\.init_fn='kaiming_normal'"),
    ],
)
def test_architectures_olmo_jax_does_not_build_are_refused(tmp_path, key, value, message):
    """Every key of OLMo's ModelConfig (olmo/config.py) is translated, checked against what olmo_jax builds,
    or known to change nothing here."""
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


def olmo_file(tmp_path, text: str, name: str = "olmo.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return f"olmo:{path}"  # `olmo:` marks a file too short to be told from one of ours


MINIMAL = """
model:
  d_model: 64
  n_layers: 2
  n_heads: 4
"""
# What an OLMo-1 file must state because OLMo's defaults say otherwise.
OLMO_1_ARCHITECTURE = """
  rope: true
  layer_norm_with_affine: false
  include_bias: false
  attention_dropout: 0.0
  residual_dropout: 0.0
  embedding_dropout: 0.0
"""


def test_minimal_olmo_yaml_is_refused_naming_what_olmos_defaults_ask_for(tmp_path):
    """Omitted keys take the original's defaults (olmo/config.py `ModelConfig`: rope false, affine
    LayerNorm, biases, dropout 0.1; `OptimizerConfig`: LionW), which olmo_jax does not build."""
    with pytest.raises(ConfigError) as refused:
        load_config(olmo_file(tmp_path, MINIMAL))
    message = str(refused.value)
    assert "\n" not in message
    for named in (
        "model.rope=False (OLMo's default)",
        "model.layer_norm_with_affine=True (OLMo's default)",
        "model.include_bias=True (OLMo's default)",
        "model.attention_dropout=0.1 (OLMo's default)",
        "model.residual_dropout=0.1 (OLMo's default)",
        "model.embedding_dropout=0.1 (OLMo's default)",
        "optimizer.name='lionw' (OLMo's default)",
    ):
        assert named in message
    assert "d_model" not in message and "init_fn" not in message  # what olmo_jax builds is not named


def test_olmo_1_architecture_keys_load_with_the_originals_training_defaults(tmp_path):
    """olmo/config.py defaults for everything the file leaves out: ModelConfig (vocab 50257, eos/pad 50256,
    init_fn normal with std 0.02 and no cutoff, mlp_ratio 4, length 1024, tied), OptimizerConfig (lr 1e-4,
    weight decay 0.01), SchedulerConfig (cosine, 100 warmup steps), DataConfig (drop_last false, uint16),
    TrainConfig (max_grad_norm None, 512 instances in micro-batches of 16, 10000 steps, keep every
    checkpoint, tokenizer gpt2)."""
    text = MINIMAL + OLMO_1_ARCHITECTURE
    with pytest.raises(ConfigError, match=r"does not support optimizer\.name='lionw' \(OLMo's default\)"):
        load_config(olmo_file(tmp_path, text))
    config = load_config(olmo_file(tmp_path, text + "optimizer:\n  name: adamw\n"))
    model = config.model
    assert (model.vocab_size, model.embedding_size) == (50257, 50304)
    assert (model.eos_token_id, model.pad_token_id) == (50256, 50256)
    assert (model.init_fn, model.init_std, model.init_cutoff_factor) == ("normal", 0.02, None)
    assert (model.mlp_ratio, model.max_sequence_length, model.weight_tying, model.compute_dtype) == (
        4, 1024, True, "float32",
    )  # fmt: skip
    assert (config.optimizer.learning_rate, config.optimizer.weight_decay, config.optimizer.eps) == (1e-4, 0.01, 1e-5)
    scheduler = config.scheduler
    assert (scheduler.name, scheduler.t_warmup, scheduler.alpha_f) == ("cosine_with_warmup", 100, 0.1)
    assert config.max_grad_norm is None
    assert (config.global_train_batch_size, config.device_train_microbatch_size) == (512, 16)
    assert config.max_duration == "10000"
    assert (config.data.drop_last, config.data.dtype, config.data.builtin_corpus) == (False, "uint16", False)
    assert config.save_num_checkpoints_to_keep == 0 and config.tokenizer.identifier == "gpt2"


def test_lionw_written_in_the_file_is_refused_by_name(tmp_path):
    text = MINIMAL + OLMO_1_ARCHITECTURE + "optimizer:\n  name: lionw\n"
    with pytest.raises(ConfigError, match=r"does not support optimizer\.name='lionw'; "):
        load_config(olmo_file(tmp_path, text))


ADAMW_OLMO_1 = MINIMAL + OLMO_1_ARCHITECTURE + "optimizer:\n  name: adamw\n"


def test_layer_norm_eps_is_translated(tmp_path, capsys):
    text = ADAMW_OLMO_1.replace("  rope: true", "  rope: true\n  layer_norm_eps: 1.0e-6")
    config = load_config(olmo_file(tmp_path, text))
    assert config.model.layer_norm_eps == 1e-6
    assert "layer_norm_eps" not in capsys.readouterr().err


def test_unknown_model_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.rope_scaling is not a key of OLMo's model config"):
        load_config(olmo_file(tmp_path, ADAMW_OLMO_1.replace("  rope: true", "  rope: true\n  rope_scaling: 2")))


# OLMo-1B.yaml's save_folder, with /results (OLMo's cluster path) moved under the test's folder.
SAVE_FOLDER_1B = "${path.choose:${oc.env:SCRATCH_DIR,no_exist}/checkpoints,RESULTS}/${oc.env:SLURM_JOB_ID,${run_name}}"


def test_olmo_1b_save_folder_resolves_as_omegaconf_and_olmos_path_choose(tmp_path, monkeypatch):
    """OmegaConf's `oc.env` (the variable, else the default) and OLMo's `path.choose` (olmo/config.py
    `BaseConfig._register_resolvers`: the first existing path or URL; none existing is an error)."""
    results = tmp_path / "results"
    text = ADAMW_OLMO_1 + f"run_name: OLMo-1B\nsave_folder: {SAVE_FOLDER_1B.replace('RESULTS', str(results))}\n"
    spec = olmo_file(tmp_path, text)
    monkeypatch.delenv("SCRATCH_DIR", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(ConfigError, match=r"save_folder=.*path\.choose: none of these paths exists: no_exist/"):
        load_config(spec)
    results.mkdir()
    assert load_config(spec).save_folder == f"{results}/OLMo-1B"
    (tmp_path / "scratch" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert load_config(spec).save_folder == f"{tmp_path}/scratch/checkpoints/4242"


def test_interpolation_values_and_types(tmp_path, monkeypatch):
    """A whole-value `${a.b}` keeps its type and sees OLMo's defaults (save_interval: 1000); oc.env gives
    text, its default too (OmegaConf turns a typed default into text, `null` into None)."""
    monkeypatch.delenv("OLMO_JAX_UNSET", raising=False)
    text = ADAMW_OLMO_1 + (
        "eval_interval: ${save_interval}\n"
        "max_duration: ${oc.env:OLMO_JAX_UNSET, 300 }\n"
        "load_path: ${oc.env:OLMO_JAX_UNSET,null}\n"
        "run_name: 'run-${model.n_layers}-${oc.env:OLMO_JAX_UNSET,\"a, b\"}'\n"
    )
    config = load_config(olmo_file(tmp_path, text))
    assert config.eval_interval == 1000
    assert config.max_duration == "300"
    assert config.load_path is None
    assert config.run_name == "run-2-a, b"


def test_unsupported_resolver_is_refused_naming_the_key(tmp_path):
    text = ADAMW_OLMO_1 + "data:\n  paths: ${path.glob:/data/*.npy}\n"
    with pytest.raises(ConfigError, match=r"^OLMo config: data\.paths=.*resolver path\.glob is not supported"):
        load_config(olmo_file(tmp_path, text))


def test_z_loss_weight_stop_at_and_checkpoints_to_keep(tmp_path):
    """Where olmo_jax knowingly differs (README): the original fixes the z-loss weight at 1e-4
    (olmo/train.py `Trainer.model_forward` never passes `auxiliary_loss_multiplier`), olmo_jax honours the
    key; the original trains to `stop_at`, max_steps + 10 when unset (`Trainer.fit`), olmo_jax to
    max_duration, so a set `stop_at` is refused. OLMo's `save_num_checkpoints_to_keep` -1 keeps all, as
    olmo_jax's 0; OLMo's 0 saves no periodic checkpoint."""
    config = load_config(olmo_file(tmp_path, ADAMW_OLMO_1 + "auxiliary_loss_multiplier: 1.0e-3\nmax_duration: 30\n"))
    assert config.auxiliary_loss_multiplier == 1e-3 and config.max_duration == "30"
    with pytest.raises(ConfigError, match=r"does not support stop_at=40"):
        load_config(olmo_file(tmp_path, ADAMW_OLMO_1 + "stop_at: 40\n"))
    keep_all = load_config(olmo_file(tmp_path, ADAMW_OLMO_1 + "save_num_checkpoints_to_keep: -1\n"))
    assert keep_all.save_num_checkpoints_to_keep == 0
    keep_none = load_config(olmo_file(tmp_path, ADAMW_OLMO_1 + "save_num_checkpoints_to_keep: 0\n"))
    assert keep_none.save_interval is None


# The model section and recipe keys of allenai/OLMo's configs/official-1124/OLMo2-7B-stage1.yaml (the
# OLMo-2 7B run was trained with that repository's trainer), values as published.
OLMO2_7B_YAML = """
run_name: OLMo2-7B-stage1
seed: 6198
model:
  d_model: 4096
  n_heads: 32
  n_layers: 32
  mlp_hidden_size: 22016
  weight_tying: false
  alibi: false
  rope: true
  rope_theta: 500000
  flash_attention: true
  attention_dropout: 0.0
  include_bias: false
  block_type: sequential
  layer_norm_type: rms
  layer_norm_with_affine: true
  layer_norm_eps: 1e-6
  bias_for_layer_norm: false
  attention_layer_norm: true
  attention_layer_norm_with_affine: true
  norm_after: true
  activation_type: swiglu
  residual_dropout: 0.0
  embedding_dropout: 0.0
  max_sequence_length: 4096
  vocab_size: 100278
  embedding_size: 100352
  eos_token_id: 100257
  pad_token_id: 100277
  init_device: meta
  init_fn: normal
  init_std: 0.02
  init_cutoff_factor: 3
softmax_auxiliary_loss: true
auxiliary_loss_multiplier: 1e-5
optimizer:
  name: adamw
  learning_rate: 3.0e-4
  weight_decay: 0.1
  eps: 1e-8
  decay_norm_and_bias: true
  decay_embeddings: false
  betas: [0.9, 0.95]
scheduler:
  name: cosine_with_warmup
  units: tokens
  t_warmup: 8388608000
  t_max: 5e12
  alpha_f: 0.1
  warmup_min_lr: 0.0
tokenizer:
  identifier: tokenizers/allenai_dolma2.json
max_duration: 1ep
global_train_batch_size: 1024
device_train_microbatch_size: 2
precision: amp_bf16
max_grad_norm: 1.0
data:
  memmap_dtype: uint32
  drop_last: true
  paths: [/data/dolma2/part-00-00000.npy]
"""


def test_olmo2_7b_yaml_translates_to_the_olmo2_7b_preset_model(tmp_path):
    """OLMo-2's keys map onto the model spec (olmo_yaml._architecture cites the original's code): RMSNorm
    with weights, QK-norm over the whole projections, norm_after = reordered_norm."""
    path = tmp_path / "OLMo2-7B-stage1.yaml"
    path.write_text(OLMO2_7B_YAML)
    config = load_config(str(path))
    preset = load_config("olmo2_7b")
    assert config.model == dataclasses.replace(preset.model, remat="none")
    assert (config.model.norm, config.model.qk_norm, config.model.block_order) == ("rms_norm", "full", "reordered_norm")
    assert config.auxiliary_loss_multiplier == 1e-5 and config.optimizer.eps == 1e-8
    assert config.optimizer.decay_norm_and_bias and not config.optimizer.decay_embeddings


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"layer_norm_with_affine": False}, r"model\.layer_norm_type='rms', model\.layer_norm_with_affine=False"),
        ({"bias_for_layer_norm": True}, r"model\.layer_norm_type='rms'"),
        ({"attention_layer_norm_with_affine": False}, r"model\.attention_layer_norm=True"),
    ],
)
def test_olmo2_norm_variants_olmo_jax_does_not_build_are_refused(tmp_path, changes, message):
    data = yaml.safe_load(OLMO2_7B_YAML)
    data["model"].update(changes)
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


@pytest.mark.parametrize(
    "changes, kv_heads", [({"n_kv_heads": 8}, 8), ({"multi_query_attention": True}, 1), ({"n_kv_heads": 32}, None)]
)
def test_key_value_heads_follow_olmos_effective_n_kv_heads(tmp_path, changes, kv_heads):
    data = yaml.safe_load(OLMO2_7B_YAML)
    data["model"].update(changes)
    path = tmp_path / "gqa.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(str(path)).model.n_kv_heads == kv_heads
