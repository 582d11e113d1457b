"""Train state, the jitted train step, and the training loop.

The train step is a pure function `(state, tokens, lr, clip) -> (state, metrics)` that `jax.jit` wraps
with explicit shardings (ZeRO-3: parameters, gradients and optimizer state sharded over `fsdp`) and
donation of the old state. Gradient accumulation over micro-batches happens inside it, so
`global_train_batch_size` does not depend on device memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from olmo_jax import atomic, sharding
from olmo_jax.checkpoint import CHECKPOINTS_DIR, Checkpointer, TrainCheckpoint, TrainMeta, starting_checkpoint
from olmo_jax.config import TrainConfig, flatten, to_dict
from olmo_jax.errors import ConfigError, NonFiniteLossError
from olmo_jax.loss import loss_terms
from olmo_jax.model import OLMo, flops_per_token
from olmo_jax.monitor import MetricWriter, Progress, mfu, peak_flops_per_device
from olmo_jax.optim import grad_clip_limit, learning_rate, make_optimizer, set_hyperparams


class TrainState(NamedTuple):
    step: jax.Array  # number of batches consumed (updates applied + updates skipped as non-finite)
    params: dict[str, jax.Array]  # fp32 master weights
    opt_state: Any
    nonfinite_steps: jax.Array  # how many updates the non-finite guard skipped


@dataclass
class TrainSetup:
    """Everything derived from the config and the mesh that the step and the loop need."""

    config: TrainConfig
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    state_shardings: TrainState
    micro_batches: int

    @property
    def batch_sharding(self) -> NamedSharding:
        return sharding.batch_sharding(self.mesh)


def micro_batches(config: TrainConfig, global_batch_size: int, batch_shards: int) -> int:
    """Number of micro-batches per step; checks the batch divides over devices and micro-batches."""
    if global_batch_size % batch_shards:
        raise ConfigError(
            f"global_train_batch_size={global_batch_size} is not divisible by the {batch_shards} batch shards "
            f"(mesh data x fsdp)"
        )
    per_device = global_batch_size // batch_shards
    micro = config.device_train_microbatch_size or per_device
    if per_device % micro:
        raise ConfigError(
            f"global_train_batch_size={global_batch_size} is not divisible by batch shards x "
            f"device_train_microbatch_size = {batch_shards} x {micro}"
        )
    return per_device // micro


def validate(config: TrainConfig, mesh: jax.sharding.Mesh) -> None:
    """Checks that must fail before anything compiles."""
    config.model.validate()
    shards = sharding.batch_shards(mesh)
    micro_batches(config, config.global_train_batch_size, shards)
    if config.batch_size_warmup.enabled:
        micro_batches(config, config.batch_size_warmup.start_instances, shards)
    seq = sequence_length(config)
    if seq > config.model.max_sequence_length:
        raise ConfigError(
            f"data.sequence_length={seq} is longer than model.max_sequence_length={config.model.max_sequence_length}"
        )


def sequence_length(config: TrainConfig) -> int:
    return config.data.sequence_length or config.model.max_sequence_length


def build(config: TrainConfig, mesh: jax.sharding.Mesh) -> TrainSetup:
    """Model graph, optimizer and state shardings for `config` on `mesh` (nothing is allocated)."""
    validate(config, mesh)
    abstract_model = nnx.eval_shape(lambda: OLMo(config.model, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    params_shardings = sharding.param_shardings(abstract_params, mesh)
    optimizer = make_optimizer(params_shardings, config.optimizer, config.max_grad_norm)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params.to_pure_dict())
    replicated = sharding.replicated(mesh)
    state_shardings = TrainState(
        step=replicated,
        params=params_shardings,
        opt_state=sharding.tree_shardings_like(abstract_opt, params_shardings, mesh),
        nonfinite_steps=replicated,
    )
    micro = micro_batches(config, config.global_train_batch_size, sharding.batch_shards(mesh))
    return TrainSetup(config, mesh, graphdef, optimizer, state_shardings, micro)


def init_state(setup: TrainSetup, seed: int) -> TrainState:
    """Fresh parameters and optimizer state, created directly sharded (never whole on one device)."""
    model_config = setup.config.model

    def init(key: jax.Array) -> TrainState:
        params = nnx.state(OLMo(model_config, rngs=nnx.Rngs(params=key)), nnx.Param).to_pure_dict()
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=setup.optimizer.init(params),
            nonfinite_steps=jnp.zeros((), jnp.int32),
        )

    with jax.set_mesh(setup.mesh):
        return jax.jit(init, out_shardings=setup.state_shardings)(jax.random.key(seed))


def abstract_state(setup: TrainSetup) -> TrainState:
    """ShapeDtypeStructs with shardings for the whole train state (for restore and dry runs)."""

    def init(key):
        params = nnx.state(OLMo(setup.config.model, rngs=nnx.Rngs(params=key)), nnx.Param).to_pure_dict()
        return TrainState(jnp.zeros((), jnp.int32), params, setup.optimizer.init(params), jnp.zeros((), jnp.int32))

    shapes = jax.eval_shape(init, jax.random.key(0))
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, setup.state_shardings
    )


def train_step(
    setup: TrainSetup, state: TrainState, tokens: jax.Array, lr: jax.Array, clip: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a global batch `tokens` [B, T] (pure; `jax.jit` adds shardings)."""
    config = setup.config
    z_weight = config.auxiliary_loss_multiplier if config.softmax_auxiliary_loss else 0.0
    batch, seq = tokens.shape
    # OLMo divides the summed losses by input_ids.numel() = B x T (olmo/train.py, `Trainer.train_batch`),
    # although only B x (T-1) positions have a label.
    denominator = batch * seq
    n_micro = setup.micro_batches

    def loss(params, micro_tokens):
        ce, z = loss_terms(setup.graphdef, params, micro_tokens, denominator, chunk=config.loss_chunk_size)
        return ce + z_weight * z, (ce, z)

    grad_fn = jax.value_and_grad(loss, has_aux=True)
    if n_micro == 1:
        (_, (ce, z)), grads = grad_fn(state.params, tokens)
    else:
        # Micro-batch i takes rows i, i+n, i+2n, ...: every device keeps working on its own rows,
        # so splitting needs no communication.
        micro = tokens.reshape(batch // n_micro, n_micro, seq).swapaxes(0, 1)
        micro = jax.lax.with_sharding_constraint(
            micro, NamedSharding(setup.mesh, PartitionSpec(None, sharding.BATCH_AXES, None))
        )

        def accumulate(carry, micro_tokens):
            grads_sum, ce_sum, z_sum = carry
            (_, (ce, z)), grads = grad_fn(state.params, micro_tokens)
            grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
            return (grads_sum, ce_sum + ce, z_sum + z), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        zeros = jax.lax.with_sharding_constraint(zeros, setup.state_shardings.params)
        (grads, ce, z), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0), micro)

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(ce) & jnp.isfinite(z) & jnp.isfinite(grad_norm)
    opt_state = set_hyperparams(state.opt_state, lr, clip)
    updates, new_opt_state = setup.optimizer.update(grads, opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # The non-finite guard: a NaN/Inf loss or gradient never reaches the parameters or optimizer state.
    keep_new = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    new_state = TrainState(
        step=state.step + 1,
        params=jax.tree.map(keep_new, new_params, state.params),
        opt_state=jax.tree.map(keep_new, new_opt_state, state.opt_state),
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
    )
    metrics = {
        "loss": ce + z_weight * z,
        "ce_loss": ce,
        "z_loss": z,
        "grad_norm": grad_norm,
        "finite": finite,
    }
    return new_state, metrics


def jit_train_step(setup: TrainSetup):
    """`train_step` under `jax.jit` with explicit shardings; the old state is donated."""
    replicated = sharding.replicated(setup.mesh)
    return jax.jit(
        lambda state, tokens, lr, clip: train_step(setup, state, tokens, lr, clip),
        in_shardings=(setup.state_shardings, setup.batch_sharding, replicated, replicated),
        out_shardings=(setup.state_shardings, replicated),
        donate_argnums=(0,),
    )


# --------------------------------------------------------------------------------------------------
# Run length
# --------------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*([0-9.eE+]+)\s*(T|tokens|ep|steps)?\s*$")


def parse_duration(max_duration: str) -> tuple[float, str]:
    """OLMo's `max_duration`: "1000" (steps), "2e12T" (tokens) or "1ep" (epochs) -> (amount, unit)."""
    match = _DURATION.match(str(max_duration))
    if not match:
        raise ConfigError(f"max_duration={max_duration!r} is not N (steps), NT (tokens) or Nep (epochs)")
    try:
        amount = float(match.group(1))
    except ValueError:
        raise ConfigError(f"max_duration={max_duration!r} is not a number with an optional unit") from None
    unit = {"T": "tokens", "tokens": "tokens", "ep": "epochs"}.get(match.group(2) or "", "steps")
    if amount <= 0:
        raise ConfigError(f"max_duration={max_duration!r} must be positive")
    return amount, unit


def total_steps(config: TrainConfig, instances_per_epoch: int | None, batch_size_for) -> int:
    """Number of steps the run takes, given each step's global batch size `batch_size_for(tokens_seen)`."""
    amount, unit = parse_duration(config.max_duration)
    if unit == "steps":
        return int(amount)
    seq = sequence_length(config)
    if unit == "epochs":
        if instances_per_epoch is None:
            raise ConfigError("max_duration in epochs needs a data set of known size")
        target_tokens = amount * instances_per_epoch * seq
    else:
        target_tokens = amount
    if not config.batch_size_warmup.enabled:
        return max(1, math.ceil(target_tokens / (config.global_train_batch_size * seq)))
    steps, tokens = 0, 0
    while tokens < target_tokens:
        tokens += batch_size_for(tokens) * seq
        steps += 1
    return steps


def params_bytes_per_device(shapes: Any) -> int:
    """Bytes of one device's shards of a pytree of ShapeDtypeStructs (or arrays) with shardings."""
    total = 0
    for leaf in jax.tree.leaves(shapes):
        shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def dry_run(config: TrainConfig, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """Lower and compile the train step from abstract shapes; report parameters, FLOPs and memory."""
    setup = build(config, mesh)
    state = abstract_state(setup)
    tokens = jax.ShapeDtypeStruct(
        (config.global_train_batch_size, sequence_length(config)), jnp.int32, sharding=setup.batch_sharding
    )
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
    with jax.set_mesh(mesh):
        compiled = jit_train_step(setup).lower(state, tokens, scalar, scalar).compile()
    memory = compiled.memory_analysis()
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    report = {
        "mesh": dict(mesh.shape),
        "num_params": n_params,
        "flops_per_token": flops_per_token(config.model, sequence_length(config)),
        "micro_batches": setup.micro_batches,
        "param_bytes_per_device": params_bytes_per_device(state.params),
        "optimizer_bytes_per_device": params_bytes_per_device(state.opt_state),
    }
    if memory is not None:
        report.update(
            argument_bytes_per_device=int(memory.argument_size_in_bytes),
            output_bytes_per_device=int(memory.output_size_in_bytes),
            temp_bytes_per_device=int(memory.temp_size_in_bytes),
            generated_code_bytes=int(memory.generated_code_size_in_bytes),
        )
    return report


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------


def write_config(config: TrainConfig, run_dir: Path) -> None:
    """The resolved config as `<run_dir>/config.yaml` (what `inspect` and resumes read), atomically."""
    atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))


class StopRequests:
    """SIGTERM, SIGINT and the wall-clock `time_limit` (seconds from creation), as a request to stop after the
    current step. Used as a context manager, which installs the signal handlers and restores the old ones.

    The first signal is only remembered: the loop finishes its step, saves and returns. A second one of the
    same kind acts as it would have without us (SIGINT raises KeyboardInterrupt, SIGTERM terminates). With
    several processes every process stops at the same step: each step they agree whether any was asked to.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, time_limit: float | None) -> None:
        if time_limit is not None and time_limit <= 0:
            raise ConfigError(f"time_limit must be a positive number of seconds or null, got {time_limit}")
        self._time_limit = time_limit
        self._deadline = time.monotonic() + time_limit if time_limit else None
        self._signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:  # None: a handler installed outside Python, which cannot be reinstated
                signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self._signal = signal.Signals(signum).name
        previous = self._previous.get(signum)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    def reason(self) -> str | None:
        """Why the run should stop now (the same answer on every process), or None."""
        timed_out = self._deadline is not None and time.monotonic() >= self._deadline
        code = 2 if self._signal else int(timed_out)
        if jax.process_count() > 1:
            code = int(np.max(multihost_utils.process_allgather(np.int32(code))))
        if code == 2:
            return f"received {self._signal or 'a stop signal on another process'}"
        return f"reached time_limit={self._time_limit:g} s" if code == 1 else None


def _scalar(value: int, sharding_: NamedSharding) -> jax.Array:
    """An int32 scalar placed with `sharding_` (every process passes the same value)."""
    return jax.make_array_from_callback((), sharding_, lambda _: np.int32(value))


def state_from_checkpoint(setup: TrainSetup, start: TrainCheckpoint) -> TrainState:
    """The train state `start` holds, on `setup`'s mesh; a weights-only start gets a fresh optimizer at step 0."""
    replicated = setup.state_shardings.step
    if start.weights_only:
        with jax.set_mesh(setup.mesh):
            opt_state = jax.jit(setup.optimizer.init, out_shardings=setup.state_shardings.opt_state)(start.params)
        return TrainState(_scalar(0, replicated), start.params, opt_state, _scalar(0, replicated))
    meta = start.meta
    return TrainState(
        _scalar(meta.step, replicated), start.params, start.opt_state, _scalar(meta.nonfinite_steps, replicated)
    )


def _describe_start(start: TrainCheckpoint | None, config: TrainConfig, run_dir: Path) -> str:
    """One line (two with changed settings) saying where the run starts."""
    if start is None:
        return f"olmo_jax: starting from scratch (seed {config.seed})"
    if start.weights_only:
        why = "" if config.load_weights_only else " (it holds weights only)"
        return f"olmo_jax: starting from the weights of {start.step_dir}{why}, with a fresh optimizer and data order"
    own = start.step_dir.parent.resolve() == (run_dir / CHECKPOINTS_DIR).resolve()
    verb = "resuming from" if own else "continuing the training state of"
    line = f"olmo_jax: {verb} {start.step_dir} (step {start.meta.step}, {start.meta.tokens_seen:,} tokens seen)"
    saved, current = flatten(start.metadata["config"]), flatten(to_dict(config))
    bookkeeping = {"save_folder", "load_path", "load_weights_only"}  # differ whenever another run is continued
    changed = [
        f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k, v) != v and k not in bookkeeping
    ]
    if changed:
        more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
        line += "\nolmo_jax: settings changed since that checkpoint: " + "; ".join(changed[:8]) + more
    return line


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for the torn last line a killed process can leave."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _drop_metrics_after(run_dir: Path, step: int) -> None:
    """Remove records of steps after `step` from metrics.jsonl: a resumed run redoes (and relogs) them."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True) if _logged_step(line) <= step]
    atomic.write_text(path, "".join(kept))


def fit(config: TrainConfig, run_dir: Path, *, devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Train `config` to `max_duration` in `run_dir` on `devices` (default: all); returns the last logged metrics.

    Resumes from the run directory's latest readable checkpoint; without one, starts from `load_path` (see
    `starting_checkpoint`) or from scratch. Saves asynchronously every `save_interval` steps and at the end.
    SIGTERM, SIGINT or `time_limit` ends the run early: after the current step it saves and returns normally.
    """
    # Handlers first, so that a signal during start-up stops the run after its first step; the time limit
    # counts from here.
    with StopRequests(config.time_limit) as stop_requests:
        return _fit(config, run_dir, devices, stop_requests)


def _fit(
    config: TrainConfig, run_dir: Path, devices: list[jax.Device] | None, stop_requests: StopRequests
) -> dict[str, Any]:
    from olmo_jax.data.loader import batch_size_for, build_train_loader
    from olmo_jax.eval import evaluate_in_loop

    is_writer = jax.process_index() == 0
    mesh = sharding.make_mesh(config.mesh, devices)
    setup = build(config, mesh)
    seq = sequence_length(config)
    abstract = abstract_state(setup)
    start = starting_checkpoint(config, run_dir, abstract.params, abstract.opt_state)
    with contextlib.ExitStack() as cleanup:  # closes, last opened first: writer, checkpointer (waits), loader
        loader = build_train_loader(config, mesh, start_state=start.data_state if start is not None else None)
        cleanup.callback(loader.close)
        steps = total_steps(config, loader.instances_per_epoch, lambda tokens: batch_size_for(config, tokens))
        amount, unit = parse_duration(config.max_duration)
        run_tokens = int(amount) if unit == "tokens" else steps * config.global_train_batch_size * seq
        tokenizer_identity = loader.tokenizer.identity if loader.tokenizer is not None else None
        checkpointer = cleanup.enter_context(Checkpointer(run_dir, config, tokenizer_identity=tokenizer_identity))
        state = init_state(setup, config.seed) if start is None else state_from_checkpoint(setup, start)
        start_step, nonfinite_at_start = int(state.step), int(state.nonfinite_steps)
        writer = None
        if is_writer:
            write_config(config, run_dir)
            _drop_metrics_after(run_dir, start_step)
            n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(abstract.params))
            print(
                f"olmo_jax: {n_params:,} parameters | mesh {dict(mesh.shape)} | {steps} steps of "
                f"{config.global_train_batch_size} x {seq} tokens | run dir {run_dir}\n"
                + _describe_start(start, config, run_dir),
                flush=True,
            )
            if start_step >= steps:
                print(f"olmo_jax: nothing to do: the run is at step {start_step} of {steps}", flush=True)
            writer = MetricWriter(run_dir, wandb_run=_wandb_run(config, run_dir))
            cleanup.callback(writer.close)
        del start  # its arrays now live in `state`, which the first step donates

        step_fns: dict[int, Any] = {}  # global batch size -> jitted step (batch-size warmup makes a few)
        shards = sharding.batch_shards(mesh)

        def step_fn_for(batch_size: int):
            if batch_size not in step_fns:
                sized = dataclasses.replace(setup, micro_batches=micro_batches(config, batch_size, shards))
                step_fns[batch_size] = jit_train_step(sized)
            return step_fns[batch_size]

        evaluate_every = _in_loop_eval_interval(config, loader.tokenizer)
        progress = Progress(steps, start_step=start_step)
        fpt = flops_per_token(config.model, seq)
        peak = config.peak_flops_per_device or peak_flops_per_device()
        # XLA's CPU collectives can deadlock with several sharded steps in flight (jax-environment notes).
        one_step_in_flight = jax.devices()[0].platform == "cpu"
        # With batch-size warmup, steps have had different sizes: the loader knows how many instances went by.
        tokens_seen = int(loader.state()["instances_consumed"]) * seq
        last_log_time, last_log_tokens, last_log_step = time.perf_counter(), tokens_seen, start_step
        last_metrics: dict[str, Any] = {}
        with jax.set_mesh(mesh):
            for step in range(start_step, steps):
                batch = next(loader)
                batch_size = batch.input_ids.shape[0]
                tokens_seen += batch_size * seq
                update = step + 1  # OLMo's schedules are evaluated at the 1-based update number
                lr = learning_rate(
                    update, tokens_seen, config.optimizer.learning_rate, config.scheduler, steps, run_tokens
                )
                clip = grad_clip_limit(update, tokens_seen - batch_size * seq, config.max_grad_norm, config.scheduler)
                state, metrics = step_fn_for(batch_size)(state, batch.input_ids, lr, clip if clip is not None else 0.0)
                if one_step_in_flight:
                    jax.block_until_ready(metrics)
                stop = stop_requests.reason()
                is_last = update == steps
                save_now = is_last or stop is not None or checkpointer.is_due(update)
                log_now = is_last or stop is not None or update % config.log_interval == 0
                if not (one_step_in_flight or save_now or log_now):
                    continue  # on accelerators, reading metrics would wait for the step: only when needed
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                nonfinite = int(state.nonfinite_steps)
                if log_now:
                    now = time.perf_counter()
                    tokens_per_second = (tokens_seen - last_log_tokens) / (now - last_log_time)
                    step_time = (now - last_log_time) / (update - last_log_step)
                    last_log_time, last_log_tokens, last_log_step = now, tokens_seen, update
                    last_metrics = {
                        "loss": host["loss"],
                        "ce_loss": host["ce_loss"],
                        "z_loss": host["z_loss"],
                        "grad_norm": host["grad_norm"],
                        "lr": lr,
                        "tokens_per_second": tokens_per_second,
                        "step_time": step_time,  # seconds per step since the previous log line
                        "tokens_per_second_per_device": tokens_per_second / jax.device_count(),
                        "mfu": mfu(tokens_per_second / jax.device_count(), fpt, peak),
                        "tokens_seen": tokens_seen,
                        "batch_size": batch_size,
                        "nonfinite_steps": nonfinite,
                        "batch_fingerprint": batch.fingerprint,
                    }
                    if is_writer:
                        writer.write(update, last_metrics)
                        progress.print(update, last_metrics)
                # Before any save: a run that must stop on a non-finite step never checkpoints after it.
                _check_nonfinite(config, update, nonfinite, nonfinite_at_start, host)
                if evaluate_every and (update % evaluate_every == 0 or is_last):
                    # Every process takes part (the scoring batches are sharded); process 0 logs.
                    model = nnx.merge(setup.graphdef, state.params)
                    eval_metrics = evaluate_in_loop(model, loader.tokenizer, config.evaluation, mesh=mesh)
                    if is_writer:
                        writer.write(update, eval_metrics)
                        print(_eval_line(update, eval_metrics), flush=True)
                if save_now:
                    meta = TrainMeta(update, nonfinite, tokens_seen, config.seed)
                    blocked = checkpointer.save(state.params, state.opt_state, data_state=loader.state(), meta=meta)
                    if is_writer:
                        print(f"checkpoint {checkpointer.step_dir(update)} started (training blocked {blocked:.2f} s)")
                if stop is not None:
                    checkpointer.wait_until_finished()
                    if is_writer:
                        print(
                            f"olmo_jax: {stop}: stopped after step {update} and saved {checkpointer.step_dir(update)}; "
                            "run the same command to resume",
                            flush=True,
                        )
                    break
    return last_metrics


def _in_loop_eval_interval(config: TrainConfig, tokenizer) -> int | None:
    """`eval_interval` when there is something to evaluate, else None; checks the run can evaluate."""
    if not config.eval_interval or not (config.evaluation.tasks or config.evaluation.ppl_paths):
        return None
    if tokenizer is None:
        raise ConfigError("in-loop evaluation needs a tokenizer: set tokenizer.identifier")
    return config.eval_interval


def _eval_line(step: int, metrics: dict[str, float]) -> str:
    """The primary metrics of an in-loop evaluation, on one line."""
    headline = ("/primary", "/bits_per_byte")
    shown = [f"{k.removeprefix('eval/')} {v:.4f}" for k, v in metrics.items() if k.endswith(headline)]
    return f"eval at step {step}: " + (" | ".join(shown) if shown else f"{len(metrics)} metrics logged")


def _check_nonfinite(
    config: TrainConfig, step: int, nonfinite: int, nonfinite_at_start: int, metrics: dict[str, float]
) -> None:
    """Apply `nonfinite_policy` given the count of skipped steps so far (`metrics` are step `step`'s)."""
    if config.nonfinite_policy == "stop" and nonfinite > nonfinite_at_start:
        where = f"in a step up to step {step}" if metrics["finite"] else f"at step {step}"
        raise NonFiniteLossError(
            f"non-finite loss or gradient {where} (loss={metrics['loss']}, grad_norm={metrics['grad_norm']}); "
            "parameters were left unchanged and no checkpoint was written after it. "
            "Set nonfinite_policy=skip to skip such steps."
        )
    if nonfinite > config.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"{nonfinite} steps had a non-finite loss or gradient (max_nonfinite_steps={config.max_nonfinite_steps}); "
            "parameters were left unchanged by each of them"
        )


def _wandb_run(config: TrainConfig, run_dir: Path):
    if not config.wandb:
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError("wandb=true needs the wandb package: pip install 'olmo_jax[wandb]'") from None
    return wandb.init(name=config.run_name, dir=str(run_dir), config=to_dict(config))
