"""The scoring engine: row sharing, bucketing and truncation change no number, and compile little."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from eval_support import tiny_config

from olmo_jax.eval.scoring import MIN_BUCKET, Request, Scorer, bucket_lengths, model_input

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
        *[Request(shared_context[:5], (t,)) for t in range(10, 10 + MIN_BUCKET + 3)],
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


@pytest.mark.parametrize("share_contexts", [True, False])
def test_shared_bucketed_scores_equal_one_request_per_row(model, share_contexts):
    """Sharing reads positions another row computed: equal up to fp32 reduction order (<= 1e-4 nats)."""
    requests = _requests(np.random.default_rng(0))
    scores = Scorer(model, MAX_LENGTH, batch_size=4, share_contexts=share_contexts).score(requests)
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


def _questions(rng: np.random.Generator) -> list[list[Request]]:
    """Multiple-choice-like requests: a context and four continuations, two of which share their start."""

    def tokens(n):
        return tuple(int(x) for x in rng.integers(2, VOCAB, n))

    questions = []
    for _ in range(6):
        context, stem = tokens(int(rng.integers(6, 20))), tokens(2)
        continuations = [stem + tokens(3), stem + tokens(5), tokens(1), tokens(int(rng.integers(2, 9)))]
        questions.append([Request(context, c) for c in continuations])
    questions.append([Request(tokens(45), c) for c in (tokens(3), tokens(4))])  # cut from the left, unshared
    return questions


def test_shared_contexts_change_no_score_and_no_answer_with_windows_and_grouped_heads():
    """Packed rows (each continuation attends to its context and itself, at its own positions, windows
    counted in positions) score as one request per row: <= 1e-4 nats (fp32 reduction order), same argmax."""
    import dataclasses

    from flax import nnx

    from olmo_jax.model import OLMo

    config = dataclasses.replace(
        tiny_config(VOCAB, MAX_LENGTH, eos_token_id=1, pad_token_id=0),
        n_heads=4, n_kv_heads=2, sliding_window_pattern=[5, -1],
    )  # fmt: skip
    windowed = OLMo(config, rngs=nnx.Rngs(3))
    questions = _questions(np.random.default_rng(2))
    requests = [r for q in questions for r in q]
    shared = Scorer(windowed, MAX_LENGTH, batch_size=4).score(requests)
    unshared = Scorer(windowed, MAX_LENGTH, batch_size=4, share_contexts=False).score(requests)
    expected = np.array([reference(windowed, r) for r in requests])
    np.testing.assert_allclose(shared.loglikelihood, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(unshared.loglikelihood, expected, atol=1e-4, rtol=0)
    starts = np.cumsum([0, *map(len, questions)])
    for scores in (shared, unshared):
        answers = [np.argmax(scores.loglikelihood[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)]
        assert answers == [np.argmax(expected[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    assert shared.tokens * 1.5 < unshared.tokens and shared.rows < unshared.rows


def test_real_task_requests_score_the_same_shared_or_not(shared_data):
    """A few questions of three core tasks, OLMo-1's tokenizer: every request within 1e-4 nats, every metric equal
    (length 64: BoolQ's passages are cut from the left, HellaSwag's endings share a row)."""
    from flax import nnx

    from olmo_jax.data.tokenizer import load_tokenizer
    from olmo_jax.eval.downstream import prepare_task, score_task
    from olmo_jax.eval.sources import load_rows
    from olmo_jax.eval.tasks import resolve_tasks
    from olmo_jax.model import OLMo

    tokenizer = load_tokenizer(str(shared_data / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"))
    config = tiny_config(50280, 64, eos_token_id=tokenizer.eos_token_id, pad_token_id=1)
    model = OLMo(config, rngs=nnx.Rngs(4))
    shared, unshared = (Scorer(model, 64, batch_size=8, share_contexts=s) for s in (True, False))
    tokens = {}
    for task in resolve_tasks("hellaswag,winogrande,boolq"):
        prepared = prepare_task(task, load_rows(task, shared_data / "eval" / "jsonl", 3), tokenizer)
        a, b = shared.score(prepared.requests), unshared.score(prepared.requests)
        np.testing.assert_allclose(a.loglikelihood, b.loglikelihood, atol=1e-4, rtol=0)
        assert score_task(prepared, shared).metrics == score_task(prepared, unshared).metrics
        tokens[task.name] = (a.tokens, b.tokens)
    assert tokens["hellaswag"][0] * 1.4 < tokens["hellaswag"][1]  # four long endings of one context (582 -> 403)
    assert tokens["boolq"][0] <= tokens["boolq"][1]  # one-token answers: one row either way


def test_questions_pack_into_rows_of_the_pack_length_and_score_the_same(model):
    """Unrelated inputs share a row (seeing nothing of each other) up to `pack_length` tokens; a longer one keeps
    its own row. Numbers as one request per row (<= 1e-4 nats, fp32 reduction order)."""
    rng = np.random.default_rng(5)
    # Each input starts with its own token: they share nothing.
    requests = [
        Request((2 + i, *rng.integers(2, VOCAB, int(n)).tolist()), (7, 8))
        for i, n in enumerate(rng.integers(2, 11, 30))
    ]
    requests.append(Request((40, *rng.integers(2, VOCAB, 29).tolist()), (9,)))  # 30 tokens: longer than 24
    expected = np.array([reference(model, r) for r in requests])
    one_per_row = Scorer(model, MAX_LENGTH, batch_size=4, share_contexts=False).score(requests)
    for pack_length in (MAX_LENGTH, 24):
        scorer = Scorer(model, MAX_LENGTH, batch_size=4, pack_length=pack_length)
        scores = scorer.score(requests)
        np.testing.assert_allclose(scores.loglikelihood, expected, atol=1e-4, rtol=0)
        assert scores.tokens == one_per_row.tokens  # nothing shared between these inputs: only the rows change
        # Best fit by decreasing length: within 11/9 of the fewest rows the tokens need, plus one (the proven
        # bound), and one more for the tree longer than 24.
        fewest = np.ceil(scores.tokens / pack_length)
        assert scores.rows <= 11 / 9 * fewest + 2
        assert scores.rows < one_per_row.rows / 2
        rows, tokens, padded = scorer.count(requests)  # the plan alone, the model not run
        assert (rows, tokens) == (scores.rows, scores.tokens) and tokens <= padded <= 4 * MAX_LENGTH * np.ceil(rows / 4)


def test_tasks_scored_in_one_pass_equal_scored_alone(model):
    """`score_groups` packs several tasks' rows into the same batches: each task's numbers are those of its own
    pass, its tokens those of the inputs it brought (all of them, together, the pass's)."""
    rng = np.random.default_rng(6)

    def question():  # about 8 tokens: 5 fit a row
        context = tuple(rng.integers(2, VOCAB, 4).tolist())
        return [Request(context, tuple(rng.integers(2, VOCAB, int(n)).tolist())) for n in rng.integers(1, 4, 2)]

    groups = [[r for _ in range(7) for r in question()] for _ in range(3)]
    groups[2].append(groups[0][0])  # a request both tasks make: its row is counted for the first
    scorer = Scorer(model, MAX_LENGTH, batch_size=4)
    together = scorer.score_groups(groups)
    alone = [scorer.score(group) for group in groups]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.loglikelihood, b.loglikelihood, atol=1e-4, rtol=0)
        assert a.scored_tokens.tolist() == b.scored_tokens.tolist() and a.truncated.tolist() == b.truncated.tolist()
    one_pass = scorer.score([r for g in groups for r in g])
    assert sum(s.tokens for s in together) == one_pass.tokens
    assert together[0].tokens == alone[0].tokens and together[2].tokens < alone[2].tokens
    assert one_pass.rows < sum(s.rows for s in alone)  # the tasks' last rows filled each other
    assert max(s.rows for s in together) <= one_pass.rows  # a task's rows: those holding its requests
    # A task's seconds: its share of the pass by tokens.
    shares = [s.seconds / together[0].seconds for s in together]
    assert shares == pytest.approx([s.tokens / together[0].tokens for s in together])


def test_the_pack_length_keeps_attention_an_eighth_of_the_matmuls():
    """tiny (d 256, 4 layers): an eighth at 382 tokens -> bucket 256; OLMo-1B: 2,245 -> the model length."""
    from olmo_jax.config import load_config
    from olmo_jax.eval.scoring import default_pack_length

    assert default_pack_length(load_config("tiny").model, 2048) == 256
    assert default_pack_length(load_config("1b").model, 2048) == 2048
    assert default_pack_length(load_config("1b").model, 1024) == 1024
