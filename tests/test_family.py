"""The OLMo-2/3 model spec against transformers' `Olmo2ForCausalLM` / `Olmo3ForCausalLM`.

Each variant is a tiny random HF model made by transformers from its own config (not from our mapping),
with its norm weights randomised too (they start at 1, which would hide a swapped or missing norm).

Tolerances: fp32 logits within 1e-4 absolute, as tests/test_convert.py for OLMo-1 (the two sides differ
only in summation order, ~1e-6 here, while any layout or semantics slip moves logits by > 1e-2); loss
and gradient norm of one step within 1e-4 relative (fp32 autograd on both sides).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import olmo_jax  # noqa: E402
from olmo_jax.config import ModelConfig, OptimizerConfig, load_config  # noqa: E402
from olmo_jax.convert.checkpoints import from_hf, to_hf  # noqa: E402
from olmo_jax.convert.hf import hf_config_dict  # noqa: E402
from olmo_jax.errors import ConfigError, ConversionError  # noqa: E402
from olmo_jax.loss import loss_terms  # noqa: E402
from olmo_jax.model import OLMo, num_params  # noqa: E402
from olmo_jax.optim import decay_mask  # noqa: E402

TOLERANCE = 1e-4
VOCAB, SEQ = 128, 16
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4, "beta_fast": 32.0, "beta_slow": 1.0}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "original_max_position_embeddings": 8,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
}
# (model_type, tied, kv heads, extra HF config): MHA and GQA, tied and untied, a window of 5 < SEQ on
# 3 of 4 layers (OLMo-3's pattern), YaRN on OLMo-3's full layers, Llama-3 scaling on OLMo-2.
CASES = {
    "olmo2-tied-mha": ("olmo2", True, 4, {}),
    "olmo2-untied-gqa-llama3": ("olmo2", False, 2, {"rope_parameters": {"rope_theta": 500000.0, **LLAMA3}}),
    "olmo3-untied-gqa-window": ("olmo3", False, 2, {"sliding_window": 5}),
    "olmo3-tied-mha-window-yarn": ("olmo3", True, 4, {"sliding_window": 5, "rope_scaling": YARN}),
}


def hf_model(model_type: str, tied: bool, kv_heads: int, extra: dict, seed: int = 0):
    """A random HF OLMo-2/3 with 4 layers (d 32, 4 heads of 8, hidden 48), norm weights random too."""
    torch.manual_seed(seed)
    config_cls, model_cls = {
        "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM),
        "olmo3": (transformers.Olmo3Config, transformers.Olmo3ForCausalLM),
    }[model_type]
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=SEQ,
        tie_word_embeddings=tied,
        eos_token_id=VOCAB - 1,
        pad_token_id=1,
        rms_norm_eps=1e-6,
        initializer_range=0.2,
        **extra,
    )
    model = model_cls(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


def tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(2, SEQ), dtype=np.int32)


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()


def safetensors_of(directory: Path) -> dict[str, np.ndarray]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(safetensors_numpy.load_file(path))
    return tensors


@pytest.mark.parametrize("case", list(CASES))
def test_hf_model_converts_with_the_same_logits_and_round_trips_bit_for_bit(tmp_path: Path, case: str) -> None:
    model_type, tied, kv_heads, extra = CASES[case]
    reference = hf_model(model_type, tied, kv_heads, extra)
    reference.save_pretrained(tmp_path / "hf")
    ids = tokens()

    pretrained = olmo_jax.from_pretrained(tmp_path / "hf")
    ours = np.asarray(pretrained(ids))
    assert np.max(np.abs(ours - hf_logits(reference, ids))) <= TOLERANCE

    from_hf(tmp_path / "hf", tmp_path / "run")
    to_hf(tmp_path / "run", tmp_path / "back")
    original, back = safetensors_of(tmp_path / "hf"), safetensors_of(tmp_path / "back")
    assert set(back) == set(original) - ({"lm_head.weight"} if tied else set())
    for name, tensor in back.items():
        assert tensor.dtype == original[name].dtype and np.array_equal(tensor, original[name]), name
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == model_type

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(reloaded) is type(reference)
    assert np.max(np.abs(hf_logits(reloaded, ids) - hf_logits(reference, ids))) == 0.0


@pytest.mark.parametrize("case", ["olmo2-untied-gqa-llama3", "olmo3-tied-mha-window-yarn"])
def test_one_training_step_matches_torch_autograd(tmp_path: Path, case: str) -> None:
    reference = hf_model(*CASES[case])
    reference.save_pretrained(tmp_path / "hf")
    model = olmo_jax.from_pretrained(tmp_path / "hf").model
    ids = tokens(1)

    graphdef, params = nnx.split(model, nnx.Param)
    denominator = ids.shape[0] * (ids.shape[1] - 1)
    (ce, _), grads = jax.value_and_grad(lambda p: loss_terms(graphdef, p, jnp.asarray(ids), denominator), has_aux=True)(
        params
    )
    grad_norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))))

    reference.train()
    ids_t = torch.from_numpy(ids.astype(np.int64))
    loss = reference(ids_t, labels=ids_t).loss
    loss.backward()
    torch_norm = float(torch.sqrt(sum(torch.sum(p.grad**2) for p in reference.parameters() if p.grad is not None)))
    assert float(ce) == pytest.approx(loss.item(), rel=TOLERANCE)
    assert grad_norm == pytest.approx(torch_norm, rel=TOLERANCE)


def spec(**changes) -> ModelConfig:
    base = ModelConfig(
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        n_layers=5,
        vocab_size=VOCAB,
        embedding_size=VOCAB,
        max_sequence_length=SEQ,
        block_order="reordered_norm",
        norm="rms_norm",
        qk_norm="full",
        sliding_window_pattern=[3, 3, -1],
        init_fn="normal",
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("switch", [{"scan_layers": False}, {"remat": "full"}, {"remat": "save_dots"}])
def test_scan_over_window_groups_and_remat_do_not_change_results(switch: dict) -> None:
    # 5 layers in groups of 3: one scanned group plus two unrolled layers, the window static in each.
    ids = jnp.asarray(tokens())
    model = OLMo(spec(), rngs=nnx.Rngs(0))
    expected = np.asarray(model(ids))
    model.config = spec(**switch)
    np.testing.assert_allclose(np.asarray(model(ids)), expected, atol=1e-5)


def test_window_limits_what_a_position_sees() -> None:
    # With windows of 3 everywhere, position 10 cannot depend on tokens before position 10 - 2 * (3 - 1) = 6.
    model = OLMo(spec(sliding_window_pattern=[3], n_layers=2), rngs=nnx.Rngs(0))
    ids = np.asarray(tokens())
    changed = ids.copy()
    changed[:, :6] = (changed[:, :6] + 1) % VOCAB
    before, after = np.asarray(model(jnp.asarray(ids))), np.asarray(model(jnp.asarray(changed)))
    np.testing.assert_array_equal(before[:, 10], after[:, 10])
    assert not np.allclose(before[:, 7], after[:, 7])


def test_norm_weights_start_at_one_and_follow_decay_norm_and_bias() -> None:
    model = OLMo(spec(qk_norm="per_head"), rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    norms = {name for name in params if name.endswith("_norm")}
    assert norms == {"attn_norm", "ff_norm", "q_norm", "k_norm", "final_norm"}
    assert all(np.all(np.asarray(params[name]) == 1) for name in norms)
    assert params["q_norm"].shape == (5, 8) and params["kv_proj"].shape == (5, 32, 2, 2, 8)
    assert not any(decay_mask(params, OptimizerConfig())[name] for name in norms)
    assert all(decay_mask(params, OptimizerConfig(decay_norm_and_bias=True))[name] for name in norms)


def test_architectures_hf_lacks_are_refused_naming_the_field() -> None:
    with pytest.raises(ConversionError, match="model.qk_norm='per_head'"):
        hf_config_dict(spec(qk_norm="per_head"), "float32")
    with pytest.raises(ConversionError, match="model.sliding_window_pattern"):
        hf_config_dict(spec(sliding_window_pattern=[3, 5, -1]), "float32")
    with pytest.raises(ConversionError, match="model.norm='rms_norm'"):
        hf_config_dict(ModelConfig(norm="rms_norm"), "float32")


PRESETS = Path(__file__).resolve().parents[1] / "configs"
# The released models' parameter counts (their safetensors on the HF hub; README "OLMo-2 and OLMo-3" cites them).
RELEASED = {
    "olmo2_1b": 1_484_916_736,
    "olmo2_7b": 7_298_617_344,
    "olmo2_13b": 13_716_198_400,
    "olmo2_32b": 32_234_279_936,
    "olmo3_7b": 7_298_617_344,
    "olmo3_32b": 32_234_279_936,
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_presets_have_the_released_models_parameter_counts(name: str) -> None:
    config = load_config(str(PRESETS / f"{name}.yaml"))  # eval_shape only: nothing is allocated
    assert num_params(config.model) == RELEASED[name]
    hf = hf_config_dict(config.model, "bfloat16")  # every preset converts to its HF architecture
    assert hf["model_type"] == name[:5]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_kv_heads": 3}, "model.n_kv_heads=3 does not divide model.n_heads=4"),
        ({"sliding_window_pattern": [4096, 0]}, r"model.sliding_window_pattern\[1\]"),
        ({"rope_scaling": "yarn"}, "model.rope_original_max_position_embeddings"),
    ],
)
def test_the_spec_validates_itself_naming_the_key(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec(**changes).validate()
