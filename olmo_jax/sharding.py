"""The device mesh and the mapping of logical parameter axes onto it.

Mesh axes:
- `data`: pure data parallelism (each `data` group holds a full, fsdp-sharded copy of the state);
- `fsdp`: ZeRO-3 - parameters, gradients and optimizer state are sharded over it, and so is the batch;
- `tensor`: optional tensor parallelism over heads / MLP width / vocab (size 1 by default).

Parameters carry logical axis names (`model.py`); `LOGICAL_RULES` says which mesh axis each may use.
A dimension that the mesh axis does not divide stays unsharded, and a parameter whose preferred fsdp
dimension is indivisible falls back to its largest dimension that is, so every leaf with a dimension
divisible by the fsdp size is sharded.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from olmo_jax.config import MeshConfig
from olmo_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis. `embed` is the ZeRO-3 axis: every weight has one.
LOGICAL_RULES: dict[str, str | None] = {
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
}


def mesh_shape(mesh_config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Resolve a -1 entry and check that the sizes multiply to the device count (`MeshConfig.validate` has
    checked each size and that at most one is -1)."""
    sizes = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh: {num_devices} devices cannot be split with the fixed sizes {sizes}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
            f"does not equal the device count {num_devices}"
        )
    return tuple(sizes)


def make_mesh(mesh_config: MeshConfig, devices: list | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices), with Auto axis types."""
    devices = devices if devices is not None else jax.devices()
    shape = mesh_shape(mesh_config, len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def logical_to_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for a parameter with logical `axes`, skipping mesh axes that do not divide."""
    spec: list[str | None] = []
    for name, dim in zip(axes, shape, strict=True):
        mesh_axis = LOGICAL_RULES.get(name) if name is not None else None
        if mesh_axis is not None and (mesh.shape[mesh_axis] == 1 or dim % mesh.shape[mesh_axis]):
            mesh_axis = None
        spec.append(mesh_axis)
    fsdp = mesh.shape["fsdp"]
    if fsdp > 1 and "fsdp" not in spec:
        # Fall back to the largest free dimension that fsdp divides (ZeRO-3 shards everything it can).
        candidates = [i for i, d in enumerate(shape) if spec[i] is None and d % fsdp == 0]
        if candidates:
            spec[max(candidates, key=lambda i: shape[i])] = "fsdp"
    return PartitionSpec(*spec)


def param_shardings(abstract_state: nnx.State, mesh: Mesh) -> dict[str, NamedSharding]:
    """{param name: NamedSharding} for a flat nnx parameter State."""
    return {
        name: NamedSharding(mesh, logical_to_spec(variable.get_metadata()["axes"], variable.get_value().shape, mesh))
        for name, variable in abstract_state.items()
    }


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes that split the batch: those of `BATCH_AXES` the mesh has."""
    return tuple(axis for axis in BATCH_AXES if axis in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Global batch [B, T]: rows over the batch axes (data, fsdp), replicated over the others (tensor)."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh) or None, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return math.prod(mesh.shape[axis] for axis in batch_axes(mesh))


def tree_shardings_like(tree: Any, params_shardings: dict[str, NamedSharding], mesh: Mesh) -> Any:
    """Shardings for an optimizer-state pytree: leaves shaped like a parameter get its sharding.

    Optax states hold per-parameter moments in dicts keyed like the params (`mu['wte']`); everything
    else (counts, scalars, hyperparameters) is replicated.
    """

    def for_leaf(path, leaf):
        for entry in reversed(path):
            key = getattr(entry, "key", None)
            if key in params_shardings and getattr(leaf, "ndim", 0) > 0:
                return params_shardings[key]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(for_leaf, tree)
