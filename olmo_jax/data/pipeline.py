"""The host side of the training data, rebuilt from a `DataSpec` alone: instances, global order, batches, state.

Both the JAX loader (`olmo_jax.data.loader`) and `inspect` use this module, so what inspect prints for step N
is computed by the same code that fed the trainer. Nothing here imports JAX.

Batch fingerprint: the first 16 hex digits of sha256 over the UTF-8 bytes of the instance space's identity
(`InstanceSource.identity`: file names and lengths, dtype, sequence length, mix), one zero byte, then the
batch's global instance indices as little-endian uint64, in row order. It is the same on every host.

Token checksum (`token_checksum`): sum over rows r and columns c of `token[r, c] * ((r * T + c) * 2654435761 + 1)`
in uint32 arithmetic (wrapping), T the sequence length. It can be computed on the global `jax.Array` the
trainer fed (`token_checksum(batch.input_ids, xp=jax.numpy)`) and by inspect from the token files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from olmo_jax.adapt.data import ConversationSource, PreferenceSource
from olmo_jax.data.builtin import ensure_builtin_corpus, ensure_builtin_tokenizer
from olmo_jax.data.order import BatchPlan, Cursor, GlobalOrder
from olmo_jax.data.source import InstanceSource, build_instance_source, check_tokenizer
from olmo_jax.data.spec import DataSpec
from olmo_jax.data.tokenizer import load_tokenizer
from olmo_jax.data.tokenizer_formats import Tokenizer
from olmo_jax.errors import ConfigError, TokenizerError

STATE_FORMAT = "olmo_jax.loader/1"
log = logging.getLogger(__name__)


def batch_fingerprint(identity: str, indices: np.ndarray) -> str:
    """See the module docstring."""
    digest = hashlib.sha256(identity.encode() + b"\0")
    digest.update(np.asarray(indices, dtype="<u8").tobytes())
    return digest.hexdigest()[:16]


def token_checksum(tokens: Any, xp: Any = np) -> Any:
    """See the module docstring; `xp` is numpy or jax.numpy. Returns a uint32 scalar."""
    rows, cols = tokens.shape
    positions = xp.arange(rows * cols, dtype=xp.uint32).reshape(rows, cols)
    weights = positions * xp.uint32(2654435761) + xp.uint32(1)
    return xp.sum(tokens.astype(xp.uint32) * weights, dtype=xp.uint32)


@dataclass(frozen=True)
class HostBatch:
    """One global batch as a host sees it: every index, but the tokens of its own rows only."""

    step: int
    indices: np.ndarray  # global instance indices of all rows (int64)
    rows: np.ndarray  # which rows of the global batch `tokens` holds, in order
    tokens: np.ndarray  # int32 [len(rows), seq_len]
    fingerprint: str
    cursor: Cursor  # where this batch started
    next_cursor: Cursor  # where the following batch starts
    fields: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # fine-tuning rows' other arrays


class DataPipeline:
    """Instances, plan and order of one `DataSpec`; `batch(cursor, rows)` materialises a host's part of a batch."""

    def __init__(
        self, source: InstanceSource, plan: BatchPlan, seed: int, tokenizer: Tokenizer | None, order: str = "olmo"
    ) -> None:
        self.source = source
        self.plan = plan
        self.seed = seed
        self.order_name = order
        self.order = GlobalOrder(plan, seed, order=order)
        self.tokenizer = tokenizer

    @property
    def seq_len(self) -> int:
        return self.source.seq_len

    @property
    def instances_per_epoch(self) -> int:
        return len(self.source)

    def cursor_at(self, step: int, start: Cursor | None = None) -> Cursor:
        """The cursor of global batch `step` (counted from `start`'s step, default the run's beginning)."""
        start = start or Cursor()
        if step < start.step:
            raise ValueError(f"step {step} comes before the starting step {start.step}")
        return self.plan.advance(start, step - start.step)

    def batch(self, cursor: Cursor, rows: np.ndarray | None = None) -> HostBatch:
        """The batch at `cursor`, with the tokens of `rows` (default: all rows)."""
        indices = self.order.indices(cursor)
        rows = np.arange(len(indices)) if rows is None else np.asarray(rows)
        tokens = self.source.read(indices[rows])
        fields = self.source.read_fields(indices[rows])
        fingerprint = batch_fingerprint(self.source.identity, indices)
        next_cursor = self.plan.next_cursor(cursor)
        return HostBatch(cursor.step, indices, rows, tokens, fingerprint, cursor, next_cursor, fields)

    def state(self, cursor: Cursor) -> dict[str, Any]:
        """A small JSON-serialisable description of `cursor`, restorable with `cursor_from_state`."""
        return {
            "format": STATE_FORMAT,
            **cursor.to_dict(),
            "seed": self.seed,
            "order": self.order_name,
            "instances_per_epoch": self.instances_per_epoch,
            "source": self.source.identity,
        }

    def cursor_from_state(self, state: dict[str, Any]) -> Cursor:
        """The cursor saved by `state`; refuses a state saved for other data or another seed."""
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"loader state has format {state.get('format')!r}, expected {STATE_FORMAT!r}")
        for key, current in (
            ("seed", self.seed),
            ("order", self.order_name),
            ("instances_per_epoch", self.instances_per_epoch),
            ("source", self.source.identity),
        ):
            if state.get(key, "olmo" if key == "order" else None) != current:  # states before `order`: olmo
                raise ConfigError(
                    f"loader state was saved with {key}={state.get(key)!r} but the data now gives {current!r}; "
                    "resuming would not continue the same order (check data.paths, data.seed, data.order, sequence "
                    "length)"
                )
        try:
            return Cursor(**{k: int(state[k]) for k in ("step", "epoch", "position", "instances_consumed")})
        except KeyError as e:
            raise ConfigError(f"loader state lacks {e.args[0]!r}") from None


def _tokenizer_for(spec: DataSpec, builtin_tokenizer: str | None) -> Tokenizer | None:
    identifier = spec.tokenizer
    if builtin_tokenizer is not None:
        if identifier not in (None, "builtin"):
            raise ConfigError(
                f"tokenizer.identifier={identifier!r} but no data.paths are set, so the built-in corpus (tokenized "
                "with its own tokenizer) would be used; set data.paths or tokenizer.identifier=builtin"
            )
        identifier = builtin_tokenizer
    if identifier is None:
        return None
    try:
        tokenizer = load_tokenizer(identifier)
    except TokenizerError as e:
        # Training does not need the tokenizer; decoding in inspect and the EOS check below do.
        log.warning("tokenizer unavailable, continuing without it: %s", e)
        return None
    if tokenizer.eos_token_id != spec.eos_token_id:
        raise ConfigError(
            f"the tokenizer {identifier!r} has EOS id {tokenizer.eos_token_id} but model.eos_token_id is "
            f"{spec.eos_token_id}; set --config.model.eos_token_id={tokenizer.eos_token_id} or use the tokenizer "
            "the data was made with (OLMo's two GPT-NeoX files swap ids 0 and 50279)"
        )
    if tokenizer.vocab_size > spec.vocab_size:
        raise ConfigError(
            f"the tokenizer {identifier!r} has {tokenizer.vocab_size} tokens but model.vocab_size is {spec.vocab_size}"
        )
    return tokenizer


def build_pipeline(spec: DataSpec) -> DataPipeline:
    """The data pipeline `spec` describes (building the built-in corpus when it is the one to use)."""
    if spec.objective != "pretrain":
        return _chat_pipeline(spec)
    paths, sources = list(spec.paths), dict(spec.sources)
    builtin_tokenizer = None
    if not paths and not sources and spec.builtin_corpus:
        corpus = ensure_builtin_corpus(spec.sequence_length)
        paths, builtin_tokenizer = corpus.token_paths, corpus.tokenizer_path
    source = build_instance_source(
        paths,
        sources,
        seq_len=spec.sequence_length,
        vocab_size=spec.vocab_size,
        dtype=spec.dtype,
        seed=spec.seed,
    )
    tokenizer = _tokenizer_for(spec, builtin_tokenizer)
    check_tokenizer(source.files, tokenizer.identity if tokenizer is not None else None)
    plan = BatchPlan(
        len(source),
        spec.sequence_length,
        spec.global_batch_size,
        warmup=spec.batch_size_warmup,
        drop_last=spec.drop_last,
    )
    return DataPipeline(source, plan, spec.seed, tokenizer, spec.order)


def _chat_pipeline(spec: DataSpec) -> DataPipeline:
    """Fine-tuning rows (`olmo_jax.adapt.data`) in the same order and batches as token-file instances."""
    builtin = ensure_builtin_tokenizer() if spec.tokenizer in (None, "builtin") else None
    tokenizer = _tokenizer_for(spec, builtin)
    if tokenizer is None:
        raise ConfigError(
            f"objective={spec.objective} tokenizes chat data, but tokenizer {spec.tokenizer!r} could not be loaded"
        )
    if spec.objective == "sft":
        source = ConversationSource(
            spec.chat_files, tokenizer, spec.chat_template, spec.sequence_length, packing=spec.packing
        )
        what = f"{source.conversations:,} conversations in {len(source):,} rows"
    else:
        source = PreferenceSource(spec.chat_files, tokenizer, spec.chat_template, spec.sequence_length)
        what = f"{len(source):,} preference pairs"
    print(
        f"olmo_jax: {spec.objective} data: {what} of {spec.sequence_length} tokens, {100 * source.efficiency:.1f}% "
        f"of them not padding; {source.skipped} skipped (too long for a row)",
        file=sys.stderr,
        flush=True,
    )
    plan = BatchPlan(len(source), spec.sequence_length, spec.global_batch_size, warmup=None, drop_last=spec.drop_last)
    return DataPipeline(source, plan, spec.seed, tokenizer, spec.order)
