"""The built-in demo corpus: built once from the Python installation's own text, offline, race-safe."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from olmo_jax.config import data_spec, load_config
from olmo_jax.data import builtin
from olmo_jax.data.pipeline import build_pipeline
from olmo_jax.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def corpus_and_builds(tmp_path_factory):
    """Build the corpus in a fresh cache from two threads at once; count how many builds ran."""
    builds = []
    real_build = builtin._build
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OLMO_JAX_CACHE", str(cache))
        patch.setattr(builtin, "_build", lambda directory: builds.append(directory) or real_build(directory))
        results = [None, None]

        def build(i):
            results[i] = builtin.ensure_builtin_corpus(seq_len=256)

        threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results[0] == results[1]
    return results[0], builds, cache


@pytest.mark.slow
def test_concurrent_first_use_builds_once(corpus_and_builds):
    corpus, builds, cache = corpus_and_builds
    assert len(builds) == 1
    assert [p.name for p in cache.glob("builtin/.tmp-*")] == []  # the build folder was renamed into place


@pytest.mark.slow
def test_corpus_is_over_a_million_uint16_tokens_in_the_tiny_presets_vocabulary(corpus_and_builds):
    corpus, _, _ = corpus_and_builds
    tokens = np.concatenate([np.fromfile(p, dtype=np.uint16) for p in corpus.token_paths])
    assert len(tokens) == corpus.info["train"]["tokens"] >= 1_000_000
    assert tokens.max() < 8000
    assert corpus.info["train"]["dtype"] == "uint16"
    tok = load_tokenizer(corpus.tokenizer_path)
    assert (tok.vocab_size, tok.eos_token_id, tok.pad_token_id) == (8000, 2, 0)
    assert np.count_nonzero(tokens == 2) == corpus.info["documents"]["train"]  # one EOS per document


@pytest.mark.slow
def test_first_training_document_decodes_back(corpus_and_builds):
    corpus, _, _ = corpus_and_builds
    name, text = next((n, t) for n, t in builtin.builtin_documents() if not builtin._is_validation(n))
    tokens = np.fromfile(corpus.token_paths[0], dtype=np.uint16)
    first = tokens[: int(np.argmax(tokens == 2))]
    assert load_tokenizer(corpus.tokenizer_path).decode(first.tolist()) == text, name


@pytest.mark.slow
def test_tiny_preset_trains_on_the_builtin_corpus_by_default(corpus_and_builds, monkeypatch):
    corpus, _, cache = corpus_and_builds
    monkeypatch.setenv("OLMO_JAX_CACHE", str(cache))
    assert load_tokenizer("builtin").path == corpus.tokenizer_path
    pipeline = build_pipeline(data_spec(load_config("tiny")))
    assert pipeline.source.files[0].path == corpus.token_paths[0]
    assert pipeline.tokenizer is not None and pipeline.tokenizer.path == corpus.tokenizer_path
