"""Translate an original OLMo (PyTorch) YAML training config into a `TrainConfig`.

The file is read as the original trainer reads it (ai2-olmo 0.6.0, olmo/config.py `BaseConfig.load`):
every key it omits takes OLMo's default (`OLMO_DEFAULTS`), not olmo_jax's, and its OmegaConf
interpolations (`${a.b}`, `${oc.env:VAR,default}`, `${path.choose:...}`) are resolved against the result.
Then every key is one of:
- translated onto the `TrainConfig` field with the same meaning;
- refused when olmo_jax would build or train something else (OLMo's defaults included: a file that omits
  `rope` asks for learned position embeddings). All such keys are named in one error;
- named on stderr as not translated when it has no effect here (FSDP wrapping, speed monitor, ...).
"""

from __future__ import annotations

import copy
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from olmo_jax.errors import ConfigError
from olmo_jax.eval.tasks import CORE9, TASKS

# The original's defaults (olmo/config.py: ModelConfig, OptimizerConfig, SchedulerConfig, DataConfig,
# TokenizerConfig, TrainConfig) for every key this translation reads.
OLMO_DEFAULTS: dict[str, Any] = {
    "model": {
        "d_model": 768, "n_heads": 12, "n_kv_heads": None, "clip_qkv": None, "n_layers": 12, "mlp_ratio": 4,
        "mlp_hidden_size": None, "activation_type": "swiglu", "block_type": "sequential", "alibi": False,
        "rope": False, "rope_full_precision": True, "rope_theta": 10_000, "attention_dropout": 0.1,
        "multi_query_attention": None, "attention_layer_norm": False, "residual_dropout": 0.1,
        "embedding_dropout": 0.1, "embedding_layer_norm": False, "layer_norm_type": "default",
        "layer_norm_with_affine": True, "layer_norm_eps": 1e-5, "max_sequence_length": 1024,
        "include_bias": True, "scale_logits": False, "vocab_size": 50257, "embedding_size": 50304,
        "weight_tying": True, "eos_token_id": 50256, "pad_token_id": 50256, "init_fn": "normal",
        "init_std": 0.02, "init_cutoff_factor": None, "emb_init_std": None, "norm_after": False,
        "bias_for_layer_norm": None, "attention_layer_norm_with_affine": True,
    },
    "optimizer": {
        "name": "lionw", "learning_rate": 1e-4, "weight_decay": 0.01, "betas": [0.9, 0.95], "eps": 1e-5,
        "no_decay_norm_and_bias": None, "selective_updates": False, "decay_norm_and_bias": False,
        "decay_embeddings": False,
    },
    "scheduler": {
        "name": "cosine_with_warmup", "units": "steps", "t_warmup": 100, "t_max": None, "alpha_f": 0.1,
        "grad_clip_warmup_steps": None, "grad_clip_warmup_factor": None, "warmup_min_lr": None,
    },
    "data": {
        "paths": None, "datasets": None, "memmap_dtype": "uint16", "label_mask_paths": None,
        "generate_doc_lengths": False, "instance_filter": None, "num_workers": 0, "drop_last": False,
        "seed": None,
    },
    "tokenizer": {"identifier": "gpt2"},
    "run_name": None, "seed": 6198, "epoch": None, "evaluators": [], "eval_interval": 1000,
    "eval_subset_num_batches": -1, "save_folder": "./", "save_interval": 1000,
    "save_num_checkpoints_to_keep": -1, "load_path": None, "max_duration": 10000,
    "global_train_batch_size": 512, "device_train_microbatch_size": 16, "max_grad_norm": None,
    "max_grad_norm_ratio": None, "precision": None, "wandb": None, "softmax_auxiliary_loss": False,
    "auxiliary_loss_multiplier": 1e-4, "time_limit": None, "stop_at": None, "stop_after": None,
}  # fmt: skip

# Model keys with the same meaning in ModelConfig.
_MODEL_KEYS = (
    "d_model", "n_heads", "n_layers", "mlp_ratio", "mlp_hidden_size", "vocab_size", "embedding_size",
    "max_sequence_length", "weight_tying", "rope_theta", "clip_qkv", "layer_norm_eps", "init_fn", "init_std",
    "init_cutoff_factor", "eos_token_id", "pad_token_id",
)  # fmt: skip
# Model keys and the values with which OLMo builds a network olmo_jax builds. The norm, QK-norm, block order
# and key/value heads are read by `_architecture` (OLMo-1's and OLMo-2's blocks); the rest must be these.
_ARCHITECTURE: dict[str, tuple[Any, ...]] = {
    "block_type": ("sequential",),
    "activation_type": ("swiglu",),
    "embedding_layer_norm": (False,),
    "include_bias": (False,),
    "alibi": (False,),
    "rope": (True,),
    "rope_full_precision": (True,),
    "scale_logits": (False,),
    "attention_dropout": (0,),
    "residual_dropout": (0,),
    "embedding_dropout": (0,),
    "init_fn": ("mitchell", "normal"),
    "emb_init_std": (None,),
}
# Model keys of OLMo's schema that change nothing in the network olmo_jax builds: FSDP grouping and
# placement, a kernel choice, and options that only act together with a refused one.
_MODEL_NO_EFFECT = {
    "block_group_size", "flash_attention", "init_device", "precision", "alibi_bias_max", "scale_emb_init",
}  # fmt: skip

_OPTIMIZER_KEYS = ("learning_rate", "weight_decay", "betas", "eps", "decay_norm_and_bias", "decay_embeddings")
_SCHEDULER_NAMES = {"linear_with_warmup", "cosine_with_warmup", "constant_with_warmup", "constant"}
_SCHEDULER_KEYS = (
    "name", "units", "t_warmup", "t_max", "alpha_f", "warmup_min_lr", "grad_clip_warmup_steps",
    "grad_clip_warmup_factor",
)  # fmt: skip
_TOP_KEYS = (
    "seed", "max_duration", "global_train_batch_size", "device_train_microbatch_size", "max_grad_norm",
    "save_folder", "save_interval", "load_path", "eval_interval", "softmax_auxiliary_loss",
    "auxiliary_loss_multiplier", "time_limit",
)  # fmt: skip
# Training options olmo_jax does not have, with the values that leave OLMo's training unchanged.
_TRAINING_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "max_grad_norm_ratio": (None,),  # adaptive clipping
    "stop_at": (None,),  # olmo_jax stops at max_duration
    "stop_after": (None,),
    "epoch": (None, 0),  # start the data order at a later epoch
}
_DATA_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "label_mask_paths": (None, []),
    "generate_doc_lengths": (False,),  # attention within documents only
    "instance_filter": (None,),
}
Refuse = Callable[[str | None, str, Any], None]
_PRECISION = {"amp_bf16": "bfloat16", "amp_fp16": "float16", "fp32": "float32"}
# OLMo's evaluator labels of the core tasks (olmo/eval/downstream.py `label_to_task_map`) -> our task names.
_TASK_LABELS = {TASKS[name].olmo_label or name: name for name in CORE9}
_TASK_LABELS |= {"obqa": "openbookqa", "hellaswag_rc": "hellaswag"}
_HANDLED = set(OLMO_DEFAULTS) | {"model", "optimizer", "scheduler", "data", "tokenizer"}


# Keys that only an original OLMo YAML has (our own files never carry them).
_OLMO_YAML_MARKERS = {"precision", "fsdp", "evaluators", "speed_monitor", "compile", "ddp", "activation_checkpointing"}
_OLMO_MODEL_MARKERS = {"block_type", "attention_dropout", "residual_dropout", "layer_norm_type", "activation_type"}


def is_olmo_yaml(data: dict[str, Any]) -> bool:
    """Whether a config file's mapping is an original OLMo config (it has keys only OLMo's configs have)."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    return bool(_OLMO_YAML_MARKERS & set(data) or _OLMO_MODEL_MARKERS & set(model))


def translate_olmo_yaml(raw: dict[str, Any]) -> dict[str, Any]:
    """Our config dict (for `TrainConfig`) from an OLMo YAML dict (as parsed); prints the keys that were not
    translated. A dict to a dict, so that this module needs nothing from `olmo_jax.config`."""
    data = resolve_interpolations(with_olmo_defaults(raw))
    refused: list[str] = []
    skipped: list[str] = []

    def given(section: str | None, key: str) -> bool:
        node = raw if section is None else raw.get(section) or {}
        return isinstance(node, dict) and key in node

    def refuse(section: str | None, key: str, value: Any) -> None:
        name = key if section is None else f"{section}.{key}"
        refused.append(f"{name}={value!r}" + ("" if given(section, key) else " (OLMo's default)"))

    ours: dict[str, Any] = {"model": _translate_model(data["model"], refuse, skipped)}
    precision = data["precision"]
    if precision is not None and precision not in _PRECISION:
        raise ConfigError(f"OLMo config: precision={precision!r}; valid: {', '.join(_PRECISION)}")
    # The original cannot train without `precision` (TrainConfig.autocast_precision raises); olmo_jax
    # then computes in fp32.
    ours["model"]["compute_dtype"] = _PRECISION[precision or "fp32"]

    optimizer = data["optimizer"]
    name = "lionw" if optimizer["name"] == "decoupled_lionw" else optimizer["name"]  # OLMo's legacy alias
    if name != "adamw":
        refuse("optimizer", "name", name)
    if optimizer["selective_updates"]:
        refuse("optimizer", "selective_updates", True)
    ours["optimizer"] = {key: optimizer[key] for key in _OPTIMIZER_KEYS}
    if optimizer["no_decay_norm_and_bias"] is not None:
        # The deprecated flag wins over both new ones (OLMo's scripts/train.py).
        decay = not optimizer["no_decay_norm_and_bias"]
        ours["optimizer"].update(decay_norm_and_bias=decay, decay_embeddings=decay)

    scheduler = data["scheduler"]
    if scheduler["name"] not in _SCHEDULER_NAMES:
        refuse("scheduler", "name", scheduler["name"])
    ours["scheduler"] = {key: scheduler[key] for key in _SCHEDULER_KEYS}

    for key, neutral in _TRAINING_UNSUPPORTED.items():
        if data[key] not in neutral:
            refuse(None, key, data[key])
    ours["data"] = _translate_data(data["data"], refuse)
    ours["tokenizer"] = {"identifier": data["tokenizer"]["identifier"]}

    for key in _TOP_KEYS:
        ours[key] = data[key]
    if data["run_name"] is not None:
        ours["run_name"] = data["run_name"]
    keep = data["save_num_checkpoints_to_keep"]
    if keep == 0:
        ours["save_interval"] = None  # OLMo's 0: no periodic checkpoints (olmo_jax still saves the last step)
    else:
        ours["save_num_checkpoints_to_keep"] = max(keep, 0)  # OLMo's -1 and olmo_jax's 0 both keep all
    ours["wandb"] = bool(data["wandb"])
    ours["evaluation"], skipped_evaluators = _translate_evaluators(data["evaluators"] or [])
    if data["eval_subset_num_batches"] < 0:
        ours["evaluation"]["limit"] = None  # OLMo's -1: every example
    else:
        skipped.append("eval_subset_num_batches (OLMo counts batches; olmo_jax's evaluation.limit counts questions)")
    skipped += skipped_evaluators

    if refused:
        raise ConfigError(
            f"OLMo config: olmo_jax does not support {', '.join(refused)}; it builds OLMo-1 and OLMo-2 blocks "
            "(RoPE, SwiGLU, no biases, no dropout; non-parametric LayerNorm, or RMSNorm with weights, QK-norm "
            "and norm_after) and trains them with AdamW"
        )
    for section in ("optimizer", "scheduler", "data", "tokenizer"):
        skipped += [f"{section}.{k}" for k in raw.get(section) or {} if k not in OLMO_DEFAULTS[section]]
    skipped += [k for k in raw if k not in _HANDLED and raw[k] not in (None, False)]
    if skipped:
        print(f"olmo_jax: not translated from the OLMo config: {', '.join(sorted(skipped))}", file=sys.stderr)
    return ours


def with_olmo_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` on top of `OLMO_DEFAULTS`: sections merged key by key, as OmegaConf merges a file onto OLMo's schema."""
    merged = copy.deepcopy(OLMO_DEFAULTS)
    for key, value in raw.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key].update(copy.deepcopy(value))
        elif isinstance(merged.get(key), dict) and value is None:
            continue  # `model:` with nothing under it
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _translate_model(model: dict[str, Any], refuse: Refuse, skipped: list[str]) -> dict[str, Any]:
    for key, allowed in _ARCHITECTURE.items():
        if model[key] not in allowed:
            refuse("model", key, model[key])
    for key in model:
        if key in _MODEL_NO_EFFECT:
            skipped.append(f"model.{key}")
        elif key not in OLMO_DEFAULTS["model"]:
            raise ConfigError(f"OLMo config: model.{key} is not a key of OLMo's model config")
    return {key: model[key] for key in _MODEL_KEYS} | _architecture(model, refuse)


def _architecture(model: dict[str, Any], refuse: Refuse) -> dict[str, Any]:
    """Our `norm`, `qk_norm`, `block_order` and `n_kv_heads` from OLMo's keys, as ai2-olmo 0.6.0 builds the
    block (olmo/model.py: `LayerNormBase.__init__`/`build`, `OLMoBlock.__init__` (q_norm/k_norm),
    `OLMoSequentialBlock.forward` (norm_after); olmo/config.py `ModelConfig.effective_n_kv_heads`).

    OLMo-1: the non-parametric LayerNorm (`layer_norm_type: default`, no affine). OLMo-2
    (configs/official-1124): `layer_norm_type: rms` with a weight and no bias, `attention_layer_norm` (an RMSNorm
    with a weight over the whole q and k projections) and `norm_after` (the norm applied to the attention and
    MLP outputs: our `reordered_norm`)."""
    # A norm has a bias when it has a weight and `bias_for_layer_norm` (None: `include_bias`) says so.
    bias = model["bias_for_layer_norm"] if model["bias_for_layer_norm"] is not None else model["include_bias"]
    kind, affine = model["layer_norm_type"], model["layer_norm_with_affine"]
    if kind == "default" and not affine:
        norm = "layer_norm"
    elif kind == "rms" and affine and not bias:
        norm = "rms_norm"
    else:
        norm = "layer_norm"
        refuse("model", "layer_norm_type", kind)
        refuse("model", "layer_norm_with_affine", affine)
    qk_norm = "none"
    if model["attention_layer_norm"]:
        if kind == "rms" and model["attention_layer_norm_with_affine"] and not bias:
            qk_norm = "full"
        else:  # a LayerNorm, or an RMSNorm without a weight or with a bias, over q and k
            refuse("model", "attention_layer_norm", True)
    heads, kv_heads, mqa = model["n_heads"], model["n_kv_heads"], model["multi_query_attention"]
    effective = {True: 1, False: heads, None: kv_heads if kv_heads is not None else heads}[mqa]
    if kv_heads is not None and mqa is not None and kv_heads != effective:
        raise ConfigError(
            f"OLMo config: model.n_kv_heads={kv_heads} contradicts model.multi_query_attention={mqa} "
            f"(which means {effective} key/value heads)"
        )
    return {
        "norm": norm,
        "qk_norm": qk_norm,
        "block_order": "reordered_norm" if model["norm_after"] else "sequential",
        "n_kv_heads": None if effective == heads else effective,
    }


def _translate_data(data: dict[str, Any], refuse: Refuse) -> dict[str, Any]:
    for key, neutral in _DATA_UNSUPPORTED.items():
        if data[key] not in neutral:
            refuse("data", key, data[key])
    if data["memmap_dtype"] not in ("uint16", "uint32"):
        refuse("data", "memmap_dtype", data["memmap_dtype"])
    return {
        "paths": data["paths"] or [],
        "sources": data["datasets"] or {},
        "dtype": data["memmap_dtype"],
        "num_workers": data["num_workers"],
        "drop_last": data["drop_last"],
        "seed": data["seed"],
        # The original trains only on the files it is given: never fall back to the built-in corpus.
        "builtin_corpus": False,
    }


def _translate_evaluators(evaluators: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Downstream evaluators of the 9 core tasks become `evaluation.tasks` (OLMo's labels, e.g. `openbook_qa`,
    mapped to our names); perplexity evaluators with local paths become `evaluation.ppl_paths`."""
    tasks, ppl_paths, skipped = [], [], []
    for evaluator in evaluators:
        label = str(evaluator.get("label", ""))
        if evaluator.get("type") == "downstream":
            if label in _TASK_LABELS:
                tasks.append(_TASK_LABELS[label])
            else:
                skipped.append(f"evaluator {label}")
            continue
        datasets = ((evaluator.get("data") or {}).get("datasets") or {}).values()
        paths = [p for group in datasets for p in (group or []) if "://" not in str(p)]
        if paths:
            ppl_paths += paths
        else:
            skipped.append(f"evaluator {label}")
    return {"tasks": tasks, "ppl_paths": ppl_paths}, skipped


# --------------------------------------------------------------------------------------------------
# OmegaConf interpolations, resolved as OmegaConf and OLMo's resolvers do.
# --------------------------------------------------------------------------------------------------

_RESOLVER_CALL = re.compile(r"\s*([A-Za-z_][\w.]*)\s*:(.*)", re.DOTALL)
_NODE_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_INT = re.compile(r"[+-]?\d[\d_]*")
_FLOAT = re.compile(r"[+-]?(\d[\d_]*\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


def resolve_interpolations(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every `${...}` resolved; an interpolation that cannot be is a ConfigError naming its key.

    Supported as OmegaConf 2 and OLMo (olmo/config.py `BaseConfig._register_resolvers`) define them:
    `${a.b}` (another key; a whole-value reference keeps its type), `${oc.env:VAR}` and
    `${oc.env:VAR,default}` (the variable's text, else the default as text, `null` giving None), and
    `${path.choose:p1,p2,...}` (the first path that is a URL or exists; none existing is an error, as with
    OLMo's `validate_paths`). Arguments may be interpolations themselves.
    """
    resolving: list[str] = []

    def lookup(path: str, key: str) -> Any:
        node: Any = data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"OLMo config: {key}: cannot resolve ${{{path}}} (no such key)")
            node = node[part]
        if path in resolving:
            raise ConfigError(f"OLMo config: {key}: ${{{path}}} refers to itself")
        resolving.append(path)
        try:
            return resolve(node, path)
        finally:
            resolving.pop()

    def resolve(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return _Interpolation(value, key, lookup).evaluate()
        return value

    return resolve(data, "")


class _Interpolation:
    """One string value holding `${...}`, parsed and evaluated left to right."""

    def __init__(self, text: str, key: str, lookup: Callable[[str, str], Any]) -> None:
        self.text, self.key, self.lookup = text, key, lookup

    def fail(self, why: str) -> ConfigError:
        return ConfigError(f"OLMo config: {self.key}={self.text!r}: {why}")

    def evaluate(self) -> Any:
        pieces, _ = self.pieces(0, stop="")
        return _join(pieces)

    def pieces(self, i: int, stop: str) -> tuple[list[Any], int]:
        """Literal text and evaluated interpolations from `i` up to an unquoted, unnested character of `stop`."""
        pieces: list[Any] = []
        literal, quote = "", None
        text = self.text
        while i < len(text):
            if text.startswith("\\${", i):
                literal, i = literal + "${", i + 3
            elif text.startswith("${", i):
                if literal:
                    pieces.append(literal)
                    literal = ""
                value, i = self.interpolation(i + 2)
                pieces.append(value)
            elif quote is None and text[i] in stop:
                break
            else:
                if stop and text[i] in "'\"":
                    quote = None if quote == text[i] else quote or text[i]
                literal, i = literal + text[i], i + 1
        if literal:
            pieces.append(literal)
        return pieces, i

    def interpolation(self, i: int) -> tuple[Any, int]:
        """Evaluate the interpolation whose body starts at `i` (after `${`); return it and the position after `}`."""
        call = _RESOLVER_CALL.match(self.text, i)
        if call is None:
            end = self.text.find("}", i)
            path = self.text[i:end].strip() if end >= 0 else ""
            if not _NODE_PATH.fullmatch(path):
                raise self.fail(f"cannot parse the interpolation at position {i - 2}")
            return self.lookup(path, self.key), end + 1
        args, j = [], call.start(2)
        while True:
            pieces, j = self.pieces(j, stop=",}")
            if j >= len(self.text):
                raise self.fail("an interpolation is not closed with '}'")
            args.append(_argument(pieces))
            j += 1
            if self.text[j - 1] == "}":
                break
        if args == [""]:
            args = []
        return self.call(call.group(1), args), j

    def call(self, name: str, args: list[Any]) -> Any:
        if name == "oc.env":
            if not 1 <= len(args) <= 2:
                raise self.fail("oc.env takes a variable name and an optional default")
            if str(args[0]) in os.environ:
                return os.environ[str(args[0])]
            if len(args) == 1:
                raise self.fail(f"environment variable {args[0]} is not set and no default is given")
            return None if args[1] is None else str(args[1])  # OmegaConf's oc.env: the default as text
        if name == "path.choose":
            for path in args:
                if re.match(r"[a-z0-9]+://.*", str(path)) or Path(str(path)).exists():
                    return path
            raise self.fail(f"path.choose: none of these paths exists: {', '.join(map(str, args))}")
        raise self.fail(
            f"resolver {name} is not supported (olmo_jax resolves ${{a.b}}, ${{oc.env:...}}, ${{path.choose:...}})"
        )


def _argument(pieces: list[Any]) -> Any:
    """A resolver argument as OmegaConf's grammar reads it: surrounding spaces stripped, quotes removed,
    an unquoted literal typed (null, true/false, numbers), a lone interpolation kept as its value."""
    if len(pieces) == 1 and not isinstance(pieces[0], str):
        return pieces[0]
    pieces = list(pieces)
    if pieces and isinstance(pieces[0], str):
        pieces[0] = pieces[0].lstrip()
    if pieces and isinstance(pieces[-1], str):
        pieces[-1] = pieces[-1].rstrip()
    pieces = [p for p in pieces if p != ""]
    if not all(isinstance(p, str) for p in pieces):
        return _join(pieces)
    text = "".join(pieces)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return _primitive(text)


def _primitive(text: str) -> Any:
    lowered = text.lower()
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(text):
        return int(text.replace("_", ""))
    if _FLOAT.fullmatch(text):
        return float(text.replace("_", ""))
    return text


def _join(pieces: list[Any]) -> Any:
    """One piece keeps its type (a whole-value interpolation); several are joined as text."""
    if len(pieces) == 1:
        return pieces[0]
    return "".join(str(p) for p in pieces)
