"""Hugging Face OLMo models <-> olmo_jax: names, config, weights.

Three HF architectures, picked from the model spec (`hf_model_type`): OLMo-1 (`OlmoForCausalLM`, "olmo"),
OLMo-2 (`Olmo2ForCausalLM`, "olmo2") and OLMo-3 (`Olmo3ForCausalLM`, "olmo3", OLMo-2 plus per-layer
sliding windows). The two layouts hold the same numbers:

| olmo_jax (kernels [in, out], layers stacked)  | HF (torch Linear weights [out, in], one per layer)  |
|-----------------------------------------------|-----------------------------------------------------|
| `wte` [V, d]                                  | `model.embed_tokens.weight` [V, d]                  |
| `att_proj[i, :, 0/1/2]` [d, H, Dh] (MHA)      | `model.layers.i.self_attn.{q,k,v}_proj.weight` [H Dh, d] |
| `q_proj[i]`, `kv_proj[i, :, 0/1]` (GQA)       | the same, k and v [Hkv Dh, d]                       |
| `attn_out[i]` [H, Dh, d]                      | `model.layers.i.self_attn.o_proj.weight` [d, H Dh]  |
| `q_norm[i]`, `k_norm[i]` [H, Dh]              | `model.layers.i.self_attn.{q,k}_norm.weight` [H Dh] |
| `ff_proj[i, :, 0/1]` [d, hidden] (up, gate)   | `model.layers.i.mlp.{up,gate}_proj.weight` [hidden, d] |
| `ff_out[i]` [hidden, d]                       | `model.layers.i.mlp.down_proj.weight` [d, hidden]   |
| `attn_norm[i]`, `ff_norm[i]` [d]              | `model.layers.i.post_{attention,feedforward}_layernorm.weight` |
| `final_norm` [d]                              | `model.norm.weight`                                 |
| `lm_head` [d, V] (untied only)                | `lm_head.weight` [V, d]                             |

Weights move one tensor at a time: the writer streams each tensor's bytes straight into its safetensors
shard and the reader fills preallocated olmo_jax arrays from `safe_open`, so this module holds the
weights once plus a tensor or two, never a second full copy.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from olmo_jax.config import ModelConfig
from olmo_jax.errors import ConversionError
from olmo_jax.model import PARAM_DTYPES, abstract_params

# transformers' OlmoLayerNorm hard-codes this epsilon; other values cannot be represented in HF.
HF_LAYER_NORM_EPS = 1e-5
# model_type -> the architecture transformers builds for it.
HF_ARCHITECTURES = {"olmo": "OlmoForCausalLM", "olmo2": "Olmo2ForCausalLM", "olmo3": "Olmo3ForCausalLM"}
# Defaults of transformers.OlmoConfig (Olmo2Config, Olmo3Config: the same plus the keys below), used for
# keys a config.json leaves out.
_HF_DEFAULTS = {
    "vocab_size": 50304,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "pad_token_id": 1,
    "eos_token_id": 50279,
    "tie_word_embeddings": False,
    "clip_qkv": None,
    "rms_norm_eps": 1e-5,
}
_HF_DEFAULT_THETA = {"olmo": 10000.0, "olmo2": 10000.0, "olmo3": 500000.0}
_OLMO3_DEFAULT_WINDOW = 4096
# Buffers that older transformers versions saved with the weights; they carry no parameters.
_IGNORED_HF_TENSORS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16"}
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


# --------------------------------------------------------------------------------------------------
# Tensor names and layouts.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One HF tensor and where it lives in the olmo_jax parameter dict.

    `index` selects the HF tensor's slice of the olmo_jax array `param` (a "view" of shape `view_shape`).
    For kernels, the view's first `in_axes` axes are the input features: the HF weight is the view
    flattened to [in, out] and transposed. `in_axes=None` marks a tensor stored alike in both (the
    embedding), `in_axes=0` a norm weight, which HF stores flattened.
    """

    hf_name: str
    param: str
    index: tuple[Any, ...]
    view_shape: tuple[int, ...]
    in_axes: int | None

    @property
    def hf_shape(self) -> tuple[int, ...]:
        if self.in_axes is None:
            return self.view_shape
        if self.in_axes == 0:
            return (math.prod(self.view_shape),)
        return (math.prod(self.view_shape[self.in_axes :]), math.prod(self.view_shape[: self.in_axes]))

    def to_hf(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """The HF tensor, as a view of `params` where numpy allows (no copy) or a one-tensor copy."""
        view = params[self.param][self.index]
        if self.in_axes is None:
            return view
        if self.in_axes == 0:
            return view.reshape(-1)
        fan_in = math.prod(self.view_shape[: self.in_axes])
        return view.reshape(fan_in, -1).T

    def from_hf(self, tensor: np.ndarray, params: dict[str, np.ndarray]) -> None:
        """Write HF `tensor` (already shape-checked) into its slice of the preallocated `params`."""
        target = params[self.param]
        if self.in_axes is None:
            target[self.index] = tensor
        elif self.in_axes == 0:
            target[self.index] = tensor.reshape(self.view_shape)
        else:
            target[self.index] = tensor.T.reshape(self.view_shape)


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the olmo_jax parameter dict, read from the model itself (nothing is allocated)."""
    return {name: tuple(leaf.shape) for name, leaf in abstract_params(config).items()}


# Per layer, in HF's order: (HF module, olmo_jax parameter, index into the layer's slice, axes of that
# slice the index removes, in_axes as TensorSpec). A row whose parameter the config's model lacks is skipped.
_LAYER_TENSORS: list[tuple[str, str, tuple[Any, ...], tuple[int, ...], int]] = [
    ("self_attn.q_proj", "att_proj", (slice(None), 0), (1,), 1),
    ("self_attn.k_proj", "att_proj", (slice(None), 1), (1,), 1),
    ("self_attn.v_proj", "att_proj", (slice(None), 2), (1,), 1),
    ("self_attn.q_proj", "q_proj", (), (), 1),
    ("self_attn.k_proj", "kv_proj", (slice(None), 0), (1,), 1),
    ("self_attn.v_proj", "kv_proj", (slice(None), 1), (1,), 1),
    ("self_attn.o_proj", "attn_out", (), (), 2),
    ("self_attn.q_norm", "q_norm", (), (), 0),
    ("self_attn.k_norm", "k_norm", (), (), 0),
    # OLMo's fused ff_proj holds "up" first and the gate second.
    ("mlp.up_proj", "ff_proj", (slice(None), 0), (1,), 1),
    ("mlp.gate_proj", "ff_proj", (slice(None), 1), (1,), 1),
    ("mlp.down_proj", "ff_out", (), (), 1),
    ("post_attention_layernorm", "attn_norm", (), (), 0),
    ("post_feedforward_layernorm", "ff_norm", (), (), 0),
]


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
    """Every HF tensor of the HF model equivalent to this config, in HF's order.

    Which tensors exist follows from the parameters the model has (`param_shapes`), so a new weight
    needs a row in `_LAYER_TENSORS` and nothing else.
    """
    shapes = param_shapes(config)
    every = slice(None)
    specs = [TensorSpec("model.embed_tokens.weight", "wte", (every,), shapes["wte"], None)]
    for i in range(config.n_layers):
        for module, param, index, removed, in_axes in _LAYER_TENSORS:
            if param in shapes:
                view = _drop(shapes[param][1:], *removed)
                specs.append(TensorSpec(f"model.layers.{i}.{module}.weight", param, (i, *index), view, in_axes))
    if "final_norm" in shapes:
        specs.append(TensorSpec("model.norm.weight", "final_norm", (every,), shapes["final_norm"], 0))
    if not config.weight_tying:
        specs.append(TensorSpec("lm_head.weight", "lm_head", (every,), shapes["lm_head"], 1))
    return specs


def _drop(shape: tuple[int, ...], *axes: int) -> tuple[int, ...]:
    return tuple(n for i, n in enumerate(shape) if i not in axes)


# --------------------------------------------------------------------------------------------------
# config.json, both ways.
# --------------------------------------------------------------------------------------------------


def hf_model_type(config: ModelConfig) -> str:
    """The HF model_type that computes what `config` does, or ConversionError naming the field that no HF
    OLMo architecture has."""

    def refuse(field: str, value: Any, why: str) -> ConversionError:
        return ConversionError(f"model.{field}={value!r} cannot be expressed in HF OLMo: {why}")

    if config.block_order == "sequential":
        for field, value, want in (
            ("norm", config.norm, "layer_norm"),
            ("qk_norm", config.qk_norm, "none"),
            ("n_kv_heads", config.n_kv_heads, config.n_heads),
            ("sliding_window_pattern", config.sliding_window_pattern, []),
            ("rope_scaling", config.rope_scaling, "none"),
        ):
            if value != want and not (field == "n_kv_heads" and value is None):
                raise refuse(field, value, f"OLMo-1 (block_order sequential) needs {want!r}")
        if config.layer_norm_eps != HF_LAYER_NORM_EPS:
            raise refuse("layer_norm_eps", config.layer_norm_eps, "HF OLMo-1 fixes it at 1e-05")
        return "olmo"
    if config.norm != "rms_norm":
        raise refuse("norm", config.norm, "OLMo-2/3 (block_order reordered_norm) use 'rms_norm'")
    if config.qk_norm != "full":
        raise refuse("qk_norm", config.qk_norm, "OLMo-2/3 normalise the full q and k projections ('full')")
    if config.clip_qkv is not None:
        raise refuse("clip_qkv", config.clip_qkv, "HF OLMo-2/3 do not clip q, k and v")
    windows = {w for w in config.sliding_window_pattern if w != -1}
    if not windows:
        return "olmo2"
    if len(windows) > 1:
        raise refuse("sliding_window_pattern", config.sliding_window_pattern, "HF OLMo-3 has one window size")
    return "olmo3"


def _rope_parameters(config: ModelConfig, scaled: bool) -> dict[str, Any]:
    """HF `rope_parameters` of full-attention (`scaled`) or sliding-window layers."""
    kind = config.rope_scaling if scaled else "none"
    rope: dict[str, Any] = {"rope_type": "default" if kind == "none" else kind, "rope_theta": config.rope_theta}
    if kind != "none":
        rope["factor"] = config.rope_factor
        rope["original_max_position_embeddings"] = config.rope_original_max_position_embeddings
    if kind == "yarn":
        rope["beta_fast"], rope["beta_slow"] = config.rope_beta_fast, config.rope_beta_slow
        if config.rope_attention_factor is not None:
            rope["attention_factor"] = config.rope_attention_factor
    if kind == "llama3":
        rope["low_freq_factor"], rope["high_freq_factor"] = config.rope_low_freq_factor, config.rope_high_freq_factor
    return rope


def hf_config_dict(config: ModelConfig, dtype: str) -> dict[str, Any]:
    """The `config.json` of the HF OLMo model equivalent to `config`, weights stored as `dtype`."""
    model_type = hf_model_type(config)
    hf: dict[str, Any] = {
        "architectures": [HF_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.padded_vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.hidden_size,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_sequence_length,
        "initializer_range": config.init_std,
        "use_cache": True,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": None,
        "eos_token_id": config.eos_token_id,
        "tie_word_embeddings": config.weight_tying,
        "rope_parameters": _rope_parameters(config, scaled=True),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "dtype": dtype,
    }
    if model_type == "olmo":
        hf["clip_qkv"] = config.clip_qkv
    else:
        hf["rms_norm_eps"] = config.layer_norm_eps
    if model_type == "olmo3":
        windows = [config.layer_window(i) for i in range(config.n_layers)]
        hf["sliding_window"] = next(w for w in config.sliding_window_pattern if w != -1)
        hf["layer_types"] = ["full_attention" if w is None else "sliding_attention" for w in windows]
        hf["rope_parameters"] = {
            "sliding_attention": _rope_parameters(config, scaled=False),
            "full_attention": _rope_parameters(config, scaled=True),
        }
    return hf


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    """`hf_dir/config.json`, checked to describe an OLMo-1, OLMo-2 or OLMo-3 model."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConversionError(f"{hf_dir} is not an HF model directory: {path} does not exist")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON: {e}") from None
    model_type = hf.get("model_type")
    if model_type not in HF_ARCHITECTURES:
        known = ", ".join(f"{t!r} ({a})" for t, a in HF_ARCHITECTURES.items())
        raise ConversionError(f"{path} has model_type {model_type!r}; only {known} can be converted")
    return hf


_KIND_NAMES = {int: "an integer", float: "a number"}


def model_config_from_hf(hf: dict[str, Any], source: str, vocab_size: int | None = None) -> ModelConfig:
    """The olmo_jax ModelConfig of an HF OLMo `config.json` dict (`source` names it in errors).

    HF knows only the padded embedding size; `vocab_size` (the tokenizer's) defaults to it.
    """

    def get(key: str) -> Any:
        return hf.get(key, _HF_DEFAULTS.get(key))

    def number(key: str, kind: type) -> Any:
        value = get(key)
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            converted = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise ConversionError(f"{source}: {key}={value!r} is not {_KIND_NAMES[kind]}") from None
        if kind is int and converted != value:
            raise ConversionError(f"{source}: {key}={value!r} is not {_KIND_NAMES[int]}")
        return converted

    model_type = hf.get("model_type", "olmo")
    family = "OLMo-1" if model_type == "olmo" else "OLMo-2/3"

    def unsupported(key: str, value: Any, want: str) -> ConversionError:
        return ConversionError(f"{source}: {key}={value!r} is not supported by olmo_jax ({family} needs {want})")

    heads = number("num_attention_heads", int)
    kv_heads = hf.get("num_key_value_heads")
    if model_type == "olmo" and kv_heads not in (None, heads):
        raise unsupported("num_key_value_heads", kv_heads, f"{heads}, full multi-head attention")
    kv_heads = heads if kv_heads is None else number("num_key_value_heads", int)
    if hf.get("hidden_act", "silu") != "silu":
        raise unsupported("hidden_act", hf["hidden_act"], "'silu'")
    if hf.get("attention_bias", False):
        raise unsupported("attention_bias", hf["attention_bias"], "false")
    architecture: dict[str, Any] = {"layer_norm_eps": HF_LAYER_NORM_EPS}
    rope = _read_rope(hf, model_type, source)
    if model_type != "olmo":
        architecture = {
            "block_order": "reordered_norm",
            "norm": "rms_norm",
            "qk_norm": "full",
            "n_kv_heads": None if kv_heads == heads else kv_heads,
            "layer_norm_eps": number("rms_norm_eps", float),
        }
    if model_type == "olmo3":
        architecture["sliding_window_pattern"] = _window_pattern(hf, number("num_hidden_layers", int), source)
    token_ids = {}
    for key in ("eos_token_id", "pad_token_id"):
        value = get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None:
            raise ConversionError(f"{source}: {key} is null; olmo_jax needs an integer token id")
        token_ids[key] = int(value)
    embedding_size = number("vocab_size", int)
    d_model, ff_proj_size = number("hidden_size", int), 2 * number("intermediate_size", int)
    # OLMo's configs say `mlp_ratio` when the MLP width is a multiple of d_model (1B), else its width (7B).
    ratio, remainder = divmod(ff_proj_size, d_model)
    by_ratio = ratio > 0 and remainder == 0
    config = ModelConfig(
        d_model=d_model,
        n_heads=heads,
        n_layers=number("num_hidden_layers", int),
        mlp_ratio=ratio if by_ratio else ModelConfig.mlp_ratio,
        mlp_hidden_size=None if by_ratio else ff_proj_size,
        vocab_size=vocab_size if vocab_size is not None and vocab_size <= embedding_size else embedding_size,
        embedding_size=embedding_size,
        max_sequence_length=number("max_position_embeddings", int),
        weight_tying=bool(get("tie_word_embeddings")),
        clip_qkv=None if get("clip_qkv") is None else number("clip_qkv", float),
        init_std=number("initializer_range", float),
        **({"init_fn": "normal"} if model_type != "olmo" else {}),
        **token_ids,
        **architecture,
        **rope,
    )
    config.validate()
    return config


# HF rope_parameters keys -> ModelConfig fields, per rope_type.
_ROPE_KEYS = {
    "yarn": {
        "factor": "rope_factor",
        "original_max_position_embeddings": "rope_original_max_position_embeddings",
        "attention_factor": "rope_attention_factor",
        "beta_fast": "rope_beta_fast",
        "beta_slow": "rope_beta_slow",
    },
    "llama3": {
        "factor": "rope_factor",
        "original_max_position_embeddings": "rope_original_max_position_embeddings",
        "low_freq_factor": "rope_low_freq_factor",
        "high_freq_factor": "rope_high_freq_factor",
    },
}


def _read_rope(hf: dict[str, Any], model_type: str, source: str) -> dict[str, Any]:
    """ModelConfig's rope fields from `rope_parameters` (transformers >= 5) or `rope_theta`/`rope_scaling`
    (the released models' config.json). OLMo-3 scales only its full-attention layers."""
    rope = dict(hf.get("rope_parameters") or {})
    if model_type == "olmo3" and "full_attention" in rope:
        sliding = rope.get("sliding_attention") or {}
        rope = dict(rope["full_attention"] or {})
        if sliding.get("rope_type", "default") != "default" or sliding.get("rope_theta", rope.get("rope_theta")) != (
            rope.get("rope_theta")
        ):
            raise ConversionError(
                f"{source}: rope_parameters.sliding_attention={sliding!r} is not supported by olmo_jax "
                "(sliding-window layers need plain RoPE with the full-attention layers' theta)"
            )
    for key, value in (hf.get("rope_scaling") or {}).items():
        rope.setdefault("rope_type" if key == "type" else key, value)
    theta = rope.get("rope_theta", hf.get("rope_theta", _HF_DEFAULT_THETA[model_type]))
    rope_type = rope.get("rope_type", "default")
    fields: dict[str, Any] = {"rope_theta": float(theta)}
    if rope_type == "default":
        return fields
    if rope_type not in _ROPE_KEYS or model_type == "olmo":
        want = "'default'" if model_type == "olmo" else "'default', 'yarn' or 'llama3'"
        raise ConversionError(f"{source}: rope_type={rope_type!r} is not supported by olmo_jax (needs {want})")
    fields["rope_scaling"] = rope_type
    for key, name in _ROPE_KEYS[rope_type].items():
        if rope.get(key) is not None:
            fields[name] = rope[key]
    return fields


def _window_pattern(hf: dict[str, Any], n_layers: int, source: str) -> list[int]:
    """OLMo-3's `layer_types` and `sliding_window` as the shortest repeating window pattern."""
    window = hf.get("sliding_window", _OLMO3_DEFAULT_WINDOW)
    default_types = ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(n_layers)]
    layer_types = hf.get("layer_types") or default_types
    if len(layer_types) != n_layers or set(layer_types) - {"full_attention", "sliding_attention"}:
        raise ConversionError(
            f"{source}: layer_types={layer_types!r} must name 'full_attention' or 'sliding_attention' "
            f"for each of the {n_layers} layers"
        )
    if "sliding_attention" in layer_types and not (isinstance(window, int) and window >= 1):
        raise ConversionError(f"{source}: sliding_window={window!r} is not a positive integer")
    windows = [-1 if kind == "full_attention" else window for kind in layer_types]
    period = next(p for p in range(1, n_layers + 1) if all(w == windows[i % p] for i, w in enumerate(windows)))
    return windows[:period]


# --------------------------------------------------------------------------------------------------
# Streaming safetensors I/O.
# --------------------------------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000 (decimal units as HF; KiB/MiB/GiB binary); a bare number is bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ConversionError(f"invalid size {text!r}; expected e.g. 5GB, 500MB, 2GiB or a number of bytes")
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise ConversionError(f"invalid size {text!r}; it must be positive")
    return size


@dataclass(frozen=True)
class OutputTensor:
    """A tensor to write: its name, final shape and dtype, and a function producing its values."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # a key of PARAM_DTYPES
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * PARAM_DTYPES[self.dtype].itemsize


def _plan_shards(tensors: list[OutputTensor], max_shard_size: int) -> list[list[OutputTensor]]:
    """Greedy split in order; a tensor larger than the limit gets a shard of its own (as HF does)."""
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def _write_safetensors_file(path: Path, tensors: list[OutputTensor]) -> None:
    """Write one safetensors file tensor by tensor: the header is known from shapes alone."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header with spaces to 8-byte alignment
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for tensor in tensors:
            values = np.ascontiguousarray(np.asarray(tensor.produce()).astype(PARAM_DTYPES[tensor.dtype], copy=False))
            if values.shape != tensor.shape:
                raise ConversionError(
                    f"tensor {tensor.name} has shape {list(values.shape)}, expected {list(tensor.shape)}"
                )
            f.write(values.reshape(-1).view(np.uint8).data)


def write_safetensors(
    out_dir: Path, tensors: list[OutputTensor], max_shard_size: int, progress: Callable[[str], None] | None = None
) -> list[str]:
    """Write `tensors` as `model.safetensors`, or as numbered shards plus `model.safetensors.index.json`
    when they exceed `max_shard_size` bytes. Returns the names of the files written."""
    shards = _plan_shards(tensors, max_shard_size)
    if len(shards) == 1:
        names = [SAFE_WEIGHTS_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards, strict=True):
        if progress:
            progress(f"writing {name} ({len(shard)} tensors, {sum(t.nbytes for t in shard) / 1e6:.1f} MB)")
        _write_safetensors_file(out_dir / name, shard)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: name for name, shard in zip(names, shards, strict=True) for t in shard},
        }
        (out_dir / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        names.append(SAFE_WEIGHTS_INDEX_NAME)
    return names


class SafetensorsReader:
    """Tensor-by-tensor access to an HF directory's safetensors weights (one file or an index of shards)."""

    def __init__(self, hf_dir: Path):
        from safetensors import SafetensorError, safe_open

        self._safe_open = safe_open
        self._error = SafetensorError
        self._open: dict[Path, Any] = {}
        self.hf_dir = hf_dir
        index_path = hf_dir / SAFE_WEIGHTS_INDEX_NAME
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConversionError(f"{index_path} is not a valid safetensors index: {e}") from None
            self.files = {name: hf_dir / file for name, file in weight_map.items()}
        elif (hf_dir / SAFE_WEIGHTS_NAME).is_file():
            self.files = dict.fromkeys(self._file(hf_dir / SAFE_WEIGHTS_NAME).keys(), hf_dir / SAFE_WEIGHTS_NAME)
        else:
            raise ConversionError(
                f"no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} in {hf_dir} "
                "(only safetensors weights are read; re-save other formats with save_pretrained)"
            )

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._open.values():
            handle.__exit__(None, None, None)
        self._open.clear()

    def names(self) -> list[str]:
        return list(self.files)

    def _file(self, path: Path) -> Any:
        """The open safe_open handle of `path` (files are memory-mapped, so opening reads no tensor)."""
        if path not in self._open:
            if not path.is_file():
                raise ConversionError(f"safetensors file {path} does not exist")
            try:
                self._open[path] = self._safe_open(path, framework="numpy").__enter__()
            except self._error as e:
                raise ConversionError(f"{path} is not a readable safetensors file: {e}") from None
        return self._open[path]

    def _handle(self, name: str) -> Any:
        return self._file(self.files[name])

    def shape(self, name: str) -> tuple[int, ...]:
        handle = self._handle(name)
        try:
            return tuple(handle.get_slice(name).get_shape())
        except self._error:
            raise ConversionError(f"tensor {name} is listed for {self.files[name]} but missing from it") from None

    def dtype(self, name: str) -> str:
        """The safetensors dtype code, e.g. 'F32', 'BF16'."""
        return self._handle(name).get_slice(name).get_dtype()

    def get(self, name: str) -> np.ndarray:
        return self._handle(name).get_tensor(name)


# --------------------------------------------------------------------------------------------------
# Whole-model conversion.
# --------------------------------------------------------------------------------------------------


def check_param_shapes(shapes: dict[str, tuple[int, ...]], config: ModelConfig) -> None:
    """Raise ConversionError naming the first parameter whose shape (or presence) disagrees with `config`."""
    expected = param_shapes(config)
    for name in sorted(set(expected) | set(shapes)):
        if name not in shapes:
            raise ConversionError(f"parameter {name} (shape {list(expected[name])}) is missing")
        if name not in expected:
            raise ConversionError(f"unexpected parameter {name}; the config's model has {', '.join(expected)}")
        if tuple(shapes[name]) != expected[name]:
            raise ConversionError(
                f"parameter {name} has shape {list(shapes[name])}, the config needs {list(expected[name])}"
            )


def check_config_sizes(config: ModelConfig, hf_dir: Path) -> None:
    """Raise ConversionError when config.json's layer count or embedding size disagrees with the tensors present,
    before anything is built per layer: a config may claim any size, and only the tensors say what there is."""
    with SafetensorsReader(hf_dir) as reader:
        names = reader.names()
        layers = {int(m.group(1)) for m in map(re.compile(r"model\.layers\.(\d+)\.").match, names) if m}
        if config.n_layers != len(layers):
            raise ConversionError(
                f"{hf_dir / 'config.json'} says num_hidden_layers={config.n_layers} but the weights hold "
                f"{len(layers)} layers"
            )
        embedding = "model.embed_tokens.weight"
        if embedding in names:
            shape, expected = reader.shape(embedding), (config.embedding_size, config.d_model)
            if shape != expected:
                raise ConversionError(
                    f"tensor {embedding} has shape {list(shape)} in {hf_dir}, but config.json's vocab_size and "
                    f"hidden_size say {list(expected)}"
                )


def hf_tensors(params: dict[str, np.ndarray], config: ModelConfig, dtype: str) -> list[OutputTensor]:
    """The HF tensors of `params` (olmo_jax layout), produced lazily one at a time, cast to `dtype`."""
    check_param_shapes({name: np.shape(value) for name, value in params.items()}, config)
    return [
        OutputTensor(spec.hf_name, spec.hf_shape, dtype, lambda spec=spec: spec.to_hf(params))
        for spec in tensor_specs(config)
    ]


def export_hf(
    params: dict[str, np.ndarray],
    config: ModelConfig,
    out_dir: Path,
    *,
    dtype: str = "float32",
    max_shard_size: int = 5 * 10**9,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Write `config.json` and safetensors weights for `OlmoForCausalLM` into the existing `out_dir`."""
    if dtype not in PARAM_DTYPES:
        raise ConversionError(f"invalid dtype {dtype!r}; choose one of {', '.join(PARAM_DTYPES)}")
    hf_config = hf_config_dict(config, dtype)
    files = write_safetensors(out_dir, hf_tensors(params, config, dtype), max_shard_size, progress)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = {"bos_token_id": None, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return [*files, "config.json", "generation_config.json"]


def hf_weights_dtype(reader: SafetensorsReader, names: list[str]) -> str:
    """'bfloat16' when every named tensor is stored in bf16, else 'float32' (f16 widens losslessly)."""
    return "bfloat16" if all(reader.dtype(name) == "BF16" for name in names) else "float32"


def import_hf(
    hf_dir: Path,
    *,
    dtype: str | None = None,
    vocab_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read an HF OLMo directory into (ModelConfig, olmo_jax params as numpy), one tensor at a time.

    `dtype` None keeps the stored precision (bf16 stays bf16; anything else becomes fp32). Raises
    ConversionError naming the tensor for a missing, unexpected or wrongly shaped tensor.
    """
    hf = read_hf_config(hf_dir)
    config = model_config_from_hf(hf, str(hf_dir / "config.json"), vocab_size)
    check_config_sizes(config, hf_dir)
    specs = tensor_specs(config)
    with SafetensorsReader(hf_dir) as reader:
        available = set(reader.names())
        for spec in specs:
            if spec.hf_name not in available:
                raise ConversionError(
                    f"tensor {spec.hf_name} (expected shape {list(spec.hf_shape)}) is missing from {hf_dir}"
                )
        known = {spec.hf_name for spec in specs} | ({"lm_head.weight"} if config.weight_tying else set())
        unexpected = sorted(n for n in available - known if not _IGNORED_HF_TENSORS.fullmatch(n))
        if unexpected:
            raise ConversionError(
                f"unexpected tensor {unexpected[0]} in {hf_dir} (not part of the {hf['model_type']} model "
                "that config.json describes)"
            )
        for spec in specs:
            shape = reader.shape(spec.hf_name)
            if shape != spec.hf_shape:
                raise ConversionError(
                    f"tensor {spec.hf_name} has shape {list(shape)} in {hf_dir}, "
                    f"expected {list(spec.hf_shape)} from config.json"
                )
        dtype = dtype or hf_weights_dtype(reader, [spec.hf_name for spec in specs])
        if dtype not in PARAM_DTYPES:
            raise ConversionError(f"invalid dtype {dtype!r}; choose one of {', '.join(PARAM_DTYPES)}")
        config.param_dtype = dtype
        params = {name: np.empty(shape, PARAM_DTYPES[dtype]) for name, shape in param_shapes(config).items()}
        for k, spec in enumerate(specs):
            if progress and (k % max(1, len(specs) // 10) == 0 or k == len(specs) - 1):
                progress(f"reading tensor {k + 1}/{len(specs)}: {spec.hf_name}")
            spec.from_hf(reader.get(spec.hf_name).astype(PARAM_DTYPES[dtype], copy=False), params)
    return config, params
