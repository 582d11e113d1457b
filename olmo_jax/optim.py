"""OLMo's optimizer as an Optax chain, and OLMo's learning-rate and grad-clip schedules.

Chain: global-norm clipping -> AdamW (PyTorch semantics, decay scaled by the LR, OLMo's decay groups).
The learning rate and the clipping limit are injected hyperparameters set from the host every step,
because OLMo's schedules may run in token units (and the batch size may grow), which a step count
inside the jitted update cannot know.

Step convention (OLMo's trainer, olmo/train.py `Trainer.fit` and `Trainer.train_step`): the k-th update
(k = 1, 2, ...) uses `lr_at(k)` in step units, or `lr_at(tokens seen after k batches)` in token units. The
clipping limit lags one update behind (see `grad_clip_limit`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from olmo_jax.config import OptimizerConfig, SchedulerConfig

# Weights that are embeddings in OLMo's sense (decayed only with `decay_embeddings`). The model has no
# biases; its norm weights (OLMo-2/3's RMSNorms) are the parameters named `*_norm`.
EMBEDDING_PARAMS = ("wte",)


def decay_mask(params: dict, optimizer: OptimizerConfig) -> dict:
    """True where weight decay applies: every Linear weight (untied LM head included), plus the
    embedding if `decay_embeddings` (a tied embedding is the embedding, so it follows that flag) and the
    norm weights if `decay_norm_and_bias`."""

    def decayed(name: str) -> bool:
        if name in EMBEDDING_PARAMS:
            return optimizer.decay_embeddings
        return optimizer.decay_norm_and_bias if name.endswith("_norm") else True

    return {name: decayed(name) for name in params}


def clip_by_global_norm(max_norm: jax.Array | float) -> optax.GradientTransformation:
    """OLMo's global-norm clipping: every gradient times min(1, max_norm / (norm + 1e-6)).

    olmo/optim.py, `Optimizer._do_global_fixed_clipping`; the 1e-6 (which Optax's `clip_by_global_norm`
    lacks) makes a gradient whose norm equals the limit shrink very slightly, as in OLMo.
    """

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        coefficient = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        return jax.tree.map(lambda g: (g * coefficient).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(params: dict, optimizer: OptimizerConfig, max_grad_norm: float | None):
    """The Optax chain, with `learning_rate` and `max_grad_norm` as injectable hyperparameters."""
    mask = decay_mask(params, optimizer)

    def chain(learning_rate, max_grad_norm):
        clip = clip_by_global_norm(max_grad_norm) if max_grad_norm is not None else optax.identity()
        return optax.chain(
            clip,
            optax.adamw(
                learning_rate=learning_rate,
                b1=optimizer.betas[0],
                b2=optimizer.betas[1],
                eps=optimizer.eps,
                weight_decay=optimizer.weight_decay,
                mask=mask,
            ),
        )

    hyper = {"learning_rate": optimizer.learning_rate}
    if max_grad_norm is not None:
        hyper["max_grad_norm"] = max_grad_norm
        return optax.inject_hyperparams(chain)(**hyper)
    return optax.inject_hyperparams(lambda learning_rate: chain(learning_rate, None))(**hyper)


def set_hyperparams(opt_state, learning_rate: jax.Array, max_grad_norm: jax.Array | None):
    """Return `opt_state` with this step's LR (and clip limit) written in; usable inside jit."""
    hyperparams = dict(opt_state.hyperparams)
    hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    if "max_grad_norm" in hyperparams and max_grad_norm is not None:
        hyperparams["max_grad_norm"] = jnp.asarray(max_grad_norm, jnp.float32)
    return opt_state._replace(hyperparams=hyperparams)


def _warmup(peak: float, t: float, t_warmup: float, warmup_min_lr: float | None) -> float:
    start = 0.1 * peak if warmup_min_lr is None else warmup_min_lr
    return start + (peak - start) * min(t, t_warmup) / t_warmup


def lr_at(t: float, peak: float, scheduler: SchedulerConfig, t_max: float) -> float:
    """OLMo's schedule at time `t` (steps or tokens, as `scheduler.units`); `t_max` is the run length."""
    if scheduler.t_max is not None:
        t_max = scheduler.t_max
    if scheduler.name == "constant":
        return peak
    t_warmup = scheduler.t_warmup if scheduler.warmup_ratio is None else math.ceil(scheduler.warmup_ratio * t_max)
    if t < t_warmup:
        return _warmup(peak, t, t_warmup, scheduler.warmup_min_lr)
    if scheduler.name == "constant_with_warmup":
        return peak
    floor = peak * scheduler.alpha_f
    if t >= t_max:
        return floor
    progress = (t - t_warmup) / (t_max - t_warmup)
    if scheduler.name == "linear_with_warmup":
        return peak - (peak - floor) * progress
    if scheduler.name == "cosine_with_warmup":
        return floor + (peak - floor) * (1 + math.cos(math.pi * progress)) / 2
    raise ValueError(f"unknown scheduler.name {scheduler.name!r}")


def learning_rate(
    step: int, tokens_seen: int, peak: float, scheduler: SchedulerConfig, total_steps: int, total_tokens: int
) -> float:
    """LR for update number `step` (1-based) after `tokens_seen` tokens, with the final anneal.

    The anneal (`scheduler.anneal_steps` = K > 0) multiplies the schedule by a ramp that falls linearly
    from 1 to 0 over the last K steps, so the LR reaches 0 at the final step (the released OLMo-7B).
    """
    if scheduler.units == "steps":
        lr = lr_at(step, peak, scheduler, total_steps)
    else:
        lr = lr_at(tokens_seen, peak, scheduler, total_tokens)
    if scheduler.anneal_steps > 0:
        lr *= min(1.0, (total_steps - step) / scheduler.anneal_steps)
    return lr


def grad_clip_limit(
    update: int, tokens_before: int, max_grad_norm: float | None, scheduler: SchedulerConfig
) -> float | None:
    """The clipping limit of update number `update` (1-based) that follows `tokens_before` tokens, as OLMo applies it.

    OLMo's `Trainer.train_step` (olmo/train.py) clips with the limit already stored in its optimizer's
    param groups and only afterwards stores the limit for the current step, so update k clips with the
    warmup decision taken at update k-1: update 1 with plain `max_grad_norm` (build_optimizer's param
    groups), updates 2..N+1 with `grad_clip_warmup_factor` x `max_grad_norm`. The decision
    (`Scheduler._get_max_grad_norm_coeff`, olmo/optim.py) warms while OLMo's `scheduler_current` is at most
    `grad_clip_warmup_steps`; `scheduler_current` is the step (k-1), or with `scheduler.units: tokens` the
    tokens seen after k-1 batches (`tokens_before`), so the "steps" are then tokens.
    """
    if max_grad_norm is None:
        return None
    if update <= 1 or scheduler.grad_clip_warmup_steps is None or scheduler.grad_clip_warmup_factor is None:
        return max_grad_norm
    previous = update - 1 if scheduler.units == "steps" else tokens_before
    if previous > scheduler.grad_clip_warmup_steps:
        return max_grad_norm
    return max_grad_norm * scheduler.grad_clip_warmup_factor
