"""The global order of training instances and the batch plan, rebuilt from the data spec alone.

OLMo's order: epoch `e` visits the instance indices `0..N-1` (uint32) shuffled by
`numpy.random.Generator(numpy.random.PCG64(seed + e)).shuffle`, the first epoch being e = 0 for ai2-olmo
(olmo/data/iterable_dataset.py `_build_global_indices`) and e = 1 for OLMo-core
(olmo_core/data/data_loader.py `NumpyFSLDataLoader._build_global_indices`; `Trainer.epoch` starts at 1):
`FIRST_EPOCH`. Global batches take consecutive slices of it: with a fixed global batch size B and
drop_last, batch k is `perm_e[j*B:(j+1)*B]` where `e, j = divmod(k, N // B)` (e counted from 0 here).

At the end of an epoch, with `drop_last` (OLMo's default) the instances too few to fill the next batch are
skipped and the next epoch starts a fresh permutation; OLMo reaches the same batches by truncating the
permutation to a multiple of the world size and letting each rank drop its partial batch. Without `drop_last`
the last batch is filled up with the epoch's own first indices, as OLMo pads its permutation.

Batch-size warmup (the 65B recipe) makes the size of each batch a pure function of the tokens seen so far,
`batch_size_for`; batches still consume the order sequentially. Nothing here depends on the number of hosts
or devices, so global batch k is the same on any cluster.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace

import numpy as np

from olmo_jax.data.spec import BatchSizeWarmup, DataSpec
from olmo_jax.errors import ConfigError


def batch_size_for(spec: DataSpec, tokens_seen: int) -> int:
    """Global batch size (instances) of the batch that starts once `tokens_seen` tokens have been trained on.

    Without batch-size warmup it is `spec.global_batch_size`; with it, `start_instances` doubled every
    `double_every_tokens` tokens, capped at `spec.global_batch_size`.
    """
    return _warmup_size(tokens_seen, spec.global_batch_size, spec.batch_size_warmup)


def _warmup_size(tokens_seen: int, global_batch_size: int, warmup: BatchSizeWarmup | None) -> int:
    if warmup is None:
        return global_batch_size
    doublings = tokens_seen // warmup.double_every_tokens
    if doublings >= 63:
        return global_batch_size
    return min(global_batch_size, warmup.start_instances << doublings)


# The epoch number each trainer gives its first epoch (`DataSpec.order`).
FIRST_EPOCH = {"olmo": 0, "olmo_core": 1}


def epoch_permutation(num_instances: int, seed: int, epoch: int) -> np.ndarray:
    """OLMo's shuffled instance indices for `epoch` (uint32, as OLMo builds them)."""
    dtype = np.uint32 if num_instances <= np.iinfo(np.uint32).max + 1 else np.uint64
    indices = np.arange(num_instances, dtype=dtype)
    np.random.Generator(np.random.PCG64(seed + epoch)).shuffle(indices)
    return indices


@dataclass(frozen=True)
class Cursor:
    """Where the next global batch starts: its step, its epoch, its position in that epoch's permutation,
    and the instances consumed before it (all epochs; drives batch-size warmup)."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    instances_consumed: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class BatchPlan:
    """Which slice of which epoch's permutation each global batch takes (integer arithmetic only)."""

    def __init__(
        self,
        num_instances: int,
        seq_len: int,
        global_batch_size: int,
        *,
        warmup: BatchSizeWarmup | None = None,
        drop_last: bool = True,
    ) -> None:
        self.warmup = warmup
        if global_batch_size > num_instances:
            raise ConfigError(
                f"global_train_batch_size={global_batch_size} is larger than the {num_instances} instances "
                "of an epoch; use fewer instances per batch or more data"
            )
        self.num_instances = num_instances
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.drop_last = drop_last

    def batch_sizes(self) -> list[int]:
        """Every size a batch can have (for divisibility checks)."""
        if self.warmup is None:
            return [self.global_batch_size]
        sizes, size = [], self.warmup.start_instances
        while size < self.global_batch_size:
            sizes.append(size)
            size *= 2
        return [*sizes, self.global_batch_size]

    def size_at(self, cursor: Cursor) -> int:
        """The size of the batch that starts at `cursor`."""
        return _warmup_size(cursor.instances_consumed * self.seq_len, self.global_batch_size, self.warmup)

    def _normalise(self, cursor: Cursor) -> Cursor:
        """Move to the next epoch when this one cannot start the batch (exhausted, or drop_last and too few)."""
        remaining = self.num_instances - cursor.position
        if remaining <= 0 or (self.drop_last and remaining < self.size_at(cursor)):
            return replace(cursor, epoch=cursor.epoch + 1, position=0)
        return cursor

    def segments(self, cursor: Cursor) -> list[tuple[int, int, int]]:
        """The batch at `cursor` as (epoch, start, stop) slices of epoch permutations, in order."""
        cursor = self._normalise(cursor)
        size = self.size_at(cursor)
        stop = cursor.position + size
        if stop <= self.num_instances:
            return [(cursor.epoch, cursor.position, stop)]
        # drop_last=False: fill up with the epoch's first indices (OLMo's padding).
        return [(cursor.epoch, cursor.position, self.num_instances), (cursor.epoch, 0, stop - self.num_instances)]

    def next_cursor(self, cursor: Cursor) -> Cursor:
        """The cursor after the batch at `cursor`."""
        cursor = self._normalise(cursor)
        size = self.size_at(cursor)
        after = Cursor(
            step=cursor.step + 1,
            epoch=cursor.epoch,
            position=cursor.position + size,
            instances_consumed=cursor.instances_consumed + size,
        )
        return self._normalise(after)

    def advance(self, cursor: Cursor, steps: int) -> Cursor:
        """The cursor `steps` batches after `cursor`, in time logarithmic in the batch-size range."""
        if steps < 0:
            raise ValueError(f"cannot advance by a negative number of steps ({steps})")
        cursor = self._normalise(cursor)
        while steps > 0:
            size = self.size_at(cursor)
            in_phase = steps if self.warmup is None or size == self.global_batch_size else self._phase_steps(cursor)
            taken = min(steps, in_phase)
            cursor = self._advance_fixed(cursor, taken, size)
            steps -= taken
        return cursor

    def _phase_steps(self, cursor: Cursor) -> int:
        """Batches of the current size before warmup changes it."""
        assert self.warmup is not None
        tokens = cursor.instances_consumed * self.seq_len
        next_doubling_tokens = (tokens // self.warmup.double_every_tokens + 1) * self.warmup.double_every_tokens
        instances_needed = -(-next_doubling_tokens // self.seq_len) - cursor.instances_consumed
        return max(1, -(-instances_needed // self.size_at(cursor)))

    def _advance_fixed(self, cursor: Cursor, steps: int, size: int) -> Cursor:
        """`steps` batches of one fixed `size` from a normalised cursor."""
        if self.drop_last:
            left_in_epoch, per_epoch = (self.num_instances - cursor.position) // size, self.num_instances // size
        else:
            left_in_epoch = -(-(self.num_instances - cursor.position) // size)
            per_epoch = -(-self.num_instances // size)
        consumed = cursor.instances_consumed + steps * size
        if steps < left_in_epoch:
            after = Cursor(cursor.step + steps, cursor.epoch, cursor.position + steps * size, consumed)
        else:
            later = steps - left_in_epoch
            epoch = cursor.epoch + 1 + later // per_epoch
            after = Cursor(cursor.step + steps, epoch, (later % per_epoch) * size, consumed)
        return self._normalise(after)


class GlobalOrder:
    """Instance indices of any global batch: the plan's slices of (cached) epoch permutations."""

    def __init__(self, plan: BatchPlan, seed: int, cache_epochs: int = 2, order: str = "olmo") -> None:
        self.plan = plan
        self.seed = seed
        self.first_epoch = FIRST_EPOCH[order]  # our epochs count from 0; the trainer's from this
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_epochs = cache_epochs
        self._lock = threading.Lock()

    def permutation(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s shuffled indices (computed once, then kept for the next few lookups)."""
        with self._lock:
            if epoch in self._cache:
                self._cache.move_to_end(epoch)
                return self._cache[epoch]
            perm = epoch_permutation(self.plan.num_instances, self.seed, self.first_epoch + epoch)
            self._cache[epoch] = perm
            while len(self._cache) > self._cache_epochs:
                self._cache.popitem(last=False)
            return perm

    def indices(self, cursor: Cursor) -> np.ndarray:
        """Global instance indices (int64) of the batch at `cursor`, in row order."""
        parts = [self.permutation(epoch)[start:stop] for epoch, start, stop in self.plan.segments(cursor)]
        return np.concatenate(parts).astype(np.int64)
