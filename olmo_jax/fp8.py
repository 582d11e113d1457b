"""Scaled FP8 matmuls for the block projections (`model.fp8`): e4m3 operands forward, e5m2 gradients backward.

    forward:   y  = (Q4(x) . Q4(w)) * s_x * s_w          Q4: x / s_x rounded to float8_e4m3fn
    backward:  dx = (Q5(g) . Q4(w)^T) * s_g * s_w        Q5: g / s_g rounded to float8_e5m2
               dw = (Q4(x)^T . Q5(g)) * s_x * s_g

Each `s` is the tensor's own current scale, amax(|t|) / (the format's largest finite value), computed in the
same step from the tensor being quantized, so that its largest element lands on the format's edge. The
backward is the straight-through estimator: rounding is treated as the identity, and the forward's
quantized operands are what the backward multiplies (they are also the residuals kept for it, at 1 byte an
element).

Why our own `jax.custom_vjp` over `jax.lax.dot_general` rather than Flax's `fp8_ops`: Flax's ops
(`Fp8DotGeneralOp`, `Fp8DirectDotGeneralOp`, `Fp8Einsum`, all Linen) implement delayed scaling, whose
scales and amax histories are variables in an `overwrite_with_gradient` collection that the optimizer
must copy rather than update. That is state outside `nnx.Param` and a change to the train state and the
checkpoints; current scaling has none, costs one amax reduction per operand (a scalar all-reduce when the
operand is sharded), and follows each step's actual range instead of a history's. The dots are XLA's
native FP8 dots: `dot_general` with float8 operands and fp32 accumulation, the scales applied to the
result (as Flax's `Fp8DirectDotGeneralOp` does): the form XLA's GPU GEMM rewriter maps onto cuBLASLt's
scaled FP8 GEMM on Hopper and later (not yet seen on a GPU here). XLA's CPU backend converts the float8
operands to fp32 and runs an fp32 dot; every product of two float8 values is exact in fp32, so the CPU
computes the same quantized matmul, only slower.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

FORWARD_DTYPE = jnp.float8_e4m3fn  # activations and weights: more mantissa (max 448)
GRADIENT_DTYPE = jnp.float8_e5m2  # output gradients: more range (max 57344)


def quantize(x: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """(q, scale) with q = x / scale in the float8 `dtype` and scale = amax(|x|) / dtype's max (fp32).

    An all-zero tensor gets scale 1 (any scale represents it; 0 would divide 0 by 0). Division rounding
    can put the largest element a hair past the format's max, and float8_e4m3fn has no infinity (an
    out-of-range value becomes NaN), so the quotient is clipped to the finite range first.
    """
    largest = float(jnp.finfo(dtype).max)
    amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
    scale = jnp.where(amax > 0, amax / largest, 1.0)
    return jnp.clip(x.astype(jnp.float32) / scale, -largest, largest).astype(dtype), scale


def _scaled_einsum(spec: str, a: jax.Array, b: jax.Array, scale: jax.Array, dtype) -> jax.Array:
    """einsum of two float8 operands, accumulated in fp32, times `scale`, cast to `dtype`."""
    return (jnp.einsum(spec, a, b, preferred_element_type=jnp.float32) * scale).astype(dtype)


def _specs(spec: str) -> tuple[str, str, str]:
    """The operand and output subscripts of a two-operand einsum `spec` ("btd,dkf->btkf")."""
    inputs, out = spec.replace(" ", "").split("->")
    x_spec, w_spec = inputs.split(",")
    return x_spec, w_spec, out


def einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, x, w)` as a scaled FP8 matmul, in x's dtype; gradients in x's and w's dtypes.

    `spec` names two operands and an explicit output, each subscript at most once in each and none in only
    one of the three (no traces, no sums over one operand): then the gradients are the einsums `out,w->x`
    and `x,out->w`. A spec outside that is a programming error.
    """
    specs = _specs(spec)
    once = all(len(set(s)) == len(s) for s in specs)
    if not once or any(set(s) - set("".join(specs[:i] + specs[i + 1 :])) for i, s in enumerate(specs)):
        raise ValueError(f"fp8.einsum needs a projection einsum, not {spec!r}")
    return _fp8_einsum(spec, np.dtype(x.dtype), np.dtype(w.dtype), x, w)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fp8_einsum(spec: str, x_dtype: np.dtype, w_dtype: np.dtype, x: jax.Array, w: jax.Array) -> jax.Array:
    return _forward(spec, x_dtype, w_dtype, x, w)[0]


def _forward(spec, x_dtype, w_dtype, x, w):
    (qx, sx), (qw, sw) = quantize(x, FORWARD_DTYPE), quantize(w, FORWARD_DTYPE)
    return _scaled_einsum(spec, qx, qw, sx * sw, x_dtype), (qx, sx, qw, sw)


def _backward(spec, x_dtype, w_dtype, residuals, g):
    qx, sx, qw, sw = residuals
    x_spec, w_spec, out = _specs(spec)
    qg, sg = quantize(g, GRADIENT_DTYPE)
    dx = _scaled_einsum(f"{out},{w_spec}->{x_spec}", qg, qw, sg * sw, x_dtype)
    dw = _scaled_einsum(f"{x_spec},{out}->{w_spec}", qx, qg, sx * sg, w_dtype)
    return dx, dw


_fp8_einsum.defvjp(_forward, _backward)
