"""Vocabulary mismatches are refused with one line: eval with a tokenizer larger than the model's vocabulary,
`from_pretrained` on out-of-range token ids, and `from-hf` of a config.json whose sizes the tensors contradict
(checked before anything is built per layer)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from olmo_jax.checkpoint import write_params_checkpoint
from olmo_jax.config import ModelConfig, TrainConfig
from olmo_jax.convert.hf import export_hf, import_hf
from olmo_jax.data.tokenizer import load_tokenizer
from olmo_jax.errors import ConversionError, EvalError, InputError
from olmo_jax.eval.evaluator import Evaluator
from olmo_jax.model import OLMo
from olmo_jax.pretrained import from_pretrained

TINY = ModelConfig(
    d_model=32, n_heads=2, n_layers=1, vocab_size=64, embedding_size=64, max_sequence_length=16,
    eos_token_id=2, pad_token_id=0,
)  # fmt: skip


def _params() -> dict[str, np.ndarray]:
    state = nnx.state(OLMo(TINY, rngs=nnx.Rngs(0)), nnx.Param).to_pure_dict()
    return {name: np.asarray(value) for name, value in state.items()}


def test_eval_refuses_a_tokenizer_larger_than_the_models_vocabulary() -> None:
    tokenizer = load_tokenizer("builtin")  # 8000 pieces
    model = OLMo(TINY, rngs=nnx.Rngs(0))
    with pytest.raises(EvalError, match=r"has 8000 tokens but the model's vocabulary has 64: it is not this model's"):
        Evaluator(tokenizer, [], max_length=16).run(model, batch_size=1)


def test_from_pretrained_refuses_out_of_range_token_ids(tmp_path: Path) -> None:
    write_params_checkpoint(tmp_path, 1, _params(), TrainConfig(model=TINY))
    pretrained = from_pretrained(tmp_path)
    assert pretrained(np.array([[1, 63]])).shape == (1, 2, 64)
    for bad in (64, -1):
        with pytest.raises(InputError, match=f"token id {bad} is out of range for the model's vocabulary of 64"):
            pretrained(np.array([[1, bad]]))


def test_from_hf_checks_config_sizes_against_the_tensors_before_building_anything(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    export_hf(_params(), TINY, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2_000_000_000}))
    started = time.perf_counter()
    with pytest.raises(ConversionError, match="says num_hidden_layers=2000000000 but the weights hold 1 layers"):
        import_hf(tmp_path)
    assert time.perf_counter() - started < 5  # today's code builds 2e9 layer specs first (a MemoryError in 30 s)

    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 50_304}))
    with pytest.raises(ConversionError, match=r"embed_tokens.weight has shape \[64, 32\] .* say \[50304, 32\]"):
        import_hf(tmp_path)
