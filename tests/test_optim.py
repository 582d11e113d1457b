"""The Optax chain and OLMo's schedules, checked against OLMo's formulas and a hand-written AdamW."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from olmo_jax.config import OptimizerConfig, SchedulerConfig
from olmo_jax.optim import (
    clip_by_global_norm,
    decay_mask,
    grad_clip_limit,
    learning_rate,
    lr_at,
    make_optimizer,
    set_hyperparams,
)

PEAK = 1e-3


def sched(**changes) -> SchedulerConfig:
    return dataclasses.replace(SchedulerConfig(t_warmup=100, alpha_f=0.1), **changes)


# Expected values worked out by hand from OLMo's definitions (warmup from 0.1 x peak; decay from peak at
# t_warmup to alpha_f x peak at t_max = 1000; constant floor afterwards).
@pytest.mark.parametrize(
    "name, t, expected",
    [
        ("cosine_with_warmup", 0, 1e-4),
        ("cosine_with_warmup", 50, 5.5e-4),
        ("cosine_with_warmup", 100, 1e-3),
        ("cosine_with_warmup", 550, 5.5e-4),  # halfway: cos(pi/2) = 0
        ("cosine_with_warmup", 1000, 1e-4),
        ("cosine_with_warmup", 5000, 1e-4),
        ("linear_with_warmup", 325, 7.75e-4),  # a quarter of the way down
        ("linear_with_warmup", 550, 5.5e-4),
        ("linear_with_warmup", 1000, 1e-4),
        ("constant_with_warmup", 50, 5.5e-4),
        ("constant_with_warmup", 900, 1e-3),
    ],
)
def test_schedules_match_olmo_formulas(name, t, expected):
    assert lr_at(t, PEAK, sched(name=name), t_max=1000) == pytest.approx(expected, rel=1e-9)


def test_warmup_min_lr_and_explicit_t_max():
    scheduler = sched(name="linear_with_warmup", warmup_min_lr=0.0, t_max=200)
    assert lr_at(50, PEAK, scheduler, t_max=10_000) == pytest.approx(5e-4)
    assert lr_at(150, PEAK, scheduler, t_max=10_000) == pytest.approx(5.5e-4)


def test_warmup_ratio_replaces_t_warmup_with_a_share_of_the_run_rounded_up():
    # Open-Instruct's warmup_ratio: 3% of a 1000-step run is 30 steps; 3% of 990 is 29.7, so 30 too.
    ratio = sched(name="linear_with_warmup", warmup_min_lr=0.0, alpha_f=0.0, t_warmup=5, warmup_ratio=0.03)
    steps = sched(name="linear_with_warmup", warmup_min_lr=0.0, alpha_f=0.0, t_warmup=30)
    for t_max in (1000, 990):
        for t in (1, 15, 29, 30, 31, 500, t_max):
            assert lr_at(t, PEAK, ratio, t_max) == pytest.approx(lr_at(t, PEAK, steps, t_max))
    assert lr_at(15, PEAK, ratio, 1000) == pytest.approx(PEAK / 2)


def test_token_units_read_tokens_not_steps():
    scheduler = sched(name="cosine_with_warmup", units="tokens", t_warmup=1000)
    # Update 3 after 500 tokens: halfway through a 1000-token warmup.
    assert learning_rate(3, 500, PEAK, scheduler, total_steps=100, total_tokens=10_000) == pytest.approx(5.5e-4)


def test_final_anneal_reaches_zero_linearly():
    scheduler = sched(name="constant_with_warmup", anneal_steps=100)
    args = dict(tokens_seen=0, peak=PEAK, scheduler=scheduler, total_steps=1000, total_tokens=0)
    assert learning_rate(900, **args) == pytest.approx(1e-3)
    assert learning_rate(950, **args) == pytest.approx(5e-4)
    assert learning_rate(1000, **args) == 0.0


UPDATES = (1, 2, 500, 501, 502, 1000, 1001, 1002, 5000)


def test_clip_warmup_lags_one_update_behind_as_in_olmo_7b():
    """OLMo's `Trainer.train_step` (olmo/train.py) clips with the limit its param groups hold, then stores
    `Scheduler.get_max_grad_norm(max_grad_norm, scheduler_current)` (olmo/optim.py) for the next update:
    update 1 clips at the plain limit (build_optimizer's param groups) and update k at the warmup decision of
    step k-1, which warms while k-1 <= grad_clip_warmup_steps. OLMo-7B.yaml: 1000 steps, factor 10."""
    scheduler = sched(grad_clip_warmup_steps=1000, grad_clip_warmup_factor=10.0)
    tokens_per_step = 2048 * 2048  # ignored in step units
    limits = {k: grad_clip_limit(k, (k - 1) * tokens_per_step, 1.0, scheduler) for k in UPDATES}
    warm = {2, 500, 501, 502, 1000, 1001}
    assert limits == {k: 10.0 if k in warm else 1.0 for k in UPDATES}


def test_clip_warmup_in_token_units_counts_tokens_as_in_olmo_7b_0724():
    """With `scheduler.units: tokens`, OLMo's `scheduler_current` (olmo/train.py) is
    `global_train_tokens_seen`, so `grad_clip_warmup_steps` is compared with tokens: update k clips at the
    decision taken after k-1 batches. OLMo-7B-0724.yaml: 1024 x 4096 tokens a batch, warmup
    2,097,152,000 tokens (= 500 batches), factor 5: warm for updates 2..501."""
    scheduler = sched(units="tokens", grad_clip_warmup_steps=2_097_152_000, grad_clip_warmup_factor=5.0)
    tokens_per_step = 1024 * 4096
    limits = {k: grad_clip_limit(k, (k - 1) * tokens_per_step, 1.0, scheduler) for k in UPDATES}
    assert limits == {k: 5.0 if 2 <= k <= 501 else 1.0 for k in UPDATES}


def test_clip_limit_without_warmup_or_without_clipping():
    assert grad_clip_limit(5, 0, 1.0, sched()) == 1.0
    assert grad_clip_limit(5, 0, None, sched(grad_clip_warmup_steps=10, grad_clip_warmup_factor=2.0)) is None


def test_clipping_multiplies_by_olmos_coefficient():
    """olmo/optim.py `Optimizer._do_global_fixed_clipping`: every gradient times
    min(1, max_norm / (total_norm + 1e-6)). With a norm of 5e-4 and a limit of 1e-4 the 1e-6 is visible:
    0.1996008 rather than 0.2."""
    grads = {"a": jnp.array([3e-4, 0.0]), "b": jnp.array([[4e-4]])}
    clipped, _ = clip_by_global_norm(1e-4).update(grads, None)
    coefficient = 1e-4 / (5e-4 + 1e-6)
    np.testing.assert_allclose(clipped["a"], [3e-4 * coefficient, 0.0], rtol=1e-6)  # fp32 rounding
    np.testing.assert_allclose(clipped["b"], [[4e-4 * coefficient]], rtol=1e-6)
    untouched, _ = clip_by_global_norm(1.0).update(grads, None)
    assert all(np.array_equal(untouched[k], grads[k]) for k in grads)


@pytest.mark.parametrize(
    "names, flags, decayed",
    [
        (["wte", "att_proj", "ff_out"], {}, {"att_proj", "ff_out"}),  # tied 1B: embedding not decayed
        (["wte", "att_proj", "lm_head"], {}, {"att_proj", "lm_head"}),  # untied 7B: the head is decayed
        (["wte", "att_proj", "lm_head"], {"decay_embeddings": True}, {"wte", "att_proj", "lm_head"}),  # 65B
        (["wte", "ff_proj"], {"decay_norm_and_bias": True}, {"ff_proj"}),  # OLMo-1 has no norms or biases
    ],
)
def test_decay_groups_follow_olmo(names, flags, decayed):
    mask = decay_mask(dict.fromkeys(names), OptimizerConfig(**flags))
    assert {n for n, m in mask.items() if m} == decayed


def reference_adamw(params, grads_per_step, lrs, clip, wd, b1, b2, eps, decayed):
    """PyTorch AdamW (decoupled decay scaled by LR) after OLMo's global-norm clipping, in float64 numpy."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs, strict=True), start=1):
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
        scale = min(1.0, clip / (norm + 1e-6))
        for k in params:
            g = grads[k] * scale
            if decayed[k]:
                params[k] = params[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


def test_adamw_chain_matches_a_hand_written_reference():
    rng = np.random.default_rng(0)
    params = {"wte": rng.normal(size=(6, 4)), "att_proj": rng.normal(size=(4, 3)), "ff_out": rng.normal(size=(5,))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    grads_per_step = [{k: rng.normal(size=v.shape).astype(np.float32) * 3 for k, v in params.items()} for _ in range(4)]
    lrs = [1e-2, 2e-2, 5e-3, 1e-2]
    opt_config = OptimizerConfig(learning_rate=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-5)
    optimizer = make_optimizer(params, opt_config, max_grad_norm=1.0)
    state = optimizer.init({k: jnp.asarray(v) for k, v in params.items()})
    current = {k: jnp.asarray(v) for k, v in params.items()}
    for grads, lr in zip(grads_per_step, lrs, strict=True):
        state = set_hyperparams(state, lr, 1.0)
        updates, state = optimizer.update({k: jnp.asarray(g) for k, g in grads.items()}, state, current)
        current = {k: current[k] + updates[k] for k in current}
    expected = reference_adamw(
        params, grads_per_step, lrs, clip=1.0, wd=0.1, b1=0.9, b2=0.95, eps=1e-5, decayed=decay_mask(params, opt_config)
    )
    for k in params:
        # float32 arithmetic against a float64 reference: agreement to ~1e-6 relative.
        np.testing.assert_allclose(np.asarray(current[k]), expected[k], rtol=1e-5, atol=1e-7, err_msg=k)
