"""Test helpers between olmo_jax models and `transformers`: host copies of the weights, an in-memory HF model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import transformers
from flax import nnx

from olmo_jax.config import ModelConfig
from olmo_jax.convert.hf import hf_config_dict, hf_tensors
from olmo_jax.model import OLMo


def host_params(model: OLMo) -> dict[str, np.ndarray]:
    """The model's parameters as a pure dict of host numpy arrays (olmo_jax layout)."""
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {name: np.asarray(value) for name, value in state.items()}


def iter_torch_state(params: dict[str, np.ndarray], config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, fp32 torch tensor) pairs of `params`, one tensor materialised at a time."""
    for tensor in hf_tensors(params, config, "float32"):
        yield tensor.name, torch.from_numpy(np.ascontiguousarray(tensor.produce().astype(np.float32)))


def to_transformers(model: OLMo) -> transformers.OlmoForCausalLM:
    """An fp32 `transformers.OlmoForCausalLM` holding `model`'s weights (in memory; for parity and eval)."""
    config = model.config
    hf_config = hf_config_dict(config, "float32")
    hf_config.pop("architectures")
    hf_config.pop("model_type")
    hf_model = transformers.OlmoForCausalLM(transformers.OlmoConfig(**hf_config)).to(torch.float32)
    result = hf_model.load_state_dict(dict(iter_torch_state(host_params(model), config)), strict=False)
    allowed_missing = {"lm_head.weight"} if config.weight_tying else set()
    assert not (set(result.missing_keys) - allowed_missing or result.unexpected_keys), (
        f"transformers OlmoForCausalLM disagrees on tensor names: missing {sorted(result.missing_keys)}, "
        f"unexpected {sorted(result.unexpected_keys)}"
    )
    if config.weight_tying:
        hf_model.tie_weights()
    return hf_model.eval()
