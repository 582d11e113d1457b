"""The scoring engine: log p(continuation | context) for many requests, batched and bucketed.

A request's model input is `(context + continuation)[:-1]`, truncated from the left to the model length
(as OLMo's evaluator); its score is the sum of the log-probabilities of the continuation's tokens.

Work is saved exactly (the numbers do not change), by packing requests into rows:
- a request whose input is a prefix of another's is read off that request's row: by causality the
  logits at those positions are the same. Identical requests (e.g. the unconditional "Answer:" + " yes"
  of every BoolQ question) and the candidates of a question whose continuations are one token long (they
  share the context as input) cost one row;
- each row's natural next-token log-probabilities come back whole ([rows, T]), and each request's last
  target token, which may differ from the row's next token, comes back through up to `MAX_TARGETS_PER_ROW`
  (position, token) gathers per row.
Rows are sorted by length and padded to a few bucket lengths (16, 24, 32, 48, 64, ... and the model
length: 15 for 2048), with a fixed number of rows per batch, so a whole evaluation compiles at most one
program per bucket. With a mesh, rows are sharded over its batch axes (data, fsdp) and the parameters
stay as they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from olmo_jax import sharding
from olmo_jax.errors import EvalError
from olmo_jax.model import OLMo

MAX_TARGETS_PER_ROW = 16
MIN_BUCKET = 16
LOGIT_CHUNK = 256  # positions per LM-head pass


@dataclass(frozen=True)
class Request:
    """Score `continuation` after `context` (token ids, both non-empty)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass
class Scores:
    """Per-request results of `Scorer.score`, aligned with the requests."""

    loglikelihood: np.ndarray  # float64 [n]: sum of the continuation tokens' log-probs (nats)
    truncated: np.ndarray  # bool [n]: the input was cut from the left to fit the model length
    scored_tokens: np.ndarray  # int [n]: continuation tokens scored (all of them unless over-long)
    rows: int  # model rows actually run (<= n thanks to sharing)
    tokens: int  # tokens fed to the model, padding excluded


@dataclass
class _Row:
    tokens: tuple[int, ...]
    targets: dict[tuple[int, int], int]  # (position, token) -> slot in the row's gathers


def bucket_lengths(max_length: int) -> list[int]:
    """Padded lengths a batch may take: 16, 24, 32, 48, 64, ... (powers of two and 1.5x them) below
    `max_length`, then `max_length`. Ratio-1.5 steps pad ~20% on average (powers of two alone: ~45%)."""
    buckets = []
    length = MIN_BUCKET
    while length < max_length:
        buckets += [b for b in (length, length * 3 // 2) if b < max_length]
        length *= 2
    return [*buckets, max_length]


def model_input(request: Request, max_length: int) -> tuple[tuple[int, ...], int, bool]:
    """(input tokens, index of the first scored position in them, truncated?) for one request.

    Position t of the input predicts token t+1 of `context + continuation`. An input longer than
    `max_length` loses tokens on the left; a continuation longer than `max_length` keeps (is scored on)
    only its last `max_length` tokens.
    """
    if not request.context or not request.continuation:
        raise EvalError(f"a request needs a non-empty context and continuation, got {request}")
    full = request.context + request.continuation
    truncated = len(full) - 1 > max_length
    if truncated:
        full = full[-(max_length + 1) :]
    inputs = full[:-1]
    return inputs, max(0, len(inputs) - len(request.continuation)), truncated


def _target_log_probs(model: OLMo, hidden: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets) [B, N] from final hidden states [B, N, d]: fp32 log-softmax over the padded vocab."""
    logits = model.logits(hidden)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def _forward(graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array, target_pos: jax.Array, target_tok: jax.Array):
    """(log p(tokens[t+1] | tokens[:t+1]) [B, T], log p(target_tok | tokens[:target_pos+1]) [B, K]).

    The LM head runs on LOGIT_CHUNK positions at a time (`lax.map`), so the fp32 logits never exist for a
    whole batch at once: [B, 2048, 50304] would be 13 GB at B = 32.
    """
    model = nnx.merge(graphdef, state)
    hidden = model.hidden_states(tokens)
    batch, length, width = hidden.shape
    next_tokens = jnp.roll(tokens, -1, axis=1)  # the last column wraps around and is never read
    chunk = min(length, LOGIT_CHUNK)
    pad = -length % chunk
    hidden_chunks = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, -1, chunk, width)
    target_chunks = jnp.pad(next_tokens, ((0, 0), (0, pad))).reshape(batch, -1, chunk)
    natural = jax.lax.map(
        lambda xs: _target_log_probs(model, *xs), (hidden_chunks.swapaxes(0, 1), target_chunks.swapaxes(0, 1))
    )
    natural = natural.swapaxes(0, 1).reshape(batch, -1)[:, :length]
    rows = jnp.arange(batch)[:, None]
    gathered = _target_log_probs(model, hidden[rows, target_pos], target_tok)
    return natural, gathered


class Scorer:
    """Scores `Request`s with `model`; reuse one instance to reuse its compiled programs.

    Args:
        model: the OLMo model (its parameters may be sharded on `mesh`).
        max_length: the model length; longer inputs are truncated from the left.
        batch_size: rows per batch (rounded up to a multiple of the mesh's batch shards).
        mesh: shard rows over its (data, fsdp) axes; None runs on the default device.
        pad_token_id: filler for padded positions (never scored).
    """

    def __init__(self, model: OLMo, max_length: int, batch_size: int, mesh: Mesh | None = None, pad_token_id: int = 0):
        if batch_size <= 0:
            raise EvalError(f"batch_size must be positive, got {batch_size}")
        if max_length <= 1:
            raise EvalError(f"max_length must be at least 2, got {max_length}")
        self.max_length = max_length
        self.mesh = mesh
        self.requested_batch_size = batch_size
        shards = sharding.batch_shards(mesh) if mesh is not None else 1
        self.batch_size = math.ceil(batch_size / shards) * shards
        self.pad_token_id = pad_token_id
        self.buckets = bucket_lengths(max_length)
        self.compilations = 0  # programs traced so far (at most one per bucket length and model graph)
        self.set_model(model)

    def set_model(self, model: OLMo) -> None:
        """Score with `model`'s current parameters (same graph: nothing recompiles)."""
        graphdef, self._state = nnx.split(model)
        if getattr(self, "_graphdef", None) is None or self._graphdef != graphdef:
            self._graphdef = graphdef
            kwargs = {}
            if self.mesh is not None:
                out = sharding.replicated(self.mesh)  # every host reads every row's results
                kwargs["out_shardings"] = (out, out)

            def traced(state, *batch):
                self.compilations += 1  # runs only while tracing, i.e. once per new shape
                return _forward(graphdef, state, *batch)

            self._jitted = jax.jit(traced, **kwargs)

    def _plan(self, inputs: list[tuple[int, ...]], last: list[tuple[int, int]]) -> tuple[list[_Row], list[tuple]]:
        """Pack requests into rows: each request is read off a row whose tokens its input prefixes."""
        order = sorted(range(len(inputs)), key=inputs.__getitem__)
        rows: list[_Row] = []
        where: list[tuple[int, int]] = [(0, 0)] * len(inputs)
        # In lexicographic order, an input that prefixes some row's tokens prefixes the row built from
        # the next-larger input, so a reverse sweep needs to compare with the current row only.
        for i in reversed(order):
            row = rows[-1] if rows else None
            fits = row is not None and row.tokens[: len(inputs[i])] == inputs[i]
            if fits and last[i] not in row.targets and len(row.targets) >= MAX_TARGETS_PER_ROW:
                fits = False
            if not fits:
                row = _Row(inputs[i], {})
                rows.append(row)
            slot = row.targets.setdefault(last[i], len(row.targets))
            where[i] = (len(rows) - 1, slot)
        return rows, where

    def _device_batch(self, array: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(array)
        # Every host builds the same global batch; each supplies the shards its devices hold.
        return jax.make_array_from_callback(array.shape, sharding.batch_sharding(self.mesh), lambda i: array[i])

    def _run(self, tokens: np.ndarray, target_pos: np.ndarray, target_tok: np.ndarray) -> tuple[np.ndarray, ...]:
        """One batch through the compiled forward; returns host float64 arrays (blocking)."""
        batch = [self._device_batch(a) for a in (tokens, target_pos, target_tok)]
        if self.mesh is None:
            natural, gathered = self._jitted(self._state, *batch)
        else:
            with jax.set_mesh(self.mesh):
                natural, gathered = self._jitted(self._state, *batch)
        # np.asarray blocks: one batch in flight at a time (CPU collectives can deadlock otherwise).
        return np.asarray(natural, np.float64), np.asarray(gathered, np.float64)

    def score(self, requests: Sequence[Request], progress: Callable[[int, int], None] | None = None) -> Scores:
        """Log-likelihood of every request's continuation; `progress(rows_done, rows_total)` after each batch."""
        prepared = [model_input(r, self.max_length) for r in requests]
        inputs = [p[0] for p in prepared]
        last = [(len(p[0]) - 1, r.continuation[-1]) for p, r in zip(prepared, requests, strict=True)]
        rows, where = self._plan(inputs, last)
        served: list[list[int]] = [[] for _ in rows]
        for i, (row, _) in enumerate(where):
            served[row].append(i)
        by_length = sorted(range(len(rows)), key=lambda r: -len(rows[r].tokens))
        loglikelihood = np.empty(len(requests), np.float64)
        for start in range(0, len(by_length), self.batch_size):
            batch_rows = by_length[start : start + self.batch_size]
            length = next(b for b in self.buckets if b >= len(rows[batch_rows[0]].tokens))
            tokens = np.full((self.batch_size, length), self.pad_token_id, np.int32)
            target_pos = np.zeros((self.batch_size, MAX_TARGETS_PER_ROW), np.int32)
            target_tok = np.zeros((self.batch_size, MAX_TARGETS_PER_ROW), np.int32)
            for b, r in enumerate(batch_rows):
                tokens[b, : len(rows[r].tokens)] = rows[r].tokens
                for (pos, tok), slot in rows[r].targets.items():
                    target_pos[b, slot], target_tok[b, slot] = pos, tok
            natural, gathered = self._run(tokens, target_pos, target_tok)
            # Prefix sums in float64: a request's shared part is a difference of two of them.
            sums = np.concatenate([np.zeros((natural.shape[0], 1)), np.cumsum(natural, axis=1)], axis=1)
            for b, r in enumerate(batch_rows):
                for i in served[r]:
                    first, last_pos = prepared[i][1], len(inputs[i]) - 1
                    loglikelihood[i] = sums[b, last_pos] - sums[b, first] + gathered[b, where[i][1]]
            if progress is not None:
                progress(min(start + self.batch_size, len(rows)), len(rows))
        return Scores(
            loglikelihood=loglikelihood,
            truncated=np.array([p[2] for p in prepared], bool),
            scored_tokens=np.array([len(p[0]) - p[1] for p in prepared], np.int64),
            rows=len(rows),
            tokens=sum(len(r.tokens) for r in rows),
        )


class RateReporter:
    """A `progress` callback that prints rows done and rows/s at most every `every` seconds."""

    def __init__(self, label: str, printer: Callable[[str], None], every: float = 5.0):
        self.label, self.printer, self.every = label, printer, every
        self.started = time.perf_counter()
        self.last_print = self.started

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last_print >= self.every or done == total:
            self.last_print = now
            rate = done / max(now - self.started, 1e-9)
            self.printer(f"{self.label}: {done}/{total} rows ({rate:.1f} rows/s)")
