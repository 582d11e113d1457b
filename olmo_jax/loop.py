"""The training loop: `fit(config, run_dir)` trains to `max_duration`, resuming where the run left off.

The loop only counts steps. For each one it feeds a batch to `Steps` (the jitted train step of
`olmo_jax.train`, with the schedule's learning rate), then asks three parts whether they are due and calls
those that are: the `Meter` (throughput and MFU since the last log line, with the `EnergyMeter`'s power
and energy), the `Checkpointer` (an asynchronous save, which keeps the energy totals) and the
`InLoopEvaluation`. At the end of the run, or when a signal or the time limit
asks it to stop, it logs and saves whatever their schedules say. The non-finite policy is checked before
any save, so a run told to stop on a NaN never checkpoints after one; a state that is itself non-finite
stops the run whatever the policy, and is never saved (the `Checkpointer` checks each saved state in the
background). A save that failed or found the state non-finite stops the run after the next step. Process 0
holds the run directory's lock (`olmo_jax.run_lock`) for the whole run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from olmo_jax import atomic, sharding
from olmo_jax.adapt.reference import attach_reference_logps, compute_reference_logps
from olmo_jax.checkpoint import (
    CHECKPOINTS_DIR,
    Checkpointer,
    CheckpointSpec,
    TrainCheckpoint,
    TrainMeta,
    starting_checkpoint,
)
from olmo_jax.config import TrainConfig, data_spec, flatten, to_dict
from olmo_jax.data.loader import build_train_loader
from olmo_jax.data.order import batch_size_for
from olmo_jax.data.pipeline import DataPipeline, build_pipeline
from olmo_jax.energy import EnergyMeter, open_sampler
from olmo_jax.errors import ConfigError, NonFiniteLossError, NonFiniteStateError
from olmo_jax.eval.evaluator import evaluate_in_loop
from olmo_jax.model import flops_per_token, num_params
from olmo_jax.monitor import Meter, MetricWriter, Progress, peak_flops_per_device
from olmo_jax.optim import grad_clip_limit, learning_rate
from olmo_jax.run_lock import RunLock
from olmo_jax.train import (
    TrainSetup,
    TrainState,
    abstract_state,
    build,
    init_state,
    jit_train_step,
    micro_batches,
    total_steps,
    total_tokens,
)


def checkpoint_spec(config: TrainConfig, run_dir: Path) -> CheckpointSpec:
    """Where and when `config`'s run saves its checkpoints."""
    return CheckpointSpec(
        run_dir, config.save_interval, config.save_interval_permanent, config.save_num_checkpoints_to_keep
    )


def fit(config: TrainConfig, run_dir: Path, *, devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Train `config` to `max_duration` in `run_dir` on `devices` (default: all); returns the last logged metrics.

    Resumes from the run directory's latest readable checkpoint; without one, starts from `load_path` (see
    `starting_checkpoint`) or from scratch. Saves asynchronously every `save_interval` steps and at the end.
    SIGTERM, SIGINT or `time_limit` ends the run early: after the current step it saves and returns normally.
    """
    # Handlers first, so that a signal during start-up stops the run after its first step; the time limit
    # counts from here. The exit stack closes, last opened first: writer, checkpointer (waits), loader.
    with StopRequests(config.time_limit) as stop_requests, contextlib.ExitStack() as cleanup:
        run, state = _start(config, run_dir, devices, cleanup)
        return _train(run, state, stop_requests)


def _train(run: _Run, state: TrainState, stop_requests: StopRequests) -> dict[str, Any]:
    """Updates `run.start_step + 1` to `run.total_steps`, or until a stop request; the last logged metrics."""
    logged: dict[str, Any] = {}
    with jax.set_mesh(run.mesh):
        for update in range(run.start_step + 1, run.total_steps + 1):
            batch = next(run.loader)
            state, metrics = run.steps(state, update, batch)
            run.checkpointer.raise_if_failed()
            stop = stop_requests.reason()
            ending = stop is not None or update == run.total_steps
            log_now = ending or run.meter.is_due(update)
            save_now = ending or run.checkpointer.is_due(update)
            evaluate_now = run.evaluation.is_due(update)
            if not (log_now or save_now or evaluate_now or run.steps.synchronous):
                continue  # on accelerators, reading metrics would wait for the step: only when needed
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            nonfinite = int(state.nonfinite_steps)
            if log_now:
                measured = {**run.meter.measure(update, run.steps.tokens_seen), **run.energy.measure()}
                logged = _record(host, run.steps, measured, batch, nonfinite)
                run.output.step(update, logged)
            # Before any save: a run that must stop on a non-finite step never checkpoints after it.
            _check_nonfinite(run.config, update, nonfinite, run.nonfinite_at_start, host)
            if evaluate_now:
                run.output.evaluation(update, run.evaluation(state.params))
            if save_now:
                _save(run, state, update, nonfinite)
            if stop is not None:
                run.checkpointer.wait_until_finished()
                run.output.line(
                    f"olmo_jax: {stop}: stopped after step {update} and saved {run.checkpointer.step_dir(update)}; "
                    "run the same command to resume"
                )
                break
    return logged


# --------------------------------------------------------------------------------------------------
# What the loop calls
# --------------------------------------------------------------------------------------------------


class Steps:
    """The train step as the loop calls it: a batch in, the schedule's learning rate and clip limit for its
    update number, one compiled step per global batch size (batch-size warmup has a few). Counts the tokens
    seen, which the schedule, the logs and the checkpoints need."""

    def __init__(self, setup: TrainSetup, total_steps: int, tokens_seen: int) -> None:
        self.setup = setup
        self.total_steps = total_steps
        self.total_tokens = total_tokens(setup.config, total_steps)
        self.tokens_seen = tokens_seen
        self.lr: float | None = None  # the last step's
        # XLA's CPU collectives can deadlock with several sharded steps in flight (jax-environment notes).
        self.synchronous = jax.devices()[0].platform == "cpu"
        self._compiled: dict[int, Any] = {}

    def __call__(self, state: TrainState, update: int, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        """Update number `update` (1-based, as OLMo's schedules count) on `batch` (a loader `Batch`)."""
        config = self.setup.config
        tokens_before = self.tokens_seen
        self.tokens_seen += batch.input_ids.size
        peak, scheduler = config.optimizer.learning_rate, config.scheduler
        self.lr = learning_rate(update, self.tokens_seen, peak, scheduler, self.total_steps, self.total_tokens)
        clip = grad_clip_limit(update, tokens_before, config.max_grad_norm, scheduler)
        step = self._step_for(batch.input_ids.shape[0])
        inputs = {"input_ids": batch.input_ids, **batch.fields} if batch.fields else batch.input_ids
        state, metrics = step(state, inputs, self.lr, 0.0 if clip is None else clip)
        if self.synchronous:
            jax.block_until_ready(metrics)
        return state, metrics

    def _step_for(self, batch_size: int) -> Any:
        if batch_size not in self._compiled:
            micro = micro_batches(self.setup.config, batch_size, sharding.batch_shards(self.setup.mesh))
            self._compiled[batch_size] = jit_train_step(dataclasses.replace(self.setup, micro_batches=micro))
        return self._compiled[batch_size]


class InLoopEvaluation:
    """`config.evaluation`'s tasks and perplexity sets on the current weights, due every `eval_interval`
    steps and after the last step (never when there is nothing to evaluate)."""

    def __init__(self, config: TrainConfig, tokenizer: Any, setup: TrainSetup, last_step: int) -> None:
        has_work = bool(config.eval_interval) and bool(config.evaluation.tasks or config.evaluation.ppl_paths)
        if has_work and tokenizer is None:
            raise ConfigError("in-loop evaluation needs a tokenizer: set tokenizer.identifier")
        self.interval = config.eval_interval if has_work else None
        self.last_step = last_step
        self._config, self._tokenizer, self._setup = config.evaluation, tokenizer, setup

    def is_due(self, step: int) -> bool:
        """Whether to evaluate after step `step`."""
        return self.interval is not None and (step % self.interval == 0 or step == self.last_step)

    def __call__(self, params: dict[str, jax.Array]) -> dict[str, float]:
        """Flat `eval/...` metrics of `params`; every process takes part (the scoring batches are sharded)."""
        model = nnx.merge(self._setup.graphdef, params)
        return evaluate_in_loop(model, self._tokenizer, self._config, mesh=self._setup.mesh)


class Output:
    """The run's terminal lines and metric records: the writing process (process 0) prints and writes them,
    every other process stays silent."""

    def __init__(self, writer: MetricWriter | None, progress: Progress) -> None:
        self._writer, self._progress = writer, progress

    def line(self, text: str) -> None:
        if self._writer is not None:
            print(text, flush=True)

    def step(self, step: int, metrics: dict[str, Any]) -> None:
        if self._writer is not None:
            self._writer.write(step, metrics)
            self._progress.print(step, metrics)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        if self._writer is not None:
            self._writer.write(step, metrics)
            print(_eval_line(step, metrics), flush=True)


def _record(
    host: dict[str, float], steps: Steps, throughput: dict[str, float | None], batch: Any, nonfinite: int
) -> dict[str, Any]:
    """One logged step: its losses and gradient norm, learning rate, throughput since the previous log line
    (`step_time` is seconds per step), tokens seen, batch size, skipped steps so far and the data's fingerprint."""
    return {
        **{key: value for key, value in host.items() if key not in ("finite", "state_finite")},
        "lr": steps.lr,
        **throughput,
        "tokens_seen": steps.tokens_seen,
        "batch_size": batch.input_ids.shape[0],
        "nonfinite_steps": nonfinite,
        "batch_fingerprint": batch.fingerprint,
    }


def _save(run: _Run, state: TrainState, update: int, nonfinite: int) -> None:
    """Start saving the state after `update`, with the loader's position (the writes continue in the background)."""
    meta = TrainMeta(update, nonfinite, run.steps.tokens_seen, run.config.seed, energy=run.energy.totals())
    blocked = run.checkpointer.save(state.params, state.opt_state, data_state=run.loader.state(), meta=meta)
    run.output.line(f"checkpoint {run.checkpointer.step_dir(update)} started (training blocked {blocked:.2f} s)")


def _eval_line(step: int, metrics: dict[str, float]) -> str:
    """The primary metrics of an in-loop evaluation, on one line."""
    headline = ("/primary", "/bits_per_byte")
    shown = [f"{k.removeprefix('eval/')} {v:.4f}" for k, v in metrics.items() if k.endswith(headline)]
    return f"eval at step {step}: " + (" | ".join(shown) if shown else f"{len(metrics)} metrics logged")


def _check_nonfinite(
    config: TrainConfig, step: int, nonfinite: int, nonfinite_at_start: int, metrics: dict[str, float]
) -> None:
    """Apply `nonfinite_policy` given the count of skipped steps so far (`metrics` are step `step`'s); a
    non-finite state stops the run whatever the policy (the guard cannot skip its way out of one)."""
    if not metrics["state_finite"]:
        raise NonFiniteStateError(
            f"the parameters hold NaN or Inf at step {step} (restored so, or made so by an update), so every "
            f"step gives a non-finite loss (loss={metrics['loss']}); no checkpoint was written after it"
        )
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


class StopRequests:
    """SIGTERM, SIGINT and the wall-clock `time_limit` (seconds from creation), as a request to stop after the
    current step. Used as a context manager, which installs the signal handlers and restores the old ones.

    The first signal is only remembered: the loop finishes its step, saves and returns. A second one of the
    same kind acts as it would have without us (SIGINT raises KeyboardInterrupt, SIGTERM terminates). With
    several processes every process stops at the same step: each step they agree whether any was asked to.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, time_limit: float | None) -> None:
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


# --------------------------------------------------------------------------------------------------
# Starting a run
# --------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything the loop uses, built by `_start` (the train state travels separately: each step donates it)."""

    config: TrainConfig
    mesh: jax.sharding.Mesh
    loader: Any  # olmo_jax.data.loader.TrainLoader
    steps: Steps
    meter: Meter
    energy: EnergyMeter
    checkpointer: Checkpointer
    evaluation: InLoopEvaluation
    output: Output
    start_step: int
    total_steps: int
    nonfinite_at_start: int


def _start(
    config: TrainConfig, run_dir: Path, devices: list[jax.Device] | None, cleanup: contextlib.ExitStack
) -> tuple[_Run, TrainState]:
    """Mesh, train step, starting state, loader, checkpointer and writers; prints where the run starts."""
    if jax.process_index() == 0:
        # Before anything reads or moves a checkpoint: a second trainer must change nothing.
        cleanup.enter_context(RunLock(run_dir))
    mesh = sharding.make_mesh(config.mesh, devices)
    # Next: the energy counts from start-up on (restoring and compiling draw power too).
    sampler, power_line = open_sampler(
        config.energy, [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    )
    if sampler is not None:
        cleanup.callback(sampler.close)
    setup = build(config, mesh)
    abstract = abstract_state(setup)
    start = starting_checkpoint(
        run_dir,
        abstract.params,
        abstract.opt_state,
        load_path=config.load_path,
        load_weights_only=config.load_weights_only,
    )
    data = data_spec(config)
    state = init_state(setup, config.seed) if start is None else state_from_checkpoint(setup, start)
    pipeline = build_pipeline(data)
    if config.objective == "dpo":
        _attach_dpo_reference(config, run_dir, setup, state, pipeline)
    loader = build_train_loader(
        data, mesh, start_state=start.data_state if start is not None else None, pipeline=pipeline
    )
    cleanup.callback(loader.close)
    steps = total_steps(config, loader.instances_per_epoch, lambda tokens: batch_size_for(data, tokens))
    tokenizer_identity = loader.tokenizer.identity if loader.tokenizer is not None else None
    checkpointer = cleanup.enter_context(
        Checkpointer(checkpoint_spec(config, run_dir), to_dict(config), tokenizer_identity=tokenizer_identity)
    )
    start_step = int(state.step)
    writer = None
    if jax.process_index() == 0:
        write_config(config, run_dir)
        _drop_metrics_after(run_dir, start_step)
        print(
            f"olmo_jax: {num_params(config.model):,} parameters | mesh {dict(mesh.shape)} | {steps} steps of "
            f"{config.global_train_batch_size} x {config.sequence_length} tokens | run dir {run_dir}\n"
            + _describe_start(start, config, run_dir)
            + f"\nolmo_jax: {power_line}",
            flush=True,
        )
        if start_step >= steps:
            print(f"olmo_jax: nothing to do: the run is at step {start_step} of {steps}", flush=True)
        writer = MetricWriter(run_dir, wandb_run=_wandb_run(config, run_dir))
        cleanup.callback(writer.close)
    evaluation = InLoopEvaluation(config, loader.tokenizer, setup, last_step=steps)
    # With batch-size warmup, steps have had different sizes: the loader knows how many instances went by.
    tokens_seen = int(loader.state()["instances_consumed"]) * config.sequence_length
    meter = Meter(
        config.log_interval,
        step=start_step,
        tokens_seen=tokens_seen,
        flops_per_token=flops_per_token(config.model, config.sequence_length),
        peak_flops=config.peak_flops_per_device or peak_flops_per_device(),
        num_devices=jax.device_count(),
    )
    run = _Run(
        config=config,
        mesh=mesh,
        loader=loader,
        steps=Steps(setup, steps, tokens_seen),
        meter=meter,
        energy=EnergyMeter(sampler, config.energy, start.meta.energy if start is not None and start.meta else None),
        checkpointer=checkpointer,
        evaluation=evaluation,
        output=Output(writer, Progress(steps, start_step=start_step)),
        start_step=start_step,
        total_steps=steps,
        nonfinite_at_start=int(state.nonfinite_steps),
    )
    return run, state


def _attach_dpo_reference(
    config: TrainConfig, run_dir: Path, setup: TrainSetup, state: TrainState, pipeline: DataPipeline
) -> None:
    """The reference log-probs of every preference pair, computed with the starting weights (see
    `olmo_jax.adapt.reference`)."""

    def compute():
        print("olmo_jax: dpo: scoring every pair with the starting weights (the reference model)", flush=True)
        return compute_reference_logps(
            setup.graphdef, state.params, pipeline.source, config.global_train_batch_size, setup.batch_sharding
        )

    key = f"load_path={config.load_path}|seed={config.seed}"
    attach_reference_logps(run_dir, key, pipeline.source, compute, may_compute=int(state.step) == 0)


def write_config(config: TrainConfig, run_dir: Path) -> None:
    """The resolved config as `<run_dir>/config.yaml` (what `inspect` and resumes read), atomically."""
    atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))


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


def _wandb_run(config: TrainConfig, run_dir: Path):
    """A W&B run for the metric writer when `wandb` is set, else None."""
    if not config.wandb:
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError("wandb=true needs the wandb package: pip install 'olmo_jax[wandb]'") from None
    return wandb.init(name=config.run_name, dir=str(run_dir), config=to_dict(config))
