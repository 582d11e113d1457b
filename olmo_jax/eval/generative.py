"""Generative OLMES tasks (`<task>_gen`): generate each question's answer and score it by the task's rule.

The prompts are the shipped requests' `context` (few-shot included), used as shipped; generation is greedy
(every shipped set asks for `do_sample: false`), up to the set's `max_gen_toks`, cut at the first of its
`stop_sequences`. A context longer than the model length minus `max_gen_toks` loses its left end.

Rules (per question, then the mean):
- GSM8K: `exact_match` of the final number. The answer is the last number in the completion (commas
  between digits dropped), compared with the gold after the set's `metric_kwargs.regexes_to_ignore`
  (",", "$", everything up to "#### ", a final "."), as the lm-eval-harness `exact_match` those keys come
  from does.
- DROP, SQuAD, NaturalQuestions, CoQA, Jeopardy: `f1` (SQuAD's token-overlap F1 after SQuAD's answer
  normalisation: lower case, no punctuation, no articles a/an/the, single spaces) and `exact_match`
  (normalised strings equal), each the best over the gold answers. DROP's gold spans of one answer are
  joined by spaces; DROP's own metric (numbers, span bags) is not reproduced.
oe-eval (AllenAI's OLMES code) could not be installed here to compare answer extraction with: these rules
are the published definitions, stated above so that a difference can be found.
"""

from __future__ import annotations

import collections
import re
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_jax.errors import EvalError
from olmo_jax.eval.downstream import TaskResult, TokenCache, Tokenizer
from olmo_jax.eval.olmes import Instance, OlmesTask, read_request_set
from olmo_jax.generate.decoding import cut_at_stop

# Completions of token prompts: (prompts, max_new_tokens, stop strings) -> new tokens per prompt.
Complete = Callable[[list[list[int]], int, Sequence[str]], list[list[int]]]

NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")
ARTICLES = re.compile(r"\b(a|an|the)\b")


@dataclass
class PreparedGenerativeTask:
    task: OlmesTask
    primary_metric: str
    instances: list[Instance]
    prompts: list[list[int]]
    stop_sequences: list[str]
    max_new_tokens: int
    regexes_to_ignore: list[str]
    truncated: int  # prompts cut from the left to fit


def gold_answers(label: Any) -> list[str]:
    """The gold answers of a generative doc: a string, a list of strings, or DROP's list of span lists."""
    if isinstance(label, str):
        return [label]
    if isinstance(label, list) and label:
        return [" ".join(a) if isinstance(a, list) else str(a) for a in label]
    raise EvalError(f"a generative doc has label {label!r}, not an answer or a list of answers")


def prepare_generative(
    task: OlmesTask, root: str | Path, tokenizer: Tokenizer, max_length: int, limit: int | None = None
) -> PreparedGenerativeTask:
    request_set = read_request_set(root, task.task, task.format)
    where = str(request_set.path)
    instances = request_set.instances[:limit]
    config = request_set.task_config
    kwargs = config.get("generation_kwargs") or {}
    stops, max_new = kwargs.get("stop_sequences"), kwargs.get("max_gen_toks")
    encode = TokenCache(tokenizer)
    prompts, truncated = [], 0
    for instance in instances:
        generation = instance.generation
        if generation is None or not isinstance(generation.get("context"), str):
            raise EvalError(f"{where}: doc {instance.doc_id} has no generation request (context, stop_sequences)")
        request_kwargs = generation.get("generation_kwargs") or {}
        stops = generation.get("stop_sequences") or stops
        max_new = request_kwargs.get("max_gen_toks", max_new)
        gold_answers(instance.label)  # checked here, before any generation
        prompt = list(encode.context(generation["context"]))
        if not isinstance(max_new, int) or max_new < 1:
            raise EvalError(f"{where}: max_gen_toks {max_new!r} is not a positive number of tokens")
        room = max_length - max_new
        if room < 1:
            raise EvalError(f"{where}: max_gen_toks={max_new} leaves no room for a prompt in {max_length} tokens")
        truncated += len(prompt) > room
        prompts.append(prompt[-room:])
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise EvalError(f"{where}: stop_sequences {stops!r} is not a list of strings")
    primary = "exact_match" if task.task == "gsm8k" else "f1"
    regexes = (config.get("metric_kwargs") or {}).get("regexes_to_ignore", []) if task.task == "gsm8k" else []
    return PreparedGenerativeTask(task, primary, instances, prompts, stops, max_new, regexes, truncated)


def final_number(completion: str) -> str:
    """GSM8K's answer extraction: the last number, commas between digits removed; the text if none."""
    numbers = NUMBER.findall(re.sub(r"(\d),(\d)", r"\1\2", completion))
    return numbers[-1] if numbers else completion


def without(text: str, regexes: Sequence[str]) -> str:
    for pattern in regexes:
        text = re.sub(pattern, "", text)
    return text.strip()


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD's F1 of the normalised answers' tokens."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def answer_metrics(task: str, completion: str, label: Any, regexes: Sequence[str]) -> dict[str, float]:
    """The task's metrics for one completion (already cut at the stop sequences)."""
    golds = gold_answers(label)
    if task == "gsm8k":
        predicted = without(final_number(completion), regexes)
        return {"exact_match": float(any(predicted == without(g, regexes) for g in golds))}
    return {
        "f1": max(token_f1(completion, g) for g in golds),
        "exact_match": float(any(normalize_answer(completion) == normalize_answer(g) for g in golds)),
    }


def score_generative_task(
    prepared: PreparedGenerativeTask,
    complete: Complete,
    decode: Callable[[list[int]], str],
    save_requests: bool = False,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 8,
) -> TaskResult:
    """Generate every prompt (longest first, `batch_size` at a time) and score the completions."""
    started = time.perf_counter()
    order = sorted(range(len(prepared.prompts)), key=lambda i: -len(prepared.prompts[i]))
    completions: dict[int, list[int]] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        new = complete([prepared.prompts[i] for i in batch], prepared.max_new_tokens, prepared.stop_sequences)
        completions.update(zip(batch, new, strict=True))
        if progress is not None:
            progress(len(completions), len(order))
    per_question: dict[str, list[float]] = collections.defaultdict(list)
    log = [] if save_requests else None
    generated = 0
    for i, instance in enumerate(prepared.instances):
        text, _ = cut_at_stop(decode(completions[i]), prepared.stop_sequences)
        generated += len(completions[i])
        metrics = answer_metrics(prepared.task.task, text, instance.label, prepared.regexes_to_ignore)
        for name, value in metrics.items():
            per_question[name].append(value)
        if log is not None:
            log.append({"doc_id": instance.doc_id, "completion": text, "label": instance.label, **metrics})
    n = len(prepared.instances)
    return TaskResult(
        task=prepared.task.name,
        primary_metric=prepared.primary_metric,
        metrics={name: sum(values) / n for name, values in per_question.items()},
        inloop_metric=None,
        olmo_metric_name=None,
        questions=n,
        requests=n,
        rows=n,
        tokens=sum(map(len, prepared.prompts)) + generated,
        truncated=prepared.truncated,
        seconds=time.perf_counter() - started,
        request_log=log,
    )
