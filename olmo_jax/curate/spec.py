"""The curation pipeline spec: a YAML file naming sources, ordered steps with parameters, a tokenizer, an executor.

    sources:
      - {name: web, paths: ["raw/web/*.jsonl.gz"], text_field: text, id_field: id, url_field: url}
    tokenizer: allenai/gpt-neox-olmo-dolma-v1_5
    steps:
      - language: {languages: [en]}
      - gopher_quality: {}
      - dedup_documents: {}
      - mix: {weights: {web: 2.0}}
    executor: {type: local, workers: 8}

Everything is checked here, before anything runs or is written: an unknown key, step or parameter, a value of the
wrong type, a source pattern that matches no file. Step parameters are checked against each step's defaults
(`olmo_jax.curate.steps.step_defaults`), which are the published Dolma / Gopher / C4 / FineWeb values.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from olmo_jax.curate.steps import check_order, resolve_params
from olmo_jax.errors import CurationError

EXECUTORS = ("local", "slurm", "ray")
START_METHODS = ("forkserver", "spawn", "fork")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_TOP_KEYS = ("sources", "steps", "tokenizer", "executor", "max_tokens_per_file", "count_tokens", "output")
_SOURCE_KEYS = ("name", "paths", "text_field", "id_field", "url_field")
_EXECUTOR_KEYS = ("type", "workers", "tasks", "start_method", "slurm", "ray")
_FIELD_DEFAULTS = {"text_field": "text", "id_field": "id", "url_field": "url"}


@dataclass(frozen=True)
class SourceSpec:
    """One named source: its files (globs expanded, sorted) and which JSON fields hold text, id and URL."""

    name: str
    paths: tuple[str, ...]
    files: tuple[str, ...]
    text_field: str = "text"
    id_field: str = "id"
    url_field: str = "url"


@dataclass(frozen=True)
class StepSpec:
    """One pipeline step: its kind (e.g. `gopher_quality`), its unique label in the report, all its parameters."""

    kind: str
    label: str
    params: dict[str, Any]


@dataclass(frozen=True)
class ExecutorSpec:
    """Where tasks run. `tasks` (default: one per input file) fixes the sharding and so the output; the rest
    (type, workers, start method, cluster resources) only changes where and how fast."""

    type: str = "local"
    workers: int | None = None  # default: every core
    tasks: int | None = None
    start_method: str = "forkserver"
    slurm: dict[str, Any] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline."""

    sources: tuple[SourceSpec, ...]
    steps: tuple[StepSpec, ...]
    tokenizer: str
    executor: ExecutorSpec
    max_tokens_per_file: int = 500_000_000
    count_tokens: bool = True
    output: str | None = None

    @property
    def files(self) -> list[tuple[int, str]]:
        """Every input file as (source index, path), in source order then path order: the order of the output."""
        return [(i, path) for i, source in enumerate(self.sources) for path in source.files]

    @property
    def tasks(self) -> int:
        """Shards of the corpus: `executor.tasks`, at most one per input file."""
        files = len(self.files)
        return min(self.executor.tasks, files) if self.executor.tasks else files

    def fingerprint(self) -> str:
        """16 hex digits naming what the output depends on: sources (files and sizes), steps, tokenizer, shards."""
        description = {
            "sources": [{**asdict(s), "files": [[f, _size(f)] for f in s.files], "paths": None} for s in self.sources],
            "steps": [asdict(s) for s in self.steps],
            "tokenizer": self.tokenizer,
            "max_tokens_per_file": self.max_tokens_per_file,
            "count_tokens": self.count_tokens,
            "tasks": self.tasks,
        }
        return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=list))


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _check_keys(value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CurationError(f"{where} must be a mapping with keys {', '.join(allowed)}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise CurationError(f"unknown key {where}.{unknown[0]}; valid keys: {', '.join(allowed)}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise CurationError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CurationError(f"{where} must be a positive integer, got {value!r}")
    return value


def expand_source_paths(patterns: list[str], where: str, base: Path) -> tuple[str, ...]:
    """Files of `patterns` (globs, folders read recursively; relative to `base`), each pattern's matches sorted."""
    files: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if not os.path.isabs(pattern):
            pattern = str(base / pattern)
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        found = []
        for match in matches:
            if os.path.isdir(match):
                found.extend(sorted(str(p) for p in Path(match).rglob("*") if p.is_file()))
            elif os.path.isfile(match):
                found.append(match)
        if not found:
            raise CurationError(f"{where}: {pattern!r} matches no file")
        files.extend(found)
    return tuple(dict.fromkeys(files))


def _source(value: Any, where: str, base: Path) -> SourceSpec:
    value = _check_keys(value, where, _SOURCE_KEYS)
    name = _string(value.get("name"), f"{where}.name")
    if not _NAME.match(name):
        raise CurationError(f"{where}.name {name!r} may hold only letters, digits, '_', '.' and '-'")
    paths = value.get("paths")
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise CurationError(f"{where}.paths must be a non-empty list of paths or globs")
    fields = {k: _string(value.get(k, default), f"{where}.{k}") for k, default in _FIELD_DEFAULTS.items()}
    files = expand_source_paths(paths, f"{where}.paths", base)
    return SourceSpec(name=name, paths=tuple(paths), files=files, **fields)


def _steps(value: Any, source_names: list[str], base: Path) -> tuple[StepSpec, ...]:
    if not isinstance(value, list) or not value:
        raise CurationError("steps must be a non-empty list of {step_name: {parameters}} entries")
    steps: list[StepSpec] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(value):
        where = f"steps[{number}]"
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise CurationError(f"{where} must be one {{step_name: {{parameters}}}} mapping, got {entry!r}")
        ((kind, params),) = entry.items()
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise CurationError(f"{where}.{kind} parameters must be a mapping, got {params!r}")
        resolved = resolve_params(str(kind), params, f"{where}.{kind}", source_names, base)
        seen[kind] = seen.get(kind, 0) + 1
        label = kind if seen[kind] == 1 else f"{kind}-{seen[kind]}"
        steps.append(StepSpec(kind=str(kind), label=label, params=resolved))
    check_order(steps)
    return tuple(steps)


def _executor(value: Any) -> ExecutorSpec:
    value = _check_keys(value if value is not None else {}, "executor", _EXECUTOR_KEYS)
    kind = value.get("type", "local")
    if kind not in EXECUTORS:
        raise CurationError(f"invalid value {kind!r} for executor.type; valid choices: {', '.join(EXECUTORS)}")
    start_method = value.get("start_method", "forkserver")
    if start_method not in START_METHODS:
        raise CurationError(
            f"invalid value {start_method!r} for executor.start_method; valid choices: {', '.join(START_METHODS)}"
        )
    tasks = value.get("tasks")
    for key in ("slurm", "ray"):
        if not isinstance(value.get(key, {}), dict):
            raise CurationError(f"executor.{key} must be a mapping of executor arguments")
    return ExecutorSpec(
        type=kind,
        workers=None if value.get("workers") is None else _positive_int(value["workers"], "executor.workers"),
        tasks=None if tasks is None else _positive_int(tasks, "executor.tasks"),
        start_method=start_method,
        slurm=dict(value.get("slurm", {})),
        ray=dict(value.get("ray", {})),
    )


def parse_spec(raw: Any, base: Path) -> PipelineSpec:
    """A `PipelineSpec` from the parsed YAML `raw`; relative source paths are read from `base`."""
    raw = _check_keys(raw, "the pipeline spec", _TOP_KEYS)
    for key in ("sources", "steps", "tokenizer"):
        if key not in raw:
            raise CurationError(f"the pipeline spec needs {key!r}")
    if not isinstance(raw["sources"], list) or not raw["sources"]:
        raise CurationError("sources must be a non-empty list of {name, paths, ...} entries")
    sources = tuple(_source(s, f"sources[{i}]", base) for i, s in enumerate(raw["sources"]))
    names = [s.name for s in sources]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise CurationError(f"source name {duplicate!r} is used twice")
    count_tokens = raw.get("count_tokens", True)
    if not isinstance(count_tokens, bool):
        raise CurationError(f"count_tokens must be true or false, got {count_tokens!r}")
    output = raw.get("output")
    if output is not None:
        output = str(base / _string(output, "output")) if not os.path.isabs(str(output)) else str(output)
    return PipelineSpec(
        sources=sources,
        steps=_steps(raw["steps"], names, base),
        tokenizer=_string(raw["tokenizer"], "tokenizer"),
        executor=_executor(raw.get("executor")),
        max_tokens_per_file=_positive_int(raw.get("max_tokens_per_file", 500_000_000), "max_tokens_per_file"),
        count_tokens=count_tokens,
        output=output,
    )


def load_spec(path: str | os.PathLike) -> PipelineSpec:
    """Read and validate the pipeline spec at `path` (relative paths inside it are relative to its folder)."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"pipeline spec {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise CurationError(f"pipeline spec {path}{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    return parse_spec(raw, path.resolve().parent)
