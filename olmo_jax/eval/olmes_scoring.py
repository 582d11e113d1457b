"""Scoring OLMES request sets and MMLU on the engine, with the metrics OLMES defines.

Each choice is one request (its context and continuation tokenized separately, without special tokens,
as `ai2-olmo-eval` does; an empty context becomes EOS). Per question, with ll = log p(continuation |
context) summed over the continuation's tokens (nats):

- `acc_raw`: argmax ll;  `acc_per_token`: argmax ll / tokens;  `acc_per_char`: argmax ll / characters,
  the leading space counted (OLMES; `ai2-olmo-eval`'s `len_norm`);
- `acc_uncond`: argmax ll - ll(continuation | "Answer:"), only where the set has unconditional requests;
- `bpb`: the gold answer's bits per byte, -ll / (ln 2 x UTF-8 bytes of the continuation, leading space
  included), averaged over questions (`ai2-olmo-eval`'s `bpb_v2`).
Ties go to the first choice. Gold-only tasks (`*_bpb`, `bpb_*` and `gold_bpb_*` sets) score one request
per question and report `bpb` alone. MMLU reports each metric over all questions (micro) and as the mean
over subjects (`<metric>_macro`), plus a per-subject breakdown.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from olmo_jax.errors import EvalError
from olmo_jax.eval.downstream import TaskResult, TokenCache, Tokenizer
from olmo_jax.eval.mmlu import MmluTask, mmlu_instances
from olmo_jax.eval.olmes import Instance, OlmesTask, read_request_set
from olmo_jax.eval.scoring import Request, Scorer, Scores

ACCURACIES = ("acc_raw", "acc_per_token", "acc_per_char", "acc_uncond")
# config.json's primary_metric -> ours (oe-eval's logits_per_byte is ai2-olmo-eval's bpb, in bits).
PRIMARY_FROM_CONFIG = {
    "acc_raw": "acc_raw",
    "acc_per_token": "acc_per_token",
    "acc_per_char": "acc_per_char",
    "acc_uncond": "acc_uncond",
    "logits_per_byte": "bpb",
    "bits_per_byte": "bpb",
}
# OLMES's MMLU headline is the macro average over subjects.
MMLU_PRIMARY = {"mc": "acc_raw_macro", "rc": "acc_per_char_macro", "bpb": "bpb_macro"}

ChoiceTask = OlmesTask | MmluTask


@dataclass
class PreparedChoiceTask:
    """A task's requests, tokenized once and scored on any weights."""

    task: ChoiceTask
    primary_metric: str
    instances: list[Instance]
    gold_only: bool  # one request per question (the gold answer): bpb only
    question_of: np.ndarray  # int [candidates]
    choice_of: np.ndarray  # int [candidates]: the candidate's choice index (`idx`) in its instance
    labels: np.ndarray  # int [questions]: the gold candidate's position in its question
    tokens: np.ndarray  # int [candidates]: continuation tokens
    chars: np.ndarray  # int [candidates]: continuation characters, leading space included
    bytes: np.ndarray  # int [candidates]: continuation UTF-8 bytes, leading space included
    requests: list[Request]  # conditional per candidate, then unconditional per candidate (if any)
    has_unconditional: bool

    @property
    def candidates(self) -> int:
        return len(self.question_of)


def gold_index(instance: Instance, where: str) -> int:
    """The gold choice index of a multiple-choice instance."""
    label = instance.label
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(instance.continuations):
        choices = len(instance.continuations)
        raise EvalError(f"{where}: doc {instance.doc_id} has label {label!r}, not a choice index below {choices}")
    return label


def load_instances(task: ChoiceTask, root: str | Path, limit: int | None) -> tuple[list[Instance], str]:
    """(the first `limit` instances of `task`, its primary metric), from the OLMES folder `root`."""
    if isinstance(task, MmluTask):
        return mmlu_instances(root, task, limit), MMLU_PRIMARY["bpb" if task.gold_only else task.kind]
    if task.generative:
        raise EvalError(f"task {task.name!r} generates its answers: it is scored by olmo_jax.eval.generative")
    request_set = read_request_set(root, task.task, task.format)
    where = str(request_set.path)
    configured = request_set.primary_metric
    if task.gold_only or task.kind == "bpb":
        primary = "bpb"
    elif configured in PRIMARY_FROM_CONFIG:
        primary = PRIMARY_FROM_CONFIG[configured]
    else:
        raise EvalError(f"{where}: primary_metric {configured!r} is not one of {', '.join(PRIMARY_FROM_CONFIG)}")
    instances = request_set.instances[:limit]
    for instance in instances:
        if not instance.continuations:
            raise EvalError(f"{where}: doc {instance.doc_id} has no log-likelihood request")
        if task.kind == "bpb" and len(instance.continuations) != 1:
            raise EvalError(
                f"{where}: doc {instance.doc_id} has {len(instance.continuations)} continuations, a bpb set has one"
            )
        if task.kind != "bpb":
            gold_index(instance, where)
    if primary == "acc_uncond" and any(i.unconditional_contexts is None for i in instances):
        raise EvalError(f"{where}: primary_metric acc_uncond, but the set has no unconditional requests")
    return instances, primary


def prepare_choice_task(
    task: ChoiceTask, instances: list[Instance], primary_metric: str, tokenizer: Tokenizer
) -> PreparedChoiceTask:
    """Tokenize `instances` into requests (all choices, or only the gold one for gold-only tasks)."""
    gold_only = task.gold_only or task.kind == "bpb"
    encode = TokenCache(tokenizer)
    has_unconditional = (
        not gold_only and bool(instances) and all(i.unconditional_contexts is not None for i in instances)
    )
    question_of, choice_of, labels, tokens, chars, n_bytes = [], [], [], [], [], []
    conditional, unconditional = [], []
    for q, instance in enumerate(instances):
        gold = 0 if task.kind == "bpb" else gold_index(instance, task.name)
        chosen = [gold] if gold_only else range(len(instance.continuations))
        labels.append(0 if gold_only else gold)
        for c in chosen:
            continuation = encode(instance.continuations[c])
            if not continuation:
                raise EvalError(
                    f"task {task.name!r}: doc {instance.doc_id} has a continuation that tokenizes to nothing"
                )
            question_of.append(q)
            choice_of.append(c)
            tokens.append(len(continuation))
            chars.append(len(instance.continuations[c]))
            n_bytes.append(len(instance.continuations[c].encode("utf-8")))
            conditional.append(Request(encode.context(instance.contexts[c]), continuation))
            if has_unconditional:
                unconditional.append(Request(encode.context(instance.unconditional_contexts[c]), continuation))
    return PreparedChoiceTask(
        task=task,
        primary_metric=primary_metric,
        instances=instances,
        gold_only=gold_only,
        question_of=np.array(question_of, np.int64),
        choice_of=np.array(choice_of, np.int64),
        labels=np.array(labels, np.int64),
        tokens=np.array(tokens, np.int64),
        chars=np.array(chars, np.int64),
        bytes=np.array(n_bytes, np.int64),
        requests=conditional + unconditional,
        has_unconditional=has_unconditional,
    )


def prepare(task: ChoiceTask, root: str | Path, tokenizer: Tokenizer, limit: int | None = None) -> PreparedChoiceTask:
    """Read and tokenize `task` from the OLMES folder `root` (see `olmes.find_olmes_root`)."""
    instances, primary = load_instances(task, root, limit)
    return prepare_choice_task(task, instances, primary, tokenizer)


def correct_per_question(scores: np.ndarray, question_of: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """bool [questions]: the highest-scoring candidate is the label (ties: the first); candidates contiguous."""
    starts = np.searchsorted(question_of, np.arange(len(labels) + 1))
    return np.array([np.argmax(scores[starts[q] : starts[q + 1]]) == label for q, label in enumerate(labels)], bool)


def question_metrics(prepared: PreparedChoiceTask, loglikelihood: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric's value per question: 1/0 for the accuracies, bits per byte of the gold for `bpb`."""
    n = prepared.candidates
    conditional = loglikelihood[:n]
    starts = np.searchsorted(prepared.question_of, np.arange(len(prepared.labels)))
    gold = starts + prepared.labels
    per_question = {"bpb": -conditional[gold] / (math.log(2) * prepared.bytes[gold])}
    if prepared.gold_only:
        return per_question
    normalised = {
        "acc_raw": conditional,
        "acc_per_token": conditional / prepared.tokens,
        "acc_per_char": conditional / prepared.chars,
    }
    if prepared.has_unconditional:
        normalised["acc_uncond"] = conditional - loglikelihood[n:]
    for name, scores in normalised.items():
        per_question[name] = correct_per_question(scores, prepared.question_of, prepared.labels).astype(np.float64)
    return {name: per_question[name] for name in (*ACCURACIES, "bpb") if name in per_question}


def aggregate(
    prepared: PreparedChoiceTask, per_question: dict[str, np.ndarray]
) -> tuple[dict[str, float], dict | None]:
    """(metrics, breakdown): means over questions; with groups (MMLU) also means over groups."""
    metrics = {name: float(values.mean()) for name, values in per_question.items()}
    groups = [i.group for i in prepared.instances]
    if not any(groups):
        return metrics, None
    subjects: dict[str, dict[str, float]] = {}
    order = list(dict.fromkeys(groups))
    group_array = np.array(groups)
    for subject in order:
        mask = group_array == subject
        subjects[subject] = {name: float(values[mask].mean()) for name, values in per_question.items()}
        subjects[subject]["questions"] = int(mask.sum())
    for name in per_question:
        metrics[f"{name}_macro"] = float(np.mean([s[name] for s in subjects.values()]))
    return metrics, {"subjects": subjects}


def score_choice_task(
    prepared: PreparedChoiceTask,
    scorer: Scorer,
    save_requests: bool = False,
    progress=None,
    scores: Scores | None = None,
) -> TaskResult:
    """Score `prepared` with `scorer` (or take its `scores`, from a pass over several tasks) and compute its
    metrics."""
    scores = scores if scores is not None else scorer.score(prepared.requests, progress=progress)
    started = time.perf_counter()
    per_question = question_metrics(prepared, scores.loglikelihood)
    metrics, breakdown = aggregate(prepared, per_question)
    log = None
    if save_requests:
        n = prepared.candidates
        starts = np.searchsorted(prepared.question_of, np.arange(len(prepared.labels)))
        log = []
        for i, (q, choice) in enumerate(zip(prepared.question_of, prepared.choice_of, strict=True)):
            instance = prepared.instances[q]
            entry = {
                "doc_id": instance.doc_id,
                "choice": int(choice),
                "correct": bool(i - starts[q] == prepared.labels[q]),
                "context": instance.contexts[choice],
                "continuation": instance.continuations[choice],
                "loglikelihood": float(scores.loglikelihood[i]),
                "tokens": int(prepared.tokens[i]),
                "chars": int(prepared.chars[i]),
                "bytes": int(prepared.bytes[i]),
                "truncated": bool(scores.truncated[i]),
            }
            if prepared.has_unconditional:
                entry["unconditional_context"] = instance.unconditional_contexts[choice]
                entry["loglikelihood_uncond"] = float(scores.loglikelihood[n + i])
            if instance.group:
                entry["group"] = instance.group
            log.append(entry)
    return TaskResult(
        task=prepared.task.name,
        primary_metric=prepared.primary_metric,
        metrics=metrics,
        inloop_metric=None,  # OLMo-1's in-loop evaluator has no OLMES sets: `primary` is what is logged
        olmo_metric_name=None,
        questions=len(prepared.instances),
        requests=len(prepared.requests),
        rows=scores.rows,
        tokens=scores.tokens,
        truncated=int(scores.truncated.sum()),
        seconds=scores.seconds + time.perf_counter() - started,
        request_log=log,
        breakdown=breakdown,
    )
