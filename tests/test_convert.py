"""Conversion to and from HF `OlmoForCausalLM`, and `olmo_jax.from_pretrained` on both formats.

Parity tolerance: max |Δ logits| <= 1e-4 in fp32. Both sides compute the same function and differ only in
summation order (XLA einsums and attention vs torch matmuls and SDPA); on these tiny models, with logits of
order 1-10, that leaves differences of ~1e-5, while a wrong transpose, q/k/v or up/gate swap, RoPE layout
or a missing clip changes logits by more than 1e-1.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from hf_support import host_params, to_transformers  # noqa: E402

import olmo_jax  # noqa: E402
from olmo_jax.checkpoint import read_checkpoint_metadata, read_config, write_params_checkpoint  # noqa: E402
from olmo_jax.config import ModelConfig, TokenizerConfig, TrainConfig  # noqa: E402
from olmo_jax.convert.__main__ import build_parser, main  # noqa: E402
from olmo_jax.data.tokenizer import load_tokenizer  # noqa: E402
from olmo_jax.model import OLMo  # noqa: E402
from olmo_jax.pretrained import build_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOLERANCE = 1e-4
CLIP = 0.5  # well inside the spread of q/k/v values of these models, so clipping changes the logits
VOCAB, EMBEDDING = 250, 256  # a padded embedding, as OLMo's 50,280 -> 50,304
PARITY_CASES = [(tied, clip) for tied in (True, False) for clip in (None, CLIP)]
PARITY_IDS = [f"{'tied' if tied else 'untied'}-clip_{clip}" for tied, clip in PARITY_CASES]


def tiny_config(tied: bool, clip_qkv: float | None) -> ModelConfig:
    """Non-square everywhere (d 32, 4 heads of 8, hidden 64, 2 layers), so any transpose slip shows."""
    return ModelConfig(
        d_model=32,
        n_heads=4,
        n_layers=2,
        mlp_ratio=4,
        vocab_size=VOCAB,
        embedding_size=EMBEDDING,
        max_sequence_length=16,
        weight_tying=tied,
        clip_qkv=clip_qkv,
        eos_token_id=VOCAB - 1,
        pad_token_id=1,
    )


def tiny_hf_model(tied: bool, clip_qkv: float | None, seed: int = 0) -> transformers.OlmoForCausalLM:
    """A randomly initialised HF OLMo, described independently of our config mapping."""
    torch.manual_seed(seed)
    config = transformers.OlmoConfig(
        vocab_size=EMBEDDING,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        tie_word_embeddings=tied,
        clip_qkv=clip_qkv,
        eos_token_id=VOCAB - 1,
        pad_token_id=1,
        initializer_range=0.3,  # large enough for q/k/v values to exceed CLIP
    )
    return transformers.OlmoForCausalLM(config).eval()


def tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(2, 16), dtype=np.int32)


def hf_logits(model: transformers.OlmoForCausalLM, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).logits.numpy()


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def read_safetensors_dir(path: Path) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(safetensors_numpy.load_file(file))
    return tensors


def assert_failed_cleanly(rc: int, err: str, out: Path, *needles: str) -> None:
    """A bad input: non-zero exit, one `error:` line naming the culprit, and nothing at (or beside) OUT.

    Progress notes may precede the error on stderr; the error itself is a single, final line.
    """
    lines = err.strip().splitlines()
    assert rc != 0
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    for needle in needles:
        assert needle in lines[-1]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "a temporary directory was left behind"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untied tiny HF OLMo saved by transformers itself, for the bad-input tests to corrupt copies of."""
    path = tmp_path_factory.mktemp("hf") / "olmo"
    tiny_hf_model(tied=False, clip_qkv=None).save_pretrained(path)
    return path


@pytest.mark.parametrize(("tied", "clip_qkv"), PARITY_CASES, ids=PARITY_IDS)
def test_to_hf_output_loads_in_transformers_with_the_same_logits(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], tied: bool, clip_qkv: float | None
) -> None:
    config = tiny_config(tied, clip_qkv)
    model = OLMo(config, rngs=nnx.Rngs(1))
    run = tmp_path / "run"
    write_params_checkpoint(run, 3, host_params(model), TrainConfig(model=config))
    ids = tokens()
    expected = np.asarray(model(jnp.asarray(ids)))
    if clip_qkv is not None:
        unclipped = build_model(dataclasses.replace(config, clip_qkv=None), host_params(model))
        assert max_diff(expected, unclipped(jnp.asarray(ids))) > 0.1, "CLIP does not clip: the test proves nothing"

    assert main(["to-hf", str(run), str(tmp_path / "hf")]) == 0
    capfd.readouterr()
    hf_model, info = transformers.OlmoForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    loading_messages = capfd.readouterr().err

    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert "LOAD REPORT" not in loading_messages  # transformers' table of missing / re-initialised weights
    assert hf_model.config.tie_word_embeddings == tied and hf_model.config.clip_qkv == clip_qkv
    assert max_diff(hf_logits(hf_model, ids), expected) <= TOLERANCE
    # The in-memory route that evaluation uses agrees as well.
    assert max_diff(hf_logits(to_transformers(model), ids), expected) <= TOLERANCE


@pytest.mark.parametrize(("tied", "clip_qkv"), PARITY_CASES, ids=PARITY_IDS)
def test_from_hf_gives_olmo_jax_the_transformers_logits(tmp_path: Path, tied: bool, clip_qkv: float | None) -> None:
    hf_model = tiny_hf_model(tied, clip_qkv)
    hf_model.save_pretrained(tmp_path / "hf")
    ids = tokens()
    expected = hf_logits(hf_model, ids)
    if clip_qkv is not None:
        hf_model.config.clip_qkv = None
        assert max_diff(hf_logits(hf_model, ids), expected) > 0.1, "CLIP does not clip: the test proves nothing"

    assert main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0

    from_checkpoint = olmo_jax.from_pretrained(tmp_path / "run")
    from_hf_dir = olmo_jax.from_pretrained(tmp_path / "hf")
    for pretrained in (from_checkpoint, from_hf_dir):
        assert pretrained.config.weight_tying == tied and pretrained.config.clip_qkv == clip_qkv
        logits = pretrained(ids)
        assert logits.dtype == jnp.float32 and logits.shape == (2, 16, EMBEDDING)
        assert max_diff(logits, expected) <= TOLERANCE
    # The run directory is one that training can start from: a full TrainConfig and step 0.
    assert read_config(tmp_path / "run" / "checkpoints" / "0").model == from_checkpoint.config


def test_from_pretrained_computes_in_bfloat16_on_request_and_returns_float32_logits(tmp_path: Path) -> None:
    config = tiny_config(tied=True, clip_qkv=None)
    model = OLMo(config, rngs=nnx.Rngs(0))
    write_params_checkpoint(tmp_path / "run", 0, host_params(model), TrainConfig(model=config))
    ids = tokens()
    exact = np.asarray(model(jnp.asarray(ids)))

    pretrained = olmo_jax.from_pretrained(tmp_path / "run", compute_dtype="bfloat16")

    assert pretrained.config.compute_dtype == "bfloat16"
    logits = pretrained(ids)
    assert logits.dtype == jnp.float32
    # bf16 keeps 8 mantissa bits (0.4% per rounding); two layers stay well inside 5% of the logit scale.
    assert max_diff(logits, exact) <= 0.05 * np.abs(exact).max()
    with pytest.raises(ValueError, match=r"tokens must be an integer array \[batch, time\]"):
        pretrained(ids[0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_from_hf_then_to_hf_reproduces_every_tensor_bit_for_bit(tmp_path: Path, dtype: str) -> None:
    hf_model = tiny_hf_model(tied=False, clip_qkv=None).to(getattr(torch, dtype))
    # Small shards exercise the index reader and writer.
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()

    assert main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0
    assert main(["to-hf", str(tmp_path / "run"), str(tmp_path / "back"), "--max_shard_size=20KB"]) == 0

    original, back = read_safetensors_dir(tmp_path / "hf"), read_safetensors_dir(tmp_path / "back")
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert back[name].tobytes() == tensor.tobytes(), name
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(original)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in original.values())


def test_to_hf_writes_one_file_below_the_shard_limit(tmp_path: Path) -> None:
    config = tiny_config(tied=True, clip_qkv=None)
    write_params_checkpoint(tmp_path / "run", 0, host_params(OLMo(config, rngs=nnx.Rngs(0))), TrainConfig(model=config))

    assert main(["to-hf", str(tmp_path / "run"), str(tmp_path / "hf"), "--dtype=bfloat16"]) == 0

    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    written = read_safetensors_dir(tmp_path / "hf")
    assert "lm_head.weight" not in written  # tied: HF re-ties the head to the embedding on load
    assert all(t.dtype.name == "bfloat16" for t in written.values())
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"


# --------------------------------------------------------------------------------------------------
# Bad input: one line naming the culprit, a non-zero exit status, nothing at OUT.
# --------------------------------------------------------------------------------------------------


def test_from_hf_rejects_another_model_type(tmp_path: Path, hf_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = shutil.copytree(hf_dir, tmp_path / "llama")
    hf_config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**hf_config, "model_type": "llama"}))

    rc = main(["from-hf", str(bad), str(tmp_path / "out")])

    assert_failed_cleanly(rc, capsys.readouterr().err, tmp_path / "out", "model_type 'llama'", "'olmo3'")


def test_from_hf_names_the_first_tensor_a_relabelled_model_lacks(
    tmp_path: Path, hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An OLMo-1 directory that claims to be OLMo-2 lacks OLMo-2's norm weights.
    bad = shutil.copytree(hf_dir, tmp_path / "olmo2")
    hf_config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**hf_config, "model_type": "olmo2"}))

    rc = main(["from-hf", str(bad), str(tmp_path / "out")])

    assert_failed_cleanly(rc, capsys.readouterr().err, tmp_path / "out", "model.layers.0.self_attn.q_norm.weight")


def _rewrite_weights(hf_dir: Path, edit) -> None:
    tensors = safetensors_numpy.load_file(hf_dir / "model.safetensors")
    edit(tensors)
    safetensors_numpy.save_file(tensors, hf_dir / "model.safetensors", metadata={"format": "pt"})


def test_from_hf_names_a_missing_tensor(tmp_path: Path, hf_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = shutil.copytree(hf_dir, tmp_path / "bad")
    _rewrite_weights(bad, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))

    rc = main(["from-hf", str(bad), str(tmp_path / "out")])

    err = capsys.readouterr().err
    assert_failed_cleanly(rc, err, tmp_path / "out", "model.layers.1.mlp.down_proj.weight", "[32, 64]", "missing")


def test_from_hf_names_a_tensor_with_the_wrong_shape(
    tmp_path: Path, hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = shutil.copytree(hf_dir, tmp_path / "bad")
    name = "model.layers.0.self_attn.q_proj.weight"
    _rewrite_weights(bad, lambda t: t.update({name: np.zeros((32, 31), np.float32)}))

    rc = main(["from-hf", str(bad), str(tmp_path / "out")])

    assert_failed_cleanly(rc, capsys.readouterr().err, tmp_path / "out", name, "[32, 31]", "[32, 32]")


def test_to_hf_names_a_parameter_that_disagrees_with_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(tied=True, clip_qkv=None)
    params = host_params(OLMo(config, rngs=nnx.Rngs(0)))
    params["ff_out"] = params["ff_out"][:, :48]  # hidden 48 where the config says 64
    write_params_checkpoint(tmp_path / "run", 0, params, TrainConfig(model=config))

    rc = main(["to-hf", str(tmp_path / "run"), str(tmp_path / "out")])

    assert_failed_cleanly(rc, capsys.readouterr().err, tmp_path / "out", "ff_out", "[2, 48, 32]", "[2, 64, 32]")


def test_to_hf_without_a_checkpoint_and_onto_an_existing_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not_a_run").mkdir()
    rc = main(["to-hf", str(tmp_path / "not_a_run"), str(tmp_path / "out")])
    assert_failed_cleanly(rc, capsys.readouterr().err, tmp_path / "out", "no complete checkpoint", "not_a_run")

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    rc = main(["from-hf", str(tmp_path / "not_a_run"), str(tmp_path / "taken")])
    assert rc != 0 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_a_failure_while_writing_leaves_nothing_at_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(tied=True, clip_qkv=None)
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    run_config = TrainConfig(model=config, tokenizer=TokenizerConfig(identifier=str(tokenizer)))
    write_params_checkpoint(tmp_path / "run", 0, host_params(OLMo(config, rngs=nnx.Rngs(0))), run_config)

    def disk_full(*args: object, **kwargs: object) -> list[str]:
        raise OSError(28, "No space left on device")

    # The tokenizer is written last, after every weight shard: the latest point a conversion can fail.
    monkeypatch.setattr("olmo_jax.convert.checkpoints.write_hf_tokenizer", disk_full)
    rc = main(["to-hf", str(tmp_path / "run"), str(tmp_path / "out")])

    assert_failed_cleanly(rc, capsys.readouterr().err, tmp_path / "out", "No space left on device")


# --------------------------------------------------------------------------------------------------
# Tokenizer files.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BPE SentencePiece model with the built-in corpus's special ids (pad 0, unk 1, eos 2, no BOS)."""
    sentencepiece = pytest.importorskip("sentencepiece")
    import pydoc_data.topics

    folder = tmp_path_factory.mktemp("sp")
    (folder / "corpus.txt").write_text("\n".join(list(pydoc_data.topics.topics.values())[:40]))
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "sp"),
        vocab_size=VOCAB,
        model_type="bpe",
        pad_id=0,
        unk_id=1,
        eos_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return folder / "sp.model"


TEXTS = ["Hello world", "  The quick\nbrown fox, déjà vu 123", "def f(x):\n    return x"]


def test_sentencepiece_tokenizer_travels_both_ways(tmp_path: Path, sentencepiece_model: Path) -> None:
    import sentencepiece

    config = dataclasses.replace(tiny_config(tied=True, clip_qkv=None), eos_token_id=2, pad_token_id=0)
    run_config = TrainConfig(model=config, tokenizer=TokenizerConfig(identifier=str(sentencepiece_model)))
    write_params_checkpoint(tmp_path / "run", 0, host_params(OLMo(config, rngs=nnx.Rngs(0))), run_config)

    assert main(["to-hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0

    reference = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 0)
    for text in TEXTS:
        assert tokenizer(text, add_special_tokens=False).input_ids == reference.encode(text)

    assert main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = read_config(tmp_path / "back" / "checkpoints" / "0")
    assert back.tokenizer.identifier == str((tmp_path / "back" / "tokenizer.model").absolute())
    assert Path(back.tokenizer.identifier).read_bytes() == sentencepiece_model.read_bytes()
    assert back.model.vocab_size == VOCAB  # from the tokenizer: HF's config knows only the padded size
    identity = read_checkpoint_metadata(tmp_path / "back" / "checkpoints" / "0")["tokenizer"]
    assert identity == load_tokenizer(str(sentencepiece_model)).identity  # the same file, so the same identity


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the reference data in ../shared (absent outside development)")
def test_olmo_tokenizer_json_is_copied_for_auto_tokenizer(tmp_path: Path) -> None:
    import tokenizers

    source = SHARED / "data" / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"
    config = dataclasses.replace(
        tiny_config(tied=True, clip_qkv=None), vocab_size=50280, embedding_size=50304, eos_token_id=50279
    )
    run_config = TrainConfig(model=config, tokenizer=TokenizerConfig(identifier=str(source)))
    write_params_checkpoint(tmp_path / "run", 0, host_params(OLMo(config, rngs=nnx.Rngs(0))), run_config)

    assert main(["to-hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0

    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == source.read_bytes()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id) == (50279, 1, None)
    reference = tokenizers.Tokenizer.from_file(str(source))
    for text in TEXTS:
        assert tokenizer(text).input_ids == reference.encode(text, add_special_tokens=False).ids


def test_cli_help_explains_every_flag() -> None:
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices  # argparse keeps subcommands here
    assert set(subparsers) == {"to-hf", "from-hf"}
    for command in subparsers.values():
        for action in command._actions:
            assert action.help, f"{command.prog}: {action.dest} has no help"
