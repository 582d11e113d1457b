"""Token files become fixed-length instances exactly as OLMo chunks them; bad files fail naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from olmo_jax.data.source import DataError, build_instance_source, token_dtype
from olmo_jax.errors import ConfigError


def write_tokens(path, tokens, dtype=np.uint16):
    np.asarray(tokens, dtype=dtype).tofile(path)
    return str(path)


def test_uint16_is_chosen_when_the_vocab_fits():
    assert token_dtype(50280) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(100278) == np.uint32
    assert token_dtype(50280, "uint32") == np.uint32


def test_instances_are_consecutive_chunks_of_each_file_and_partial_chunks_are_dropped(tmp_path):
    a = write_tokens(tmp_path / "a.npy", np.arange(10))  # 3 instances of 3, 1 token dropped
    b = write_tokens(tmp_path / "b.npy", np.arange(100, 107))  # 2 instances, 1 token dropped
    source = build_instance_source([a, b], {}, seq_len=3, vocab_size=1000)
    assert len(source) == 5
    np.testing.assert_array_equal(
        source.read(range(5)), [[0, 1, 2], [3, 4, 5], [6, 7, 8], [100, 101, 102], [103, 104, 105]]
    )
    location = source.locate(4)
    assert (location.path, location.offset) == (b, 3)
    assert source.read([4, 0]).dtype == np.int32


def test_globs_expand_in_sorted_order_and_must_match(tmp_path):
    for name, start in (("b.npy", 20), ("a.npy", 10)):
        write_tokens(tmp_path / name, np.arange(start, start + 4))
    source = build_instance_source([str(tmp_path / "*.npy")], {}, seq_len=4, vocab_size=100)
    np.testing.assert_array_equal(source.read([0, 1])[:, 0], [10, 20])
    with pytest.raises(ConfigError, match="matches no file"):
        build_instance_source([str(tmp_path / "*.bin")], {}, seq_len=4, vocab_size=100)


def test_uint32_files_when_the_vocab_needs_them(tmp_path):
    path = write_tokens(tmp_path / "big.npy", [70000, 1, 2, 100277], dtype=np.uint32)
    source = build_instance_source([path], {}, seq_len=4, vocab_size=100278)
    np.testing.assert_array_equal(source.read([0]), [[70000, 1, 2, 100277]])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"\x01\x00\x02"), "3 bytes, not a multiple of the uint16 item size 2"),
    ],
)
def test_bad_files_are_errors_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(DataError, match=message) as info:
        build_instance_source([str(path)], {}, seq_len=1, vocab_size=10)
    assert str(path) in str(info.value)


def test_a_token_id_beyond_the_vocab_names_the_file_and_offset(tmp_path):
    path = write_tokens(tmp_path / "t.npy", [1, 2, 3, 4, 5, 60000, 7, 8])
    source = build_instance_source([path], {}, seq_len=4, vocab_size=50280)
    source.read([0])  # the first instance is fine
    with pytest.raises(DataError, match=r"t\.npy: token id 60000 at token offset 5 is >= model.vocab_size 50280"):
        source.read([1])


def test_too_little_data_for_one_instance_is_an_error(tmp_path):
    path = write_tokens(tmp_path / "t.npy", [1, 2, 3])
    with pytest.raises(DataError, match="not one instance of 4 tokens"):
        build_instance_source([path], {}, seq_len=4, vocab_size=10)


def test_named_sources_are_concatenated_in_name_order(tmp_path):
    web = write_tokens(tmp_path / "web.npy", np.full(6, 1))
    code = write_tokens(tmp_path / "code.npy", np.full(4, 2))
    source = build_instance_source([], {"web": [web], "code": {"paths": [code]}}, seq_len=2, vocab_size=10)
    assert [source.locate(i).source for i in range(5)] == ["code", "code", "web", "web", "web"]


def test_source_weights_are_sampling_rates(tmp_path):
    a = write_tokens(tmp_path / "a.npy", np.arange(10))  # 10 instances of 1 token
    b = write_tokens(tmp_path / "b.npy", np.arange(10, 20))
    c = write_tokens(tmp_path / "c.npy", np.arange(20, 30))
    sources = {"a": {"paths": [a], "weight": 2}, "b": {"paths": [b], "weight": 0.5}, "c": {"paths": [c], "weight": 0}}
    source = build_instance_source([], sources, seq_len=1, vocab_size=100, seed=7)
    tokens = source.read(range(len(source)))[:, 0]
    assert len(source) == 25
    assert sorted(tokens[:20].tolist()) == sorted(list(range(10)) * 2)
    half = tokens[20:].tolist()
    assert len(set(half)) == 5 and all(10 <= t < 20 for t in half)
    again = build_instance_source([], sources, seq_len=1, vocab_size=100, seed=7)
    np.testing.assert_array_equal(again.read(range(25)), source.read(range(25)))
    assert again.identity == source.identity
