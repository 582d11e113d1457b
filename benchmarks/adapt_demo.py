"""The offline fine-tuning demo end to end, timed: tiny pretraining → SFT → DPO → generation, then the DPO
model's reward accuracy on every one of its own preference pairs.

    python benchmarks/adapt_demo.py --workdir=runs/demo

Runs the README's commands as subprocesses (each stage resumes if its run directory already holds it),
prints each stage's wall time, then scores every pair of the demo preference set with the final weights
and with the cached reference log-probs, under the run's DPO loss type and β: accuracy = the fraction of
pairs whose chosen reward beats the rejected one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from olmo_jax.adapt.losses import preference_loss
from olmo_jax.adapt.reference import CACHE_NAME, compute_reference_logps
from olmo_jax.checkpoint import read_config, resolve_checkpoint
from olmo_jax.config import data_spec
from olmo_jax.data.pipeline import build_pipeline
from olmo_jax.pretrained import from_pretrained
from olmo_jax.sharding import batch_sharding, make_mesh


def stage(name: str, command: list[str]) -> float:
    start = time.perf_counter()
    print(f"== {name}: {' '.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", *command], check=True)
    seconds = time.perf_counter() - start
    print(f"== {name}: {seconds:.0f} s", flush=True)
    return seconds


def reward_accuracy(run_dir: Path) -> tuple[float, int]:
    """(accuracy, pairs) of the run's latest weights against its cached reference log-probs."""
    config = read_config(resolve_checkpoint(run_dir))
    source = build_pipeline(data_spec(config)).source
    pretrained = from_pretrained(run_dir)
    graphdef, params = nnx.split(pretrained.model)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        policy = compute_reference_logps(graphdef, params, source, config.global_train_batch_size, batch_sharding(mesh))
    with np.load(run_dir / CACHE_NAME) as cached:
        reference = cached["logps"]
    segments = source.segment_ids
    counted = (source.label_mask[:, 1:] > 0) & (segments[:, 1:] == segments[:, :-1])  # as `label_logprobs`
    counts = np.stack([counted & (segments[:, 1:] == s) for s in (1, 2)], 1).sum(-1)
    adapt = config.adapt
    _, rewards = preference_loss(
        policy, reference, counts.astype(np.float32), adapt.dpo_loss, adapt.beta, gamma=adapt.simpo_gamma
    )
    rewards = np.asarray(rewards)
    return float(np.mean(rewards[:, 0] > rewards[:, 1])), len(rewards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo", help="folder for the three run directories")
    args = parser.parse_args()
    root = Path(args.workdir)
    seconds = {
        "pretrain": stage("pretrain", ["olmo_jax.main", "--config=tiny", f"--workdir={root / 'tiny'}"]),
        "sft": stage(
            "sft",
            ["olmo_jax.main", "--config=sft_tiny", f"--config.load_path={root / 'tiny'}", f"--workdir={root / 'sft'}"],
        ),
        "dpo": stage(
            "dpo",
            ["olmo_jax.main", "--config=dpo_tiny", f"--config.load_path={root / 'sft'}", f"--workdir={root / 'dpo'}"],
        ),
        "generate": stage(
            "generate",
            ["olmo_jax.generate", f"--model={root / 'dpo'}", "--prompt=What is the Python module json for?"],
        ),
    }
    accuracy, pairs = reward_accuracy(root / "dpo")
    report = {"seconds": {k: round(v) for k, v in seconds.items()}, "total_seconds": round(sum(seconds.values()))}
    report |= {"reward_accuracy": round(accuracy, 4), "pairs": pairs}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
