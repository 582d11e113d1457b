"""The OLMo-1 decoder in Flax NNX.

    tokens -> embedding -> n_layers x [x + Attn(LN(x)); x + MLP(LN(x))] -> LN -> LM head -> logits

OLMo-1 specifics, each as in allenai/OLMo's `olmo/model.py`:
- LayerNorm without weight or bias, eps 1e-5, computed in fp32.
- No biases, no dropout. Full multi-head causal attention with rotate-half RoPE computed in fp32.
- SwiGLU with a fused input projection whose first half is "up" and second half the gate.
- Mitchell init: truncated normal (+-`init_cutoff_factor` std, 3 when unset), output projections scaled
  down with depth.

Layer weights are stored stacked along a leading `layers` axis whether the layers run under
`jax.lax.scan` or unrolled, so a checkpoint does not depend on that switch. Every parameter carries
logical axis names in its `axes` metadata; `olmo_jax.sharding` maps them to mesh axes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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
    """One layer's weights (or all layers', stacked on a leading axis). Kernels are [in, out]."""

    att_proj: jax.Array  # [d_model, 3 (q, k, v), n_heads, head_dim]
    attn_out: jax.Array  # [n_heads, head_dim, d_model]
    ff_proj: jax.Array  # [d_model, 2 (up, gate), hidden]
    ff_out: jax.Array  # [hidden, d_model]


def init_std(config: ModelConfig, name: str, layer: jax.Array | int = 0) -> jax.Array | float:
    """Standard deviation of a weight at init (`layer` is 0-based; may be an array of layers)."""
    if config.init_fn == "normal":
        return config.init_std
    d = config.d_model
    if name == "attn_out":
        return 1.0 / jnp.sqrt(2.0 * d * (jnp.asarray(layer) + 1))
    if name == "ff_out":
        return 1.0 / jnp.sqrt(2.0 * config.hidden_size * (jnp.asarray(layer) + 1))
    return 1.0 / math.sqrt(d)  # att_proj, ff_proj, wte, untied LM head


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


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [seq_len, head_dim] for rotate-half RoPE, in fp32."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half (GPT-NeoX) RoPE on x [B, T, H, Dh], computed in fp32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
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


def block(x: jax.Array, w: BlockWeights, cos: jax.Array, sin: jax.Array, config: ModelConfig) -> jax.Array:
    """One sequential OLMo block on x [B, T, d_model] in the compute dtype."""
    dtype = x.dtype
    h = layer_norm(x, config.layer_norm_eps)
    qkv = jnp.einsum("btd,dkhe->btkhe", h, w.att_proj.astype(dtype))
    if config.clip_qkv is not None:
        qkv = jnp.clip(qkv, -config.clip_qkv, config.clip_qkv)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    attended = jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation=attention_implementation(config, dtype)
    )
    x = x + jnp.einsum("bthe,hed->btd", attended, w.attn_out.astype(dtype))

    h = layer_norm(x, config.layer_norm_eps)
    up_gate = jnp.einsum("btd,dkf->btkf", h, w.ff_proj.astype(dtype))
    up, gate = up_gate[:, :, 0], up_gate[:, :, 1]
    return constrain_activations(x + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, w.ff_out.astype(dtype)))


class OLMo(nnx.Module):
    """OLMo-1 decoder. `model(tokens [B, T] int32) -> logits [B, T, embedding_size] float32`."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        d, n_layers, vocab = config.d_model, config.n_layers, config.padded_vocab_size
        heads, head_dim, hidden = config.n_heads, config.head_dim, config.hidden_size
        dtype = DTYPES[config.param_dtype]
        layers = jnp.arange(n_layers)

        def stacked(name: str, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
            std = jnp.broadcast_to(init_std(config, name, layers), (n_layers,))
            std = std.reshape((n_layers,) + (1,) * len(shape))
            value = _truncated_normal(rngs.params(), (n_layers, *shape), std, config, dtype)
            return nnx.Param(value, axes=("layers", *axes))

        self.wte = nnx.Param(
            _truncated_normal(rngs.params(), (vocab, d), init_std(config, "wte"), config, dtype),
            axes=("vocab", "embed"),
        )
        self.att_proj = stacked("att_proj", (d, 3, heads, head_dim), ("embed", None, "heads", "head_dim"))
        self.attn_out = stacked("attn_out", (heads, head_dim, d), ("heads", "head_dim", "embed"))
        self.ff_proj = stacked("ff_proj", (d, 2, hidden), ("embed", None, "mlp"))
        self.ff_out = stacked("ff_out", (hidden, d), ("mlp", "embed"))
        if not config.weight_tying:
            self.lm_head = nnx.Param(
                _truncated_normal(rngs.params(), (d, vocab), init_std(config, "lm_head"), config, dtype),
                axes=("embed", "vocab"),
            )

    def hidden_states(self, tokens: jax.Array) -> jax.Array:
        """Final-LayerNorm'd hidden states [B, T, d_model] in the compute dtype."""
        config = self.config
        dtype = DTYPES[config.compute_dtype]
        x = constrain_activations(jnp.take(self.wte[...], tokens, axis=0).astype(dtype))
        cos, sin = rope_tables(tokens.shape[1], config.head_dim, config.rope_theta)
        weights = BlockWeights(self.att_proj[...], self.attn_out[...], self.ff_proj[...], self.ff_out[...])

        def layer(x: jax.Array, w: BlockWeights) -> tuple[jax.Array, None]:
            return block(x, w, cos, sin, config), None

        if config.remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[config.remat], prevent_cse=not config.scan_layers)
        if config.scan_layers:
            x, _ = jax.lax.scan(layer, x, weights)
        else:
            for i in range(config.n_layers):
                x, _ = layer(x, BlockWeights(*(w[i] for w in weights)))
        return layer_norm(x, config.layer_norm_eps)

    def head_weight(self) -> jax.Array:
        """LM head as [d_model, embedding_size] (the transposed embedding when tied)."""
        return self.wte[...].T if self.config.weight_tying else self.lm_head[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head: hidden [B, T, d] -> fp32 logits [B, T, embedding_size] (fp32 accumulation)."""
        head = self.head_weight().astype(hidden.dtype)
        return jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.logits(self.hidden_states(tokens))


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
    """Training FLOPs per token for MFU: 6 N + 12 L d T, N = matmul parameters incl. the LM head."""
    t = seq_len or config.max_sequence_length
    d, n_layers = config.d_model, config.n_layers
    per_layer = 3 * d * d + d * d + d * config.ff_proj_size + config.hidden_size * d
    matmul_params = n_layers * per_layer + d * config.padded_vocab_size
    return 6.0 * matmul_params + 12.0 * n_layers * d * t
