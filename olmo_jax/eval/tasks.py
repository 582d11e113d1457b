"""Downstream tasks: OLMo's zero-shot templates and the task registry.

Each task turns one dataset row into a `Question`: a list of candidates, each a (context, continuation)
pair plus the context used for unconditional ("domain-conditional") normalisation, and the index of the
correct candidate. The strings follow OLMo's in-loop evaluator exactly (see
`../shared/notes/olmo-reference.md`); every continuation starts with a space.

Adding a task is local: write a `row -> Question` function and `register(Task(...))` it below.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from olmo_jax.errors import EvalError
from olmo_jax.eval.mmlu import mmlu_tasks
from olmo_jax.eval.olmes import OLMES_SUITES, olmes_tasks

Row = Mapping[str, Any]

# The metrics every task reports. Each scores every candidate, then checks the argmax against the label.
METRICS = ("acc", "acc_per_token", "acc_per_char", "acc_uncond")
METRIC_DESCRIPTIONS = {
    "acc": "sum of the continuation's token log-probabilities",
    "acc_per_token": "the sum divided by the continuation's number of tokens",
    "acc_per_char": "the sum divided by the continuation's characters (leading space excluded, as OLMo)",
    "acc_uncond": "log p(continuation | context) - log p(continuation | unconditional prompt) (PMI)",
}


@dataclass(frozen=True)
class Candidate:
    """One answer option: score `continuation` after `context` (and after `unconditional_context`)."""

    context: str
    continuation: str
    unconditional_context: str


@dataclass(frozen=True)
class Question:
    """One dataset row as scored: its candidates and the index of the correct one."""

    candidates: tuple[Candidate, ...]
    label: int


@dataclass(frozen=True)
class Task:
    """A multiple-choice task: where its data lives and how a row becomes a `Question`."""

    name: str
    build: Callable[[Row], Question]
    primary_metric: str  # the OLMo paper's choice of normalisation, one of METRICS
    hf_path: str  # `datasets.load_dataset` path, used when no local copy is given
    hf_name: str | None = None
    split: str = "validation"


TASKS: dict[str, Task] = {}

# The OLMo paper's 9 core tasks, in the order of its tables.
CORE9 = ("arc_challenge", "arc_easy", "boolq", "copa", "hellaswag", "openbookqa", "piqa", "sciq", "winogrande")
TASK_GROUPS = {"core9": CORE9}


def register(task: Task) -> Task:
    """Add `task` to the registry (a name may be registered once)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    if task.primary_metric not in METRICS:
        raise ValueError(f"task {task.name!r}: primary_metric {task.primary_metric!r} is not one of {METRICS}")
    TASKS[task.name] = task
    return task


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[Task]:
    """Tasks named by `spec`: "core9", "piqa,boolq" or a list of names/groups; unknown names are errors,
    and so are tasks that cannot run yet (generative OLMES tasks)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    tasks: list[Task] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        expanded = TASK_GROUPS.get(name, (name,))
        for task_name in expanded:
            if task_name not in TASKS:
                raise EvalError(f"unknown task {task_name!r}; known tasks: {_known_tasks(task_name)}")
            unavailable = getattr(TASKS[task_name], "unavailable", None)
            if unavailable is not None:
                raise EvalError(unavailable)
            if TASKS[task_name] not in tasks:
                tasks.append(TASKS[task_name])
    return tasks


def _known_tasks(name: str) -> str:
    """The OLMo-1 groups and tasks by name, the OLMES suites, the OLMES sets by pattern (closest to `name`)."""
    core = sorted(n for n, t in TASKS.items() if isinstance(t, Task))
    core_groups = [g for g, members in TASK_GROUPS.items() if set(members) <= set(core)]
    suites = [g for g in TASK_GROUPS if g not in core_groups]
    close = difflib.get_close_matches(name, [n for n in TASKS if n not in core], n=3)
    olmes = f"; OLMES suites: {', '.join(suites)}; {len(TASKS) - len(core)} OLMES sets <task>_<format> (README)"
    return ", ".join([*core_groups, *core]) + olmes + (f", e.g. {', '.join(close)}" if close else "")


def _question(contexts: list[str], continuations: list[str], unconditional: list[str], label: int) -> Question:
    return Question(tuple(Candidate(*c) for c in zip(contexts, continuations, unconditional, strict=True)), label)


# --------------------------------------------------------------------------------------------------
# Templates, one function per task.
# --------------------------------------------------------------------------------------------------


def piqa(row: Row) -> Question:
    context = f"Question: {row['goal']}\nAnswer:"
    return _question([context] * 2, [" " + row["sol1"], " " + row["sol2"]], ["Answer:"] * 2, int(row["label"]))


def hellaswag_preprocess(text: str) -> str:
    """OLMo's HellaSwag cleaning: WikiHow's " [title]" becomes ". ", other [tags] go, double spaces collapse."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(row: Row) -> Question:
    context = hellaswag_preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    unconditional = hellaswag_preprocess(row["ctx_b"].capitalize())
    if not unconditional:  # an empty ctx_b: OLMo falls back to the last word of ctx_a
        unconditional = hellaswag_preprocess(row["ctx_a"]).split(" ")[-1]
    endings = [" " + hellaswag_preprocess(e) for e in row["endings"]]
    return _question([context] * len(endings), endings, [unconditional] * len(endings), int(row["label"]))


def winogrande(row: Row) -> Question:
    # Two contexts (the sentence up to "_" with each option filled in) share one continuation.
    sentence = row["sentence"]
    blank = sentence.index("_")
    options = [row["option1"], row["option2"]]
    continuation = " " + sentence[blank + 1 :].strip()
    contexts = [sentence[:blank] + option for option in options]
    return _question(contexts, [continuation] * 2, options, int(row["answer"]) - 1)


def openbookqa(row: Row) -> Question:
    stem = row["question_stem"]
    choices = [" " + c for c in row["choices"]["text"]]
    last_word = stem.strip().split(" ")[-1]
    return _question([stem] * len(choices), choices, [last_word] * len(choices), _choice_index(row))


def boolq(row: Row) -> Question:
    context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    return _question([context] * 2, [" yes", " no"], ["Answer:"] * 2, 0 if row["answer"] else 1)


def sciq(row: Row) -> Question:
    context = f"{row['support'].strip()}\nQuestion: {row['question']}\nAnswer:"
    answers = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return _question([context] * 4, [" " + a for a in answers], ["Answer:"] * 4, 3)


_ARC_NUMERIC_LABELS = {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}


def _choice_index(row: Row) -> int:
    """Index of `answerKey` among `choices.label`; numeric keys "1".."5" are read as "A".."E" (ARC)."""
    labels = [_ARC_NUMERIC_LABELS.get(label, label) for label in row["choices"]["label"]]
    key = row["answerKey"].strip()
    return labels.index(_ARC_NUMERIC_LABELS.get(key, key))


def arc(row: Row) -> Question:
    context = f"Question: {row['question']}\nAnswer:"
    choices = [" " + c for c in row["choices"]["text"]]
    return _question([context] * len(choices), choices, ["Answer:"] * len(choices), _choice_index(row))


def copa(row: Row) -> Question:
    connective = "because" if row["question"] == "cause" else "therefore"
    context = row["premise"].strip()[:-1] + " " + connective  # the premise loses its final period

    def lower_first(choice: str) -> str:
        return choice[0].lower() + choice[1:]

    choices = [" " + lower_first(row["choice1"]), " " + lower_first(row["choice2"])]
    return _question([context] * 2, choices, [connective] * 2, int(row["label"]))


register(Task("arc_challenge", arc, "acc_uncond", "allenai/ai2_arc", "ARC-Challenge"))
register(Task("arc_easy", arc, "acc_uncond", "allenai/ai2_arc", "ARC-Easy"))
register(Task("boolq", boolq, "acc", "google/boolq"))
register(Task("copa", copa, "acc", "aps/super_glue", "copa"))
register(Task("hellaswag", hellaswag, "acc_per_token", "Rowan/hellaswag"))
register(Task("openbookqa", openbookqa, "acc_uncond", "allenai/openbookqa", "main"))
register(Task("piqa", piqa, "acc_per_token", "ybisk/piqa"))
register(Task("sciq", sciq, "acc", "allenai/sciq"))
register(Task("winogrande", winogrande, "acc_per_token", "allenai/winogrande", "winogrande_xl"))

# The OLMES suites of OLMo-2 and OLMo-3: AllenAI's request sets and MMLU, with their own task types
# (olmes.py, mmlu.py), scored by olmes_scoring.py.
TASKS.update(olmes_tasks())
TASKS.update(mmlu_tasks())
TASK_GROUPS.update(OLMES_SUITES)
