"""Translate an original OLMo (PyTorch) YAML training config into an olmo_jax config dict.

`olmo_jax.config.load_config` calls it on a file that `is_olmo_yaml` recognises and builds the
`TrainConfig` from the result; this module works on plain dicts only, below `config`.

What maps is translated; architecture options olmo_jax does not implement are errors (training a
different model silently would be worse); everything else that has no meaning here (FSDP wrapping,
speed monitor, remote folders, ...) is named on stderr as not translated.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from olmo_jax.errors import ConfigError

# Keys that only an original OLMo YAML has (our own files never carry them).
_OLMO_YAML_MARKERS = {"precision", "fsdp", "evaluators", "speed_monitor", "compile", "ddp", "activation_checkpointing"}
_OLMO_MODEL_MARKERS = {"block_type", "attention_dropout", "residual_dropout", "layer_norm_type", "activation_type"}

# OLMo model keys that map one-to-one onto ModelConfig.
_MODEL_KEYS = {
    "d_model", "n_heads", "n_layers", "mlp_ratio", "mlp_hidden_size", "vocab_size", "embedding_size",
    "max_sequence_length", "weight_tying", "rope_theta", "clip_qkv", "init_fn", "init_std",
    "init_cutoff_factor", "eos_token_id", "pad_token_id",
}  # fmt: skip

# OLMo model options whose value must be OLMo-1's for olmo_jax to build the same network.
_REQUIRED_ARCHITECTURE = {
    "block_type": "sequential",
    "activation_type": "swiglu",
    "layer_norm_type": "default",
    "layer_norm_with_affine": False,
    "attention_layer_norm": False,
    "include_bias": False,
    "bias_for_layer_norm": False,
    "alibi": False,
    "rope": True,
    "multi_query_attention": False,
    "rope_full_precision": True,
}
_ARCHITECTURE_DEFAULTS_OK = {"n_kv_heads": None, "attention_layer_norm_with_affine": False, "scale_logits": False}
_DROPOUTS = ("attention_dropout", "residual_dropout", "embedding_dropout")

_SCHEDULER_KEYS = {
    "name", "units", "t_warmup", "t_max", "alpha_f", "warmup_min_lr", "grad_clip_warmup_steps",
    "grad_clip_warmup_factor",
}  # fmt: skip
_OPTIMIZER_KEYS = {"name", "learning_rate", "weight_decay", "betas", "eps", "decay_norm_and_bias", "decay_embeddings"}
_TOP_KEYS = {
    "run_name", "seed", "max_duration", "global_train_batch_size", "device_train_microbatch_size",
    "max_grad_norm", "save_folder", "save_interval", "save_num_checkpoints_to_keep", "load_path",
    "eval_interval", "softmax_auxiliary_loss", "auxiliary_loss_multiplier", "time_limit",
}  # fmt: skip
_PRECISION = {"amp_bf16": "bfloat16", "amp_fp16": "float16", "fp32": "float32"}
_CORE_TASKS = {
    "arc_easy", "arc_challenge", "boolq", "copa", "hellaswag", "openbookqa", "piqa", "sciq", "winogrande",
}  # fmt: skip
_TASK_ALIASES = {"obqa": "openbookqa", "hellaswag_rc": "hellaswag"}

_INTERPOLATION = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def is_olmo_yaml(data: dict[str, Any]) -> bool:
    """Whether a config file's mapping is an original OLMo config (it has keys only OLMo's configs have)."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    return bool(_OLMO_YAML_MARKERS & set(data) or _OLMO_MODEL_MARKERS & set(model))


def _resolve_interpolations(data: dict[str, Any]) -> dict[str, Any]:
    """Resolve OmegaConf-style `${key}` / `${a.b}` references to other keys of the same file."""

    def lookup(path: str) -> Any:
        node: Any = data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"OLMo config: cannot resolve ${{{path}}}")
            node = node[part]
        return node

    def resolve(value: Any, depth: int = 0) -> Any:
        if depth > 10:
            raise ConfigError("OLMo config: interpolations nest too deeply (a cycle?)")
        if isinstance(value, dict):
            return {k: resolve(v, depth) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, depth) for v in value]
        if isinstance(value, str):
            whole = _INTERPOLATION.fullmatch(value)
            if whole:
                return resolve(lookup(whole.group(1)), depth + 1)
            return _INTERPOLATION.sub(lambda m: str(resolve(lookup(m.group(1)), depth + 1)), value)
        return value

    return resolve(data)


def translate_olmo_yaml(raw: dict[str, Any]) -> dict[str, Any]:
    """The olmo_jax config dict (`TrainConfig`'s keys) of an OLMo YAML dict; prints the keys not translated."""
    data = _resolve_interpolations(raw)
    ours: dict[str, Any] = {}
    skipped: list[str] = []

    model = dict(data.get("model") or {})
    for key, required in _REQUIRED_ARCHITECTURE.items():
        if key in model and model.pop(key) != required:
            raise ConfigError(
                f"OLMo config: model.{key}={data['model'][key]!r} is not supported; olmo_jax implements "
                f"OLMo-1's architecture ({key}={required!r})"
            )
    for key, default in _ARCHITECTURE_DEFAULTS_OK.items():
        if key in model and model.pop(key) not in (default, data["model"].get("n_heads")):
            raise ConfigError(f"OLMo config: model.{key}={data['model'][key]!r} is not supported by olmo_jax")
    for key in _DROPOUTS:
        if model.pop(key, 0.0):
            skipped.append(f"model.{key} (olmo_jax has no dropout)")
    ours["model"] = {k: model.pop(k) for k in list(model) if k in _MODEL_KEYS}
    skipped += [f"model.{k}" for k in model]
    precision = data.get("precision")
    if precision is not None:
        if precision not in _PRECISION:
            raise ConfigError(f"OLMo config: precision={precision!r}; valid: {', '.join(_PRECISION)}")
        ours["model"]["compute_dtype"] = _PRECISION[precision]

    for section, keys in (("optimizer", _OPTIMIZER_KEYS), ("scheduler", _SCHEDULER_KEYS)):
        given = dict(data.get(section) or {})
        ours[section] = {k: given.pop(k) for k in list(given) if k in keys}
        skipped += [f"{section}.{k}" for k in given]
    if ours["optimizer"].get("name", "adamw") != "adamw":
        raise ConfigError(f"OLMo config: optimizer.name={ours['optimizer']['name']!r}; olmo_jax implements adamw")

    tokenizer = dict(data.get("tokenizer") or {})
    if "identifier" in tokenizer:
        ours["tokenizer"] = {"identifier": tokenizer.pop("identifier")}
    skipped += [f"tokenizer.{k}" for k in tokenizer]

    data_section = dict(data.get("data") or {})
    ours["data"] = {k: data_section.pop(k) for k in ("paths", "num_workers", "drop_last", "seed") if k in data_section}
    skipped += [f"data.{k}" for k in data_section]

    for key in _TOP_KEYS:
        if key in data and data[key] is not None:
            ours[key] = data[key]
    if ours.get("save_num_checkpoints_to_keep", 1) < 0:
        ours["save_num_checkpoints_to_keep"] = 0  # OLMo's -1: keep every checkpoint
    if data.get("wandb"):
        ours["wandb"] = True
    if "evaluators" in data:
        ours["evaluation"], skipped_evaluators = _translate_evaluators(data["evaluators"] or [])
        skipped += skipped_evaluators

    handled = set(_TOP_KEYS) | {
        "model", "optimizer", "scheduler", "tokenizer", "data", "precision", "wandb", "evaluators",
    }  # fmt: skip
    skipped += [k for k in data if k not in handled and data[k] not in (None, False)]
    if skipped:
        print(f"olmo_jax: not translated from the OLMo config: {', '.join(sorted(skipped))}", file=sys.stderr)
    return ours


def _translate_evaluators(evaluators: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Downstream evaluators among the 9 core tasks become `evaluation.tasks`; perplexity evaluators
    with local paths become `evaluation.ppl_paths`."""
    tasks, ppl_paths, skipped = [], [], []
    for evaluator in evaluators:
        label = str(evaluator.get("label", ""))
        if evaluator.get("type") == "downstream":
            task = _TASK_ALIASES.get(label, label)
            (tasks if task in _CORE_TASKS else skipped).append(task if task in _CORE_TASKS else f"evaluator {label}")
            continue
        datasets = ((evaluator.get("data") or {}).get("datasets") or {}).values()
        paths = [p for group in datasets for p in (group or []) if "://" not in str(p)]
        if paths:
            ppl_paths += paths
        else:
            skipped.append(f"evaluator {label}")
    return {"tasks": tasks, "ppl_paths": ppl_paths}, skipped
