"""Shared helpers for the evaluation tests: a tiny tokenizer, a tiny OLMo and an independent HF reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from olmo_jax.config import EvalConfig, ModelConfig

# Text the test tokenizer is trained on: enough English for BPE merges such as " yes" or " the".
CORPUS = [
    "Question: How do I ready a guinea pig cage for its new occupants?\nAnswer: yes no yes no",
    "The man turned on the faucet therefore water flowed from the spout because the toilet filled.",
    "Sarah was a much better surgeon than Maria so she always got the easier cases.",
    "Frilled sharks and angler fish live far beneath the surface of the ocean, deep sea animals.",
    "A wetland is an area that is wet for all or part of the year. Plains, grassland, tundra.",
    "Property tax or house tax is a local tax on buildings, along with appurtenant land.",
    "Roof shingle removal: A man is sitting on a roof. He starts pulling up roofing on a roof.",
] * 4


def train_tokenizer(path: Path, vocab_size: int = 400) -> Path:
    """A byte-level BPE `tokenizers` file with OLMo's special tokens, trained on CORPUS (milliseconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.save(str(path))
    return path


def tiny_config(vocab_size: int, max_length: int, eos_token_id: int, pad_token_id: int) -> ModelConfig:
    """A 2-layer, 32-wide OLMo-1 (untied head, to cover lm_head too) whose embedding covers the vocab."""
    return ModelConfig(
        d_model=32,
        n_heads=2,
        n_layers=2,
        mlp_ratio=4,
        vocab_size=vocab_size,
        embedding_size=64 * math.ceil(vocab_size / 64),
        max_sequence_length=max_length,
        weight_tying=False,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def hf_loglikelihood(hf_model, context: list[int], continuation: list[int], max_length: int) -> float:
    """log p(continuation | context) from transformers, built from OLMo's definition directly:
    input (context + continuation)[:-1] cut from the left to `max_length`; the continuation's tokens that
    remain as targets are summed (float64 log-softmax over the padded vocab)."""
    import torch

    full = list(context) + list(continuation)
    inputs, targets = full[:-1][-max_length:], full[1:][-max_length:]
    scored = min(len(continuation), len(inputs))
    with torch.no_grad():
        logits = hf_model(torch.tensor([inputs])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1).numpy()
    positions = np.arange(len(inputs) - scored, len(inputs))
    return float(log_probs[positions, np.asarray(targets)[positions]].sum())


COPA = [
    {
        "premise": "The man turned on the faucet.",
        "choice1": "The toilet filled.",
        "choice2": "Water flowed.",
        "question": "effect",
        "label": 1,
    },
    {
        "premise": "The hamburger meat browned.",
        "choice1": "The cook froze it.",
        "choice2": "The cook grilled it.",
        "question": "cause",
        "label": 1,
    },
]
BOOLQ = [{"question": "is it a tax", "answer": True, "passage": "Property tax is a local tax on buildings."}]


def write_eval_data(root: Path) -> EvalConfig:
    """Two tasks and one perplexity set on disk, and the EvalConfig naming them."""
    (root / "data").mkdir(parents=True)
    for name, rows in (("copa", COPA), ("boolq", BOOLQ)):
        (root / "data" / f"{name}.validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ppl = root / "ppl" / "val" / "news.jsonl"
    ppl.parent.mkdir(parents=True)
    ppl.write_text(json.dumps({"text": "The man turned on the faucet and water flowed from the spout."}) + "\n")
    return EvalConfig(
        tasks=["copa", "boolq"], ppl_paths=[str(root / "ppl")], data_dir=str(root / "data"), limit=5, batch_size=4
    )
