"""`olmo_jax.from_pretrained`: a ready-to-run model from an olmo_jax checkpoint or an HF OLMo directory."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from olmo_jax.adapt.chat import JINJA_TEMPLATES
from olmo_jax.checkpoint import CheckpointError, read_config, resolve_checkpoint, restore_params
from olmo_jax.config import ModelConfig
from olmo_jax.convert.hf import import_hf
from olmo_jax.convert.tokenizer_files import find_hf_tokenizer, tokenizer_vocab_size
from olmo_jax.data.tokenizer import load_tokenizer
from olmo_jax.data.tokenizer_formats import Tokenizer
from olmo_jax.errors import InputError
from olmo_jax.generate.decoding import Sampling, generate
from olmo_jax.model import DTYPES, OLMo, abstract_model


@nnx.jit
def _logits(model: OLMo, tokens: jax.Array) -> jax.Array:
    return model(tokens)


@dataclass
class Pretrained:
    """A loaded OLMo: `pretrained(tokens int32 [B, T]) -> float32 logits [B, T, embedding_size]`."""

    config: ModelConfig
    model: OLMo
    tokenizer_identifier: str | None  # for olmo_jax.data.tokenizer.load_tokenizer; None when unknown
    chat_template: str | None = None  # the template it was fine-tuned with (`olmo_jax.adapt.chat`), if known

    def __call__(self, tokens: Any) -> jax.Array:
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise InputError(f"tokens must be an integer array [batch, time], got {tokens.dtype}{list(tokens.shape)}")
        # An id past the vocabulary would read a padding row (or, past the embedding, give NaN), and a negative
        # one would wrap around to another token's row: both give logits without meaning.
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
            bad = int(tokens.min()) if int(tokens.min()) < 0 else int(tokens.max())
            raise InputError(f"token id {bad} is out of range for the model's vocabulary of {self.config.vocab_size}")
        return _logits(self.model, tokens.astype(jnp.int32))

    def generate(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], sampling: Sampling | None = None, **options: Any
    ) -> list[str] | list[list[int]]:
        """Continue each prompt (see `olmo_jax.generate.generate`): texts in, texts out (with the model's
        tokenizer), or token ids in, token ids out. `options`: Sampling's fields (max_new_tokens, temperature,
        top_p, seed, chunk), or `stop_token_ids`."""
        stop_ids = options.pop("stop_token_ids", None)
        sampling = dataclasses.replace(sampling or Sampling(), **options)
        texts = bool(prompts) and all(isinstance(p, str) for p in prompts)
        if not texts:
            return generate(self.model, prompts, sampling, stop_token_ids=stop_ids)
        tokenizer = self.tokenizer()
        new = generate(self.model, tokenizer.encode_batch(list(prompts)), sampling, stop_token_ids=stop_ids)
        return [tokenizer.decode(ids) for ids in new]

    def tokenizer(self) -> Tokenizer:
        if self.tokenizer_identifier is None:
            raise InputError("the model has no tokenizer recorded with it; pass token ids instead of text")
        return load_tokenizer(self.tokenizer_identifier)


def is_hf_dir(path: Path) -> bool:
    """An HF model directory has a `config.json`; olmo_jax checkpoints never do."""
    return (path / "config.json").is_file()


def build_model(config: ModelConfig, params: dict[str, Any]) -> OLMo:
    """An OLMo holding `params` (a pure dict, numpy or jax); `params` is emptied as arrays move to device."""
    graphdef, state = nnx.split(abstract_model(config))
    expected = nnx.to_pure_dict(state)
    if set(params) != set(expected):
        raise CheckpointError(f"parameters {sorted(params)} do not match the model's {sorted(expected)}")
    arrays = {}
    for name in list(params):
        value = params.pop(name)  # drop the host copy as soon as the device copy exists
        want = expected[name]
        if tuple(value.shape) != tuple(want.shape):
            raise CheckpointError(
                f"parameter {name} has shape {list(value.shape)}, the config needs {list(want.shape)}"
            )
        arrays[name] = jnp.asarray(value, dtype=want.dtype)
    nnx.replace_by_pure_dict(state, arrays)
    return nnx.merge(graphdef, state)


def from_pretrained(path: str | Path, *, compute_dtype: str | None = None) -> Pretrained:
    """Load `path`: an olmo_jax run dir, `checkpoints/` dir or step dir, or an HF OLMo directory.

    `compute_dtype` ("float32", "bfloat16", "float16") overrides the checkpoint's; logits are fp32 always.
    """
    path = Path(path)
    if compute_dtype is not None and compute_dtype not in DTYPES:
        raise InputError(f"invalid compute_dtype {compute_dtype!r}; choose one of {', '.join(DTYPES)}")
    if is_hf_dir(path):
        tokenizer_file = find_hf_tokenizer(path)
        vocab_size = tokenizer_vocab_size(tokenizer_file) if tokenizer_file else None
        config, params = import_hf(path, vocab_size=vocab_size)
        identifier = str(tokenizer_file.absolute()) if tokenizer_file else None
        template = _hf_chat_template(path)
    else:
        step_dir = resolve_checkpoint(path)
        train_config = read_config(step_dir)
        config, identifier = train_config.model, train_config.tokenizer.identifier
        template = train_config.adapt.chat_template if train_config.objective != "pretrain" else None
        params = restore_params(step_dir)
    if compute_dtype is not None:
        config.compute_dtype = compute_dtype
    return Pretrained(config, build_model(config, params), identifier, template)


def _hf_chat_template(hf_dir: Path) -> str | None:
    """The name of the HF directory's chat template when it is one of ours (`olmo_jax.adapt.chat`)."""
    try:
        source = json.loads((hf_dir / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    return next((name for name, text in JINJA_TEMPLATES.items() if text == source), None)
