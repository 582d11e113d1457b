"""Perplexity sets: Paloma's layout, bits per byte against transformers, windows, macro averages."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from eval_support import tiny_config, train_tokenizer

from olmo_jax.eval.perplexity import document_requests, find_text_sets, read_texts

MAX_LENGTH = 24
SHARED_PPL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ppl"


def _write(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def test_paloma_layout_reads_one_split_with_source_and_domain_names(tmp_path):
    _write(tmp_path / "c4_100_domains" / "val" / "val_www.a.com.jsonl.gz", ["a"])
    _write(tmp_path / "c4_100_domains" / "val" / "val_www.b.com.jsonl.gz", ["b"])
    _write(tmp_path / "c4_100_domains" / "test" / "test_www.a.com.jsonl.gz", ["t"])
    _write(tmp_path / "ptb" / "val" / "val.jsonl", ["p"])
    found = {(s.source, s.domain) for s in find_text_sets(tmp_path)}
    assert found == {("c4_100_domains", "val_www.a.com"), ("c4_100_domains", "val_www.b.com"), ("ptb", "val")}
    assert {s.domain for s in find_text_sets(tmp_path / "c4_100_domains", split="test")} == {"test_www.a.com"}
    assert {s.source for s in find_text_sets(tmp_path / "ptb" / "val")} == {"ptb"}  # a split folder
    single = find_text_sets(tmp_path / "ptb" / "val" / "val.jsonl")
    assert [(s.source, s.domain) for s in single] == [("val", "val")]


def test_bad_perplexity_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        find_text_sets(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no text sets under .*<source>/val/<domain>.jsonl.gz"):
        find_text_sets(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string 'text' field"):
        read_texts(bad)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no documents"):
        read_texts(tmp_path / "empty.jsonl")


def test_windows_cover_every_token_once_after_eos():
    requests = document_requests(list(range(10, 60)), eos_token_id=1, max_length=MAX_LENGTH)
    assert [len(r.continuation) for r in requests] == [24, 24, 2]
    assert [r.context for r in requests] == [(1,), (33,), (57,)]
    assert sum((r.continuation for r in requests), ()) == tuple(range(10, 60))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from flax import nnx
    from hf_support import to_transformers

    from olmo_jax.data.tokenizer import load_tokenizer
    from olmo_jax.model import OLMo

    tokenizer = load_tokenizer(str(train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")))
    config = tiny_config(tokenizer.vocab_size, MAX_LENGTH, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = OLMo(config, rngs=nnx.Rngs(3))
    return tokenizer, model, to_transformers(model)


def _hf_document_nll(hf_model, tokens: list[int], eos: int) -> float:
    """Sum of -log p over the document: each window of MAX_LENGTH tokens is predicted from the token before
    it (EOS for the first) and its own earlier tokens (the windowing perplexity.py documents)."""
    import torch

    nll = 0.0
    for start in range(0, len(tokens), MAX_LENGTH):
        window = ([eos] if start == 0 else [tokens[start - 1]]) + tokens[start : start + MAX_LENGTH]
        with torch.no_grad():
            logits = hf_model(torch.tensor([window[:-1]])).logits[0].double()
        log_probs = torch.log_softmax(logits, -1).numpy()
        nll -= float(log_probs[np.arange(len(window) - 1), window[1:]].sum())
    return nll


def test_bits_per_byte_matches_transformers(tiny, tmp_path):
    """bits/byte = sum NLL / (ln 2 x UTF-8 bytes) to 1e-4 relative (fp32 model; the sum is float64)."""
    from olmo_jax.eval.evaluator import Evaluator

    tokenizer, model, hf_model = tiny
    domains = {
        "short": ["The man turned on the faucet.", "Plains, grassland, tundra — wetland ✓."],
        "long": ["Sarah was a much better surgeon than Maria so she always got the easier cases. " * 4],
    }
    for name, texts in domains.items():
        _write(tmp_path / "src" / "val" / f"{name}.jsonl.gz", texts)
    results = Evaluator(tokenizer, [], MAX_LENGTH, ppl_paths=[tmp_path]).run(model, batch_size=4)
    source = results.perplexity["src"]
    for name, texts in domains.items():
        token_lists = [tokenizer.encode(t) for t in texts]
        nll = sum(_hf_document_nll(hf_model, ids, tokenizer.eos_token_id) for ids in token_lists)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        n_tokens = sum(len(ids) for ids in token_lists)
        domain = source["domains"][name]
        assert domain["bytes"] == n_bytes and domain["tokens"] == n_tokens
        assert domain["bits_per_byte"] == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-4)
        assert domain["perplexity"] == pytest.approx(math.exp(nll / n_tokens), rel=1e-4)
    assert source["domains"]["long"]["windows"] > 1  # the long document was split
    for metric in ("bits_per_byte", "perplexity"):  # Paloma's macro average: domains weigh the same
        assert source[metric] == pytest.approx(np.mean([d[metric] for d in source["domains"].values()]))
    flat = results.flat_metrics()
    assert flat["eval/ppl/src/bits_per_byte"] == source["bits_per_byte"]


def test_shared_ppl_samples_are_found_and_read():
    if not SHARED_PPL.is_dir():
        pytest.skip(f"reference ppl data not present at {SHARED_PPL} (only in the development checkout)")
    sets = find_text_sets(SHARED_PPL)
    assert {s.domain for s in sets} == {"c4-sample.01", "c4_100_domains_5_www.theguardian.com_00000000"}
    assert all(len(read_texts(s.path)) == 10 for s in sets)
