"""Fine-tuning losses on rows from `olmo_jax.adapt.data`: SFT cross-entropy and the DPO family.

Both start from the log-probability of each label token, position t scoring token t+1 (as pretraining), on
rows that may hold several segments (`segment_ids`): a label counts when `label_mask` marks it and it
belongs to the same segment as the position before it.

DPO losses on the policy's and the reference's log-probs of the chosen (c) and rejected (r) completions,
with logits = β·[(π_c − π_r) − (ref_c − ref_r)] and label smoothing ε:
- `sigmoid` (DPO, Rafailov et al. 2023): −(1−ε)·log σ(logits) − ε·log σ(−logits); ln 2 at zero margin.
- `dpo_norm` (Tulu 3's length-normalised DPO): `sigmoid` with every log-prob divided by its completion's
  token count.
- `simpo` (Meng et al. 2024, reference-free): logits = β·(π̄_c − π̄_r) − γ with length-averaged π̄; then as
  `sigmoid`.
- `ipo` (Azar et al. 2023): (h − 1/(2β))², h = (π_c − π_r) − (ref_c − ref_r).
Rewards, logged: β·(π − ref) per completion (β·π̄ for SimPO), with the same normalisation as the loss.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from olmo_jax.model import Packing

DPO_LOSSES = ("sigmoid", "dpo_norm", "simpo", "ipo")


def label_logprobs(graphdef: nnx.GraphDef, params: dict, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(log p(label) fp32 [B, T-1], the labels' segment ids [B, T-1], 0 where a label does not count)."""
    tokens, segments = batch["input_ids"], batch["segment_ids"]
    logits = nnx.merge(graphdef, params)(tokens, Packing.from_segments(segments))[:, :-1]
    labels = tokens[:, 1:]
    # label logit - logsumexp: no second [B, T, V] array, as a full log-softmax would make.
    logp = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
    counts = (batch["label_mask"][:, 1:] > 0) & (segments[:, 1:] == segments[:, :-1])
    return logp, jnp.where(counts, segments[:, 1:], 0)


def trained_labels(batch: dict[str, jax.Array]) -> jax.Array:
    """Number of labels the SFT loss counts in `batch` (the "mean" reduction's denominator)."""
    segments = batch["segment_ids"]
    return jnp.sum((batch["label_mask"][:, 1:] > 0) & (segments[:, 1:] == segments[:, :-1]))


def sft_loss(
    graphdef: nnx.GraphDef, params: dict, batch: dict[str, jax.Array], denominator: jax.Array | float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Summed negative log-likelihood of the trained labels / `denominator`."""
    logp, segment = label_logprobs(graphdef, params, batch)
    ce = -jnp.sum(jnp.where(segment > 0, logp, 0.0)) / denominator
    return ce, {"ce_loss": ce}


def pair_logprobs(logp: jax.Array, segment: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(summed log-probs [B, 2], token counts [B, 2]) of each row's chosen (segment 1) and rejected (2)."""
    sums = jnp.stack([jnp.sum(jnp.where(segment == s, logp, 0.0), axis=1) for s in (1, 2)], axis=1)
    counts = jnp.stack([jnp.sum(segment == s, axis=1) for s in (1, 2)], axis=1)
    return sums, counts.astype(jnp.float32)


def preference_loss(
    policy: jax.Array,
    reference: jax.Array,
    counts: jax.Array,
    loss_type: str,
    beta: float,
    *,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """(per-pair losses [B], rewards [B, 2]) from summed log-probs [B, 2] (chosen, rejected) and counts [B, 2]."""
    if loss_type in ("dpo_norm", "simpo"):
        policy, reference = policy / counts, reference / counts
    if loss_type == "simpo":
        rewards = beta * policy
        logits = rewards[:, 0] - rewards[:, 1] - gamma
    else:
        rewards = beta * (policy - reference)
        logits = rewards[:, 0] - rewards[:, 1]
    if loss_type == "ipo":
        h = logits / beta
        return jnp.square(h - 1.0 / (2.0 * beta)), rewards
    losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits) - label_smoothing * jax.nn.log_sigmoid(-logits)
    return losses, rewards


def dpo_loss(
    graphdef: nnx.GraphDef, params: dict, batch: dict[str, jax.Array], denominator: jax.Array | float, adapt: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean preference loss over the pairs (`denominator` of them in the global batch) and its metrics' sums."""
    policy, counts = pair_logprobs(*label_logprobs(graphdef, params, batch))
    losses, rewards = preference_loss(
        policy,
        batch["reference_logps"],
        counts,
        adapt.dpo_loss,
        adapt.beta,
        label_smoothing=adapt.label_smoothing,
        gamma=adapt.simpo_gamma,
    )
    loss = jnp.sum(losses) / denominator
    margin = rewards[:, 0] - rewards[:, 1]
    return loss, {
        "chosen_reward": jnp.sum(rewards[:, 0]) / denominator,
        "rejected_reward": jnp.sum(rewards[:, 1]) / denominator,
        "reward_accuracy": jnp.sum(margin > 0) / denominator,
        "reward_margin": jnp.sum(margin) / denominator,
    }
