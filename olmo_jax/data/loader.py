"""The training loader: OLMo's global order, each process reading only its rows, batches as global jax.Arrays.

`build_train_loader(spec, mesh)` (`spec` a `DataSpec`) returns an iterator of `Batch`es. Global batch k is the k-th
slice of OLMo's order (see `olmo_jax.data.order`), whatever the number of hosts or devices. Each process
materialises only the rows that its devices hold under `NamedSharding(mesh, P(("data", "fsdp"), None))` and
`jax.make_array_from_process_local_data` assembles the global array. Host batches are prefetched in background
threads by Grain (`spec.prefetch` batches ahead, `spec.num_workers` threads). `loader.state()` is a small dict
(epoch, position in the epoch, instances consumed, step, and what the data was); passing it back as
`start_state` continues with exactly the batch that would have come next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grain
import jax
import numpy as np

from olmo_jax.data.order import Cursor
from olmo_jax.data.pipeline import DataPipeline, HostBatch, build_pipeline
from olmo_jax.data.spec import DataSpec
from olmo_jax.data.tokenizer_formats import Tokenizer
from olmo_jax.errors import ConfigError
from olmo_jax.sharding import batch_sharding, batch_shards

# Grain needs a length; the run's length is the trainer's business, so the step source is effectively endless.
_ENDLESS = 1 << 62


@dataclass(frozen=True)
class Batch:
    """One global training batch."""

    step: int  # 0-based global batch number
    input_ids: jax.Array  # int32 [B, T], sharded over the batch axes of the mesh
    indices: np.ndarray  # the B global instance indices, in row order
    fingerprint: str  # see olmo_jax.data.pipeline: sha256 of the data identity and `indices`
    fields: dict[str, jax.Array] = dataclasses.field(default_factory=dict)  # fine-tuning rows' other arrays


def sharding_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, int]) -> np.ndarray:
    """Rows of a global [B, T] array this process's devices hold, in the order
    `jax.make_array_from_process_local_data` expects them (row blocks by ascending start)."""
    index_map = sharding.addressable_devices_indices_map(global_shape)
    starts, block = set(), None
    for index in index_map.values():
        rows = index[0]
        start, stop, _ = rows.indices(global_shape[0])
        starts.add(start)
        block = stop - start
    assert block is not None
    return np.concatenate([np.arange(s, s + block) for s in sorted(starts)])


class _StepSource:
    """Grain random-access source: item i is this process's part of the batch `i` steps after `start`."""

    def __init__(self, pipeline: DataPipeline, start: Cursor, rows_for_size: Callable[[int], np.ndarray]) -> None:
        self._pipeline = pipeline
        self._start = start
        self._rows_for_size = rows_for_size

    def __len__(self) -> int:
        return _ENDLESS

    def __getitem__(self, i: int) -> HostBatch:
        cursor = self._pipeline.plan.advance(self._start, i)
        return self._pipeline.batch(cursor, self._rows_for_size(self._pipeline.plan.size_at(cursor)))


class TrainLoader:
    """Iterator of global `Batch`es with a checkpointable `state()`."""

    def __init__(self, pipeline: DataPipeline, mesh: jax.sharding.Mesh, start: Cursor, prefetch: int, threads: int):
        self.pipeline = pipeline
        self.sharding = batch_sharding(mesh)
        shards = batch_shards(mesh)
        for size in pipeline.plan.batch_sizes():
            if size % shards:
                raise ConfigError(
                    f"a global batch of {size} instances is not divisible by the {shards} batch shards (mesh data x "
                    "fsdp); check global_train_batch_size and batch_size_warmup.start_instances"
                )
        self._cursor = pipeline.plan.advance(start, 0)  # normalised, as the batches' own cursors are
        # This process's rows for every batch size the run can have (batch-size warmup has several).
        rows = {size: sharding_rows(self.sharding, (size, pipeline.seq_len)) for size in pipeline.plan.batch_sizes()}
        source = _StepSource(pipeline, start, rows.__getitem__)
        read_options = grain.ReadOptions(num_threads=threads if prefetch > 0 else 0, prefetch_buffer_size=prefetch)
        self._iterator = iter(grain.MapDataset.source(source).to_iter_dataset(read_options))

    @property
    def instances_per_epoch(self) -> int:
        return self.pipeline.instances_per_epoch

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.pipeline.tokenizer

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        host = next(self._iterator)
        assert host.cursor == self._cursor, f"prefetched batch {host.cursor} is not the expected {self._cursor}"
        global_shape = (len(host.indices), self.pipeline.seq_len)
        input_ids = jax.make_array_from_process_local_data(self.sharding, host.tokens, global_shape)
        fields = {
            name: jax.make_array_from_process_local_data(self.sharding, rows, (global_shape[0], *rows.shape[1:]))
            for name, rows in host.fields.items()
        }
        self._cursor = host.next_cursor
        return Batch(host.step, input_ids, host.indices, host.fingerprint, fields)

    def state(self) -> dict[str, Any]:
        """Where the next batch starts (JSON-serialisable); `build_train_loader(..., start_state=...)` resumes it."""
        return self.pipeline.state(self._cursor)

    def close(self) -> None:
        """Stop the background prefetch threads."""
        self._iterator.close()


def build_train_loader(
    spec: DataSpec,
    mesh: jax.sharding.Mesh,
    *,
    start_state: dict[str, Any] | None = None,
    pipeline: DataPipeline | None = None,
) -> TrainLoader:
    """The loader `spec` describes (over `pipeline` when it is already built), starting at the beginning or at
    `start_state` (from `loader.state()`)."""
    pipeline = pipeline or build_pipeline(spec)
    start = pipeline.cursor_from_state(start_state) if start_state is not None else Cursor()
    return TrainLoader(pipeline, mesh, start, prefetch=spec.prefetch, threads=max(1, spec.num_workers))
