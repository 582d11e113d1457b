"""The scoring engine: log p(continuation | context) for many requests, batched and bucketed.

A request's model input is `(context + continuation)[:-1]`, truncated from the left to the model length
(as OLMo's evaluator); its score is the sum of the log-probabilities of the continuation's tokens.

Work is saved exactly (the numbers do not change), by packing requests into rows:
- shared contexts (the default): the inputs of a row form a tree laid out depth first (`model.Packing`),
  each token attending to the prefix it continues and to itself only, at the positions it has in its own
  input. A question's context is run once and each candidate continues it; identical inputs and inputs that
  prefix another's cost nothing more. Consecutive inputs in sorted order share a row while they share a
  good part of their tokens (SHARE_FRACTION) and the row stays within the model length. The trees are then
  packed, best fit by decreasing length, into rows of `pack_length` tokens (separate trees in a row see
  nothing of each other), so that a batch is real tokens rather than padding;
- without (`share_contexts=False`): a row is one input, and a request whose input is a prefix of that
  input (identical requests, e.g. the unconditional "Answer:" + " yes" of every BoolQ question, and the
  candidates of a question whose continuations are one token long) is read off it: by causality the
  logits at those positions are the same.
Each row's natural next-token log-probabilities come back whole ([rows, T]); a target that is not the
row's next token (a request's last token, the first token of a branch) comes back through one of the
row's (position, token) gathers, at most as many as the row's padded length.
Rows are sorted by length and padded to a few bucket lengths (16, 24, 32, 48, 64, ... and the model
length: 15 for 2048), with a fixed number of rows per batch, so a whole evaluation compiles at most one
program per bucket. With a mesh, rows are sharded over its batch axes (data, fsdp) and the parameters
stay as they are.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from olmo_jax import sharding
from olmo_jax.config import ModelConfig
from olmo_jax.errors import EvalError
from olmo_jax.model import OLMo, Packing, matmul_params

MIN_BUCKET = 16
LOGIT_CHUNK = 256  # positions per LM-head pass
# With shared contexts, an input joins the row of the previous one when they share at least 1/SHARE_FRACTION
# of its tokens: a few shared tokens (a template's "Question:") are not worth a longer row, whose attention
# costs more per token, nor the context repeated when a question no longer fits in the row.
SHARE_FRACTION = 4
# Packed rows are at most as long as keeps their (dense, masked) attention under this share of the matmuls.
PACK_ATTENTION_SHARE = 0.125


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
    rows: int  # model rows actually run (<= n thanks to sharing); of a group: the rows holding its requests
    tokens: int  # tokens fed to the model, padding excluded; of a group: those of the inputs it brought
    seconds: float = 0.0  # of a group: the pass's time in proportion to its tokens


@dataclass
class _Row:
    """Inputs packed as a tree, depth first: token t sits at position `positions[t]` of its input and
    `ends[t]` is the last token that continues it (see `model.Packing`)."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    # (row index, token) -> gather slot; at most max(MIN_BUCKET, len(tokens)), so within the bucket length.
    targets: dict[tuple[int, int], int] = field(default_factory=dict)


@dataclass
class _Reading:
    """Where one request's log-likelihood is read: natural log-probs at `natural`, plus gathers `slots`."""

    row: int
    natural: np.ndarray
    slots: list[int]


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


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def default_pack_length(config: ModelConfig, max_length: int) -> int:
    """The longest bucket length (at most `max_length`) at which a packed row's attention costs at most
    PACK_ATTENTION_SHARE of the matmuls per token. A packed row attends densely, every query against every key
    of the row under a mask, i.e. 2 x layers x T x heads x head_dim multiply-adds per token against one per
    matmul parameter: the `tiny` preset reaches an eighth at 382 tokens (256), OLMo-1B at 2,245 (2048). On the
    2-core CPU, `tiny` at length 2048 scored core-9 (200 questions each, one round: `benchmarks/bench_eval.py
    --limit 200 --max_length 2048 --compare 1 --pack_length N`) in 72.5 s packing 256 and 76.4 s packing 512,
    against 126 s with one row per input."""
    per_key = 2 * config.n_layers * config.n_heads * config.head_dim
    longest = PACK_ATTENTION_SHARE * matmul_params(config) / per_key
    fitting = [b for b in bucket_lengths(max_length) if b <= longest]
    return fitting[-1] if fitting else MIN_BUCKET


def _target_log_probs(model: OLMo, hidden: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p(targets) [B, N], the log-softmax normaliser [B, N]) from final hidden states [B, N, d]."""
    logits = model.logits(hidden)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    normaliser = jax.nn.logsumexp(logits, axis=-1)
    return picked - normaliser, normaliser


def _forward(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: jax.Array,
    target_pos: jax.Array,
    target_tok: jax.Array,
    packing: Packing | None = None,
):
    """(log p(tokens[t+1] | tokens[:t+1]) [B, T], log p(target_tok | tokens[:target_pos+1]) [B, K]); with
    `packing`, a token is conditioned on its ancestors in the row's tree instead of on all of tokens[:t+1].

    The LM head runs on LOGIT_CHUNK positions at a time (`lax.map`), so the fp32 logits never exist for a
    whole batch at once: [B, 2048, 50304] would be 13 GB at B = 32. A gathered target needs only its own
    logit, a dot product with its column of the head, and the position's normaliser.
    """
    model = nnx.merge(graphdef, state)
    hidden = model.hidden_states(tokens, packing)
    batch, length, width = hidden.shape
    next_tokens = jnp.roll(tokens, -1, axis=1)  # the last column wraps around and is never read
    chunk = min(length, LOGIT_CHUNK)
    pad = -length % chunk
    hidden_chunks = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, -1, chunk, width)
    target_chunks = jnp.pad(next_tokens, ((0, 0), (0, pad))).reshape(batch, -1, chunk)
    natural, normaliser = jax.lax.map(
        lambda xs: _target_log_probs(model, *xs), (hidden_chunks.swapaxes(0, 1), target_chunks.swapaxes(0, 1))
    )
    natural, normaliser = (a.swapaxes(0, 1).reshape(batch, -1)[:, :length] for a in (natural, normaliser))
    rows = jnp.arange(batch)[:, None]
    columns = jnp.take(model.head_weight(), target_tok, axis=1).astype(hidden.dtype)  # [d, B, K]
    logits = jnp.einsum("bkd,dbk->bk", hidden[rows, target_pos], columns, preferred_element_type=jnp.float32)
    return natural, logits - normaliser[rows, target_pos]


class Scorer:
    """Scores `Request`s with `model`; reuse one instance to reuse its compiled programs.

    Args:
        model: the OLMo model (its parameters may be sharded on `mesh`).
        max_length: the model length; longer inputs are truncated from the left.
        batch_size: rows per batch (rounded up to a multiple of the mesh's batch shards).
        mesh: shard rows over its (data, fsdp) axes; None runs on the default device.
        pad_token_id: filler for padded positions (never scored).
        share_contexts: run a context shared by several requests once, each continuation against it,
            and pack questions into rows (packed rows); False: one row per distinct input.
        pack_length: the length of a packed row (default: `default_pack_length`).
    """

    def __init__(
        self,
        model: OLMo,
        max_length: int,
        batch_size: int,
        mesh: Mesh | None = None,
        pad_token_id: int = 0,
        share_contexts: bool = True,
        pack_length: int | None = None,
    ):
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
        self.share_contexts = share_contexts
        self.buckets = bucket_lengths(max_length)
        self.pack_length = min(max_length, pack_length or default_pack_length(model.config, max_length))
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

            def traced(state, tokens, target_pos, target_tok, *packing):
                self.compilations += 1  # runs only while tracing, i.e. once per new shape
                return _forward(graphdef, state, tokens, target_pos, target_tok, Packing(*packing) if packing else None)

            self._jitted = jax.jit(traced, **kwargs)

    def _plan(
        self, inputs: list[tuple[int, ...]], first: list[int], last: list[int]
    ) -> tuple[list[tuple[int, int]], list[_Row], list[_Reading]]:
        """Pack the requests' inputs into rows; where each request's log-likelihood is read in them; and, per
        tree (a row before packing), its tokens and the first request it serves.

        In lexicographic order, inputs that share a prefix are consecutive, so each input is compared with
        the previous one only: it extends the row when the previous input prefixes it, and, sharing
        contexts, branches off that input's path where they differ.
        """
        order = sorted(range(len(inputs)), key=inputs.__getitem__)
        rows: list[_Row] = []
        readings: list[_Reading | None] = [None] * len(inputs)
        previous: tuple[int, ...] = ()
        path: list[int] = []  # the row index of each token of `previous`
        for i in order:
            tokens = inputs[i]
            shared = _common_prefix(previous, tokens)
            row = rows[-1] if rows else None
            joins = shared == len(previous) or (self.share_contexts and shared * SHARE_FRACTION >= len(tokens))
            if row is not None and joins:
                start = len(row.tokens)
                grown = start + len(tokens) - shared
                reading = _read(path[:shared] + list(range(start, grown)), tokens, first[i], last[i])
                gathers = len(row.targets) + len(set(reading[1]) - row.targets.keys())
                if grown > self.max_length or gathers > max(MIN_BUCKET, grown):
                    row = None
            else:
                row = None
            if row is None:
                if rows:
                    _close(rows[-1], path)
                row, shared, path = _Row(), 0, []
                rows.append(row)
                reading = _read(list(range(len(tokens))), tokens, first[i], last[i])
            _close(row, path[shared:])
            start = len(row.tokens)
            row.tokens += tokens[shared:]
            row.positions += range(shared, len(tokens))
            row.ends += range(start, len(row.tokens))
            path = path[:shared] + list(range(start, len(row.tokens)))
            natural, pairs = reading
            slots = [row.targets.setdefault(pair, len(row.targets)) for pair in pairs]
            readings[i] = _Reading(len(rows) - 1, natural, slots)
            previous = tokens
        if rows:
            _close(rows[-1], path)
        trees = [(len(row.tokens), len(inputs)) for row in rows]
        for i, reading in enumerate(readings):
            tokens, first_request = trees[reading.row]
            trees[reading.row] = (tokens, min(first_request, i))
        if self.share_contexts:
            rows, readings = _pack(rows, readings, self.pack_length)
        return trees, rows, readings

    def _device_batch(self, array: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(array)
        # Every host builds the same global batch; each supplies the shards its devices hold.
        return jax.make_array_from_callback(array.shape, sharding.batch_sharding(self.mesh), lambda i: array[i])

    def _run(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """One batch through the compiled forward; returns host float64 arrays (blocking)."""
        batch = [self._device_batch(a) for a in arrays]
        if self.mesh is None:
            natural, gathered = self._jitted(self._state, *batch)
        else:
            with jax.set_mesh(self.mesh):
                natural, gathered = self._jitted(self._state, *batch)
        # np.asarray blocks: one batch in flight at a time (CPU collectives can deadlock otherwise).
        return np.asarray(natural, np.float64), np.asarray(gathered, np.float64)

    def _layout(self, requests: Sequence[Request]) -> tuple[list, list[tuple[int, int]], list[_Row], list[_Reading]]:
        """(each request's `model_input`, then `_plan`'s trees, rows and readings)."""
        prepared = [model_input(r, self.max_length) for r in requests]
        plan = self._plan([p[0] for p in prepared], [p[1] for p in prepared], [r.continuation[-1] for r in requests])
        return prepared, *plan

    def count(self, requests: Sequence[Request]) -> tuple[int, int, int]:
        """(rows, tokens, tokens with padding) that scoring `requests` would run, without running the model."""
        _, _, rows, _ = self._layout(requests)
        lengths = sorted((len(row.tokens) for row in rows), reverse=True)
        padded = sum(
            self.batch_size * next(b for b in self.buckets if b >= lengths[start])
            for start in range(0, len(lengths), self.batch_size)
        )
        return len(rows), sum(lengths), padded

    def score(self, requests: Sequence[Request], progress: Callable[[int, int], None] | None = None) -> Scores:
        """Log-likelihood of every request's continuation; `progress(rows_done, rows_total)` after each batch."""
        return self.score_groups([requests], progress)[0]

    def score_groups(
        self, groups: Sequence[Sequence[Request]], progress: Callable[[int, int], None] | None = None
    ) -> list[Scores]:
        """`score` of several request lists (tasks) in one pass, so that their rows fill the same batches (a
        task's last batch is not mostly padding) and share what they have in common; one `Scores` each."""
        started = time.perf_counter()
        requests = [r for group in groups for r in group]
        prepared, trees, rows, readings = self._layout(requests)
        served: list[list[int]] = [[] for _ in rows]
        for i, reading in enumerate(readings):
            served[reading.row].append(i)
        by_length = sorted(range(len(rows)), key=lambda r: -len(rows[r].tokens))
        loglikelihood = np.empty(len(requests), np.float64)
        for start in range(0, len(by_length), self.batch_size):
            batch_rows = by_length[start : start + self.batch_size]
            length = next(b for b in self.buckets if b >= len(rows[batch_rows[0]].tokens))
            tokens = np.full((self.batch_size, length), self.pad_token_id, np.int32)
            positions = np.zeros((self.batch_size, length), np.int32)
            ends = np.broadcast_to(np.arange(length, dtype=np.int32), (self.batch_size, length)).copy()
            target_pos = np.zeros((self.batch_size, length), np.int32)
            target_tok = np.zeros((self.batch_size, length), np.int32)
            for b, r in enumerate(batch_rows):
                row = rows[r]
                tokens[b, : len(row.tokens)] = row.tokens
                positions[b, : len(row.tokens)] = row.positions
                ends[b, : len(row.tokens)] = row.ends
                for (pos, tok), slot in row.targets.items():
                    target_pos[b, slot], target_tok[b, slot] = pos, tok
            packing = (positions, ends) if self.share_contexts else ()
            natural, gathered = self._run(tokens, target_pos, target_tok, *packing)
            for b, r in enumerate(batch_rows):
                for i in served[r]:
                    reading = readings[i]
                    loglikelihood[i] = natural[b, reading.natural].sum() + gathered[b, reading.slots].sum()
            if progress is not None:
                progress(min(start + self.batch_size, len(rows)), len(rows))
        seconds = time.perf_counter() - started
        # A group's tokens are those of the inputs (trees) whose first request is its own.
        group_of = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        owned = np.zeros(len(groups), np.int64)
        for tree, first in trees:
            owned[group_of[first]] += tree
        results, offset = [], 0
        for g, group in enumerate(groups):
            span = slice(offset, offset + len(group))
            offset += len(group)
            results.append(
                Scores(
                    loglikelihood=loglikelihood[span],
                    truncated=np.array([p[2] for p in prepared[span]], bool),
                    scored_tokens=np.array([len(p[0]) - p[1] for p in prepared[span]], np.int64),
                    rows=len({reading.row for reading in readings[span]}),
                    tokens=int(owned[g]),
                    seconds=seconds * int(owned[g]) / max(1, int(owned.sum())),
                )
            )
        return results


def _read(path: list[int], tokens: tuple[int, ...], first: int, last: int) -> tuple[np.ndarray, list]:
    """(row indices whose natural log-prob counts, (row index, token) pairs to gather) for an input laid out
    at `path` in a row, scored from position `first` on, its last target `last`. A scored position whose
    successor on the path is not the row's next token (a branch) and the last position are gathered."""
    nodes = np.array(path[first:])
    targets = (*tokens[first + 1 :], last)
    steps = nodes[1:] == nodes[:-1] + 1
    return nodes[:-1][steps], [(int(nodes[k]), targets[k]) for k in (*np.flatnonzero(~steps), len(nodes) - 1)]


def _pack(trees: list[_Row], readings: list[_Reading], length: int) -> tuple[list[_Row], list[_Reading]]:
    """Rows of up to `length` tokens holding whole trees (best fit, longest first), and the readings moved
    into them. A tree longer than `length` keeps a row of its own; a row keeps at most max(MIN_BUCKET, its
    tokens) gathers, as `_plan` allows one tree."""
    rows: list[_Row] = []
    where: list[tuple[int, int, int]] = [(0, 0, 0)] * len(trees)  # tree -> (row, token offset, slot offset)
    free: list[tuple[int, int]] = []  # (tokens left, row) of the rows that can take more, sorted
    for t in sorted(range(len(trees)), key=lambda t: -len(trees[t].tokens)):
        tree = trees[t]
        size = len(tree.tokens)
        k = bisect.bisect_left(free, (size, -1))
        r = free[k][1] if k < len(free) else None
        if r is not None and len(rows[r].targets) + len(tree.targets) > max(MIN_BUCKET, len(rows[r].tokens) + size):
            r = None  # too many gathers for one more tree (tiny trees only): it opens a row of its own
        if r is None:
            r = len(rows)
            rows.append(_Row())
        else:
            del free[k]
        row = rows[r]
        offset, slots = len(row.tokens), len(row.targets)
        where[t] = (r, offset, slots)
        row.tokens += tree.tokens
        row.positions += tree.positions
        row.ends += [end + offset for end in tree.ends]
        row.targets.update({(pos + offset, tok): slot + slots for (pos, tok), slot in tree.targets.items()})
        if len(row.tokens) < length:
            bisect.insort(free, (length - len(row.tokens), r))
    moved = []
    for reading in readings:
        r, offset, slots = where[reading.row]
        moved.append(_Reading(r, reading.natural + offset, [slot + slots for slot in reading.slots]))
    return rows, moved


def _close(row: _Row, nodes: list[int]) -> None:
    """`nodes` (a path's tail) get no more descendants: the row's last token is the last that continues them."""
    for node in nodes:
        row.ends[node] = len(row.tokens) - 1


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
