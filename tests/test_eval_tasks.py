"""The 9 tasks: OLMo's exact template strings on fixed rows, the registry, and HF parity of every request."""

from __future__ import annotations

import numpy as np
import pytest
from eval_support import hf_loglikelihood, tiny_config, train_tokenizer

from olmo_jax.eval.tasks import CORE9, METRICS, TASKS, Candidate, Question, Task, register, resolve_tasks


def _mc(contexts, continuations, unconditional, label) -> Question:
    return Question(tuple(Candidate(*c) for c in zip(contexts, continuations, unconditional, strict=True)), label)


# (task, row, the Question OLMo's evaluator builds from it), strings written out by hand from the notes.
GOLDEN = [
    (
        "piqa",
        {
            "goal": "dresser",
            "sol1": "replace drawer with bobby pin ",
            "sol2": "finish, woodgrain with  bobby pin ",
            "label": 1,
        },
        _mc(
            ["Question: dresser\nAnswer:"] * 2,
            [" replace drawer with bobby pin ", " finish, woodgrain with  bobby pin "],
            ["Answer:"] * 2,
            1,
        ),
    ),
    (
        "hellaswag",
        {
            "activity_label": "Roof shingle removal",
            "ctx_a": "A man is sitting on a roof.",
            "ctx_b": "he",
            "endings": [
                "is using wrap.",
                "is ripping level tiles off.",
                "is holding a cube.",
                "starts pulling up roofing.",
            ],
            "label": "3",
        },
        _mc(
            ["Roof shingle removal: A man is sitting on a roof. He"] * 4,
            [" is using wrap.", " is ripping level tiles off.", " is holding a cube.", " starts pulling up roofing."],
            ["He"] * 4,
            3,
        ),
    ),
    (
        # WikiHow rows: " [title]" -> ". ", other [tags] removed, double spaces collapsed; an empty ctx_b makes
        # the unconditional prompt the last word of ctx_a.
        "hellaswag",
        {
            "activity_label": "Personal Care and Style",
            "ctx_a": "[header] How to become a consultant [title] Obtain your diploma. [step] This job requires it.",
            "ctx_b": "",
            "endings": [
                "[substeps] Many schools help. [title] Search for positions.",
                "You should study.",
                "Get a job  now.",
                "Relax [step] then rest.",
            ],
            "label": "0",
        },
        _mc(
            ["Personal Care and Style: How to become a consultant. Obtain your diploma. This job requires it."] * 4,
            [
                "  Many schools help.. Search for positions.",
                " You should study.",
                " Get a job now.",
                " Relax then rest.",
            ],
            ["it."] * 4,
            0,
        ),
    ),
    (
        "winogrande",
        {
            "sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
            "option1": "Sarah",
            "option2": "Maria",
            "answer": "2",
        },
        _mc(
            [
                "Sarah was a much better surgeon than Maria so Sarah",
                "Sarah was a much better surgeon than Maria so Maria",
            ],
            [" always got the easier cases."] * 2,
            ["Sarah", "Maria"],
            1,
        ),
    ),
    (
        "openbookqa",
        {
            "question_stem": "Frilled sharks and angler fish live far beneath the surface of the ocean, "
            "which is why they are known as",
            "choices": {
                "text": ["Deep sea animals", "fish", "Long Sea Fish", "Far Sea Animals"],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "A",
        },
        _mc(
            ["Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as"]
            * 4,
            [" Deep sea animals", " fish", " Long Sea Fish", " Far Sea Animals"],
            ["as"] * 4,
            0,
        ),
    ),
    (
        "boolq",
        {
            "question": "is house tax and property tax are same",
            "answer": True,
            "passage": "Property tax or 'house tax' is a local tax on buildings.",
        },
        _mc(
            [
                "Property tax or 'house tax' is a local tax on buildings.\n"
                "Question: is house tax and property tax are same?\nAnswer:"
            ]
            * 2,
            [" yes", " no"],
            ["Answer:"] * 2,
            0,
        ),
    ),
    (
        "sciq",
        {
            "question": "What is an area of land called that is wet for all or part of the year?",
            "distractor3": "tundra",
            "distractor1": "plains",
            "distractor2": "grassland",
            "correct_answer": "wetland",
            "support": " A wetland is an area that is wet.\n",
        },
        _mc(
            [
                "A wetland is an area that is wet.\n"
                "Question: What is an area of land called that is wet for all or part of the year?\nAnswer:"
            ]
            * 4,
            [" plains", " grassland", " tundra", " wetland"],
            ["Answer:"] * 4,
            3,
        ),
    ),
    (
        "sciq",
        {
            "question": "Who proposed the theory of evolution by natural selection?",
            "distractor3": "Scopes",
            "distractor1": "Linnaeus",
            "distractor2": "shaw",
            "correct_answer": "darwin",
            "support": "",
        },
        _mc(
            ["\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:"] * 4,
            [" Linnaeus", " shaw", " Scopes", " darwin"],
            ["Answer:"] * 4,
            3,
        ),
    ),
    (
        "arc_easy",  # numeric labels "1".."4" read as A..D
        {
            "id": "NYSEDREGENTS_2014_8_10",
            "question": "A green plant absorbs light. A frog eats flies. These are both examples of how organisms",
            "choices": {
                "text": ["obtain energy", "escape predators", "produce offspring", "excrete waste"],
                "label": ["1", "2", "3", "4"],
            },
            "answerKey": "1",
        },
        _mc(
            [
                "Question: A green plant absorbs light. A frog eats flies. "
                "These are both examples of how organisms\nAnswer:"
            ]
            * 4,
            [" obtain energy", " escape predators", " produce offspring", " excrete waste"],
            ["Answer:"] * 4,
            0,
        ),
    ),
    (
        "arc_challenge",
        {
            "id": "Mercury_7103565",
            "question": "What will most likely result if a high-pressure system remains in an area?",
            "choices": {"text": ["fog", "rain", "drought", "tornado"], "label": ["A", "B", "C", "D"]},
            "answerKey": "C",
        },
        _mc(
            ["Question: What will most likely result if a high-pressure system remains in an area?\nAnswer:"] * 4,
            [" fog", " rain", " drought", " tornado"],
            ["Answer:"] * 4,
            2,
        ),
    ),
    (
        "copa",
        {
            "premise": "The hamburger meat browned.",
            "choice1": "The cook froze it.",
            "choice2": "The cook grilled it.",
            "question": "cause",
            "idx": 4,
            "label": 1,
        },
        _mc(
            ["The hamburger meat browned because"] * 2,
            [" the cook froze it.", " the cook grilled it."],
            ["because"] * 2,
            1,
        ),
    ),
    (
        "copa",
        {
            "premise": "The man turned on the faucet.",
            "choice1": "The toilet filled with water.",
            "choice2": "Water flowed from the spout.",
            "question": "effect",
            "idx": 0,
            "label": 1,
        },
        _mc(
            ["The man turned on the faucet therefore"] * 2,
            [" the toilet filled with water.", " water flowed from the spout."],
            ["therefore"] * 2,
            1,
        ),
    ),
]


@pytest.mark.parametrize(("task", "row", "expected"), GOLDEN, ids=[f"{g[0]}-{i}" for i, g in enumerate(GOLDEN)])
def test_template_reproduces_olmo_strings(task, row, expected):
    assert TASKS[task].build(row) == expected


def test_golden_rows_cover_every_core_task():
    assert {g[0] for g in GOLDEN} == set(CORE9)


def test_primary_metrics_are_the_papers_choices():
    primary = {name: TASKS[name].primary_metric for name in CORE9}
    assert primary == {
        "arc_challenge": "acc_uncond",
        "arc_easy": "acc_uncond",
        "openbookqa": "acc_uncond",
        "hellaswag": "acc_per_token",
        "piqa": "acc_per_token",
        "winogrande": "acc_per_token",
        "boolq": "acc",
        "copa": "acc",
        "sciq": "acc",
    }


def test_in_loop_metrics_are_olmos_metric_types_under_olmos_names():
    """OLMo's in-loop evaluator logs each task's `metric_type` (olmo/eval/downstream.py: len_norm, the
    per-character sum, for PIQA, HellaSwag, OpenBookQA and ArcChallenge; acc for the others) as
    eval/downstream/<label>_<metric_type> (olmo/eval/evaluator.py), labels from `label_to_task_map`."""
    assert {name: TASKS[name].inloop_metric for name in CORE9} == {
        "arc_challenge": "acc_per_char",
        "arc_easy": "acc",
        "openbookqa": "acc_per_char",
        "hellaswag": "acc_per_char",
        "piqa": "acc_per_char",
        "winogrande": "acc",
        "boolq": "acc",
        "copa": "acc",
        "sciq": "acc",
    }
    assert sorted(TASKS[name].olmo_metric_name for name in CORE9) == [
        "arc_challenge_len_norm", "arc_easy_acc", "boolq_acc", "copa_acc", "hellaswag_len_norm",
        "openbook_qa_len_norm", "piqa_len_norm", "sciq_acc", "winogrande_acc",
    ]  # fmt: skip


class FixedScorer:
    """Returns given log-likelihoods for the requests, in order: the metric arithmetic under test, no model."""

    def __init__(self, loglikelihood: list[float]):
        self.loglikelihood = np.array(loglikelihood)

    def score(self, requests, progress=None):
        from olmo_jax.eval.scoring import Scores

        n = len(requests)
        return Scores(self.loglikelihood, np.zeros(n, bool), np.ones(n, int), rows=n, tokens=n)


class CharTokenizer:
    eos_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def test_pmi_dc_is_olmos_ratio_and_acc_uncond_the_difference():
    """olmo/eval/downstream.py `ICLMetric.update`: pmi_dc scores a candidate by
    log p(cont | ctx) / log p(cont | domain prompt), argmax as every metric; acc_uncond is the difference."""
    from olmo_jax.eval.downstream import prepare_task, score_task

    row = {"passage": "p", "question": "q", "answer": True}  # candidates " yes" (correct), " no"
    prepared = prepare_task(TASKS["boolq"], [row], CharTokenizer())
    # Conditional (yes, no) then unconditional (yes, no): ratios 3 > 1.33 pick "yes"; differences -2 < -1 "no".
    result = score_task(prepared, FixedScorer([-3.0, -4.0, -1.0, -3.0]))
    assert result.metrics["pmi_dc"] == 1.0 and result.metrics["acc_uncond"] == 0.0
    # Per character, leading space excluded (3 and 2 characters): -1 > -2.
    assert result.metrics["acc_per_char"] == 1.0


def test_resolve_tasks_expands_groups_and_keeps_order_without_duplicates():
    assert [t.name for t in resolve_tasks("core9")] == list(CORE9)
    assert [t.name for t in resolve_tasks("piqa, boolq,piqa")] == ["piqa", "boolq"]


def test_unknown_task_error_lists_the_known_tasks():
    with pytest.raises(ValueError, match="unknown task 'piqaa'; known tasks: core9, arc_challenge, .*winogrande"):
        resolve_tasks("piqaa")


def test_registering_a_task_is_one_local_call():
    def yes_no(row):
        return _mc([row["q"]] * 2, [" yes", " no"], ["Answer:"] * 2, 0)

    task = register(Task("test_yes_no", yes_no, "acc", "none/none"))
    try:
        assert resolve_tasks("test_yes_no") == [task]
        with pytest.raises(ValueError, match="already registered"):
            register(task)
        with pytest.raises(ValueError, match="primary_metric 'f1' is not one of"):
            register(Task("test_bad_metric", yes_no, "f1", "none/none"))
    finally:
        TASKS.pop("test_yes_no")


# --------------------------------------------------------------------------------------------------
# Per-request log-likelihoods equal transformers' OlmoForCausalLM on the converted weights.
# --------------------------------------------------------------------------------------------------

MAX_LENGTH = 40  # short enough that the longer golden rows are truncated from the left


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from flax import nnx
    from hf_support import to_transformers

    from olmo_jax.data.tokenizer import load_tokenizer
    from olmo_jax.eval.scoring import Scorer
    from olmo_jax.model import OLMo

    tokenizer = load_tokenizer(str(train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")))
    config = tiny_config(tokenizer.vocab_size, MAX_LENGTH, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = OLMo(config, rngs=nnx.Rngs(0))
    # One scorer for the module: its compiled programs (one per bucket length) are reused by every test.
    return tokenizer, Scorer(model, MAX_LENGTH, batch_size=4), to_transformers(model)


@pytest.mark.parametrize("task_name", CORE9)
def test_request_loglikelihoods_match_transformers(tiny, task_name):
    """Max |delta| <= 1e-3 nats (fp32 on both sides; observed ~1e-5), conditional and unconditional."""
    from olmo_jax.eval.downstream import prepare_task, score_task

    tokenizer, scorer, hf_model = tiny
    rows = [row for name, row, _ in GOLDEN if name == task_name]
    result = score_task(prepare_task(TASKS[task_name], rows, tokenizer), scorer, save_requests=True)

    def encode_context(text):
        return tokenizer.encode(text) or [tokenizer.eos_token_id]

    for entry in result.request_log:
        continuation = tokenizer.encode(entry["continuation"])
        for context, ours in (
            (entry["context"], entry["loglikelihood"]),
            (entry["unconditional_context"], entry["loglikelihood_uncond"]),
        ):
            reference = hf_loglikelihood(hf_model, encode_context(context), continuation, MAX_LENGTH)
            assert abs(ours - reference) <= 1e-3, (task_name, context, entry["continuation"])
    assert set(result.metrics) == set(METRICS)
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())


def test_over_long_contexts_are_truncated_and_counted(tiny):
    from olmo_jax.eval.downstream import prepare_task, score_task

    tokenizer, scorer, _ = tiny
    row = {"question": "is it", "answer": False, "passage": "A long passage about property tax. " * 20}
    result = score_task(prepare_task(TASKS["boolq"], [row], tokenizer), scorer)
    assert result.truncated == 2  # both conditional requests; the unconditional "Answer:" ones fit
    assert result.questions == 1 and result.requests == 4


def test_accuracy_picks_the_argmax_per_question():
    from olmo_jax.eval.downstream import accuracy

    question_of = np.array([0, 0, 1, 1, 1, 2, 2])
    scores = np.array([-1.0, -2.0, -3.0, -1.0, -2.0, -5.0, -5.0])
    # q0 -> 0 (right), q1 -> 1 (label 2: wrong), q2 tie -> first candidate (right)
    assert accuracy(scores, question_of, np.array([0, 2, 0])) == pytest.approx(2 / 3)
