"""Throughput, MFU, and where metrics go: the terminal, `metrics.jsonl`, TensorBoard, optionally W&B."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

# Dense bf16 peak FLOP/s per device (the vendors' data sheets), matched on `device_kind`.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "MI250X": 191.5e12,
    "MI300X": 1307e12,
}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """The device's dense bf16 peak, or None when unknown (CPUs: MFU is then not reported)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "").upper()
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops
    return None


def mfu(tokens_per_second_per_device: float, flops_per_token: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak (None if peak unknown)."""
    if not peak_flops:
        return None
    return tokens_per_second_per_device * flops_per_token / peak_flops


class Meter:
    """Throughput since the previous measurement: tokens/s over all devices and per device, seconds per
    step, and MFU. Due every `interval` steps; each `measure` covers the steps since the one before it (the
    first, the steps since the meter was made, compilation included)."""

    def __init__(
        self,
        interval: int,
        *,
        step: int,
        tokens_seen: int,
        flops_per_token: float,
        peak_flops: float | None,
        num_devices: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.interval = interval
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.num_devices = num_devices
        self._clock = clock
        self._time, self._step, self._tokens = clock(), step, tokens_seen

    def is_due(self, step: int) -> bool:
        """Whether step `step` is one to log."""
        return step % self.interval == 0

    def measure(self, step: int, tokens_seen: int) -> dict[str, float | None]:
        """The rates from the previous measurement to now, when `step` is done and `tokens_seen` trained on."""
        now = self._clock()
        seconds = now - self._time
        tokens_per_second = (tokens_seen - self._tokens) / seconds
        per_device = tokens_per_second / self.num_devices
        measured = {
            "tokens_per_second": tokens_per_second,
            "step_time": seconds / (step - self._step),
            "tokens_per_second_per_device": per_device,
            "mfu": mfu(per_device, self.flops_per_token, self.peak_flops),
        }
        self._time, self._step, self._tokens = now, step, tokens_seen
        return measured


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class MetricWriter:
    """Writes one JSON object per logged step to `<run_dir>/metrics.jsonl`, TensorBoard events to
    `<run_dir>/tensorboard/`, and to W&B when asked. Only the writing process (process 0) creates one."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, wandb_run: Any = None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 (kept open for the run)
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self._wandb = wandb_run

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in scalars.items():
                if math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class Progress:
    """A rate line with ETA on the terminal, once per logged step."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total_steps = total_steps
        self.start_step = start_step
        self.start_time = time.perf_counter()

    def line(self, step: int, metrics: dict[str, Any]) -> str:
        elapsed = time.perf_counter() - self.start_time
        done = step - self.start_step
        eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        parts = [f"step {step}/{self.total_steps}", f"loss {metrics['loss']:.4f}", f"lr {metrics['lr']:.2e}"]
        parts.append(f"gnorm {metrics['grad_norm']:.3f}")
        if "reward_accuracy" in metrics:  # DPO
            parts.append(f"reward acc {metrics['reward_accuracy']:.2f} margin {metrics['reward_margin']:.3f}")
        parts.append(f"{metrics['tokens_per_second'] / 1e3:.1f}k tok/s")
        if metrics.get("mfu") is not None:
            parts.append(f"MFU {100 * metrics['mfu']:.1f}%")
        parts.append(f"ETA {format_duration(eta) if math.isfinite(eta) else '?'}")
        return " | ".join(parts)

    def print(self, step: int, metrics: dict[str, Any]) -> None:
        print(self.line(step, metrics), file=sys.stdout, flush=True)
