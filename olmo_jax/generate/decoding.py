"""Text generation with a key/value cache: greedy, temperature and top-p (nucleus) sampling.

    prompts -> left-padded [B, P] -> prefill (one pass fills the cache) -> `chunk` tokens per jitted call

Rows are left-padded to the longest prompt (rounded up to a multiple of `PROMPT_BUCKET`, so that batches
of similar prompts share one compiled program), so that every row writes the token of step t into the same
cache slot P + t; each slot remembers the token position it holds (-1 for padding), and attention masks by
position (`olmo_jax.model.Decoding`). Generation stops for a row at its first stop token (EOS by default) or
when `stop` says so on the host between chunks (e.g. a stop string in the decoded text), and for the batch
when every row has stopped or `max_new_tokens` are out. Logits past the tokenizer's vocabulary (the padded
embedding rows) are never sampled.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from olmo_jax.errors import InputError
from olmo_jax.model import DTYPES, Decoding, KVCache, OLMo

PROMPT_BUCKET = 32  # prompt lengths are padded up to a multiple of this (fewer recompilations)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0 is greedy (argmax, the first of equal logits)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0  # sample from the smallest set of tokens whose probability reaches top_p
    seed: int = 0
    chunk: int = 32  # tokens per jitted call; the host checks the stop rules between calls

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise InputError(f"temperature={self.temperature} must be a finite number >= 0 (0: greedy)")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p={self.top_p} must be in (0, 1]")
        if self.chunk < 1:
            raise InputError(f"chunk={self.chunk} must be at least 1")


class _State(NamedTuple):
    cache: KVCache
    slot_positions: jax.Array  # [B, S]
    next_token: jax.Array  # [B] the token to feed at slot `index`
    index: jax.Array  # scalar: the slot it goes to
    position: jax.Array  # [B] its position
    key: jax.Array


def sample(logits: jax.Array, key: jax.Array, sampling: Sampling, vocab_size: int) -> jax.Array:
    """Next tokens [B] from fp32 logits [B, V] (`sampling` static)."""
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # Keep a token while the mass before it is below top_p: the most likely token is always kept.
        kept = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p
        threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(nnx.jit, static_argnames=("sampling", "slots"))
def _prefill(model: OLMo, tokens: jax.Array, pad: jax.Array, key: jax.Array, sampling: Sampling, slots: int) -> _State:
    config = model.config
    batch, prompt = tokens.shape
    shape = (config.n_layers, batch, slots, config.kv_heads, config.head_dim)
    cache = KVCache(*(jnp.zeros(shape, DTYPES[config.compute_dtype]) for _ in "kv"))
    positions = jnp.arange(slots)[None, :] - pad[:, None]
    slot_positions = jnp.where((positions >= 0) & (jnp.arange(slots)[None, :] < prompt), positions, -1)
    # Padding queries get position 0 (they see the row's first token, so no row of the mask is empty); their
    # outputs are never used and their slots are masked for every other query.
    queries = jnp.maximum(jnp.arange(prompt)[None, :] - pad[:, None], 0)
    logits, cache = model.decode(tokens, cache, Decoding(jnp.int32(0), slot_positions, queries))
    key, step_key = jax.random.split(key)
    first = sample(logits[:, -1], step_key, sampling, config.vocab_size)
    return _State(cache, slot_positions, first, jnp.int32(prompt), prompt - pad, key)


@functools.partial(nnx.jit, static_argnames=("sampling",))
def _decode_chunk(model: OLMo, state: _State, sampling: Sampling) -> tuple[_State, jax.Array]:
    """Feed `sampling.chunk` tokens one at a time; returns the state after them and the tokens fed [B, chunk]."""

    def step(state: _State, _: None) -> tuple[_State, jax.Array]:
        slot_positions = jax.lax.dynamic_update_slice_in_dim(
            state.slot_positions, state.position[:, None], state.index, axis=1
        )
        decoding = Decoding(state.index, slot_positions, state.position[:, None])
        logits, cache = model.decode(state.next_token[:, None], state.cache, decoding)
        key, step_key = jax.random.split(state.key)
        following = sample(logits[:, 0], step_key, sampling, model.config.vocab_size)
        return _State(cache, slot_positions, following, state.index + 1, state.position + 1, key), state.next_token

    state, fed = jax.lax.scan(step, state, None, length=sampling.chunk)
    return state, fed.T


def generate(
    model: OLMo,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling = Sampling(),
    *,
    stop_token_ids: Sequence[int] | None = None,
    stop: Callable[[int, list[int]], bool] | None = None,
) -> list[list[int]]:
    """New tokens for each prompt (token ids), without the stop token that ended a row.

    `stop_token_ids` defaults to the model's EOS. `stop(row, tokens so far)` is asked between chunks; a row
    it stops keeps all its tokens (the caller cuts at its stop string). Prompt plus new tokens must fit
    `max_sequence_length`."""
    sampling.validate()
    config = model.config
    if not prompts:
        return []
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise InputError(f"prompt {lengths.index(0)} is empty: generation needs at least one token to start from")
    longest = max(lengths)
    if longest + sampling.max_new_tokens > config.max_sequence_length:
        raise InputError(
            f"a prompt of {longest} tokens plus max_new_tokens={sampling.max_new_tokens} exceeds the model's "
            f"max_sequence_length of {config.max_sequence_length}; shorten the prompt or ask for fewer tokens"
        )
    for row, prompt in enumerate(prompts):
        bad = [t for t in prompt if not 0 <= t < config.vocab_size]
        if bad:
            raise InputError(
                f"prompt {row}: token id {bad[0]} is out of range for the vocabulary of {config.vocab_size}"
            )
    width = -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET
    chunks = -(-sampling.max_new_tokens // sampling.chunk)
    tokens = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = prompt
    pad = jnp.asarray([width - n for n in lengths], jnp.int32)
    # Only the choice of rule is compiled in: the seed and the length are not (no recompilation per seed).
    rule = dataclasses.replace(sampling, seed=0, max_new_tokens=1)
    key = jax.random.key(sampling.seed)
    state = _prefill(model, jnp.asarray(tokens), pad, key, rule, width + chunks * sampling.chunk)

    stops = set([config.eos_token_id] if stop_token_ids is None else stop_token_ids)
    outputs: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    for _ in range(chunks):
        state, fed = _decode_chunk(model, state, rule)
        for row, new in enumerate(np.asarray(fed).tolist()):
            if finished[row]:
                continue
            for token in new:
                finished[row] = token in stops
                if finished[row]:
                    break
                outputs[row].append(token)
                finished[row] = len(outputs[row]) == sampling.max_new_tokens
                if finished[row]:
                    break
            if not finished[row] and stop is not None:
                finished[row] = stop(row, outputs[row])
        if all(finished):
            break
    return outputs


def stop_strings(decode: Callable[[list[int]], str], stops: Sequence[str]) -> Callable[[int, list[int]], bool] | None:
    """A `stop` rule for `generate`: a row is done once its decoded text holds one of `stops`."""
    if not stops:
        return None
    return lambda row, tokens: any(s in decode(tokens) for s in stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """`text` up to the earliest stop string, and that string (None when none occurs)."""
    found = [(text.index(s), s) for s in stops if s and s in text]
    if not found:
        return text, None
    at, stop = min(found)
    return text[:at], stop
