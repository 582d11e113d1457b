"""Fine-tuning: chat templates, assistant-only labels, packing, the DPO losses and the fine-tuning data's errors.

The templates are checked against transformers itself (its Jinja rendering and `apply_chat_template` on an
exported tokenizer); the DPO losses against their published formulas written out in numpy; packed rows
against the same conversations one per row; completion log-probs against transformers' OlmoForCausalLM.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hf_support import to_transformers
from jinja2.sandbox import ImmutableSandboxedEnvironment

from olmo_jax.adapt.chat import JINJA_TEMPLATES, encode_chat, render
from olmo_jax.adapt.data import ConversationSource, PreferenceSource
from olmo_jax.adapt.losses import label_logprobs, pair_logprobs, preference_loss, sft_loss, trained_labels
from olmo_jax.config import ModelConfig
from olmo_jax.convert.tokenizer_files import write_hf_tokenizer
from olmo_jax.data.tokenizer import load_tokenizer
from olmo_jax.errors import ConfigError, DataError
from olmo_jax.model import OLMo, Packing

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a sorting algorithm."},
        {"role": "assistant", "content": "Merge sort."},
        {"role": "user", "content": "  And its cost?\n"},
        {"role": "assistant", "content": "O(n log n) comparisons."},
    ],
    [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "hi hi\n\n"},
    ],
    [{"role": "user", "content": "Unicode: naïve café — ok?"}, {"role": "assistant", "content": "Oui, très bien."}],
    [
        {"role": "user", "content": "def f(x):\n    return x"},
        {"role": "assistant", "content": "It returns its argument."},
        {"role": "user", "content": "thanks"},
    ],
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("builtin")


def tiny_model(tokenizer, seed: int = 0) -> OLMo:
    config = ModelConfig(
        d_model=32, n_heads=4, n_layers=2, mlp_ratio=2, vocab_size=tokenizer.vocab_size, embedding_size=8064,
        max_sequence_length=256, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        weight_tying=False,
    )  # fmt: skip
    return OLMo(config, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("template", sorted(JINJA_TEMPLATES))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_python_rendering_equals_the_jinja_template(template, generation_prompt):
    # transformers renders chat templates in this environment (`_compile_jinja_template`).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    for messages in CONVERSATIONS:
        expected = env.from_string(JINJA_TEMPLATES[template]).render(
            messages=messages, eos_token="</s>", bos_token="</s>", add_generation_prompt=generation_prompt
        )
        assert render(messages, template, "</s>", add_generation_prompt=generation_prompt) == expected


@pytest.mark.parametrize("template", sorted(JINJA_TEMPLATES))
def test_exported_tokenizer_apply_chat_template_gives_our_ids(template, tokenizer, tmp_path):
    from transformers import AutoTokenizer

    config = ModelConfig(vocab_size=tokenizer.vocab_size, embedding_size=8064, eos_token_id=tokenizer.eos_token_id)
    write_hf_tokenizer(Path(tokenizer.path), tmp_path, config, chat_template=template)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for messages in CONVERSATIONS:
        expected = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert encode_chat(tokenizer, messages, template)[0].tolist() == list(expected)


def test_only_assistant_turns_and_their_eos_are_trained(tokenizer):
    messages = CONVERSATIONS[1]
    for template in JINJA_TEMPLATES:
        ids, trained = encode_chat(tokenizer, messages, template)
        eos = tokenizer.eos_token_id
        pieces = np.split(ids[trained], np.flatnonzero(ids[trained] == eos) + 1)[:-1]  # each ends with EOS
        assert [tokenizer.decode(p[:-1].tolist()) for p in pieces] == ["Merge sort.", "O(n log n) comparisons."]
        assert all(p[-1] == eos for p in pieces)
        # The last turn only, as a DPO completion.
        ids_last, last = encode_chat(tokenizer, messages, template, trained_turns="last")
        assert ids_last.tolist() == ids.tolist()
        assert tokenizer.decode(ids[last][:-1].tolist()) == "O(n log n) comparisons."


# --------------------------------------------------------------------------------------------------
# DPO losses on fixed log-probs
# --------------------------------------------------------------------------------------------------

POLICY = np.array([[-10.0, -14.0], [-20.0, -18.0], [-7.5, -7.5]], np.float32)
REFERENCE = np.array([[-11.0, -13.0], [-19.0, -19.0], [-7.5, -7.5]], np.float32)
COUNTS = np.array([[4.0, 8.0], [10.0, 6.0], [3.0, 3.0]], np.float32)


def log_sigmoid(x):
    return -np.log1p(np.exp(-x))


@pytest.mark.parametrize(
    "loss_type,beta,smoothing,gamma,expected",
    [
        # DPO: -log σ(β[(π_c - π_r) - (ref_c - ref_r)]), with label smoothing ε mixing in the flipped label.
        ("sigmoid", 0.1, 0.0, 0.0, lambda h: -log_sigmoid(0.1 * h)),
        ("sigmoid", 0.1, 0.2, 0.0, lambda h: -0.8 * log_sigmoid(0.1 * h) - 0.2 * log_sigmoid(-0.1 * h)),
        # IPO: (h - 1/(2β))².
        ("ipo", 0.5, 0.0, 0.0, lambda h: (h - 1.0) ** 2),
    ],
)
def test_reference_based_losses_equal_their_formulas(loss_type, beta, smoothing, gamma, expected):
    h = (POLICY[:, 0] - POLICY[:, 1]) - (REFERENCE[:, 0] - REFERENCE[:, 1])
    losses, rewards = preference_loss(
        jnp.asarray(POLICY), jnp.asarray(REFERENCE), jnp.asarray(COUNTS), loss_type, beta, label_smoothing=smoothing
    )
    np.testing.assert_allclose(np.asarray(losses), expected(h), rtol=1e-6)  # fp32 arithmetic on O(1) values
    np.testing.assert_allclose(np.asarray(rewards), beta * (POLICY - REFERENCE), rtol=1e-6)


def test_length_normalised_dpo_and_simpo_equal_their_formulas():
    avg, ref_avg = POLICY / COUNTS, REFERENCE / COUNTS
    losses, _ = preference_loss(*(jnp.asarray(a) for a in (POLICY, REFERENCE, COUNTS)), "dpo_norm", 5.0)
    h = (avg[:, 0] - avg[:, 1]) - (ref_avg[:, 0] - ref_avg[:, 1])
    np.testing.assert_allclose(np.asarray(losses), -log_sigmoid(5.0 * h), rtol=1e-5)
    losses, rewards = preference_loss(*(jnp.asarray(a) for a in (POLICY, REFERENCE, COUNTS)), "simpo", 2.0, gamma=0.5)
    np.testing.assert_allclose(np.asarray(losses), -log_sigmoid(2.0 * (avg[:, 0] - avg[:, 1]) - 0.5), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(rewards), 2.0 * avg, rtol=1e-6)


def test_sigmoid_dpo_at_zero_margin_is_ln_2():
    losses, _ = preference_loss(*(jnp.asarray(a) for a in (POLICY[2:], REFERENCE[2:], COUNTS[2:])), "sigmoid", 0.1)
    assert float(losses[0]) == pytest.approx(math.log(2), rel=1e-7)


# --------------------------------------------------------------------------------------------------
# Rows: packing, completion log-probs, bad input
# --------------------------------------------------------------------------------------------------


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def rows(source):
    indices = np.arange(len(source))
    return {"input_ids": jnp.asarray(source.read(indices)), **jax.tree.map(jnp.asarray, source.row_fields(indices))}


def test_packed_and_unpacked_sft_give_the_same_loss(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CONVERSATIONS * 3])
    packed = ConversationSource([path], tokenizer, "tulu", 128, packing=True)
    unpacked = ConversationSource([path], tokenizer, "tulu", 128, packing=False)
    assert len(packed) < len(unpacked) == 15 and packed.efficiency > unpacked.efficiency
    model = tiny_model(tokenizer)
    graphdef, params = nnx.split(model)
    losses = []
    for source in (packed, unpacked):
        batch = rows(source)
        losses.append(float(sft_loss(graphdef, params, batch, trained_labels(batch))[0]))
    # Same tokens, positions and visible context in both layouts; only fp32 summation order differs.
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_packed_row_equals_each_document_alone(tokenizer):
    model = tiny_model(tokenizer)
    rng = np.random.default_rng(0)
    a, b = rng.integers(3, 7000, 20), rng.integers(3, 7000, 30)
    packed = jnp.asarray(np.concatenate([a, b, np.zeros(14, int)])[None], jnp.int32)
    segments = jnp.asarray(np.concatenate([np.ones(20), 2 * np.ones(30), np.zeros(14)])[None], jnp.int32)
    logits = np.asarray(model(packed, Packing.from_segments(segments)))[0]
    np.testing.assert_allclose(logits[:20], np.asarray(model(jnp.asarray(a[None], jnp.int32)))[0], atol=2e-5)
    np.testing.assert_allclose(logits[20:50], np.asarray(model(jnp.asarray(b[None], jnp.int32)))[0], atol=2e-5)


def test_completion_logprobs_equal_transformers(tokenizer, tmp_path):
    pairs = [
        {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."},
        {
            "chosen": CONVERSATIONS[1],
            "rejected": CONVERSATIONS[1][:-1] + [{"role": "assistant", "content": "Quadratic."}],
        },
    ]
    source = PreferenceSource([write_jsonl(tmp_path / "pairs.jsonl", pairs)], tokenizer, "tulu", 256)
    assert len(source) == 2
    model = tiny_model(tokenizer, seed=3)
    graphdef, params = nnx.split(model)
    ours = np.asarray(pair_logprobs(*label_logprobs(graphdef, params, rows(source)))[0])
    hf = to_transformers(model)
    for r, pair in enumerate(pairs):
        for k, messages in enumerate(source_messages(pair)):
            ids, trained = encode_chat(tokenizer, messages, "tulu", trained_turns="last")
            with torch.no_grad():
                logp = torch.log_softmax(hf(torch.tensor(ids[None].astype(np.int64))).logits[0, :-1].double(), -1)
            expected = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:].astype(np.int64))][trained[1:]].sum()
            # Summed over a few tokens of fp32 log-probs of ~9 each: 1e-4 absolute is 1e-5 relative.
            assert ours[r, k] == pytest.approx(float(expected), abs=1e-4)


def source_messages(pair):
    from olmo_jax.adapt.data import preference_messages

    return preference_messages(pair, "test")


@pytest.mark.parametrize(
    "record,message",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role 'robot'"),
        ({"messages": "hi"}, "non-empty list of messages"),
    ],
)
def test_bad_conversations_are_one_line_errors(record, message, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATIONS[0]}, record])
    with pytest.raises(DataError, match=message) as error:
        ConversationSource([path], tokenizer, "tulu", 128)
    assert "chat.jsonl:2" in str(error.value) and "\n" not in str(error.value)


def test_bad_preference_rows_are_one_line_errors(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a"}])
    with pytest.raises(DataError, match=r"pairs.jsonl:1: .*'rejected' is missing"):
        PreferenceSource([path], tokenizer, "tulu", 128)
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"chosen": CONVERSATIONS[0], "rejected": [{"role": "user", "content": "other"}, CONVERSATIONS[0][1]]}],
    )
    with pytest.raises(DataError, match="share every message but the last"):
        PreferenceSource([path], tokenizer, "tulu", 128)


def test_too_long_examples_are_counted_skips(tokenizer, tmp_path):
    long_prompt = "word " * 200
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "short?", "chosen": "yes", "rejected": "no"},
            {"prompt": long_prompt, "chosen": "a", "rejected": "b"},
        ],
    )
    source = PreferenceSource([path], tokenizer, "tulu", 128)
    assert (len(source), source.skipped) == (1, 1)
    # SFT cuts a long conversation at the row length; one left with no assistant token is skipped.
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"messages": CONVERSATIONS[0]},
            {"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]},
        ],
    )
    source = ConversationSource([path], tokenizer, "tulu", 128)
    assert (source.conversations, source.skipped) == (1, 1)


def test_unknown_template_and_missing_files_are_refused(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATIONS[0]}])
    with pytest.raises(DataError, match="unknown chat template 'chatml'"):
        ConversationSource([path], tokenizer, "chatml", 128)
    with pytest.raises(DataError, match="does not exist"):
        ConversationSource([str(tmp_path / "nope.jsonl")], tokenizer, "tulu", 128)
    from olmo_jax.config import load_config

    with pytest.raises(ConfigError, match="adapt.chat_template"):
        load_config("tiny", {"objective": "sft", "adapt.train_files": path, "adapt.chat_template": "chatml"})
    with pytest.raises(ConfigError, match="needs adapt.train_files"):
        load_config("tiny", {"objective": "dpo"})
