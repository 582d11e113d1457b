"""Multi-process start-up: who this process is, joining the others, and refusing mismatched configs.

A run is one SPMD program driven by one or more JAX processes (usually one per host, driving all its
accelerators). `resolve_layout` decides this process's place, in this order:

1. explicit values: `--coordinator_address/--num_processes/--process_id` (or the TrainConfig fields of the
   same names); a value left out is taken from the cluster below;
2. the cluster: a SLURM step with several tasks (`srun`), an Open MPI job (`mpirun`), or another environment
   that JAX's own detection knows, when named with `cluster=` (mpi4py, k8s, gcetpu, gketpu);
3. otherwise a single process, and `jax.distributed` is not started at all.

`initialize` joins the processes. A process that is not joined by every other one within `init_timeout`
seconds stops with a one-line error instead of waiting forever; a process that dies later is noticed by
the others through its missed heartbeats, which end them with an error within `heartbeat_timeout` seconds.
`check_same_config` then refuses to train when the processes were started with different configs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import jax
import numpy as np

from olmo_jax.config import TrainConfig, flatten, to_dict
from olmo_jax.errors import ConfigError, DistributedError

# `auto` looks for SLURM and Open MPI; `none` ignores the environment; the rest are JAX's detection methods.
CLUSTERS = ("auto", "none", "slurm", "ompi", "mpi4py", "k8s", "gcetpu", "gketpu")
DEFAULT_INIT_TIMEOUT_S = 300
DEFAULT_HEARTBEAT_TIMEOUT_S = 100
# JAX's own join deadline is set this much later than ours, so that our watchdog reports a timeout first
# (JAX's ends the process with an abort and a C++ stack trace).
_JAX_DEADLINE_MARGIN_S = 30
# How long process 0 outlives a failure it shares with the others (see exit_after_failure).
_COORDINATOR_EXIT_DELAY_S = 2.0
# TrainConfig fields that legitimately differ between the processes of one run.
PROCESS_FIELDS = ("coordinator_address", "num_processes", "process_id")
# Port of the coordinator under SLURM unless JAX_COORDINATOR_PORT says otherwise: derived from the job id,
# so that every task computes the same one and two jobs sharing a node rarely collide (JAX's convention).
_SLURM_PORT_BASE = 65536 - 4096


@dataclass(frozen=True)
class ProcessLayout:
    """This process's place in the run."""

    num_processes: int | None  # None: left to JAX's cluster detection (`jax_cluster`)
    process_id: int | None
    coordinator_address: str | None  # host:port of process 0's coordination service
    source: str  # where the layout came from, for messages
    local_device_ids: tuple[int, ...] | None = None  # None: every accelerator this process can see
    jax_cluster: str | None = None  # a `jax.distributed.initialize` cluster_detection_method

    @property
    def is_multiprocess(self) -> bool:
        return self.jax_cluster is not None or (self.num_processes or 1) > 1


SINGLE_PROCESS = ProcessLayout(1, 0, None, "single process")


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'nid[005252-005254,005300],gpu7' -> 'nid005252'."""
    match = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())
    if match is None:
        raise ConfigError(f"cannot read the first host of the SLURM node list {nodelist!r}")
    # Each bracketed range list stands for its first entry.
    return re.sub(r"\[([^\],\-]+)[^\]]*\]", r"\1", match.group(0))


def _int_env(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except (KeyError, ValueError):
        raise ConfigError(f"environment variable {name}={environ.get(name)!r} is not an integer") from None


def _slurm_present(environ: Mapping[str, str]) -> bool:
    """Inside an `srun` step of several tasks (the batch script itself is one task: a single process)."""
    return "SLURM_STEP_NODELIST" in environ and environ.get("SLURM_STEP_NUM_TASKS", "1") not in ("", "1")


def _slurm_layout(environ: Mapping[str, str]) -> dict[str, Any]:
    tasks = _int_env(environ, "SLURM_STEP_NUM_TASKS")
    nodes = _int_env(environ, "SLURM_STEP_NUM_NODES")
    port = environ.get("JAX_COORDINATOR_PORT") or str(_SLURM_PORT_BASE + _int_env(environ, "SLURM_JOB_ID") % 4096)
    local_devices = None
    visible = [v for k in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES") if (v := environ.get(k))]
    # One task per node drives every local accelerator. With several tasks per node each drives one: the one
    # SLURM bound to it when it shows the task a single device, else the one at its local rank.
    if tasks > nodes and not (visible and "," not in visible[0]):
        local_devices = (_int_env(environ, "SLURM_LOCALID"),)
    return {
        "coordinator_address": f"{first_slurm_host(environ['SLURM_STEP_NODELIST'])}:{port}",
        "num_processes": tasks,
        "process_id": _int_env(environ, "SLURM_PROCID"),
        "local_device_ids": local_devices,
    }


def resolve_layout(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cluster: str = "auto",
    environ: Mapping[str, str] | None = None,
) -> ProcessLayout:
    """Decide this process's layout: explicit values, then the cluster environment, then a single process."""
    environ = os.environ if environ is None else environ
    if cluster not in CLUSTERS:
        raise ConfigError(f"unknown cluster {cluster!r}; choose one of {', '.join(CLUSTERS)}")
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if cluster == "auto":
        cluster = "slurm" if _slurm_present(environ) else "ompi" if "OMPI_MCA_orte_hnp_uri" in environ else "none"
        if cluster == "ompi" and environ.get("OMPI_COMM_WORLD_SIZE", "1") == "1":
            cluster = "none"
    if cluster == "slurm":
        if not _slurm_present(environ):
            raise ConfigError("cluster=slurm, but this process is not one of several tasks of an srun step")
        found = _slurm_layout(environ)
        local_devices = found.pop("local_device_ids")
        values = {k: v if v is not None else found[k] for k, v in explicit.items()}
        return _checked(ProcessLayout(**values, source="SLURM", local_device_ids=local_devices))
    if cluster != "none":
        # JAX detects what was not given explicitly.
        return ProcessLayout(**explicit, source=f"JAX cluster detection ({cluster})", jax_cluster=cluster)
    if num_processes == 1 or all(v is None for v in explicit.values()):
        return SINGLE_PROCESS
    missing = [f"--{k}" for k, v in explicit.items() if v is None]
    if missing:
        raise ConfigError(
            f"a multi-process run needs --coordinator_address, --num_processes and --process_id; missing "
            f"{', '.join(missing)} (or start the processes with srun or mpirun)"
        )
    return _checked(ProcessLayout(**explicit, source="command line"))


def _checked(layout: ProcessLayout) -> ProcessLayout:
    n, pid, address = layout.num_processes, layout.process_id, layout.coordinator_address
    if n is None or n < 1:
        raise ConfigError(f"num_processes must be a positive integer, got {n}")
    if pid is None or not 0 <= pid < n:
        raise ConfigError(f"process_id must be in 0..{n - 1} for num_processes={n}, got {pid}")
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"coordinator_address must be HOST:PORT (process 0's address), got {address!r}")
    return layout


def initialize(
    layout: ProcessLayout,
    *,
    init_timeout: int = DEFAULT_INIT_TIMEOUT_S,
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
) -> ProcessLayout:
    """Join the other processes of `layout` (nothing to do for a single process); returns the joined layout.

    Must run before anything touches a JAX device. If not every process has joined within `init_timeout`
    seconds, this process prints a one-line error and exits with status 1.
    """
    if not layout.is_multiprocess:
        return layout
    for name, value in (("init_timeout", init_timeout), ("heartbeat_timeout", heartbeat_timeout)):
        if value <= 0:
            raise ConfigError(f"{name} must be a positive number of seconds, got {value}")
    # CPU processes exchange data with gloo over TCP (GPUs use NCCL/RCCL whatever this says).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    watchdog = threading.Timer(init_timeout, _join_timed_out, args=(layout, init_timeout))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator_address=layout.coordinator_address,
            num_processes=layout.num_processes,
            process_id=layout.process_id,
            local_device_ids=list(layout.local_device_ids) if layout.local_device_ids is not None else None,
            # Values we resolved are final: JAX's own SLURM detection would restrict each task to one GPU.
            cluster_detection_method=layout.jax_cluster or "deactivate",
            initialization_timeout=init_timeout + _JAX_DEADLINE_MARGIN_S,
            heartbeat_timeout_seconds=heartbeat_timeout,
        )
    except (RuntimeError, ValueError, TypeError) as e:
        raise DistributedError(f"cannot start the multi-process run ({layout.source}): {e}") from None
    finally:
        watchdog.cancel()
    return dataclasses.replace(layout, num_processes=jax.process_count(), process_id=jax.process_index())


def _join_timed_out(layout: ProcessLayout, seconds: int) -> NoReturn:
    """Runs in the watchdog thread while the main thread is blocked inside JAX: report and end the process."""
    who = f"process {layout.process_id} of {layout.num_processes}" if layout.num_processes else "this process"
    where = f"the coordinator at {layout.coordinator_address}" if layout.coordinator_address else "the coordinator"
    print(
        f"error: {who} ({layout.source}) gave up after {seconds} s: not every process joined {where}; check that "
        "all processes were started with the same coordinator address and process count and distinct process "
        "ids, and that process 0's host is reachable (raise --init_timeout if starting them takes longer)",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(1)


def exit_after_failure(code: int) -> int:
    """What main() does after an error: in a multi-process run, end this process at once; else return `code`.

    A normal interpreter exit would first wait (up to JAX's shutdown timeout, minutes) at a shutdown barrier
    that the other processes, still busy or blocked in a collective, never reach. Exiting immediately lets
    them notice the missing heartbeats and stop with an error too.
    """
    if jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        if jax.process_index() == 0:
            # Process 0 hosts the coordination service, whose end aborts every other process at once: when
            # all fail together (a config mismatch), let them print their own errors first.
            time.sleep(_COORDINATOR_EXIT_DELAY_S)
        os._exit(code)
    return code


# --------------------------------------------------------------------------------------------------
# Config agreement
# --------------------------------------------------------------------------------------------------


def comparable_config(config: TrainConfig) -> dict[str, Any]:
    """The config as a plain dict, without the fields that differ between processes by design."""
    data = to_dict(config)
    for key in PROCESS_FIELDS:
        data.pop(key)
    return data


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def config_hash(config: TrainConfig) -> str:
    """sha256 (hex) of the config, ignoring `PROCESS_FIELDS`: equal on every process of a consistent run."""
    return hashlib.sha256(_canonical(comparable_config(config))).hexdigest()


def config_differences(mine: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """'key: <mine> here, <reference> on process 0' for every dotted key whose value differs."""
    a, b = flatten(mine), flatten(reference)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [f"{k}: {a.get(k)!r} here, {b.get(k)!r} on process 0" for k in keys]


def _broadcast_from_process_0(data: bytes) -> bytes:
    """Process 0's `data` on every process (every process calls this; the others' `data` is ignored)."""
    from jax.experimental import multihost_utils

    length = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buffer = np.zeros(length, np.int32)
    if jax.process_index() == 0:
        buffer[:] = np.frombuffer(data, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buffer)).astype(np.uint8).tobytes()


def check_same_config(config: TrainConfig) -> str:
    """Raise ConfigError on every process unless all processes hold the same config; returns its hash.

    Every process must call this (it runs two or three small collectives). The processes whose config differs
    from process 0's name the differing keys; the others name those processes.
    """
    digest = config_hash(config)
    if jax.process_count() == 1:
        return digest
    from jax.experimental import multihost_utils

    words = np.frombuffer(bytes.fromhex(digest), np.uint32)
    hashes = np.asarray(multihost_utils.process_allgather(words))  # [processes, 8]
    differing = [p for p in range(len(hashes)) if not np.array_equal(hashes[p], hashes[0])]
    if not differing:
        return digest
    mine = comparable_config(config)
    reference = json.loads(_broadcast_from_process_0(_canonical(mine)))
    advice = "start every process with the same --config, --config.* overrides and --workdir"
    if jax.process_index() in differing:
        differences = config_differences(mine, reference)
        more = f" (+{len(differences) - 5} more)" if len(differences) > 5 else ""
        raise ConfigError(
            f"process {jax.process_index()} was started with a different config than process 0: "
            f"{'; '.join(differences[:5])}{more}; {advice}"
        )
    raise ConfigError(
        f"process{'es' if len(differing) > 1 else ''} {', '.join(map(str, differing))} of {len(hashes)} "
        f"{'were' if len(differing) > 1 else 'was'} started with a different config than process 0 "
        f"(config hash {digest[:12]} here; their own errors name the keys); {advice}"
    )
