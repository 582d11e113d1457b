"""Multi-process runs: the process layout, the launch scripts, and real runs of CPU processes joined by gloo.

The real runs are the acceptance tests of issue 7: 2 processes x 4 fake devices train exactly like 1 process x
8 devices; a checkpoint written by either layout continues identically in the other; a killed process takes the
others down within a bounded time; a process that is never joined, or one started with a different config, stops
with a clear error. They run `python -m olmo_jax.main` in subprocesses (every run has a timeout) on tiny shapes,
sharing one persistent compilation cache so that each program is compiled once per test session.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from olmo_jax import distributed
from olmo_jax.config import load_config
from olmo_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TINY = [
    "--config=tiny",
    "--config.data.sequence_length=32",
    "--config.global_train_batch_size=8",
    "--config.max_duration=3",
    "--config.log_interval=1",
    "--config.save_interval=2",
]
# Gloo and in-process all-reduces sum fp32 partial gradients in different orders; a loss near 9 may move by an
# ulp or two (1 ulp = 9.5e-7 there), so equality is asked to 1e-6 relative, the bound.
RTOL = 1e-6
RUN_TIMEOUT_S = 300  # one run on 2 loaded cores compiles for about a minute; this only bounds a hang


# --------------------------------------------------------------------------------------------------
# The process layout (no JAX processes started)
# --------------------------------------------------------------------------------------------------


def slurm_env(tasks: int, nodes: int, procid: int, localid: int = 0, **extra: str) -> dict[str, str]:
    return {
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_NODELIST": "gpu[007-008,011]",
        "SLURM_STEP_NUM_TASKS": str(tasks),
        "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        **extra,
    }


def test_without_flags_or_cluster_the_run_is_one_process():
    layout = distributed.resolve_layout(environ={})
    assert layout == distributed.SINGLE_PROCESS and not layout.is_multiprocess


def test_explicit_flags_define_the_layout():
    layout = distributed.resolve_layout("10.0.0.1:1234", 4, 3, environ={})
    assert (layout.coordinator_address, layout.num_processes, layout.process_id) == ("10.0.0.1:1234", 4, 3)
    assert layout.is_multiprocess and layout.source == "command line" and layout.local_device_ids is None


def test_slurm_with_one_task_per_node_drives_every_local_gpu():
    layout = distributed.resolve_layout(environ=slurm_env(tasks=3, nodes=3, procid=2))
    # First host of the node list; port 61440 + job id mod 4096, the same on every task.
    assert layout.coordinator_address == f"gpu007:{61440 + 123456 % 4096}"
    assert (layout.num_processes, layout.process_id, layout.source) == (3, 2, "SLURM")
    assert layout.local_device_ids is None


def test_slurm_with_a_task_per_gpu_drives_the_gpu_at_its_local_rank():
    layout = distributed.resolve_layout(environ=slurm_env(tasks=16, nodes=2, procid=13, localid=5))
    assert layout.local_device_ids == (5,)
    # ...unless SLURM already shows each task only its own GPU.
    bound = slurm_env(tasks=16, nodes=2, procid=13, localid=5, CUDA_VISIBLE_DEVICES="5")
    assert distributed.resolve_layout(environ=bound).local_device_ids is None


def test_flags_win_over_slurm_and_the_port_can_be_chosen():
    env = slurm_env(tasks=2, nodes=2, procid=1, JAX_COORDINATOR_PORT="4321")
    assert distributed.resolve_layout(environ=env).coordinator_address == "gpu007:4321"
    layout = distributed.resolve_layout("head:999", environ=env)
    assert (layout.coordinator_address, layout.num_processes, layout.process_id) == ("head:999", 2, 1)


def test_a_slurm_batch_step_or_cluster_none_is_one_process():
    # The batch script itself is a one-task step: running python there must not wait for absent peers.
    assert not distributed.resolve_layout(environ=slurm_env(tasks=1, nodes=1, procid=0)).is_multiprocess
    assert not distributed.resolve_layout(cluster="none", environ=slurm_env(4, 4, 0)).is_multiprocess


def test_other_clusters_are_left_to_jax_detection():
    layout = distributed.resolve_layout(
        environ={"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "4"}
    )
    assert layout.jax_cluster == "ompi" and layout.is_multiprocess
    assert distributed.resolve_layout(cluster="k8s", environ={}).jax_cluster == "k8s"


@pytest.mark.parametrize(
    "args, message",
    [
        (("127.0.0.1:1", None, None), "missing --num_processes, --process_id"),
        (("127.0.0.1:1", 2, 2), "process_id must be in 0..1"),
        (("no-port", 2, 0), "coordinator_address must be HOST:PORT"),
        (("h:1", 0, 0), "num_processes must be a positive integer"),
    ],
)
def test_incomplete_or_invalid_layouts_are_refused_naming_the_value(args, message):
    with pytest.raises(ConfigError, match=message):
        distributed.resolve_layout(*args, environ={})


def test_cluster_slurm_outside_an_srun_step_is_an_error():
    with pytest.raises(ConfigError, match="not one of several tasks of an srun step"):
        distributed.resolve_layout(cluster="slurm", environ={})


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node001", "node001"),
        ("node001,host2", "node001"),
        ("nid[005252-005254,005300],x1", "nid005252"),
        ("gpu[11,3]", "gpu11"),
        ("rack[1-2]-n[07-08]", "rack1-n07"),
    ],
)
def test_first_slurm_host(nodelist, host):
    assert distributed.first_slurm_host(nodelist) == host


def test_config_hash_ignores_the_process_fields_and_sees_everything_else():
    base = load_config("tiny")
    other_process = load_config("tiny", {"process_id": "3", "num_processes": "4", "coordinator_address": "h:1"})
    assert distributed.config_hash(base) == distributed.config_hash(other_process)
    changed = load_config("tiny", {"optimizer.learning_rate": "1e-3"})
    assert distributed.config_hash(changed) != distributed.config_hash(base)
    differences = distributed.config_differences(
        distributed.comparable_config(changed), distributed.comparable_config(base)
    )
    assert differences == ["optimizer.learning_rate: 0.001 here, 0.003 on process 0"]


# --------------------------------------------------------------------------------------------------
# The launch scripts
# --------------------------------------------------------------------------------------------------

SCRIPTS = ["local_multiprocess.sh", "slurm_cuda.sbatch", "slurm_rocm_lumi.sbatch"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_launch_scripts_are_shellcheck_clean():
    result = subprocess.run(["shellcheck", *SCRIPTS], cwd=LAUNCH, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_local_script_dry_run_prints_one_command_per_process():
    env = {**os.environ, "COORDINATOR_PORT": "5555", "PYTHON": "py"}
    result = subprocess.run(
        [LAUNCH / "local_multiprocess.sh", "--dry-run", "3", "--config=tiny", "--workdir=a b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        words = shlex.split(line.rstrip("&"))
        assert "--xla_force_host_platform_device_count=4" in " ".join(words)
        assert words[words.index("py") :][:3] == ["py", "-m", "olmo_jax.main"]
        assert {"--coordinator_address=127.0.0.1:5555", "--num_processes=3", f"--process_id={i}"} <= set(words)
        assert ["--config=tiny", "--workdir=a b"] == words[words.index(f"--process_id={i}") + 1 :][:2]
        # Process 0 writes to the terminal, the others to their own log file.
        assert (f"process_{i}.log" in line) == (i > 0)


def test_local_script_refuses_a_bad_process_count():
    result = subprocess.run([LAUNCH / "local_multiprocess.sh", "two"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "NUM_PROCESSES must be a positive integer" in result.stderr


@pytest.mark.parametrize("script", ["slurm_cuda.sbatch", "slurm_rocm_lumi.sbatch"])
def test_sbatch_dry_run_prints_the_srun_command_and_xla_knows_every_flag(script):
    result = subprocess.run(
        ["bash", LAUNCH / script, "--dry-run", "--config=7b"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    exports = dict(
        shlex.split(line)[1].split("=", 1) for line in result.stdout.splitlines() if line.startswith("export ")
    )
    srun = shlex.split(result.stdout.splitlines()[-1])
    assert srun[0] == "srun" and "--kill-on-bad-exit=1" in srun
    assert srun[-3:] == ["-m", "olmo_jax.main", "--config=7b"]
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in exports["XLA_FLAGS"]
    # XLA aborts at start-up on a flag it does not know: the installed jaxlib parses the same flag table for
    # every backend, so a CPU start-up proves that every flag of the script still exists.
    check = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env={**os.environ, "XLA_FLAGS": exports["XLA_FLAGS"], "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr[-2000:]


# --------------------------------------------------------------------------------------------------
# Real multi-process runs
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cpu_env(tmp_path_factory) -> dict[str, str]:
    """The subprocesses' environment: CPU only, no inherited fake-device count, one shared compilation cache."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    return {
        **os.environ,
        "XLA_FLAGS": " ".join(flags),
        "JAX_PLATFORMS": "cpu",
        "PYTHON": sys.executable,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def with_devices(env: dict[str, str], devices: int) -> dict[str, str]:
    return {**env, "XLA_FLAGS": f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}".strip()}


def start(command: list, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `command` in a new session (so that a timeout can kill it and every child) logging to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Kill `process` and its children if it is still running (only what these tests started)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def finish(process: subprocess.Popen, log: Path, timeout: float = RUN_TIMEOUT_S) -> str:
    """Wait for `process` (killing it and its children if it outlives `timeout`); returns its output."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"{process.args} ran longer than {timeout} s:\n{log.read_text()[-3000:]}")
    return log.read_text()


def finish_all(processes: list[subprocess.Popen], logs: list[Path], timeout: float = RUN_TIMEOUT_S) -> list[str]:
    """`finish` for processes started side by side; none outlives this call."""
    try:
        return [finish(process, log, timeout) for process, log in zip(processes, logs, strict=True)]
    finally:
        for process in processes:
            stop(process)


def main_command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "olmo_jax.main", *TINY, f"--workdir={workdir}", *extra]


def start_one_process(env: dict[str, str], workdir: Path, *extra: str) -> subprocess.Popen:
    return start(main_command(workdir, *extra), with_devices(env, 8), workdir.with_suffix(".log"))


def start_two_processes(env: dict[str, str], workdir: Path, *extra: str) -> subprocess.Popen:
    command = [LAUNCH / "local_multiprocess.sh", "2", *TINY, f"--workdir={workdir}", *extra]
    script_env = {**env, "DEVICES_PER_PROCESS": "4", "LOG_DIR": str(workdir.with_suffix(".logs"))}
    return start(command, script_env, workdir.with_suffix(".log"))


def all_succeeded(*runs: tuple[subprocess.Popen, Path]) -> list[Path]:
    """Wait for training runs started side by side as (process, workdir); check that each succeeded."""
    outputs = finish_all([process for process, _ in runs], [workdir.with_suffix(".log") for _, workdir in runs])
    for (process, workdir), output in zip(runs, outputs, strict=True):
        assert process.returncode == 0 and (workdir / "metrics.jsonl").exists(), output[-3000:]
    return [workdir for _, workdir in runs]


def metrics(workdir: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record for record in records}


@pytest.fixture(scope="module")
def reference_runs(cpu_env, tmp_path_factory) -> tuple[Path, Path]:
    """Three steps of tiny as 1 process x 8 devices and as 2 processes x 4 devices, checkpoints at steps 2 and 3."""
    root = tmp_path_factory.mktemp("runs")
    # Side by side: each leaves cores idle while it starts up and while its processes wait for each other.
    one, two = root / "one", root / "two"
    declared = ("--config.energy.source=fixed", "--config.energy.fixed_watts=100")  # 100 W per process
    return tuple(
        all_succeeded(
            (start_one_process(cpu_env, one, *declared), one), (start_two_processes(cpu_env, two, *declared), two)
        )
    )


@pytest.mark.slow
def test_two_processes_of_four_devices_train_like_one_process_of_eight(reference_runs):
    one, two = (metrics(run) for run in reference_runs)
    assert sorted(one) == sorted(two) == [1, 2, 3]
    # The same global batches, although each process read only its own rows of them.
    assert [two[s]["batch_fingerprint"] for s in two] == [one[s]["batch_fingerprint"] for s in one]
    np.testing.assert_allclose([two[s]["loss"] for s in two], [one[s]["loss"] for s in one], rtol=RTOL)
    # The power is summed over the processes (declared exactly, so only clock readings can move it).
    np.testing.assert_allclose([one[s]["power_w"] for s in one], 100, rtol=1e-3)
    np.testing.assert_allclose([two[s]["power_w"] for s in two], 200, rtol=1e-3)


@pytest.fixture(scope="module")
def continued_runs(reference_runs, cpu_env, tmp_path_factory) -> tuple[Path, Path]:
    """Step 3 once more: 1 process from the step-2 checkpoint of the 2-process run, and 2 processes from the
    step-2 checkpoint of the 1-process run (side by side, as above)."""
    one, two = reference_runs
    root = tmp_path_factory.mktemp("continued")
    in_one, in_two = root / "in_one", root / "in_two"
    return tuple(
        all_succeeded(
            (start_one_process(cpu_env, in_one, f"--config.load_path={two / 'checkpoints' / '2'}"), in_one),
            (start_two_processes(cpu_env, in_two, f"--config.load_path={one / 'checkpoints' / '2'}"), in_two),
        )
    )


@pytest.mark.slow
def test_a_checkpoint_written_by_two_processes_continues_identically_in_one(reference_runs, continued_runs):
    continued = metrics(continued_runs[0])
    assert sorted(continued) == [3]
    np.testing.assert_allclose(continued[3]["loss"], metrics(reference_runs[0])[3]["loss"], rtol=RTOL)


@pytest.mark.slow
def test_a_checkpoint_written_by_one_process_continues_identically_in_two(reference_runs, continued_runs):
    continued = metrics(continued_runs[1])
    assert sorted(continued) == [3]
    np.testing.assert_allclose(continued[3]["loss"], metrics(reference_runs[0])[3]["loss"], rtol=RTOL)


def process_command(workdir: Path, port: int, process_id: int, *extra: str) -> list[str]:
    return main_command(
        workdir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={process_id}", *extra
    )


@pytest.mark.slow
def test_killing_one_process_stops_the_other_with_an_error_within_the_heartbeat_timeout(cpu_env, tmp_path):
    heartbeat_s = 5
    port, workdir = free_port(), tmp_path / "run"
    env = with_devices(cpu_env, 4)
    long_run = ["--config.max_duration=100000", "--config.save_interval=100000", f"--heartbeat_timeout={heartbeat_s}"]
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    processes = [start(process_command(workdir, port, i, *long_run), env, logs[i]) for i in range(2)]
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (workdir / "metrics.jsonl").exists():  # both are training once a step is logged
            assert all(p.poll() is None for p in processes), logs[0].read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        processes[1].kill()
        killed = time.monotonic()
        output = finish(processes[0], logs[0], timeout=heartbeat_s + 60)
        waited = time.monotonic() - killed
    finally:
        for process in processes:
            stop(process)
    assert processes[0].returncode != 0, output[-3000:]
    # Missed heartbeats count after `heartbeat_s`; the rest is slack for a loaded machine.
    assert waited < heartbeat_s + 30, f"process 0 took {waited:.0f} s to stop"
    assert "another task died" in output or "unhealthy" in output, output[-3000:]


def test_a_process_that_is_never_joined_stops_with_a_timeout_error(cpu_env, tmp_path):
    # Process 0 alone (its peer never starts) and process 1 alone (no coordinator to reach), side by side.
    env, init_timeout = with_devices(cpu_env, 4), 3
    logs = [tmp_path / f"alone_{i}.log" for i in range(2)]
    started = time.monotonic()
    processes = [
        start(process_command(tmp_path / f"run{i}", free_port(), i, f"--init_timeout={init_timeout}"), env, logs[i])
        for i in range(2)
    ]
    outputs = finish_all(processes, logs, timeout=120)
    elapsed = time.monotonic() - started
    for i, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 1, output[-3000:]
        assert (
            f"error: process {i} of 2 (command line) gave up after {init_timeout} s: not every process joined" in output
        )
        assert "Check failure stack trace" not in output  # our message, not JAX's abort
    assert elapsed < init_timeout + 60  # start-up (imports) included


def test_processes_started_with_different_configs_refuse_to_train(cpu_env, tmp_path):
    port, env = free_port(), with_devices(cpu_env, 4)
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    differs = ["--config.optimizer.learning_rate=1e-3"]
    processes = [start(process_command(tmp_path / "run", port, i, *differs[:i]), env, logs[i]) for i in range(2)]
    outputs = finish_all(processes, logs, timeout=120)
    assert [p.returncode for p in processes] == [2, 2], outputs
    assert (
        "error: process 1 was started with a different config than process 0: "
        "optimizer.learning_rate: 0.001 here, 0.003 on process 0" in outputs[1]
    )
    assert "error: process 1 of 2 was started with a different config than process 0" in outputs[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
