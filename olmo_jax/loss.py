"""The training loss: next-token cross-entropy over the padded vocabulary, plus OLMo's z-loss.

Two ways to compute the same numbers:
- plain: the LM head produces fp32 logits [B, T, V] and the log-softmax reads them;
- chunked (`chunk` positions of the sequence at a time): each chunk's logits are made, reduced to their
  logsumexp and label logit, and dropped; the backward pass remakes them chunk by chunk. Peak memory
  for the loss falls from B x T x V fp32 values (3.3 GB for OLMo-1B at B=8, T=2048) to B x chunk x V,
  for one extra LM-head matmul in the backward pass.

Under a mesh the chunked loss runs per device (`jax.shard_map`): each device loops over its own rows
with the whole head, and the head's gradient is summed across devices once, after the loop. Left to
XLA's partitioner, the loop all-reduces the head's gradient in every chunk (seen in the compiled HLO
with jaxlib 0.10.2: one d x V all-reduce per chunk instead of one per micro-batch).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from olmo_jax.sharding import BATCH_AXES, LOGICAL_RULES

VOCAB_AXIS = LOGICAL_RULES["vocab"]  # the mesh axis that may split the vocabulary


def loss_terms(
    graphdef: nnx.GraphDef,
    params: dict,
    tokens: jax.Array,
    denominator: jax.Array | int,
    chunk: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(cross-entropy, z-loss) summed over the micro-batch's next-token predictions / `denominator`.

    As OLMo: the model reads all T tokens, position t predicts token t+1, the last position is dropped;
    logits cover the padded vocab; log-softmax in fp32. z-loss is logsumexp(logits)^2. With `chunk`,
    the logits are never materialised for more than `chunk` positions at once (see the module doc).
    """
    model = nnx.merge(graphdef, params)
    if chunk is None:
        # The last position is dropped before the LM head, not after it: slicing the [B, T, V] logits
        # would copy all of them and pad their gradient back (6% of `tiny`'s train step on the CPU).
        logits = model.logits(model.hidden_states(tokens)[:, :-1])
        labels = tokens[:, 1:]
        log_z = jax.nn.logsumexp(logits, axis=-1)
        label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
        ce = jnp.sum(log_z - label_logits) / denominator
        z_loss = jnp.sum(jnp.square(log_z)) / denominator
        return ce, z_loss
    ce_sum, z_sum = chunked_loss_sums(model.hidden_states(tokens), model.head_weight(), tokens, chunk)
    return ce_sum / denominator, z_sum / denominator


def chunked_loss_sums(hidden: jax.Array, head: jax.Array, tokens: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """Sums of (logsumexp - label logit) and logsumexp^2 over next-token predictions, `chunk` positions at a time.

    `hidden` [B, T, d] are the final hidden states in the compute dtype, `head` [d, V] the LM head in its
    parameter dtype, `tokens` [B, T] the inputs (position t's label is token t+1; the last position has
    none). Per device under a mesh whose batch axes divide B, else as one computation.
    """
    labels = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    mesh = jax.sharding.get_abstract_mesh()
    with_mesh = not mesh.empty and set(BATCH_AXES) <= set(mesh.axis_names)
    if not with_mesh or hidden.shape[0] % math.prod(mesh.shape[axis] for axis in BATCH_AXES):
        return _local_sums(hidden, head, labels, chunk=chunk, vocab_axis=None, batch_axes=())
    splits_vocab = VOCAB_AXIS in mesh.axis_names and mesh.shape[VOCAB_AXIS] > 1
    vocab_axis = VOCAB_AXIS if splits_vocab and head.shape[1] % mesh.shape[VOCAB_AXIS] == 0 else None
    per_device = jax.shard_map(
        partial(_local_sums, chunk=chunk, vocab_axis=vocab_axis, batch_axes=BATCH_AXES),
        mesh=mesh,
        in_specs=(PartitionSpec(BATCH_AXES), PartitionSpec(None, vocab_axis), PartitionSpec(BATCH_AXES)),
        out_specs=(PartitionSpec(), PartitionSpec()),
    )
    return per_device(hidden, head, labels)


def _local_sums(
    hidden: jax.Array,
    head: jax.Array,
    labels: jax.Array,
    *,
    chunk: int,
    vocab_axis: str | None,
    batch_axes: tuple[str, ...],
) -> tuple[jax.Array, jax.Array]:
    """The chunk loop over this device's rows (all rows without a mesh); `head` holds this device's vocab slice.

    With `vocab_axis`, the logsumexp and the label logit are combined across that mesh axis; the sums
    are then added across `batch_axes`.
    """
    seq = hidden.shape[1]
    n_chunks = -(-seq // chunk)
    pad = n_chunks * chunk - seq
    # Every position is computed (T padded to whole chunks keeps shapes static); the last real position,
    # which has no next token, is masked out with the padding.
    valid = (jnp.arange(n_chunks * chunk) < seq - 1).reshape(n_chunks, 1, chunk)
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    labels = jnp.pad(labels, ((0, 0), (0, pad)))
    if batch_axes:
        # Mark the head as differing per device before the loop: the gradient's sum across devices (the
        # transpose of this cast) then happens once, here, rather than inside every chunk of the loop.
        head = jax.lax.pcast(head, batch_axes, to="varying")
    vocab_size = head.shape[1]
    vocab_start = jax.lax.axis_index(vocab_axis) * vocab_size if vocab_axis else 0

    def by_chunk(x: jax.Array) -> jax.Array:
        """[B, n*chunk, ...] -> [n, B, chunk, ...]: the loop runs over chunks."""
        return jnp.moveaxis(x.reshape(x.shape[0], n_chunks, chunk, *x.shape[2:]), 1, 0)

    def across_vocab(x: jax.Array, op) -> jax.Array:
        return op(x, vocab_axis) if vocab_axis else x

    # The head enters in its parameter dtype (fp32) and is cast per chunk, so that the loop accumulates
    # its gradient in fp32; `jax.checkpoint` keeps only the chunk's inputs for the backward pass, not
    # its logits.
    @jax.checkpoint
    def chunk_sums(carry: None, xs: tuple[jax.Array, ...]) -> tuple[None, tuple[jax.Array, jax.Array]]:
        h, y, mask = xs
        logits = jnp.einsum("btd,dv->btv", h, head.astype(h.dtype), preferred_element_type=jnp.float32)
        # Shifting by a constant leaves logsumexp and its gradient unchanged: no gradient through the max.
        shift = across_vocab(jax.lax.stop_gradient(jnp.max(logits, axis=-1)), jax.lax.pmax)
        log_z = shift + jnp.log(across_vocab(jnp.sum(jnp.exp(logits - shift[..., None]), axis=-1), jax.lax.psum))
        local = y - vocab_start
        here = (local >= 0) & (local < vocab_size)
        picked = jnp.take_along_axis(logits, jnp.clip(local, 0, vocab_size - 1)[..., None], axis=-1)[..., 0]
        label_logits = across_vocab(jnp.where(here, picked, 0.0), jax.lax.psum)
        ce = jnp.sum(jnp.where(mask, log_z - label_logits, 0.0))
        z = jnp.sum(jnp.where(mask, jnp.square(log_z), 0.0))
        return None, (ce, z)

    _, (ce, z) = jax.lax.scan(chunk_sums, None, (by_chunk(hidden), by_chunk(labels), valid))
    ce_sum, z_sum = jnp.sum(ce), jnp.sum(z)
    if batch_axes:
        ce_sum, z_sum = jax.lax.psum((ce_sum, z_sum), batch_axes)
    return ce_sum, z_sum
