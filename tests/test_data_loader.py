"""The loader: global batches independent of the process count, exact resume, inspect agreeing with it."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import yaml
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from olmo_jax.config import BatchSizeWarmupConfig, DataConfig, ModelConfig, TrainConfig, data_spec, to_dict
from olmo_jax.data.__main__ import main
from olmo_jax.data.loader import build_train_loader, sharding_rows
from olmo_jax.data.order import Cursor
from olmo_jax.data.pipeline import build_pipeline, token_checksum
from olmo_jax.errors import ConfigError

SEQ_LEN = 8


def contiguous_rows(batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """Rows of a global batch that process `process_index` of `process_count` loads, when each process owns one
    equal contiguous block (the layout of a mesh whose batch axes list devices process by process)."""
    assert batch_size % process_count == 0 and 0 <= process_index < process_count
    per_process = batch_size // process_count
    return np.arange(process_index * per_process, (process_index + 1) * per_process)


@pytest.fixture
def config(tmp_path) -> TrainConfig:
    """Three token files (uint16, vocab 1000) holding 12 + 9 + 5 instances of 8 tokens, 8-instance batches."""
    rng = np.random.default_rng(0)
    paths = []
    for name, n_tokens in (("a.npy", 100), ("b.npy", 77), ("c.npy", 40)):
        rng.integers(0, 1000, n_tokens, dtype=np.uint16).tofile(tmp_path / name)
        paths.append(str(tmp_path / name))
    return TrainConfig(
        seed=42,
        model=ModelConfig(vocab_size=1000, embedding_size=1024, max_sequence_length=SEQ_LEN),
        global_train_batch_size=8,
        data=DataConfig(paths=paths, prefetch=2),
    )


def one_device_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))


@pytest.mark.parametrize("warmup", [False, True])
def test_simulated_1_2_and_4_processes_assemble_the_same_global_batches(config, warmup):
    config.batch_size_warmup = BatchSizeWarmupConfig(enabled=warmup, start_instances=4, double_every_tokens=64)
    pipeline = build_pipeline(data_spec(config))
    assert pipeline.instances_per_epoch == 12 + 9 + 5
    cursor = Cursor()
    for _ in range(8):  # 3 batches per epoch: crosses two epoch boundaries
        reference = pipeline.batch(cursor)
        for processes in (1, 2, 4):
            parts = [
                pipeline.batch(cursor, contiguous_rows(len(reference.indices), p, processes)) for p in range(processes)
            ]
            assert all(part.fingerprint == reference.fingerprint for part in parts)
            np.testing.assert_array_equal(
                np.concatenate([part.rows for part in parts]), np.arange(len(reference.indices))
            )
            np.testing.assert_array_equal(np.concatenate([part.tokens for part in parts]), reference.tokens)
        cursor = reference.next_cursor


def test_process_rows_follow_the_sharding(config):
    """A process's rows are those of its devices, blocks ordered as make_array_from_process_local_data wants."""

    class ProcessView:
        """A sharding as seen by one process owning `devices` (emulates multi-host on one CPU device)."""

        def __init__(self, full: dict, devices: list) -> None:
            self._map = {d: full[d] for d in devices}

        def addressable_devices_indices_map(self, shape):
            return self._map

    sharding = NamedSharding(one_device_mesh(), P(("data", "fsdp"), None))
    # Eight devices over two processes; process 1 owns row blocks 4..7 listed out of order.
    full = {f"dev{i}": (slice(2 * i, 2 * i + 2), slice(None)) for i in range(8)}
    view = ProcessView(full, ["dev6", "dev4", "dev7", "dev5"])
    np.testing.assert_array_equal(sharding_rows(view, (16, SEQ_LEN)), contiguous_rows(16, 1, 2))
    assert sharding_rows(sharding, (16, SEQ_LEN)).tolist() == list(range(16))


def test_resuming_from_the_saved_state_gives_the_same_following_batches(config):
    config.batch_size_warmup = BatchSizeWarmupConfig(enabled=True, start_instances=2, double_every_tokens=32)
    mesh = one_device_mesh()
    uninterrupted = build_train_loader(data_spec(config), mesh)
    expected = [next(uninterrupted) for _ in range(9)]
    uninterrupted.close()

    first = build_train_loader(data_spec(config), mesh)
    for _ in range(5):
        next(first)
    state = json.loads(json.dumps(first.state()))  # it must survive JSON (checkpoint metadata)
    first.close()
    assert state["step"] == 5 and set(state) >= {"epoch", "instances_consumed"}
    resumed = build_train_loader(data_spec(config), mesh, start_state=state)
    for want in expected[5:]:
        got = next(resumed)
        assert (got.step, got.fingerprint) == (want.step, want.fingerprint)
        np.testing.assert_array_equal(np.asarray(got.input_ids), np.asarray(want.input_ids))
    resumed.close()


def test_a_state_from_other_data_is_refused(config):
    loader = build_train_loader(data_spec(config), one_device_mesh())
    state = loader.state()
    loader.close()
    config.seed = 43
    with pytest.raises(ConfigError, match="seed=42 but the data now gives 43"):
        build_train_loader(data_spec(config), one_device_mesh(), start_state=state)


def test_inspect_json_equals_what_the_loader_fed(config, tmp_path, capsys):
    loader = build_train_loader(data_spec(config), one_device_mesh())
    fed = [next(loader) for _ in range(5)]
    loader.close()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # The trainer writes the resolved config exactly so.
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    assert main(["inspect", str(run_dir), "--format=json", *[f"--step={b.step + 1}" for b in fed]]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for batch, record in zip(fed, records, strict=True):
        tokens = np.asarray(batch.input_ids)
        assert record["step"] == batch.step + 1 and record["fingerprint"] == batch.fingerprint
        assert [i["index"] for i in record["instances"]] == batch.indices.tolist()
        np.testing.assert_array_equal([i["tokens"] for i in record["instances"]], tokens)
        assert record["checksum"] == int(token_checksum(batch.input_ids, xp=jax.numpy))
        first = record["instances"][0]
        on_disk = np.fromfile(first["path"], dtype=np.uint16)[first["offset"] : first["offset"] + SEQ_LEN]
        np.testing.assert_array_equal(on_disk, tokens[0])


def test_inspect_from_config_and_overrides(config, capsys):
    paths = json.dumps(config.data.paths)
    args = [
        "inspect",
        "--config=tiny",
        f"--config.data.paths={paths}",
        "--config.model.max_sequence_length=8",
        "--config.model.vocab_size=1000",
        "--config.model.embedding_size=1024",
        "--config.tokenizer.identifier=null",
        "--config.global_train_batch_size=4",
        "--step=2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("step 2  epoch 0  4 instances  fingerprint ")
    assert main([*args[:-1], "--step=0"]) == 2  # a bad flag: the input is at fault


def test_global_arrays_on_8_fake_devices_hold_the_global_batch(config):
    devices = np.array(jax.devices())
    if devices.size != 8:
        pytest.skip("needs the 8 fake CPU devices that tests/conftest.py sets up")
    reference = build_pipeline(data_spec(config))
    for shape, names in (((2, 4), ("data", "fsdp")), ((2, 2, 2), ("data", "fsdp", "tensor"))):
        loader = build_train_loader(data_spec(config), Mesh(devices.reshape(shape), names))
        cursor = reference.cursor_at(0)
        for _ in range(4):
            batch = next(loader)
            want = reference.batch(cursor)
            assert batch.input_ids.sharding.spec == P(("data", "fsdp"), None)
            np.testing.assert_array_equal(np.asarray(batch.input_ids), want.tokens)
            for shard in batch.input_ids.addressable_shards:  # each device holds its own rows
                np.testing.assert_array_equal(np.asarray(shard.data), want.tokens[shard.index])
            cursor = want.next_cursor
        loader.close()
