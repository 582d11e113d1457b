"""The global order and batch plan reproduce OLMo's: PCG64(seed + epoch) shuffles, consecutive slices, drop-last."""

from __future__ import annotations

import numpy as np
import pytest

from olmo_jax.config import BatchSizeWarmupConfig, TrainConfig, data_spec
from olmo_jax.data.order import BatchPlan, Cursor, GlobalOrder, batch_size_for, epoch_permutation
from olmo_jax.data.spec import BatchSizeWarmup
from olmo_jax.errors import ConfigError


def olmo_global_indices(num_instances: int, seed: int, epoch: int) -> np.ndarray:
    """OLMo's `IterableDataset._build_global_indices`, written out independently of the code under test."""
    indices = np.arange(num_instances, dtype=np.uint32)
    rng = np.random.Generator(np.random.PCG64(seed + epoch))
    rng.shuffle(indices)
    return indices


def test_epoch_permutation_is_olmos_pcg64_shuffle():
    for epoch in (0, 1, 5):
        np.testing.assert_array_equal(epoch_permutation(1000, 6198, epoch), olmo_global_indices(1000, 6198, epoch))
    assert epoch_permutation(10, 0, 0).dtype == np.uint32


def test_batches_are_consecutive_slices_across_an_epoch_boundary():
    # 23 instances, batches of 5: 4 batches per epoch, 3 instances dropped at the end of each epoch.
    n, batch, seed = 23, 5, 1234
    order = GlobalOrder(BatchPlan(n, seq_len=8, global_batch_size=batch), seed)
    plan = order.plan
    cursor = Cursor()
    for step in range(10):
        epoch, k = divmod(step, n // batch)
        expected = olmo_global_indices(n, seed, epoch)[k * batch : (k + 1) * batch]
        np.testing.assert_array_equal(order.indices(cursor), expected, err_msg=f"step {step}")
        assert plan.advance(Cursor(), step) == cursor
        cursor = plan.next_cursor(cursor)
    assert cursor == Cursor(step=10, epoch=2, position=10, instances_consumed=50)


def test_olmo_core_order_counts_epochs_from_one():
    """OLMo-core's `NumpyFSLDataLoader._build_global_indices` shuffles with PCG64(seed + epoch) where its
    trainer's first epoch is 1 (olmo_core/train/trainer.py `Trainer.epoch = 1`); checked against the real
    loader by benchmarks/compare_olmo_core_order.py."""
    n, batch, seed = 23, 5, 34521
    order = GlobalOrder(BatchPlan(n, seq_len=8, global_batch_size=batch), seed, order="olmo_core")
    cursor = Cursor()
    for step in range(8):
        epoch, k = divmod(step, n // batch)
        expected = olmo_global_indices(n, seed, epoch + 1)[k * batch : (k + 1) * batch]
        np.testing.assert_array_equal(order.indices(cursor), expected, err_msg=f"step {step}")
        cursor = order.plan.next_cursor(cursor)


def test_without_drop_last_the_last_batch_is_filled_with_the_epochs_first_indices():
    n, batch, seed = 7, 3, 5
    order = GlobalOrder(BatchPlan(n, seq_len=4, global_batch_size=batch, drop_last=False), seed)
    perm0, perm1 = olmo_global_indices(n, seed, 0), olmo_global_indices(n, seed, 1)
    third = order.indices(order.plan.advance(Cursor(), 2))
    np.testing.assert_array_equal(third, np.concatenate([perm0[6:7], perm0[0:2]]))
    np.testing.assert_array_equal(order.indices(order.plan.advance(Cursor(), 3)), perm1[0:3])


def test_batch_size_warmup_doubles_every_n_tokens_up_to_the_global_batch_size():
    config = TrainConfig(global_train_batch_size=16)
    config.batch_size_warmup = BatchSizeWarmupConfig(enabled=True, start_instances=2, double_every_tokens=100)
    spec = data_spec(config)
    assert [batch_size_for(spec, t) for t in (0, 99, 100, 199, 200, 300, 10**9)] == [2, 2, 4, 4, 8, 16, 16]
    config.batch_size_warmup.enabled = False
    assert batch_size_for(data_spec(config), 0) == 16


def test_the_data_spec_defaults_the_instance_length_and_seed_to_the_runs():
    config = TrainConfig(seed=7)
    config.model.max_sequence_length = 64
    assert (data_spec(config).sequence_length, data_spec(config).seed) == (64, 7)
    config.data.sequence_length, config.data.seed = 32, 3
    assert (data_spec(config).sequence_length, data_spec(config).seed) == (32, 3)
    assert data_spec(config).batch_size_warmup is None  # disabled warmup is no warmup


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("warmup", [None, BatchSizeWarmup(start_instances=2, double_every_tokens=40)])
def test_advance_jumps_to_the_same_cursor_as_stepping_one_batch_at_a_time(drop_last, warmup):
    # seq_len 4: warmup doubles every 10 instances, so phases end mid-batch and mid-epoch.
    plan = BatchPlan(29, seq_len=4, global_batch_size=8, warmup=warmup, drop_last=drop_last)
    cursor = Cursor()
    for step in range(60):
        assert plan.advance(Cursor(), step) == cursor, f"step {step}"
        # Jumping from any intermediate cursor agrees too.
        assert plan.advance(plan.advance(Cursor(), step // 2), step - step // 2) == cursor
        cursor = plan.next_cursor(cursor)


def test_warmup_batches_consume_the_order_sequentially():
    warmup = BatchSizeWarmup(start_instances=1, double_every_tokens=8)
    order = GlobalOrder(BatchPlan(100, seq_len=4, global_batch_size=4, warmup=warmup), seed=3)
    perm = olmo_global_indices(100, 3, 0)
    # Sizes: 1, 1 (8 tokens seen) → 2 (16) → 4, 4, ...
    sizes, cursor, taken = [], Cursor(), []
    for _ in range(5):
        indices = order.indices(cursor)
        sizes.append(len(indices))
        taken.extend(indices.tolist())
        cursor = order.plan.next_cursor(cursor)
    assert sizes == [1, 1, 2, 4, 4]
    assert taken == perm[: sum(sizes)].tolist()


def test_a_batch_larger_than_an_epoch_is_a_config_error():
    with pytest.raises(ConfigError, match="larger than the 7 instances"):
        BatchPlan(7, seq_len=4, global_batch_size=8)
