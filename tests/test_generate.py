"""Generation: greedy decoding equals transformers' `generate(do_sample=False)` token for token; sampling
follows its definition; bad requests are one-line errors.

The HF models are tiny random ones made by transformers from its own configs; our side loads them with
`from_pretrained` (the conversion under test elsewhere). Greedy decoding is compared exactly: fp32 on both
sides, and a random model's top two logits are far apart compared with the ~1e-6 the two differ by.
"""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
import torch
import transformers
from eval_support import tiny_config, train_tokenizer
from flax import nnx

from olmo_jax.checkpoint import write_params_checkpoint
from olmo_jax.config import TokenizerConfig, TrainConfig
from olmo_jax.errors import InputError
from olmo_jax.generate.__main__ import main as generate_main
from olmo_jax.generate.decoding import Sampling, generate, sample
from olmo_jax.model import OLMo
from olmo_jax.pretrained import from_pretrained

VOCAB, NEW = 256, 32


def hf_model(model_type: str, **extra):
    torch.manual_seed(0)
    config_cls, model_cls = {
        "olmo": (transformers.OlmoConfig, transformers.OlmoForCausalLM),
        "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM),
        "olmo3": (transformers.Olmo3Config, transformers.Olmo3ForCausalLM),
    }[model_type]
    config = config_cls(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=96, tie_word_embeddings=False, eos_token_id=VOCAB - 1, pad_token_id=1,
        bos_token_id=None, initializer_range=0.2, **extra,
    )  # fmt: skip
    return model_cls(config).to(torch.float32).eval()


def prompts(seed: int = 0) -> list[list[int]]:
    """Three prompts of different lengths: the batch is left-padded, each row at its own positions."""
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB - 1, n).tolist() for n in (9, 17, 4)]


@pytest.fixture(scope="module")
def olmo1(tmp_path_factory):
    model = hf_model("olmo")
    path = tmp_path_factory.mktemp("olmo1")
    model.save_pretrained(path)
    return model, from_pretrained(path)


def hf_greedy(model, prompt: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=1
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "model_type, extra",
    [
        ("olmo", {}),
        ("olmo2", {"num_key_value_heads": 2}),
        # A window of 5 on 3 of every 4 layers: most of the 32 new tokens are past it.
        ("olmo3", {"num_key_value_heads": 2, "sliding_window": 5}),
    ],
    ids=["olmo1", "olmo2-gqa", "olmo3-window"],
)
def test_greedy_generation_equals_transformers_token_for_token(tmp_path, model_type, extra, olmo1):
    hf, ours = olmo1 if model_type == "olmo" else (hf_model(model_type, **extra), None)
    if ours is None:
        hf.save_pretrained(tmp_path)
        ours = from_pretrained(tmp_path)
    batch = prompts()
    # stop_token_ids=[] : 32 tokens whatever comes out, as min_new_tokens makes transformers do.
    new = ours.generate(batch, max_new_tokens=NEW, stop_token_ids=[])
    for prompt, tokens in zip(batch, new, strict=True):
        assert tokens == hf_greedy(hf, prompt)


def test_cached_decoding_agrees_with_the_full_forward_pass(olmo1):
    """Each greedy token is the argmax of a plain forward pass over prompt + the tokens before it."""
    _, ours = olmo1
    prompt = prompts(1)[1]
    new = ours.generate([prompt], max_new_tokens=12, stop_token_ids=[])[0]
    logits = np.asarray(ours(np.array([prompt + new])))[0]
    assert np.argmax(logits[len(prompt) - 1 : -1], axis=-1).tolist() == new


def test_a_row_stops_at_its_stop_token_and_the_others_go_on(olmo1):
    _, ours = olmo1
    batch = prompts()
    free = ours.generate(batch, max_new_tokens=NEW, stop_token_ids=[])
    stop_at = free[0][5]  # row 0's sixth token
    stopped = ours.generate(batch, max_new_tokens=NEW, stop_token_ids=[stop_at])
    for row, tokens in zip(free, stopped, strict=True):
        end = row.index(stop_at) if stop_at in row else len(row)
        assert tokens == row[:end]  # without the stop token


def test_the_host_stop_rule_ends_a_row_between_chunks(olmo1):
    _, ours = olmo1
    sampling = Sampling(max_new_tokens=NEW, chunk=8)
    out = generate(ours.model, prompts()[:2], sampling, stop_token_ids=[], stop=lambda row, tokens: row == 0)
    assert len(out[0]) == 8 and len(out[1]) == NEW  # row 0 stopped after its first chunk


def test_top_p_keeps_the_smallest_set_reaching_p_and_temperature_follows_the_softmax():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    keys = jax.random.split(jax.random.key(0), 4000)

    def draws(sampling):
        return np.asarray(jax.vmap(lambda k: sample(logits, k, sampling, vocab_size=4))(keys))[:, 0]

    # top_p 0.7: {0.5, 0.3} reach it; renormalised 0.625 / 0.375. 4000 draws: std of a frequency <= 0.008.
    counts = np.bincount(draws(Sampling(temperature=1.0, top_p=0.7)), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.625, 0.375, 0, 0], atol=0.04)
    counts = np.bincount(draws(Sampling(temperature=1.0)), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.04)
    # Temperature 0.5 squares the probabilities before renormalising.
    p = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
    counts = np.bincount(draws(Sampling(temperature=0.5)), minlength=4) / 4000
    np.testing.assert_allclose(counts, p / p.sum(), atol=0.04)
    # Greedy ignores the key; rows past the vocabulary are never chosen even when largest.
    wide = np.concatenate([logits, [[9.0]]], axis=1)
    assert int(sample(wide, keys[0], Sampling(), vocab_size=4)[0]) == 0


def test_sampling_is_reproducible_from_its_seed(olmo1):
    _, ours = olmo1
    a = ours.generate(prompts(), max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3, stop_token_ids=[])
    b = ours.generate(prompts(), max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3, stop_token_ids=[])
    c = ours.generate(prompts(), max_new_tokens=16, temperature=1.0, top_p=0.9, seed=4, stop_token_ids=[])
    assert a == b and a != c


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"prompts": [list(range(2, 80))], "max_new_tokens": 32}, "78 tokens plus max_new_tokens=32 exceeds"),
        ({"prompts": [[]]}, "prompt 0 is empty"),
        ({"prompts": [[3, 4], [5, VOCAB]]}, f"prompt 1: token id {VOCAB} is out of range"),
        ({"prompts": [[3]], "temperature": -1.0}, "temperature=-1.0"),
        ({"prompts": [[3]], "top_p": 0.0}, "top_p=0.0"),
        ({"prompts": [[3]], "max_new_tokens": 0}, "max_new_tokens=0"),
    ],
)
def test_bad_requests_are_one_line_errors(olmo1, request_, message):
    _, ours = olmo1
    options = dict(request_)
    with pytest.raises(InputError, match=message):
        ours.generate(options.pop("prompts"), **options)


# --------------------------------------------------------------------------------------------------
# `olmo-jax generate`
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny OLMo saved as an olmo_jax checkpoint with its (trained-here) tokenizer."""
    root = tmp_path_factory.mktemp("run")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    model = tiny_config(vocab_size=400, max_length=128, eos_token_id=0, pad_token_id=1)
    config = TrainConfig(model=model, tokenizer=TokenizerConfig(identifier=str(tokenizer)))
    params = nnx.to_pure_dict(nnx.state(OLMo(model, rngs=nnx.Rngs(0)), nnx.Param))
    write_params_checkpoint(root, 0, params, config)
    return root


def test_the_command_prints_one_json_line_per_prompt_as_the_python_api_generates(checkpoint, capsys):
    argv = [f"--model={checkpoint}", "--prompt=The roof", "--prompt=Property tax is", "--max_new_tokens=12"]
    assert generate_main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = from_pretrained(checkpoint).generate(["The roof", "Property tax is"], max_new_tokens=12)
    assert [r["completion"] for r in rows] == expected
    assert [r["prompt"] for r in rows] == ["The roof", "Property tax is"]
    assert all(r["stop"] in ("eos", "length") and r["new_tokens"] <= 12 for r in rows)


def test_the_command_cuts_at_stop_strings_and_writes_its_output_atomically(checkpoint, tmp_path, capsys):
    free = from_pretrained(checkpoint).generate(["The roof"], max_new_tokens=24)[0]
    stop = free[len(free) // 2 :][:2]  # two characters from the middle of the free completion
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "The roof"}) + "\n\n")
    out = tmp_path / "out.jsonl"
    args = [f"--model={checkpoint}", f"--prompts={prompts}", "--max_new_tokens=24", f"--stop={stop}", f"-o={out}"]
    assert generate_main(args) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["completion"] == free[: free.index(stop)] and row["stop"] == stop


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json\n", r"prompts\.jsonl:1: not valid JSON"),
        ('{"text": "x"}\n', r"prompts\.jsonl:1: expected an object with a string 'prompt' field"),
        ("\n", r"prompts\.jsonl holds no prompts"),
    ],
)
def test_a_bad_prompts_file_is_one_error_line_and_exit_2(checkpoint, tmp_path, capsys, content, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content)
    assert generate_main([f"--model={checkpoint}", f"--prompts={prompts}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0])


def test_generation_on_a_mesh_equals_one_device(olmo1):
    """Weights sharded ZeRO-3 style over 8 (fake) devices, the prompt batch split over them: same tokens."""
    from olmo_jax.config import MeshConfig
    from olmo_jax.model import abstract_model
    from olmo_jax.sharding import make_mesh, param_shardings

    _, ours = olmo1
    batch = (prompts(0) * 3)[:8]  # 8 rows: one per device
    expected = ours.generate(batch, max_new_tokens=NEW)
    mesh = make_mesh(MeshConfig(data=1, fsdp=8), jax.devices()[:8])
    graphdef, state = nnx.split(ours.model)
    shardings = param_shardings(nnx.state(abstract_model(ours.config), nnx.Param), mesh)
    sharded = {name: jax.device_put(value, shardings[name]) for name, value in nnx.to_pure_dict(state).items()}
    nnx.replace_by_pure_dict(state, sharded)
    model = nnx.merge(graphdef, state)
    assert len(model.wte[...].sharding.device_set) == 8
    with jax.set_mesh(mesh):
        assert generate(model, batch, Sampling(max_new_tokens=NEW)) == expected


def test_a_fine_tuned_model_answers_prompts_as_user_turns_of_its_template(tmp_path, capsys):
    """The run's chat template travels with the checkpoint and its HF export; generate applies it."""
    from olmo_jax.adapt.chat import encode_chat
    from olmo_jax.config import AdaptConfig
    from olmo_jax.convert.checkpoints import to_hf

    tokenizer = train_tokenizer(tmp_path / "tokenizer.json")
    model = tiny_config(vocab_size=400, max_length=128, eos_token_id=0, pad_token_id=1)
    config = TrainConfig(
        model=model,
        tokenizer=TokenizerConfig(identifier=str(tokenizer)),
        objective="sft",
        adapt=AdaptConfig(train_files=["chat.jsonl"], chat_template="olmo"),
    )
    params = nnx.to_pure_dict(nnx.state(OLMo(model, rngs=nnx.Rngs(0)), nnx.Param))
    write_params_checkpoint(tmp_path / "run", 0, params, config)
    pretrained = from_pretrained(tmp_path / "run")
    assert pretrained.chat_template == "olmo"
    to_hf(tmp_path / "run", tmp_path / "hf")
    assert from_pretrained(tmp_path / "hf").chat_template == "olmo"

    prompt = "The roof"
    ids = encode_chat(
        pretrained.tokenizer(), [{"role": "user", "content": prompt}], "olmo", add_generation_prompt=True
    )[0]
    chat = pretrained.tokenizer().decode(pretrained.generate([ids.tolist()], max_new_tokens=8)[0])
    plain = pretrained.generate([prompt], max_new_tokens=8)[0]
    for flag, expected in (("auto", chat), ("none", plain)):
        assert (
            generate_main(
                [f"--model={tmp_path / 'run'}", f"--prompt={prompt}", "--max_new_tokens=8", f"--chat_template={flag}"]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)["completion"] == expected
