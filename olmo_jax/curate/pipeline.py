"""Planning a curation run into datatrove stages and running them on a datatrove executor.

A spec's steps become stages (each a list of datatrove steps run as N tasks): consecutive document-level steps
share one stage; a dedup step adds its signature / find / cluster stages and filters while the next stage reads
the shards; the last stage tokenizes. For example `[language, c4, dedup_documents, mix]` is

    01-read                     N tasks  sources → language → c4 → shards/01
    02-dedup_documents-signatures N      shards/01 → ExactDedupSignature
    03-dedup_documents-find     1 task   ExactFindDedups
    04-dedup_documents+mix      N        shards/01 → ExactDedupFilter → mix → shards/04
    05-tokenize                 1        shards/04 → prepare → <output>/tokens (+ provenance), report

Executors (`executor.type`): `local` (datatrove's `LocalPipelineExecutor`, a process pool of `workers`), `slurm`
(`SlurmPipelineExecutor`: one job array per stage, each depending on the previous; `executor.slurm` holds its
arguments, e.g. partition and time) and `ray` (`RayPipelineExecutor` on `ray.init(address=executor.ray.address)`;
the rest of `executor.ray` are its arguments). All three skip the tasks whose completion marker exists, so a
killed run relaunched with the same command redoes only unfinished tasks; what each task writes appears only
when complete. `<output>/work/spec.json` records the spec's fingerprint: relaunching into an output made by a
different spec is refused (pass `--restart` to start over).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep

from olmo_jax import atomic
from olmo_jax.curate import decontamination, dedup, report
from olmo_jax.curate.shards import RemovalLog, ShardReader, ShardWriter, SourceReader
from olmo_jax.curate.spec import PipelineSpec, StepSpec
from olmo_jax.curate.steps import Counted, build_document_step
from olmo_jax.curate.tokens import TOKENS_DIR, TokenizeStep
from olmo_jax.errors import CurationError, RunError

WORK_DIR = "work"
SPEC_RECORD = "spec.json"
# executor arguments the pipeline sets itself
_MANAGED = ("self", "pipeline", "tasks", "logging_dir", "depends", "skip_completed", "workers")


@dataclass
class Stage:
    """One datatrove stage: `tasks` tasks, each running `steps` in order."""

    name: str
    tasks: int
    steps: list[PipelineStep]


@dataclass
class Plan:
    """What a run executes: its stages, and the decontamination indices to build before they run."""

    stages: list[Stage]
    indices: list[tuple[dict[str, Any], Path]]
    info: dict[str, Any]


class _Planner:
    def __init__(self, spec: PipelineSpec, output: Path, workers: int) -> None:
        self.spec = spec
        self.output = output
        self.work = output / WORK_DIR
        self.tasks = spec.tasks
        self.tokenizer = spec.tokenizer if spec.count_tokens else None
        self.stages: list[Stage] = []
        self.indices: list[tuple[dict[str, Any], Path]] = []
        files = [
            {"source": s.name, "path": f, "text_field": s.text_field, "id_field": s.id_field, "url_field": s.url_field}
            for s in spec.sources
            for f in s.files
        ]
        self.head: list[PipelineStep] = [SourceReader(files, self.tasks, self.tokenizer, self.log("read"))]
        self.head_role = "read"
        self.plain: Path | None = None  # the shard folder, when `head` only reads it
        self.workers = workers

    def log(self, label: str, reason: str = "") -> RemovalLog:
        return RemovalLog(self.work / "removed" / label, reason)

    def name(self, role: str) -> str:
        return f"{len(self.stages) + 1:02d}-{role}"

    def counted(self, step: StepSpec, inner: PipelineStep, changes_text: bool) -> Counted:
        return Counted(inner, step.label, self.tokenizer, changes_text)

    def add(self, role: str, tasks: int, steps: list[PipelineStep]) -> str:
        name = self.name(role)
        self.stages.append(Stage(name, tasks, steps))
        return name

    def flush(self) -> Path:
        """End the current document-level stage: write its shards; returns their folder."""
        if self.plain is not None:
            return self.plain
        name = self.name(self.head_role)
        folder = self.work / "shards" / name
        self.add(self.head_role, self.tasks, [*self.head, ShardWriter(folder, self.tasks)])
        self.reading(folder)
        return folder

    def reading(self, folder: Path, role: str = "shards") -> None:
        self.head, self.head_role, self.plain = [ShardReader(folder, self.tasks)], role, folder

    def then(self, step: PipelineStep, label: str) -> None:
        self.head.append(step)
        self.head_role = label if self.head_role in ("shards",) else f"{self.head_role}+{label}"
        self.plain = None

    def step(self, step: StepSpec) -> None:
        kind, label, params = step.kind, step.label, step.params
        if kind in ("dedup_urls", "dedup_documents"):
            shards = self.flush()
            signature, find, duplicates = dedup.exact_stages(kind, self.work / "dedup" / label)
            self.add(f"{label}-signatures", self.tasks, [ShardReader(shards, self.tasks), *signature])
            self.add(f"{label}-find", 1, find)
            self.reading(shards)
            reason = "duplicate_url" if kind == "dedup_urls" else "duplicate_document"
            filter_step = dedup.exact_filter(kind, duplicates, self.log(label, reason))
            self.then(self.counted(step, filter_step, False), label)
        elif kind == "dedup_minhash":
            shards = self.flush()
            work = self.work / "dedup" / label
            for role, tasks, steps in dedup.minhash_stages(params, work):
                readers = [ShardReader(shards, self.tasks)] if role == "signatures" else []
                self.add(f"{label}-{role}", tasks or self.tasks, [*readers, *steps])
            self.reading(shards)
            filter_step = dedup.minhash_filter(work, self.log(label, "near_duplicate"))
            self.then(self.counted(step, filter_step, False), label)
        elif kind == "dedup_paragraphs":
            shards = self.flush()
            name = self.name(label)
            folder = self.work / "shards" / name
            log = self.log(label)
            bloom = dedup.ParagraphBloomDedup(**params, shards=shards, tasks=self.tasks, exclusion_writer=log)
            reader = ShardReader(shards, self.tasks, all_shards=True)
            writer = ShardWriter(folder, self.tasks, all_shards=True)
            self.add(label, 1, [reader, self.counted(step, bloom, True), writer])
            self.reading(folder)
        elif kind == "decontaminate":
            index = self.work / "decontamination" / label
            self.indices.append((params, index))
            filter_step = decontamination.decontamination_filter(params, index, self.log(label, "contaminated"))
            self.then(self.counted(step, filter_step, False), label)
        else:
            inner, changes_text = build_document_step(kind, params, self.log(label))
            self.then(self.counted(step, inner, changes_text), label)

    def finish(self, info: dict[str, Any]) -> Plan:
        shards = self.flush()
        tokenize = TokenizeStep(
            shards, self.tasks, self.output, self.spec.tokenizer, self.spec.max_tokens_per_file, self.workers, info
        )
        self.add("tokenize", 1, [tokenize])
        return Plan(self.stages, self.indices, info)


def plan(spec: PipelineSpec, output: Path, workers: int) -> Plan:
    """The stages of `spec` writing into `output` (see the module docstring); `workers`: `prepare`'s processes."""
    planner = _Planner(spec, output, workers)
    for step in spec.steps:
        planner.step(step)
    info = {
        "fingerprint": spec.fingerprint(),
        "work": str(output / WORK_DIR),
        "sources": [s.name for s in spec.sources],
        "steps": [{"label": s.label, "kind": s.kind, "params": s.params} for s in spec.steps],
        "decontamination_index": None,
    }
    return planner.finish(info)


class _LocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor; `quiet` sends each task's INFO log to its log file only (errors still print)."""

    quiet = True

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        # datatrove logs INFO to the console for local rank 0 only; its log files always get everything.
        return super()._run_for_rank(rank, local_rank + 1 if self.quiet else local_rank, node_rank)


def _executor_arguments(cls: type, given: dict[str, Any], where: str) -> dict[str, Any]:
    allowed = [n for n in inspect.signature(cls.__init__).parameters if n not in _MANAGED]
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise CurationError(f"unknown key {where}.{unknown[0]}; valid keys: {', '.join(allowed)}")
    return dict(given)


def executors(plan: Plan, spec: PipelineSpec, work: Path, workers: int, verbose: bool = False) -> list[Any]:
    """One datatrove executor per stage, for `spec.executor.type` (SLURM stages depend on the previous one).

    `workers`: tasks run at once (-1 on a cluster: as many as it schedules)."""
    kind = spec.executor.type
    made: list[Any] = []
    for stage in plan.stages:
        logging_dir = str(work / "stages" / stage.name)
        if kind == "local":
            executor = _LocalExecutor(
                stage.steps,
                tasks=stage.tasks,
                workers=min(workers, stage.tasks),
                logging_dir=logging_dir,
                start_method=spec.executor.start_method,
            )
            executor.quiet = not verbose
        elif kind == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            arguments = {"job_name": f"curate-{stage.name}", **spec.executor.slurm}
            arguments = _executor_arguments(SlurmPipelineExecutor, arguments, "executor.slurm")
            missing = [k for k in ("partition", "time") if k not in arguments]
            if missing:
                raise CurationError(f"executor.slurm needs {missing[0]!r} (e.g. partition: cpu, time: '12:00:00')")
            executor = SlurmPipelineExecutor(
                stage.steps,
                tasks=stage.tasks,
                workers=workers,
                logging_dir=logging_dir,
                depends=made[-1] if made else None,
                **arguments,
            )
        else:
            from datatrove.executor import RayPipelineExecutor

            arguments = {k: v for k, v in spec.executor.ray.items() if k not in ("address", "num_cpus")}
            arguments = _executor_arguments(RayPipelineExecutor, arguments, "executor.ray")
            at_once = min(workers, stage.tasks) if workers > 0 else stage.tasks
            executor = RayPipelineExecutor(
                stage.steps, tasks=stage.tasks, workers=at_once, logging_dir=logging_dir, **arguments
            )
        made.append(executor)
    return made


def _prepare_output(spec: PipelineSpec, output: Path, restart: bool) -> Path:
    """Create `output/work` (or check that it belongs to this spec); with `restart`, remove an earlier run first."""
    work = output / WORK_DIR
    record = work / SPEC_RECORD
    fingerprint = spec.fingerprint()
    if restart:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(output / TOKENS_DIR, ignore_errors=True)
        for name in (report.REPORT_JSON, report.REPORT_TEXT):
            (output / name).unlink(missing_ok=True)
    elif record.is_file():
        previous = json.loads(record.read_text()).get("fingerprint")
        if previous != fingerprint:
            raise CurationError(
                f"output {output} holds a run of another pipeline (fingerprint {previous}, this one {fingerprint}): "
                "sources, steps, tokenizer or tasks differ",
                hint="choose another --output, or pass --restart to discard that run",
            )
    elif output.exists() and any(output.iterdir()):
        raise CurationError(f"output {output} exists and is not a curation run; choose an empty or new folder")
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_json(record, {"fingerprint": fingerprint, "spec": spec.to_dict()}, indent=1)
    return work


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(
    spec: PipelineSpec,
    output: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    restart: bool = False,
    verbose: bool = False,
) -> dict[str, Any] | None:
    """Run (or resume) `spec`; returns the report (plus `stage_seconds`, each stage's wall time in this run), or
    None when the stages were submitted to SLURM."""
    destination = output or spec.output
    if destination is None:
        raise CurationError("no output folder: pass -o/--output or set output in the spec")
    output = Path(destination).resolve()
    cluster = {"slurm": spec.executor.slurm, "ray": spec.executor.ray}.get(spec.executor.type)
    workers = workers or spec.executor.workers or (-1 if cluster is not None else os.cpu_count() or 1)
    # `prepare` in the last task uses the cores that task has: all local ones, or a cluster task's CPUs.
    the_plan = plan(spec, output, workers if cluster is None else int(cluster.get("cpus_per_task", 1)))
    runners = executors(the_plan, spec, output / WORK_DIR, workers, verbose)  # checks executor arguments first
    work = _prepare_output(spec, output, restart)
    summaries = {}
    for params, folder in the_plan.indices:
        if not (folder / "summary.json").is_file():
            decontamination.build_index(params, folder)
        summaries[folder.name] = json.loads((folder / "summary.json").read_text())
    the_plan.info["decontamination_index"] = summaries or None
    if spec.executor.type == "slurm":
        runners[-1].run()
        _say(f"submitted {len(runners)} stages to SLURM; the report will be {output / report.REPORT_JSON}")
        return None
    if spec.executor.type == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(address=spec.executor.ray.get("address"), num_cpus=spec.executor.ray.get("num_cpus"))
    seconds = {}
    for number, (stage, runner) in enumerate(zip(the_plan.stages, runners, strict=True), start=1):
        start = time.perf_counter()
        runner.run()
        incomplete = runner.get_incomplete_ranks()
        if incomplete:
            logs = work / "stages" / stage.name / "logs"
            raise RunError(f"stage {stage.name}: task(s) {incomplete[:5]} did not complete; see {logs}")
        seconds[stage.name] = time.perf_counter() - start
        _say(f"[{number}/{len(runners)}] {stage.name}: {stage.tasks} task(s), {seconds[stage.name]:.1f} s")
    return json.loads((output / report.REPORT_JSON).read_text()) | {"stage_seconds": seconds}
