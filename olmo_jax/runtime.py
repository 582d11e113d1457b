"""Process set-up that must happen before JAX starts its backend: XLA flags for NVIDIA GPUs.

XLA reads `XLA_FLAGS` once, when the first backend initialises (the first `jax.devices()` or array),
so `configure_xla()` must run before that, e.g. first thing in a CLI's `main()`.

The flags are few on purpose. An unknown flag aborts XLA at start-up, and flags are removed between
releases (`--xla_gpu_enable_async_collectives` is gone in jaxlib 0.10), so only flags present in
jaxlib 0.10 and 0.11 that NVIDIA's JAX-Toolbox and the OpenXLA GPU optimisation levels recommend
for transformer training are set; `tests/test_bench.py` checks that the installed jaxlib accepts them.
"""

from __future__ import annotations

import os
import pkgutil
import shlex
from pathlib import Path

# Flag -> value. All concern overlapping ZeRO-3's all-gathers / reduce-scatters with compute; on one
# GPU they change nothing measurable, on several they hide communication behind the layer scan.
GPU_XLA_FLAGS: dict[str, str] = {
    # Schedule asynchronous collectives so that they overlap compute (default off in XLA).
    "--xla_gpu_enable_latency_hiding_scheduler": "true",
    # Move the all-gather of layer i+1's weights / reduce-scatter of layer i-1's gradients into the
    # scan iteration of layer i, so the scheduler has compute to hide them behind.
    "--xla_gpu_enable_pipelined_all_gather": "true",
    "--xla_gpu_enable_pipelined_reduce_scatter": "true",
    "--xla_gpu_enable_pipelined_all_reduce": "true",
}

# JAX's GPU client preallocates 75% of device memory by default; training wants more of the card.
GPU_MEMORY_FRACTION = "0.90"

_NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl")


def on_nvidia_gpu() -> bool:
    """Whether JAX will run on NVIDIA GPUs, decided without starting a JAX backend.

    True when a JAX CUDA plugin is installed, an NVIDIA driver is present, and `JAX_PLATFORMS` (if
    set) allows CUDA.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms and not any(name in platforms for name in ("cuda", "gpu")):
        return False
    if not any(Path(path).exists() for path in _NVIDIA_DRIVER_FILES):
        return False
    try:
        import jax_plugins
    except ImportError:
        return False
    return any(module.name.startswith("xla_cuda") for module in pkgutil.iter_modules(jax_plugins.__path__))


def merged_xla_flags(existing: str, flags: dict[str, str]) -> str:
    """`existing` XLA_FLAGS plus each of `flags` that it does not already set (the user's value wins)."""
    user_set = {token.split("=", 1)[0] for token in shlex.split(existing)}
    added = [f"{name}={value}" for name, value in flags.items() if name not in user_set]
    return " ".join([existing.strip(), *added]).strip()


def configure_xla(enabled: bool = True) -> list[str]:
    """Set `GPU_XLA_FLAGS` and the GPU memory fraction for this process when it will run on NVIDIA GPUs.

    Call before JAX initialises its backend. Only settings the user did not make are added; on CPUs,
    TPUs and AMD GPUs nothing changes. Returns the settings added, for logging ([] when none).
    """
    if not enabled or not on_nvidia_gpu():
        return []
    existing = os.environ.get("XLA_FLAGS", "")
    merged = merged_xla_flags(existing, GPU_XLA_FLAGS)
    added = merged[len(existing.strip()) :].split()
    os.environ["XLA_FLAGS"] = merged
    if "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = GPU_MEMORY_FRACTION
        added.append(f"XLA_PYTHON_CLIENT_MEM_FRACTION={GPU_MEMORY_FRACTION}")
    return added
