"""The training loop's parts decide themselves when they are due: here, the in-loop evaluation."""

import pytest

from olmo_jax.config import load_config
from olmo_jax.errors import ConfigError
from olmo_jax.loop import InLoopEvaluation

TOKENIZER = object()  # stands in for a tokenizer: deciding when to evaluate never uses it


def evaluating(**overrides):
    return load_config("tiny", {"evaluation.tasks": '["copa"]', **overrides})


def due_steps(evaluation, last):
    return [step for step in range(1, last + 1) if evaluation.is_due(step)]


def test_evaluation_is_due_every_eval_interval_and_after_the_last_step():
    evaluation = InLoopEvaluation(evaluating(eval_interval="4"), TOKENIZER, setup=None, last_step=10)
    assert due_steps(evaluation, 10) == [4, 8, 10]


def test_evaluation_is_never_due_without_an_interval_or_anything_to_evaluate():
    no_interval = InLoopEvaluation(evaluating(), TOKENIZER, setup=None, last_step=10)
    nothing_to_evaluate = InLoopEvaluation(load_config("tiny", {"eval_interval": "2"}), None, setup=None, last_step=10)
    assert due_steps(no_interval, 10) == due_steps(nothing_to_evaluate, 10) == []


def test_evaluation_without_a_tokenizer_fails_before_training():
    with pytest.raises(ConfigError, match="in-loop evaluation needs a tokenizer"):
        InLoopEvaluation(evaluating(eval_interval="2"), None, setup=None, last_step=10)
