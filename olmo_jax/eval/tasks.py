"""Downstream tasks: OLMo's zero-shot templates and the task registry.

Each task turns one dataset row into a `Question`: a list of candidates, each a (context, continuation)
pair plus the context used for unconditional ("domain-conditional") normalisation, and the index of the
correct candidate. The strings follow OLMo's in-loop evaluator exactly (allenai/OLMo's
`olmo/eval/downstream.py`; golden tests hold them); every continuation starts with a space.

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
# acc: the sum of the continuation's token log-probabilities; acc_per_token: that sum over its tokens;
# acc_per_char: over its characters (leading space excluded, as OLMo); acc_uncond: log p(cont | context) -
# log p(cont | unconditional prompt) (PMI, a difference); pmi_dc: log p(cont | context) / log p(cont |
# unconditional prompt) (OLMo's pmi_dc, a ratio).
METRICS = ("acc", "acc_per_token", "acc_per_char", "acc_uncond", "pmi_dc")
# OLMo's in-loop `metric_type` names (olmo/eval/downstream.py `ICLMetric`) for the metrics it shares with us.
OLMO_METRIC_TYPES = {"acc": "acc", "acc_per_char": "len_norm", "pmi_dc": "pmi_dc"}


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
    primary_metric: str  # the OLMo paper's choice of normalisation (offline, Catwalk), one of METRICS
    hf_path: str  # `datasets.load_dataset` path, used when no local copy is given
    hf_name: str | None = None
    split: str = "validation"
    # What OLMo's in-loop evaluator logs for the task (olmo/eval/downstream.py: the dataset class's
    # `metric_type`, one of OLMO_METRIC_TYPES' keys here) and its label there (`label_to_task_map`).
    inloop_metric: str = "acc"
    olmo_label: str | None = None

    @property
    def olmo_metric_name(self) -> str:
        """OLMo's in-loop metric name, `<label>_<metric_type>` (logged by OLMo as eval/downstream/<this>)."""
        return f"{self.olmo_label or self.name}_{OLMO_METRIC_TYPES[self.inloop_metric]}"


TASKS: dict[str, Task] = {}

# The OLMo paper's 9 core tasks, in the order of its tables.
CORE9 = ("arc_challenge", "arc_easy", "boolq", "copa", "hellaswag", "openbookqa", "piqa", "sciq", "winogrande")
TASK_GROUPS = {"core9": CORE9}


def register(task: Task) -> Task:
    """Add `task` to the registry (a name may be registered once)."""
    if task.name in TASKS:
        raise EvalError(f"task {task.name!r} is already registered")
    if task.primary_metric not in METRICS:
        raise EvalError(f"task {task.name!r}: primary_metric {task.primary_metric!r} is not one of {METRICS}")
    if task.inloop_metric not in OLMO_METRIC_TYPES:
        raise EvalError(
            f"task {task.name!r}: inloop_metric {task.inloop_metric!r} is not one of {tuple(OLMO_METRIC_TYPES)}"
        )
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


# Offline the paper's choice (`primary_metric`); in-loop OLMo's `metric_type`: len_norm (our acc_per_char)
# for piqa, hellaswag, openbookqa and arc_challenge, acc for the others.
register(Task("arc_challenge", arc, "acc_uncond", "allenai/ai2_arc", "ARC-Challenge", inloop_metric="acc_per_char"))
register(Task("arc_easy", arc, "acc_uncond", "allenai/ai2_arc", "ARC-Easy"))
register(Task("boolq", boolq, "acc", "google/boolq"))
register(Task("copa", copa, "acc", "aps/super_glue", "copa"))
register(Task("hellaswag", hellaswag, "acc_per_token", "Rowan/hellaswag", inloop_metric="acc_per_char"))
register(
    Task(
        "openbookqa", openbookqa, "acc_uncond", "allenai/openbookqa", "main",
        inloop_metric="acc_per_char", olmo_label="openbook_qa",
    )
)  # fmt: skip
register(Task("piqa", piqa, "acc_per_token", "ybisk/piqa", inloop_metric="acc_per_char"))
register(Task("sciq", sciq, "acc", "allenai/sciq"))
register(Task("winogrande", winogrande, "acc_per_token", "allenai/winogrande", "winogrande_xl"))

# The OLMES suites of OLMo-2 and OLMo-3: AllenAI's request sets and MMLU, with their own task types
# (olmes.py, mmlu.py), scored by olmes_scoring.py.
TASKS.update(olmes_tasks())
TASKS.update(mmlu_tasks())
TASK_GROUPS.update(OLMES_SUITES)
