"""Train state, the jitted train step, the run's length and the dry run (`olmo_jax.loop` runs the steps).

The train step is a pure function `(state, batch, lr, clip) -> (state, metrics)` that `jax.jit` wraps
with explicit shardings (ZeRO-3: parameters, gradients and optimizer state sharded over `fsdp`) and
donation of the old state. Gradient accumulation over micro-batches happens inside it, so
`global_train_batch_size` does not depend on device memory. Nothing here reads data, writes metrics or
checkpoints: `olmo_jax.bench` times this step alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from olmo_jax import sharding
from olmo_jax.adapt.losses import dpo_loss, sft_loss, trained_labels
from olmo_jax.checkpoint import all_finite
from olmo_jax.config import TrainConfig, parse_duration
from olmo_jax.errors import ConfigError
from olmo_jax.loss import loss_terms
from olmo_jax.model import OLMo, abstract_model, abstract_params, flops_per_token, num_params
from olmo_jax.optim import make_optimizer, set_hyperparams


class TrainState(NamedTuple):
    step: jax.Array  # number of batches consumed (updates applied + updates skipped as non-finite)
    params: dict[str, jax.Array]  # fp32 master weights
    opt_state: Any
    nonfinite_steps: jax.Array  # how many updates the non-finite guard skipped (from a finite state)


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


def validate(config: TrainConfig, mesh: jax.sharding.Mesh) -> int:
    """The checks that need the mesh (the config's own are `TrainConfig.validate`'s, run when it is loaded):
    every global batch size the run has divides over the batch shards and micro-batches. Returns the
    number of micro-batches of a full global batch."""
    shards = sharding.batch_shards(mesh)
    if config.batch_size_warmup.enabled:
        # Batch-size warmup doubles its first size up to the full batch: that size dividing is enough.
        micro_batches(config, min(config.batch_size_warmup.start_instances, config.global_train_batch_size), shards)
    return micro_batches(config, config.global_train_batch_size, shards)


def build(config: TrainConfig, mesh: jax.sharding.Mesh) -> TrainSetup:
    """Model graph, optimizer and state shardings for `config` on `mesh` (nothing is allocated)."""
    micro = validate(config, mesh)
    graphdef, params = nnx.split(abstract_model(config.model), nnx.Param)
    params_shardings = sharding.param_shardings(params, mesh)
    optimizer = make_optimizer(params_shardings, config.optimizer, config.max_grad_norm)
    abstract_opt = jax.eval_shape(optimizer.init, params.to_pure_dict())
    replicated = sharding.replicated(mesh)
    state_shardings = TrainState(
        step=replicated,
        params=params_shardings,
        opt_state=sharding.tree_shardings_like(abstract_opt, params_shardings, mesh),
        nonfinite_steps=replicated,
    )
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
    params = abstract_params(setup.config.model)
    count = jax.ShapeDtypeStruct((), jnp.int32)
    shapes = TrainState(count, params, jax.eval_shape(setup.optimizer.init, params), count)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, setup.state_shardings
    )


def objective_loss(setup: TrainSetup, batch: dict[str, jax.Array]):
    """`loss(params, micro_batch) -> (loss, metrics)` of the run's objective, each term already divided by its
    global-batch denominator so that summing over micro-batches gives the batch's value."""
    config = setup.config
    batch_size, seq = batch["input_ids"].shape
    if config.objective == "sft":
        # `mean`: over the global batch's trained tokens, however they split into micro-batches and rows.
        denominator = jnp.maximum(trained_labels(batch), 1) if config.adapt.loss_reduction == "mean" else 1.0
        return lambda params, micro: sft_loss(setup.graphdef, params, micro, denominator)
    if config.objective == "dpo":
        return lambda params, micro: dpo_loss(setup.graphdef, params, micro, batch_size, config.adapt)
    z_weight = config.auxiliary_loss_multiplier if config.softmax_auxiliary_loss else 0.0
    # OLMo divides the summed losses by input_ids.numel() = B x T (olmo/train.py, `Trainer.train_batch`),
    # although only B x (T-1) positions have a label.
    denominator = batch_size * seq

    def pretrain(params, micro):
        ce, z = loss_terms(setup.graphdef, params, micro["input_ids"], denominator, chunk=config.loss_chunk_size)
        return ce + z_weight * z, {"ce_loss": ce, "z_loss": z}

    return pretrain


def train_step(
    setup: TrainSetup, state: TrainState, batch: jax.Array | dict[str, jax.Array], lr: jax.Array, clip: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a global batch (pure; `jax.jit` adds shardings): token ids [B, T], or for
    fine-tuning a dict of `input_ids` and the rows' other fields (`olmo_jax.adapt.data`)."""
    batch = batch if isinstance(batch, dict) else {"input_ids": batch}
    n_micro = setup.micro_batches
    grad_fn = jax.value_and_grad(objective_loss(setup, batch), has_aux=True)
    if n_micro == 1:
        (loss, terms), grads = grad_fn(state.params, batch)
    else:
        # Micro-batch i takes rows i, i+n, i+2n, ...: every device keeps working on its own rows,
        # so splitting needs no communication.
        def split(rows: jax.Array) -> jax.Array:
            micro = rows.reshape(rows.shape[0] // n_micro, n_micro, *rows.shape[1:]).swapaxes(0, 1)
            spec = PartitionSpec(None, sharding.BATCH_AXES, *([None] * (rows.ndim - 1)))
            return jax.lax.with_sharding_constraint(micro, NamedSharding(setup.mesh, spec))

        def accumulate(carry, micro):
            grads_sum, sums = carry
            (loss, terms), grads = grad_fn(state.params, micro)
            grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
            return (grads_sum, jax.tree.map(jnp.add, sums, (loss, terms))), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        zeros = jax.lax.with_sharding_constraint(zeros, setup.state_shardings.params)
        first = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda a: a[: a.shape[0] // n_micro], batch))[0]
        no_sums = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), first)
        (grads, (loss, terms)), _ = jax.lax.scan(accumulate, (zeros, no_sums), jax.tree.map(split, batch))

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    opt_state = set_hyperparams(state.opt_state, lr, clip)
    updates, new_opt_state = setup.optimizer.update(grads, opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # The non-finite guard: a NaN/Inf loss or gradient never reaches the parameters or optimizer state.
    keep_new = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    # Keeping the old state is a skip only when that state is finite: NaN weights give a NaN loss at every
    # step, and counting those as skips would hide them. Checked only after a non-finite step (the other
    # branch of the cond costs nothing), so normal steps never pay for the pass over the parameters.
    state_finite = jax.lax.cond(
        finite,
        lambda: jnp.array(True),
        lambda: jnp.all(jnp.stack([all_finite(p) for p in jax.tree.leaves(state.params)])),
    )
    new_state = TrainState(
        step=state.step + 1,
        params=jax.tree.map(keep_new, new_params, state.params),
        opt_state=jax.tree.map(keep_new, new_opt_state, state.opt_state),
        nonfinite_steps=state.nonfinite_steps + (~finite & state_finite).astype(jnp.int32),
    )
    metrics = {
        "loss": loss,
        **terms,
        "grad_norm": grad_norm,
        "finite": finite,
        "state_finite": state_finite,
    }
    return new_state, metrics


def jit_train_step(setup: TrainSetup):
    """`train_step` under `jax.jit` with explicit shardings; the old state is donated."""
    replicated = sharding.replicated(setup.mesh)
    return jax.jit(
        lambda state, batch, lr, clip: train_step(setup, state, batch, lr, clip),
        in_shardings=(setup.state_shardings, setup.batch_sharding, replicated, replicated),
        out_shardings=(setup.state_shardings, replicated),
        donate_argnums=(0,),
    )


# --------------------------------------------------------------------------------------------------
# Run length
# --------------------------------------------------------------------------------------------------


def total_steps(config: TrainConfig, instances_per_epoch: int | None, batch_size_for) -> int:
    """Number of steps the run takes, given each step's global batch size `batch_size_for(tokens_seen)`."""
    amount, unit = parse_duration(config.max_duration)
    if unit == "steps":
        return int(amount)
    seq = config.sequence_length
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


def total_tokens(config: TrainConfig, steps: int) -> int:
    """The run's length in tokens, which token-based schedules count towards: `max_duration` when given in
    tokens, else `steps` full batches."""
    amount, unit = parse_duration(config.max_duration)
    return int(amount) if unit == "tokens" else steps * config.global_train_batch_size * config.sequence_length


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
    rows = config.global_train_batch_size
    shapes = {"input_ids": (config.sequence_length, jnp.int32)}
    if config.objective != "pretrain":  # the fields of `olmo_jax.adapt.data`'s rows
        shapes.update(label_mask=(config.sequence_length, jnp.int32), segment_ids=(config.sequence_length, jnp.int32))
    if config.objective == "dpo":
        shapes["reference_logps"] = (2, jnp.float32)
    batch = {
        name: jax.ShapeDtypeStruct((rows, width), dtype, sharding=setup.batch_sharding)
        for name, (width, dtype) in shapes.items()
    }
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
    with jax.set_mesh(mesh):
        compiled = jit_train_step(setup).lower(state, batch, scalar, scalar).compile()
    memory = compiled.memory_analysis()
    report = {
        "mesh": dict(mesh.shape),
        "num_params": num_params(config.model),
        "flops_per_token": flops_per_token(config.model, config.sequence_length),
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
