"""The OLMo decoder family (OLMo-1, OLMo-2, OLMo-3) in Flax NNX, one block read from `ModelConfig`.

    tokens -> embedding -> n_layers x block -> norm -> LM head -> logits

    sequential (OLMo-1):       x = x + Attn(N(x));   x = x + MLP(N(x))
    reordered_norm (OLMo-2/3): x = x + N(Attn(x));   x = x + N(MLP(x))

Shared by all, each as in allenai/OLMo and OLMo-core: no biases, no dropout; SwiGLU with a fused input
projection whose first half is "up" and the second the gate; rotate-half RoPE in fp32; norms in fp32. The
choices (`ModelConfig`): the norm (OLMo-1's non-parametric LayerNorm or RMSNorm with a weight), QK-norm,
grouped-query attention, a per-layer attention window, RoPE scaling and scaled FP8 projections
(`project`, `olmo_jax.fp8`). Init: Mitchell (truncated normal at +-`init_cutoff_factor` std, 3 when unset,
output projections scaled down with depth) or a plain truncated normal (OLMo-2/3); norm weights start at 1.

Layer weights are stored stacked along a leading `layers` axis whether the layers run under
`jax.lax.scan` or unrolled, so a checkpoint does not depend on that switch. Every parameter carries
logical axis names in its `axes` metadata; `olmo_jax.sharding` maps them to mesh axes. Norm weights are
named `*_norm` (the optimizer's `decay_norm_and_bias` group).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from olmo_jax import fp8
from olmo_jax.config import ModelConfig
from olmo_jax.sharding import BATCH_AXES

# Floating-point dtypes by the names configs, checkpoints and command lines use. Any may be a compute dtype.
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(jnp.float32),
    "bfloat16": np.dtype(jnp.bfloat16),
    "float16": np.dtype(jnp.float16),
}
# The ones parameters may be stored in (`param_dtype`, checkpoints, HF safetensors); float16 is for compute only.
PARAM_DTYPES: dict[str, np.dtype] = {name: DTYPES[name] for name in ("float32", "bfloat16")}

# jax.checkpoint policies by name; "none" means no rematerialisation at all.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class BlockWeights(NamedTuple):
    """One layer's weights (or all layers', stacked on a leading axis). Kernels are [in, out].

    Multi-head attention keeps OLMo-1's fused `att_proj`; grouped-query attention has fewer k/v heads than
    q heads, so it stores `q_proj` and `kv_proj` instead. Absent weights are None.
    """

    attn_out: jax.Array  # [n_heads, head_dim, d_model]
    ff_proj: jax.Array  # [d_model, 2 (up, gate), hidden]
    ff_out: jax.Array  # [hidden, d_model]
    att_proj: jax.Array | None = None  # [d_model, 3 (q, k, v), n_heads, head_dim]  (MHA)
    q_proj: jax.Array | None = None  # [d_model, n_heads, head_dim]  (GQA)
    kv_proj: jax.Array | None = None  # [d_model, 2 (k, v), kv_heads, head_dim]  (GQA)
    attn_norm: jax.Array | None = None  # [d_model]: RMSNorm weights of the attention and MLP branches
    ff_norm: jax.Array | None = None  # [d_model]
    q_norm: jax.Array | None = None  # [n_heads, head_dim] (full) or [head_dim] (per head)
    k_norm: jax.Array | None = None  # [kv_heads, head_dim] (full) or [head_dim] (per head)


def init_std(config: ModelConfig, name: str, layer: jax.Array | int = 0) -> jax.Array | float:
    """Standard deviation of a weight at init (`layer` is 0-based; may be an array of layers)."""
    if config.init_fn == "normal":
        return config.init_std
    d = config.d_model
    if name == "attn_out":
        return 1.0 / jnp.sqrt(2.0 * d * (jnp.asarray(layer) + 1))
    if name == "ff_out":
        return 1.0 / jnp.sqrt(2.0 * config.hidden_size * (jnp.asarray(layer) + 1))
    return 1.0 / math.sqrt(d)  # att_proj (q_proj, kv_proj), ff_proj, wte, untied LM head


def _truncated_normal(key: jax.Array, shape: tuple[int, ...], std, config: ModelConfig, dtype) -> jax.Array:
    """Normal(0, std) truncated at +-cutoff*std, as torch's trunc_normal_ with a=-cutoff*std, b=cutoff*std.

    The cutoff is OLMo's (olmo/model.py, every `reset_parameters`): `init_cutoff_factor or 3.0` for Mitchell
    init, `init_cutoff_factor` (None: untruncated) for normal init.
    """
    cutoff = (config.init_cutoff_factor or 3.0) if config.init_fn == "mitchell" else config.init_cutoff_factor
    if cutoff is None:
        unit = jax.random.normal(key, shape, jnp.float32)
    else:
        unit = jax.random.truncated_normal(key, -cutoff, cutoff, shape, jnp.float32)
    return (unit * std).astype(dtype)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """Non-parametric LayerNorm in fp32, cast back to the input dtype."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, axes: tuple[int, ...] = (-1,)) -> jax.Array:
    """RMSNorm over `axes` in fp32 with `weight` (broadcast over the leading axes), cast back to x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.square(x32).mean(axes, keepdims=True) + eps)
    return (normed * weight.astype(jnp.float32)).astype(x.dtype)


def norm(x: jax.Array, weight: jax.Array | None, config: ModelConfig) -> jax.Array:
    """The config's norm over the model dimension (`weight` is None for OLMo-1's LayerNorm)."""
    if config.norm == "rms_norm":
        return rms_norm(x, weight, config.layer_norm_eps)
    return layer_norm(x, config.layer_norm_eps)


def inverse_frequencies(config: ModelConfig, scaled: bool) -> tuple[np.ndarray, float]:
    """RoPE's inverse frequencies [head_dim / 2] and the cos/sin scale, scaled as `config.rope_scaling` when
    `scaled` (transformers' `_compute_yarn_parameters` / `_compute_llama3_parameters` formulas)."""
    dim, theta = config.head_dim, config.rope_theta
    inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    if not scaled or config.rope_scaling == "none":
        return inv_freq, 1.0
    factor, original = config.rope_factor, config.rope_original_max_position_embeddings
    if config.rope_scaling == "llama3":
        wavelen = 2 * math.pi / inv_freq
        low_wavelen, high_wavelen = original / config.rope_low_freq_factor, original / config.rope_high_freq_factor
        long = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - config.rope_low_freq_factor) / (
            config.rope_high_freq_factor - config.rope_low_freq_factor
        )
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, (1 - smooth) * long / factor + smooth * long, long).astype(np.float32), 1.0

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times in `original`
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(config.rope_beta_fast)), 0)
    high = min(math.ceil(correction_dim(config.rope_beta_slow)), dim - 1)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / ((high - low) or 1e-3), 0, 1)
    extrapolated = 1 - ramp  # 1: keep the frequency (high frequencies); 0: interpolate by `factor`
    inv_freq = (inv_freq / factor) * (1 - extrapolated) + inv_freq * extrapolated
    scale = config.rope_attention_factor
    if scale is None:
        scale = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq.astype(np.float32), scale


def rope_tables(seq_len: int, config: ModelConfig, scaled: bool = False) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [seq_len, head_dim] for rotate-half RoPE, in fp32 (`scaled`: full-attention layers)."""
    inv_freq, scale = inverse_frequencies(config, scaled)
    angles = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half (GPT-NeoX) RoPE on x [B, T, H, Dh], computed in fp32; the tables are [T, Dh] (every row at
    positions 0..T-1) or [B, T, Dh] (each row's own positions, when decoding)."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    cos, sin = (t[None, :, None, :] if t.ndim == 2 else t[:, :, None, :] for t in (cos, sin))
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attention_implementation(config: ModelConfig, dtype) -> str | None:
    """cuDNN flash attention on NVIDIA GPUs for half precision; XLA everywhere else."""
    if config.attention_impl != "auto":
        return config.attention_impl
    device = jax.devices()[0]
    on_cuda = device.platform == "gpu" and "cuda" in getattr(device.client, "platform_version", "").lower()
    return "cudnn" if on_cuda and dtype in (jnp.bfloat16, jnp.float16) else "xla"


def constrain_activations(x: jax.Array) -> jax.Array:
    """Keep activations [B, T, ...] sharded by batch over the mesh's (data, fsdp) axes, when a mesh is set.

    Without this hint XLA may follow the fsdp-sharded weights and shard activations on the model
    dimension instead, replicating the batch on every device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    spec = jax.sharding.PartitionSpec(BATCH_AXES, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, spec)


def project(spec: str, h: jax.Array, kernel: jax.Array, config: ModelConfig) -> jax.Array:
    """A block's projection `einsum(spec, h, kernel)` in h's dtype; scaled FP8 (`olmo_jax.fp8`) under `fp8`."""
    if config.fp8:
        return fp8.einsum(spec, h, kernel)
    return jnp.einsum(spec, h, kernel.astype(h.dtype))


class KVCache(NamedTuple):
    """Every layer's keys and values for decoding: k, v [n_layers, B, S slots, kv_heads, head_dim]."""

    k: jax.Array
    v: jax.Array


class Decoding(NamedTuple):
    """Where new tokens go in a key/value cache of S slots per row (see `olmo_jax.generate`).

    Rows are left-padded so that every row writes its new tokens at the same slots, `index` ...
    `index + T - 1`; `slot_positions` [B, S] is the token position each slot holds once they are written
    (-1: padding or not yet written), `query_positions` [B, T] the new tokens' positions."""

    index: jax.Array  # int32 scalar
    slot_positions: jax.Array
    query_positions: jax.Array

    def mask(self, window: int | None) -> jax.Array:
        """[B, 1, T, S]: a query sees the written slots at or before its position (within `window`)."""
        keys, queries = self.slot_positions[:, None, None, :], self.query_positions[:, None, :, None]
        seen = (keys >= 0) & (keys <= queries)
        return seen if window is None else seen & (keys > queries - window)


class Packing(NamedTuple):
    """Several sequences in each row, as a tree laid out depth first (see `olmo_jax.eval.scoring`): a token's
    ancestors (the prefix it continues) come before it and its descendants right after it, so token t sees
    token s iff s <= t <= ends[s]. A row of whole documents one after another is the tree without branches.

    `positions` [B, T] is each token's position in its own sequence (RoPE and windows count from it),
    `ends` [B, T] the index of its last descendant (its own index for a leaf)."""

    positions: jax.Array
    ends: jax.Array

    @classmethod
    def from_segments(cls, segment_ids: jax.Array) -> Packing:
        """Whole documents one after another (packed fine-tuning rows): `segment_ids` [B, T] number them, and a
        token sees the earlier tokens of its own document only."""
        index = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
        starts = jnp.concatenate(
            [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1
        )
        last = jnp.concatenate([starts[:, 1:], jnp.ones_like(starts[:, :1])], 1)
        first_index = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
        last_index = jax.lax.cummin(jnp.where(last, index, segment_ids.shape[1]), axis=1, reverse=True)
        return cls(index - first_index, last_index)

    def mask(self, window: int | None) -> jax.Array:
        """[B, 1, T, T]: a query sees its ancestors and itself (within `window` positions)."""
        index = jnp.arange(self.ends.shape[1])
        queries, keys = index[None, :, None], index[None, None, :]
        seen = (keys <= queries) & (queries <= self.ends[:, None, :])
        if window is not None:
            seen &= self.positions[:, None, :] > self.positions[:, :, None] - window
        return seen[:, None]


def attention(
    h: jax.Array,
    w: BlockWeights,
    rope: tuple[jax.Array, jax.Array],
    window: int | None,
    config: ModelConfig,
    kv_cache: tuple[jax.Array, jax.Array] | None = None,
    decoding: Decoding | Packing | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Causal self-attention of h [B, T, d_model]; `window` (static) limits each query to its last keys.

    With `kv_cache` (k, v [B, S, kv_heads, head_dim]) and `decoding`, the new keys and values are written
    into the cache and the queries attend over it; with a `Packing` instead, the queries attend to the keys
    its mask shows them. Returns (output, the updated cache or None)."""
    dtype = h.dtype
    if w.att_proj is not None:
        qkv = project("btd,dkhe->btkhe", h, w.att_proj, config)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
        q = project("btd,dhe->bthe", h, w.q_proj, config)
        kv = project("btd,dkhe->btkhe", h, w.kv_proj, config)
        k, v = kv[:, :, 0], kv[:, :, 1]
    if config.clip_qkv is not None:
        q, k, v = (jnp.clip(a, -config.clip_qkv, config.clip_qkv) for a in (q, k, v))
    if config.qk_norm != "none":
        axes = (-2, -1) if config.qk_norm == "full" else (-1,)
        q = rms_norm(q, w.q_norm, config.layer_norm_eps, axes)
        k = rms_norm(k, w.k_norm, config.layer_norm_eps, axes)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if decoding is None:
        attended = jax.nn.dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            local_window_size=None if window is None else (window - 1, 0),
            implementation=attention_implementation(config, dtype),
        )
    else:
        if kv_cache is not None:
            kv_cache = tuple(
                jax.lax.dynamic_update_slice_in_dim(cached, new.astype(cached.dtype), decoding.index, axis=1)
                for cached, new in zip(kv_cache, (k, v), strict=True)
            )
            k, v = kv_cache
        attended = jax.nn.dot_product_attention(q, k, v, mask=decoding.mask(window), implementation="xla")
    return project("bthe,hed->btd", attended, w.attn_out, config), kv_cache


def mlp(h: jax.Array, w: BlockWeights, config: ModelConfig) -> jax.Array:
    """SwiGLU MLP of h [B, T, d_model]."""
    up_gate = project("btd,dkf->btkf", h, w.ff_proj, config)
    up, gate = up_gate[:, :, 0], up_gate[:, :, 1]
    return project("btf,fd->btd", jax.nn.silu(gate) * up, w.ff_out, config)


def block(
    x: jax.Array,
    w: BlockWeights,
    rope: tuple[jax.Array, jax.Array],
    window: int | None,
    config: ModelConfig,
    kv_cache: tuple[jax.Array, jax.Array] | None = None,
    decoding: Decoding | Packing | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """One OLMo block on x [B, T, d_model] in the compute dtype, in the config's block order; returns it and
    the layer's updated key/value cache (None unless decoding)."""
    if config.block_order == "sequential":
        attended, kv_cache = attention(norm(x, w.attn_norm, config), w, rope, window, config, kv_cache, decoding)
        x = x + attended
        return constrain_activations(x + mlp(norm(x, w.ff_norm, config), w, config)), kv_cache
    attended, kv_cache = attention(x, w, rope, window, config, kv_cache, decoding)
    x = x + norm(attended, w.attn_norm, config)
    return constrain_activations(x + norm(mlp(x, w, config), w.ff_norm, config)), kv_cache


class OLMo(nnx.Module):
    """OLMo decoder. `model(tokens [B, T] int32) -> logits [B, T, embedding_size] float32`."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        d, n_layers, vocab = config.d_model, config.n_layers, config.padded_vocab_size
        heads, kv_heads, head_dim, hidden = config.n_heads, config.kv_heads, config.head_dim, config.hidden_size
        dtype = DTYPES[config.param_dtype]
        layers = jnp.arange(n_layers)

        def stacked(name: str, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
            std = jnp.broadcast_to(init_std(config, name, layers), (n_layers,))
            std = std.reshape((n_layers,) + (1,) * len(shape))
            value = _truncated_normal(rngs.params(), (n_layers, *shape), std, config, dtype)
            return nnx.Param(value, axes=("layers", *axes))

        def ones(shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
            return nnx.Param(jnp.ones(shape, dtype), axes=axes)

        self.wte = nnx.Param(
            _truncated_normal(rngs.params(), (vocab, d), init_std(config, "wte"), config, dtype),
            axes=("vocab", "embed"),
        )
        if kv_heads == heads:
            self.att_proj = stacked("att_proj", (d, 3, heads, head_dim), ("embed", None, "heads", "head_dim"))
        else:
            self.q_proj = stacked("q_proj", (d, heads, head_dim), ("embed", "heads", "head_dim"))
            self.kv_proj = stacked("kv_proj", (d, 2, kv_heads, head_dim), ("embed", None, "heads", "head_dim"))
        self.attn_out = stacked("attn_out", (heads, head_dim, d), ("heads", "head_dim", "embed"))
        self.ff_proj = stacked("ff_proj", (d, 2, hidden), ("embed", None, "mlp"))
        self.ff_out = stacked("ff_out", (hidden, d), ("mlp", "embed"))
        if config.norm == "rms_norm":
            self.attn_norm = ones((n_layers, d), ("layers", "embed"))
            self.ff_norm = ones((n_layers, d), ("layers", "embed"))
            self.final_norm = ones((d,), ("embed",))
        if config.qk_norm == "full":
            self.q_norm = ones((n_layers, heads, head_dim), ("layers", "heads", "head_dim"))
            self.k_norm = ones((n_layers, kv_heads, head_dim), ("layers", "heads", "head_dim"))
        elif config.qk_norm == "per_head":
            self.q_norm = ones((n_layers, head_dim), ("layers", "head_dim"))
            self.k_norm = ones((n_layers, head_dim), ("layers", "head_dim"))
        if not config.weight_tying:
            self.lm_head = nnx.Param(
                _truncated_normal(rngs.params(), (d, vocab), init_std(config, "lm_head"), config, dtype),
                axes=("embed", "vocab"),
            )

    def block_weights(self) -> BlockWeights:
        """Every layer's weights, stacked on the leading `layers` axis."""
        return BlockWeights(**{name: getattr(self, name)[...] for name in BlockWeights._fields if hasattr(self, name)})

    def hidden_states(self, tokens: jax.Array, packing: Packing | None = None) -> jax.Array:
        """Final-normed hidden states [B, T, d_model] in the compute dtype (of packed rows with `packing`)."""
        seq_len = tokens.shape[1]
        ropes = {scaled: rope_tables(seq_len, self.config, scaled) for scaled in (False, True)}
        if packing is not None:
            ropes = {scaled: tuple(t[packing.positions] for t in tables) for scaled, tables in ropes.items()}
        hidden, _ = self._layers(self._embed(tokens), ropes, decoding=packing)
        return hidden

    def decode(self, tokens: jax.Array, cache: KVCache, decoding: Decoding) -> tuple[jax.Array, KVCache]:
        """Run new tokens [B, T] against a key/value cache: (fp32 logits [B, T, embedding_size], the cache with
        their keys and values written at `decoding.index`)."""
        slots = cache.k.shape[2]
        ropes = {
            scaled: tuple(table[decoding.query_positions] for table in rope_tables(slots, self.config, scaled))
            for scaled in (False, True)
        }
        hidden, cache = self._layers(self._embed(tokens), ropes, cache, decoding)
        return self.logits(hidden), cache

    def _embed(self, tokens: jax.Array) -> jax.Array:
        dtype = DTYPES[self.config.compute_dtype]
        return constrain_activations(jnp.take(self.wte[...], tokens, axis=0).astype(dtype))

    def _layers(
        self,
        x: jax.Array,
        ropes: dict[bool, tuple[jax.Array, jax.Array]],
        cache: KVCache | None = None,
        decoding: Decoding | Packing | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Every block, then the final norm; (hidden states, the updated cache or None).

        Under `scan_layers` the scan runs over groups of `len(sliding_window_pattern)` layers, unrolled
        inside a group, because an attention window must be static; leftover layers run unrolled after.
        """
        config, n_layers = self.config, self.config.n_layers
        weights = self.block_weights()
        kv = None if cache is None else (cache.k, cache.v)

        def layer_fn(window: int | None, in_scan: bool) -> Callable[..., tuple[jax.Array, tuple | None]]:
            # RoPE scaling is for full-attention layers only, as OLMo-3's long-context models.
            def layer(x: jax.Array, w: BlockWeights, layer_kv: tuple | None) -> tuple[jax.Array, tuple | None]:
                return block(x, w, ropes[window is None], window, config, layer_kv, decoding)

            if config.remat != "none":  # CSE cannot undo remat inside a scan, only outside one
                layer = jax.checkpoint(layer, policy=REMAT_POLICIES[config.remat], prevent_cse=not in_scan)
            return layer

        def pick(tree: Any, i: int) -> Any:
            return jax.tree.map(lambda a: a[i], tree)

        group = max(1, len(config.sliding_window_pattern))
        scanned = n_layers - n_layers % group if config.scan_layers else 0
        new_kv: list[tuple[jax.Array, jax.Array]] = []  # the updated caches of consecutive layer ranges
        if scanned:
            in_group = [layer_fn(config.layer_window(j), in_scan=True) for j in range(group)]

            def run_group(x: jax.Array, inputs: tuple) -> tuple[jax.Array, tuple | None]:
                w, group_kv = inputs
                written = []
                for j, layer in enumerate(in_group):
                    x, layer_kv = layer(x, pick(w, j), None if group_kv is None else pick(group_kv, j))
                    written.append(layer_kv)
                return x, None if group_kv is None else jax.tree.map(lambda *a: jnp.stack(a), *written)

            grouped = jax.tree.map(lambda a: a[:scanned].reshape(scanned // group, group, *a.shape[1:]), (weights, kv))
            x, written = jax.lax.scan(run_group, x, grouped)
            if kv is not None:
                new_kv.append(jax.tree.map(lambda a: a.reshape(scanned, *a.shape[2:]), written))
        for i in range(scanned, n_layers):
            x, layer_kv = layer_fn(config.layer_window(i), in_scan=False)(
                x, pick(weights, i), None if kv is None else pick(kv, i)
            )
            if kv is not None:
                new_kv.append(jax.tree.map(lambda a: a[None], layer_kv))
        hidden = norm(x, self.final_norm[...] if hasattr(self, "final_norm") else None, config)
        if kv is None:
            return hidden, None
        return hidden, KVCache(*(jnp.concatenate(parts) for parts in zip(*new_kv, strict=True)))

    def head_weight(self) -> jax.Array:
        """LM head as [d_model, embedding_size] (the transposed embedding when tied)."""
        return self.wte[...].T if self.config.weight_tying else self.lm_head[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head: hidden [B, T, d] -> fp32 logits [B, T, embedding_size] (fp32 accumulation)."""
        head = self.head_weight().astype(hidden.dtype)
        return jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)

    def __call__(self, tokens: jax.Array, packing: Packing | None = None) -> jax.Array:
        return self.logits(self.hidden_states(tokens, packing))


def abstract_model(config: ModelConfig) -> OLMo:
    """The model with `jax.ShapeDtypeStruct`s for weights: shapes, dtypes and axis names, nothing allocated."""
    return nnx.eval_shape(lambda: OLMo(config, rngs=nnx.Rngs(0)))


def abstract_params(config: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """{parameter name: ShapeDtypeStruct}, the pure-dict layout of checkpoints and the train state."""
    return nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))


def num_params(config: ModelConfig) -> int:
    """Parameter count from abstract shapes (nothing is allocated)."""
    return sum(math.prod(leaf.shape) for leaf in abstract_params(config).values())


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token for MFU: 6 N + 12 d sum_layers(keys attended), N = matmul parameters incl.
    the LM head; a layer attends to T keys (T/2 on average under the causal mask, counted as OLMo does,
    i.e. 12 L d T for full attention) or to its window."""
    t = seq_len or config.max_sequence_length
    keys = sum(min(t, config.layer_window(i) or t) for i in range(config.n_layers))
    return 6.0 * matmul_params(config) + 12.0 * config.d_model * keys


def matmul_params(config: ModelConfig) -> int:
    """Parameters that multiply every token (the blocks' projections and the LM head; not embeddings, norms)."""
    d = config.d_model
    q_width, kv_width = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
    per_layer = d * (q_width + 2 * kv_width) + q_width * d + d * config.ff_proj_size + config.hidden_size * d
    return config.n_layers * per_layer + d * config.padded_vocab_size
