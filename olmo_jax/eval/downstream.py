"""Downstream (multiple-choice) evaluation: rows -> requests -> scores -> the four accuracies.

Context and continuation are tokenized separately, without special tokens (OLMo's evaluator); an empty
context becomes the EOS token so that the first continuation token is conditioned on something.
Every candidate is scored twice: after its context, and after its unconditional prompt (for PMI).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from olmo_jax.errors import EvalError
from olmo_jax.eval.scoring import Request, Scorer, Scores
from olmo_jax.eval.tasks import METRICS, Question, Task


class Tokenizer(Protocol):
    """What evaluation needs from a tokenizer (`olmo_jax.data.tokenizer.Tokenizer` provides it)."""

    eos_token_id: int

    def encode(self, text: str) -> list[int]: ...


class TokenCache:
    """`tokenizer.encode` memoised per string (contexts repeat across a question's candidates)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[str, tuple[int, ...]] = {}

    def __call__(self, text: str) -> tuple[int, ...]:
        tokens = self._cache.get(text)
        if tokens is None:
            tokens = self._cache[text] = tuple(self.tokenizer.encode(text))
        return tokens

    def context(self, text: str) -> tuple[int, ...]:
        """Tokens of a context; EOS when the text tokenizes to nothing."""
        return self(text) or (self.tokenizer.eos_token_id,)


@dataclass
class PreparedTask:
    """A task's questions turned into token requests, ready to score (built once, scored many times)."""

    task: Task
    questions: list[Question]
    question_of: np.ndarray  # int [candidates]: the question each candidate belongs to
    candidate_of: np.ndarray  # int [candidates]: its position within that question
    labels: np.ndarray  # int [questions]
    continuation_chars: np.ndarray  # int [candidates], leading space excluded (OLMo's per-char length)
    requests: list[Request]  # the conditional requests, then the unconditional ones, per candidate


def build_questions(task: Task, rows: list[dict[str, Any]]) -> list[Question]:
    """`task.build` over `rows`; a malformed row is an error naming the task and the row."""
    questions = []
    for index, row in enumerate(rows):
        try:
            question = task.build(row)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise EvalError(
                f"task {task.name!r}: row {index} does not fit the template ({type(e).__name__}: {e})"
            ) from None
        if not 0 <= question.label < len(question.candidates):
            raise EvalError(f"task {task.name!r}: row {index} has label {question.label} out of range")
        questions.append(question)
    return questions


def prepare_task(task: Task, rows: list[dict[str, Any]], tokenizer: Tokenizer) -> PreparedTask:
    """Template every row and tokenize every candidate."""
    questions = build_questions(task, rows)
    encode = TokenCache(tokenizer)
    question_of, candidate_of, char_counts, conditional, unconditional = [], [], [], [], []
    for q_index, question in enumerate(questions):
        for c_index, candidate in enumerate(question.candidates):
            continuation = encode(candidate.continuation)
            if not continuation:
                raise EvalError(
                    f"task {task.name!r}: row {q_index} has a continuation that tokenizes to nothing: "
                    f"{candidate.continuation!r}"
                )
            question_of.append(q_index)
            candidate_of.append(c_index)
            char_counts.append(max(len(candidate.continuation.removeprefix(" ")), 1))
            conditional.append(Request(encode.context(candidate.context), continuation))
            unconditional.append(Request(encode.context(candidate.unconditional_context), continuation))
    return PreparedTask(
        task=task,
        questions=questions,
        question_of=np.array(question_of),
        candidate_of=np.array(candidate_of),
        labels=np.array([q.label for q in questions]),
        continuation_chars=np.array(char_counts),
        requests=conditional + unconditional,
    )


@dataclass
class TaskResult:
    """Every metric of one task, with the paper's choice marked, and what it took."""

    task: str
    primary_metric: str
    metrics: dict[str, float]
    inloop_metric: str | None  # the metric OLMo's in-loop evaluator logs for the task (None: it has none)
    olmo_metric_name: str | None  # OLMo's name for it, `<label>_<metric_type>`
    questions: int
    requests: int
    rows: int  # model rows run after sharing
    tokens: int  # tokens in those rows, padding excluded
    truncated: int  # requests whose context was cut from the left to fit the model length
    seconds: float
    request_log: list[dict[str, Any]] | None = field(default=None, repr=False)
    breakdown: dict[str, Any] | None = None  # per-group metrics (MMLU's subjects), when the task has groups

    @property
    def primary(self) -> float:
        return self.metrics[self.primary_metric]

    @property
    def inloop(self) -> float | None:
        return None if self.inloop_metric is None else self.metrics[self.inloop_metric]

    def to_json(self) -> dict[str, Any]:
        out = {
            "primary_metric": self.primary_metric,
            "primary": self.primary,
            "inloop_metric": self.inloop_metric,
            "inloop": self.inloop,
            "olmo_metric_name": self.olmo_metric_name,
            "metrics": self.metrics,
            "questions": self.questions,
            "requests": self.requests,
            "rows": self.rows,
            "tokens": self.tokens,
            "truncated": self.truncated,
            "seconds": round(self.seconds, 3),
        }
        if self.breakdown is not None:
            out["breakdown"] = self.breakdown
        if self.request_log is not None:
            out["request_log"] = self.request_log
        return out


def accuracy(scores: np.ndarray, question_of: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of questions whose highest-scoring candidate is the label (ties: the first candidate).

    A question's candidates are contiguous in `scores` (as `prepare_task` lays them out).
    """
    starts = np.searchsorted(question_of, np.arange(len(labels) + 1))
    correct = sum(int(np.argmax(scores[starts[q] : starts[q + 1]]) == label) for q, label in enumerate(labels))
    return correct / len(labels)


def score_task(
    prepared: PreparedTask, scorer: Scorer, save_requests: bool = False, progress=None, scores: Scores | None = None
) -> TaskResult:
    """Score `prepared` with `scorer` (or take its `scores`, from a pass over several tasks) and compute every
    metric of METRICS."""
    scores = scores if scores is not None else scorer.score(prepared.requests, progress=progress)
    started = time.perf_counter()
    n = len(prepared.question_of)
    conditional, unconditional = scores.loglikelihood[:n], scores.loglikelihood[n:]
    normalised = {
        "acc": conditional,
        "acc_per_token": conditional / scores.scored_tokens[:n],
        "acc_per_char": conditional / prepared.continuation_chars,
        "acc_uncond": conditional - unconditional,
        # OLMo's pmi_dc (olmo/eval/downstream.py, `ICLMetric.update`): the ratio of the two sums, argmax as for
        # every other metric (both sums are negative, so a larger ratio is a relatively less likely answer).
        "pmi_dc": conditional / unconditional,
    }
    metrics = {name: accuracy(normalised[name], prepared.question_of, prepared.labels) for name in METRICS}
    log = None
    if save_requests:
        log = []
        for i, (q, c) in enumerate(zip(prepared.question_of, prepared.candidate_of, strict=True)):
            candidate = prepared.questions[q].candidates[c]
            log.append(
                {
                    "question": int(q),
                    "candidate": int(c),
                    "correct": bool(c == prepared.labels[q]),
                    "context": candidate.context,
                    "continuation": candidate.continuation,
                    "unconditional_context": candidate.unconditional_context,
                    "loglikelihood": float(conditional[i]),
                    "loglikelihood_uncond": float(unconditional[i]),
                    "tokens": int(scores.scored_tokens[i]),
                    "chars": int(prepared.continuation_chars[i]),
                    "truncated": bool(scores.truncated[i]),
                }
            )
    return TaskResult(
        task=prepared.task.name,
        primary_metric=prepared.task.primary_metric,
        metrics=metrics,
        inloop_metric=prepared.task.inloop_metric,
        olmo_metric_name=prepared.task.olmo_metric_name,
        questions=len(prepared.questions),
        requests=len(prepared.requests),
        rows=scores.rows,
        tokens=scores.tokens,
        truncated=int(scores.truncated.sum()),
        seconds=scores.seconds + time.perf_counter() - started,
        request_log=log,
    )
