"""The training loss: next-token cross-entropy over the padded vocabulary, plus OLMo's z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def loss_terms(
    graphdef: nnx.GraphDef, params: dict, tokens: jax.Array, denominator: jax.Array | int
) -> tuple[jax.Array, jax.Array]:
    """(cross-entropy, z-loss) summed over the micro-batch's next-token predictions / `denominator`.

    As OLMo: the model reads all T tokens, position t predicts token t+1, the last position is dropped;
    logits cover the padded vocab; log-softmax in fp32. z-loss is logsumexp(logits)^2.
    """
    model = nnx.merge(graphdef, params)
    logits = model(tokens)[:, :-1]
    labels = tokens[:, 1:]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    ce = jnp.sum(log_z - label_logits) / denominator
    z_loss = jnp.sum(jnp.square(log_z)) / denominator
    return ce, z_loss
