"""Generative OLMES tasks: the answer rules by hand, the pipeline with a scripted model, and the shipped
sets end to end with a tiny model (generation itself is compared with transformers in test_generate.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from olmo_jax.config import ModelConfig
from olmo_jax.data.tokenizer import load_tokenizer
from olmo_jax.errors import EvalError
from olmo_jax.eval.evaluator import Evaluator
from olmo_jax.eval.generative import (
    answer_metrics,
    final_number,
    gold_answers,
    prepare_generative,
    score_generative_task,
    token_f1,
)
from olmo_jax.eval.tasks import TASKS, resolve_tasks
from olmo_jax.generate.decoding import cut_at_stop
from olmo_jax.model import OLMo

GSM8K_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]  # gsm8k/gold_bpb_5shot's metric_kwargs


def test_gsm8k_takes_the_last_number_and_ignores_commas_dollars_and_a_final_period():
    assert final_number("She makes 9 * 2 = $18 every day. So the answer is 18.") == "18"
    assert final_number("The total is 1,234 apples") == "1234"
    assert final_number("no number here") == "no number here"
    assert answer_metrics("gsm8k", " So the answer is 1,234.", "1234", GSM8K_IGNORE) == {"exact_match": 1.0}
    assert answer_metrics("gsm8k", " So the answer is 17.", "18", GSM8K_IGNORE) == {"exact_match": 0.0}
    assert answer_metrics("gsm8k", " It costs 2.5 dollars", "2.5", GSM8K_IGNORE) == {"exact_match": 1.0}


def test_squad_f1_and_exact_match_normalise_case_punctuation_and_articles():
    # "the Eiffel Tower." vs "Eiffel tower": equal after normalisation.
    metrics = answer_metrics("squad", " the Eiffel Tower.", ["Eiffel tower", "Paris"], [])
    assert metrics == {"f1": 1.0, "exact_match": 1.0}
    # 2 of 3 predicted tokens in a 2-token gold: precision 2/3, recall 1 -> F1 0.8.
    assert token_f1("Justin Timberlake performed", "Justin Timberlake") == pytest.approx(0.8)
    assert token_f1("nothing", "Justin Timberlake") == 0.0
    assert answer_metrics("drop", "swedish", [["swedish"]], []) == {"f1": 1.0, "exact_match": 1.0}
    assert gold_answers([["New", "York"], ["NYC"]]) == ["New York", "NYC"]
    with pytest.raises(EvalError, match="label 7"):
        gold_answers(7)


def test_completions_are_cut_at_the_first_stop_sequence():
    assert cut_at_stop(" 42\n\nQuestion: next", ["Question:", "\n\n"]) == (" 42", "\n\n")
    assert cut_at_stop(" 42", ["\n\n"]) == (" 42", None)


# --------------------------------------------------------------------------------------------------
# A hand-made generative set, a character tokenizer and a scripted model.
# --------------------------------------------------------------------------------------------------


class CharTokenizer:
    eos_token_id, pad_token_id, vocab_size = 0, 0, 256
    identity = "chars"

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


def write_generative_set(root: Path, task: str, docs: list[tuple[str, object]], max_gen_toks=20) -> None:
    folder = root / "oe_eval_tasks" / task / "bpb_5shot"
    folder.mkdir(parents=True)
    kwargs = {"max_gen_toks": max_gen_toks, "do_sample": False, "stop_sequences": ["\n\n", "Question:"]}
    config = {"task_config": {"primary_metric": "f1", "generation_kwargs": kwargs}}
    (folder / "config.json").write_text(json.dumps(config))
    lines = [
        {
            "request_type": "loglikelihood",
            "doc_id": i,
            "idx": 0,
            "label": label,
            "request": {"context": context, "continuation": " x", "stop_sequences": kwargs["stop_sequences"]},
        }
        for i, (context, label) in enumerate(docs)
    ]
    with gzip.open(folder / "requests.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))


def test_a_scripted_model_scores_what_its_completions_deserve(tmp_path):
    write_generative_set(tmp_path, "squad", [("Q: capital of France?\nA:", ["Paris"]), ("Q: 2+2?\nA:", ["four"])])
    tokenizer = CharTokenizer()
    prepared = prepare_generative(TASKS["squad_gen"], tmp_path, tokenizer, max_length=64)
    assert prepared.max_new_tokens == 20 and prepared.stop_sequences == ["\n\n", "Question:"]
    answers = {"Q: capital of France?\nA:": " Paris\n\nQuestion: more", "Q: 2+2?\nA:": " five"}
    asked = []

    def complete(prompts, max_new_tokens, stops):
        asked.append((len(prompts), max_new_tokens, list(stops)))
        return [tokenizer.encode(answers[tokenizer.decode(p)]) for p in prompts]

    result = score_generative_task(prepared, complete, tokenizer.decode, save_requests=True, batch_size=1)
    assert asked == [(1, 20, ["\n\n", "Question:"])] * 2
    assert result.primary_metric == "f1" and result.metrics == {"f1": 0.5, "exact_match": 0.5}
    assert [r["completion"] for r in sorted(result.request_log, key=lambda r: r["doc_id"])] == [" Paris", " five"]


def test_long_prompts_lose_their_left_end_and_a_set_without_generation_requests_is_named(tmp_path):
    write_generative_set(tmp_path, "squad", [("x" * 100 + "Q:", ["a"])], max_gen_toks=20)
    prepared = prepare_generative(TASKS["squad_gen"], tmp_path, CharTokenizer(), max_length=64)
    assert len(prepared.prompts[0]) == 44 and prepared.truncated == 1
    assert CharTokenizer().decode(prepared.prompts[0]).endswith("xQ:")
    with pytest.raises(EvalError, match="max_gen_toks=20 leaves no room"):
        prepare_generative(TASKS["squad_gen"], tmp_path, CharTokenizer(), max_length=20)


# --------------------------------------------------------------------------------------------------
# The shipped sets with a tiny random model (../shared; skipped without it).
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def shipped(shared_data) -> Path:
    root = shared_data / "eval" / "olmes"
    if not (root / "oe_eval_tasks" / "gsm8k").is_dir():
        pytest.skip(f"OLMES reference data {root} is absent")
    return root


def test_shipped_generative_sets_generate_and_score_end_to_end(shipped, shared_data):
    tokenizer = load_tokenizer(str(shared_data / "tokenizers" / "allenai_dolma2.json"))
    config = ModelConfig(
        d_model=32, n_heads=2, n_layers=2, vocab_size=100278, embedding_size=100352, max_sequence_length=1536,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=1,
    )  # fmt: skip
    model = OLMo(config, rngs=nnx.Rngs(0))
    evaluator = Evaluator(
        tokenizer, resolve_tasks("gsm8k_gen,naturalqs_open_gen"), 1536, limit=2, olmes_dir=shipped, save_requests=True
    )
    gsm8k, nq = evaluator.tasks
    assert (gsm8k.max_new_tokens, nq.max_new_tokens) == (512, 50)
    assert gsm8k.stop_sequences == ["Question:", "</s>", "<|im_end|>", "\n\n"]
    assert gsm8k.primary_metric == "exact_match" and nq.primary_metric == "f1"
    results = evaluator.run(model, batch_size=2)
    for result in results.tasks:
        assert result.questions == 2 and set(result.metrics) >= {"exact_match"}
        assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
        for entry in result.request_log:
            assert not any(s in entry["completion"] for s in ("\n\n", "Question:"))
    # A random model's completions are (almost surely) wrong: exact match 0 on GSM8K's numbers.
    assert results.tasks[0].metrics["exact_match"] == 0.0
    assert np.isfinite(results.tasks[1].metrics["f1"])
