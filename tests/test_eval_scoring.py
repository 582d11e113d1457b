"""The scoring engine: row sharing, bucketing and truncation change no number, and compile little."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from eval_support import tiny_config

from olmo_jax.eval.scoring import MAX_TARGETS_PER_ROW, Request, Scorer, bucket_lengths, model_input

MAX_LENGTH = 40
VOCAB = 100


@pytest.fixture(scope="module")
def model():
    from flax import nnx

    from olmo_jax.model import OLMo

    return OLMo(tiny_config(VOCAB, MAX_LENGTH, eos_token_id=1, pad_token_id=0), rngs=nnx.Rngs(1))


def reference(model, request: Request) -> float:
    """One request alone in a row padded to MAX_LENGTH: no sharing, no buckets, no batching."""

    inputs, first, _ = model_input(request, MAX_LENGTH)
    targets = (request.context + request.continuation)[1:][-MAX_LENGTH:]
    tokens = np.zeros((1, MAX_LENGTH), np.int32)
    tokens[0, : len(inputs)] = inputs
    log_probs = np.asarray(_log_softmax(model, tokens)[0], np.float64)
    return float(sum(log_probs[t, targets[t]] for t in range(first, len(inputs))))


@functools.cache
def _jitted_log_softmax():
    import jax
    from flax import nnx

    return nnx.jit(lambda model, tokens: jax.nn.log_softmax(model(tokens), axis=-1))


def _log_softmax(model, tokens):
    return _jitted_log_softmax()(model, tokens)


def _requests(rng: np.random.Generator) -> list[Request]:
    def tokens(n):
        return tuple(int(x) for x in rng.integers(2, VOCAB, n))

    shared_context = tokens(12)
    requests = [
        # One-token continuations of one context: all read off a single row.
        *[Request(shared_context, (t,)) for t in range(2, 7)],
        # More distinct one-token targets than a row can gather: they spill into a second row.
        *[Request(shared_context[:5], (t,)) for t in range(10, 10 + MAX_TARGETS_PER_ROW + 3)],
        # Identical requests (the unconditional "Answer:" + " yes" pattern).
        Request((3, 4), (5, 6)),
        Request((3, 4), (5, 6)),
        # A request whose input prefixes another's.
        Request(shared_context[:6], shared_context[6:9]),
        Request(shared_context, tokens(4)),
        # Over-long: the context is cut from the left; a continuation longer than the model keeps its tail.
        Request(tokens(50), tokens(5)),
        Request((7,), tokens(MAX_LENGTH + 7)),
    ]
    requests += [Request(tokens(int(rng.integers(1, 20))), tokens(int(rng.integers(1, 8)))) for _ in range(20)]
    return requests


def test_shared_bucketed_scores_equal_one_request_per_row(model):
    """Sharing reads positions another row computed: equal up to fp32 reduction order (<= 1e-4 nats)."""
    requests = _requests(np.random.default_rng(0))
    scores = Scorer(model, MAX_LENGTH, batch_size=4).score(requests)
    expected = np.array([reference(model, r) for r in requests])
    np.testing.assert_allclose(scores.loglikelihood, expected, atol=1e-4, rtol=0)
    assert scores.rows < len(requests) - 20  # the 5 + 19 one-token requests took 3 rows, duplicates 1
    assert scores.truncated.tolist()[-22:-20] == [True, True] and scores.truncated.sum() == 2
    assert scores.scored_tokens[-21] == MAX_LENGTH  # the over-long continuation keeps its last 40 tokens


def test_model_input_truncates_from_the_left():
    inputs, first, truncated = model_input(Request(tuple(range(1, 51)), (60, 61, 62)), MAX_LENGTH)
    assert inputs == tuple(range(13, 51)) + (60, 61) and first == 37 and truncated
    assert model_input(Request((1, 2), (3,)), MAX_LENGTH) == ((1, 2), 1, False)
    with pytest.raises(ValueError, match="non-empty context and continuation"):
        model_input(Request((), (3,)), MAX_LENGTH)


def test_buckets_step_by_about_1_5x_then_the_model_length():
    assert bucket_lengths(2048) == [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
    assert bucket_lengths(40) == [16, 24, 32, 40]
    assert bucket_lengths(16) == [16]


def test_compiles_once_per_bucket_and_not_again_for_new_weights(model):
    from flax import nnx

    from olmo_jax.model import OLMo

    scorer = Scorer(model, MAX_LENGTH, batch_size=3)
    rng = np.random.default_rng(1)
    requests = [Request(tuple(rng.integers(2, VOCAB, n).tolist()), (5, 6)) for n in range(1, 39)]
    first = scorer.score(requests).loglikelihood
    compiled = scorer.compilations
    assert compiled <= len(bucket_lengths(MAX_LENGTH))
    other = OLMo(model.config, rngs=nnx.Rngs(2))
    scorer.set_model(other)
    second = scorer.score(requests).loglikelihood
    assert scorer.compilations == compiled
    assert not np.allclose(first, second)  # the new weights were used


def test_batch_size_must_be_positive(model):
    with pytest.raises(ValueError, match="batch_size must be positive"):
        Scorer(model, MAX_LENGTH, batch_size=0)
