"""The ZeRO-3 train step: sharding, equivalence across meshes, accumulation, errors, dry run."""

import jax
import numpy as np
import pytest
from flax import nnx

from olmo_jax import sharding
from olmo_jax.config import MeshConfig, load_config
from olmo_jax.errors import ConfigError
from olmo_jax.train import build, dry_run, init_state, jit_train_step, parse_duration, total_steps, total_tokens

# tiny's model, fp32 compute, on short sequences so that 8 fake devices stay quick.
SMALL = {"model.compute_dtype": "float32", "data.sequence_length": "32", "global_train_batch_size": "8"}


def tiny(**overrides):
    return load_config("tiny", {**SMALL, **{k.replace("__", "."): str(v) for k, v in overrides.items()}})


def mesh_of(data: int, fsdp: int):
    return sharding.make_mesh(MeshConfig(data=data, fsdp=fsdp), jax.devices()[: data * fsdp])


def run_steps(config, mesh, batches, lr=2e-3):
    setup = build(config, mesh)
    state = init_state(setup, seed=0)
    step = jit_train_step(setup)
    losses = []
    with jax.set_mesh(mesh):
        for tokens in batches:
            state, metrics = step(state, jax.device_put(tokens, setup.batch_sharding), lr, 1.0)
            losses.append(float(metrics["loss"]))  # blocks: one step in flight on CPU
    return losses, jax.tree.map(np.asarray, state.params)


def random_batches(n, batch=8, seq=32, vocab=8000, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, (batch, seq), dtype=np.int32) for _ in range(n)]


def test_zero3_shards_parameters_and_optimizer_state_eightfold():
    mesh = mesh_of(1, 8)
    state = init_state(build(tiny(), mesh), seed=0)
    checked = 0
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        if leaf.ndim and any(d % 8 == 0 for d in leaf.shape):
            assert leaf.addressable_shards[0].data.size * 8 == leaf.size, leaf.shape
            checked += 1
    assert checked >= 15  # 5 weights x (params, mu, nu)


@pytest.mark.slow
def test_one_device_fsdp8_and_data2_fsdp4_train_identically():
    batches = random_batches(5)
    config = tiny()
    reference_losses, reference_params = run_steps(config, mesh_of(1, 1), batches)
    for data, fsdp in [(1, 8), (2, 4)]:
        losses, params = run_steps(config, mesh_of(data, fsdp), batches)
        # Same math, different reduction order across devices: 1e-5 relative (the bound).
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
        for name in params:
            np.testing.assert_allclose(params[name], reference_params[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert reference_losses[-1] < reference_losses[0]


def test_losses_are_summed_and_divided_by_batch_times_sequence_length():
    """OLMo (olmo/train.py, `Trainer.train_batch` and `train_micro_batch`) sums each micro-batch's token
    cross-entropy and z-loss (logsumexp^2) and divides by `batch["input_ids"].numel()` = B x T of the whole
    batch, although only B x (T-1) positions have a label; the micro-batches' quotients add up."""
    config = tiny(
        softmax_auxiliary_loss="true", device_train_microbatch_size=4, model__d_model=64, model__n_layers=1,
        model__vocab_size=512, model__embedding_size=512,
    )  # fmt: skip
    mesh = mesh_of(1, 1)
    setup = build(config, mesh)
    state = init_state(setup, seed=0)
    tokens = random_batches(1, vocab=512)[0]
    logits = np.asarray(nnx.merge(setup.graphdef, state.params)(tokens), np.float64)[:, :-1]
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    label_logits = np.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
    batch, seq = tokens.shape
    with jax.set_mesh(mesh):
        _, metrics = jit_train_step(setup)(state, jax.device_put(tokens, setup.batch_sharding), 0.0, 1.0)
    # fp32 sums of 248 terms against a float64 reference: 1e-5 relative.
    assert float(metrics["ce_loss"]) == pytest.approx((log_z - label_logits).sum() / (batch * seq), rel=1e-5)
    assert float(metrics["z_loss"]) == pytest.approx((log_z**2).sum() / (batch * seq), rel=1e-5)


# Summing partial gradients only reorders fp32 additions; Adam's first step is ~lr * sign(g), so at
# lr=1e-3 a reordering that flips the sign of a near-zero gradient component is the only way to move an
# update, and 1e-6 leaves room for that at a 1e-3 relative scale.
ACCUMULATION_LR = 1e-3


def test_four_micro_batches_give_the_same_update_as_one():
    batches = random_batches(1)
    _, whole = run_steps(tiny(), mesh_of(1, 1), batches, lr=ACCUMULATION_LR)
    _, accumulated = run_steps(tiny(device_train_microbatch_size=2), mesh_of(1, 1), batches, lr=ACCUMULATION_LR)
    for name in whole:
        np.testing.assert_allclose(accumulated[name], whole[name], atol=1e-6, err_msg=name)


def test_accumulation_also_matches_on_a_sharded_mesh():
    batches = random_batches(1, batch=16)
    config = tiny(global_train_batch_size=16)
    _, whole = run_steps(config, mesh_of(2, 4), batches, lr=ACCUMULATION_LR)
    micro = tiny(global_train_batch_size=16, device_train_microbatch_size=1)
    _, accumulated = run_steps(micro, mesh_of(2, 4), batches, lr=ACCUMULATION_LR)
    for name in whole:
        np.testing.assert_allclose(accumulated[name], whole[name], atol=1e-6, err_msg=name)


def test_nonfinite_batch_leaves_parameters_unchanged():
    config = tiny()
    mesh = mesh_of(1, 1)
    setup = build(config, mesh)
    state = init_state(setup, seed=0)
    before = jax.tree.map(np.asarray, state.params)
    tokens = jax.device_put(random_batches(1)[0], setup.batch_sharding)
    with jax.set_mesh(mesh):
        state, metrics = jit_train_step(setup)(state, tokens, float("nan"), 1.0)
    assert not bool(metrics["finite"]) or np.isfinite(float(metrics["loss"]))
    # A NaN learning rate makes the update NaN; the guard only sees the loss/gradients, so poison those:
    state2 = init_state(setup, seed=0)
    poisoned = dict(state2.params)
    poisoned["wte"] = poisoned["wte"].at[0, 0].set(np.nan)
    state2 = state2._replace(params=poisoned)
    with jax.set_mesh(mesh):
        after, metrics = jit_train_step(setup)(state2, tokens, 1e-3, 1.0)
    assert not bool(metrics["finite"])
    # The kept state is itself non-finite: that is not a skipped step but a state the loop must stop on.
    assert not bool(metrics["state_finite"]) and int(after.nonfinite_steps) == 0
    np.testing.assert_array_equal(np.asarray(after.params["att_proj"]), before["att_proj"])


@pytest.mark.parametrize(
    "overrides, mesh_shape, message",
    [
        ({"global_train_batch_size": 12}, (1, 8), r"global_train_batch_size=12 is not divisible by the 8 batch shards"),
        ({"device_train_microbatch_size": 3}, (1, 1), r"batch shards x device_train_microbatch_size = 1 x 3"),
        ({"data__sequence_length": 512}, (1, 1), r"data.sequence_length=512 is longer than model.max_sequence_length"),
    ],
)
def test_bad_batch_shapes_fail_before_compiling(overrides, mesh_shape, message):
    with pytest.raises(ConfigError, match=message):
        build(tiny(**overrides), mesh_of(*mesh_shape))


def test_mesh_that_does_not_match_the_devices_is_an_error():
    with pytest.raises(ConfigError, match=r"data=3 x fsdp=2 x tensor=1 = 6 does not equal the device count 8"):
        sharding.make_mesh(MeshConfig(data=3, fsdp=2))


def test_duration_units():
    assert parse_duration("1000") == (1000.0, "steps")
    assert parse_duration("2e12T") == (2e12, "tokens")
    assert parse_duration("1ep") == (1.0, "epochs")
    with pytest.raises(ConfigError, match="invalid value 'ten' for max_duration"):
        parse_duration("ten")
    config = tiny(max_duration="2560T")  # 8 x 32 tokens a step -> 10 steps
    assert total_steps(config, instances_per_epoch=100, batch_size_for=None) == 10
    assert total_steps(tiny(max_duration="2ep"), instances_per_epoch=40, batch_size_for=None) == 10
    # Token-based schedules run to max_duration's tokens, or to the steps' full batches.
    assert total_tokens(config, 10) == 2560
    assert total_tokens(tiny(max_duration="10"), 10) == 10 * 8 * 32


@pytest.mark.parametrize(
    "preset, released",
    [("7b", 6_888_095_744), ("olmo3_7b", 7_298_617_344)],  # OLMo-3: sliding windows compiled in groups of 4
)
def test_dry_run_plans_7b_on_eight_devices_without_allocating(preset, released):
    report = dry_run(load_config(preset), mesh_of(1, 8))
    assert report["num_params"] == released
    # fp32 parameters + Adam's two moments = 12 bytes per parameter, split 8 ways.
    per_device = report["param_bytes_per_device"] + report["optimizer_bytes_per_device"]
    assert per_device == pytest.approx(released * 12 / 8, rel=1e-3)
    assert report["temp_bytes_per_device"] > 0
