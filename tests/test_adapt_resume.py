"""kill -9 in the middle of SFT and of DPO, then the same command again: the run continues bit-exactly.

Same harness as `test_resume.py` (a subprocess per run on one CPU device, a shared compilation cache); the
fine-tuning data is the built-in demo set, so the rows, their order and (for DPO) the cached reference
log-probs must all come back as they were.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from test_resume import Run, complete_steps, env  # noqa: F401  (env is a fixture)

OBJECTIVES = {
    "sft": ("--config.objective=sft", "--config.adapt.train_files=builtin:sft", "--config.adapt.chat_template=tulu"),
    "dpo": (
        "--config.objective=dpo",
        "--config.adapt.train_files=builtin:preferences",
        "--config.adapt.dpo_loss=dpo_norm",
        "--config.adapt.beta=5",
    ),
}
SHAPE = ("--config.data.sequence_length=128", "--config.model.n_layers=1", "--config.max_duration=8")


def finish(run: Run) -> Run:
    assert run.wait(timeout=900) == 0, run.output()  # tokenizing and (DPO) the reference pass come first
    return run


def metrics(run: Run) -> dict[int, dict[str, float]]:
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    drop = {"tokens_per_second", "tokens_per_second_per_device", "step_time", "mfu"}
    return {r["step"]: {k: v for k, v in r.items() if k not in drop} for r in records}


@pytest.mark.slow
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_kill_9_mid_fine_tuning_then_restart_continues_bit_exactly(objective, tmp_path: Path, env) -> None:  # noqa: F811
    overrides = (*OBJECTIVES[objective], *SHAPE, "--config.save_interval=3")
    reference = metrics(finish(Run(tmp_path / "reference", env, *overrides)))
    assert sorted(reference) == list(range(1, 9))

    victim = Run(tmp_path / "victim", env, *overrides)
    while victim.process.poll() is None:  # kill once a checkpoint is complete, mid-run
        if complete_steps(victim.checkpoints()):
            victim.process.kill()
            break
        time.sleep(0.005)
    assert victim.wait() == -signal.SIGKILL, victim.output()
    resumed_from = max(complete_steps(victim.checkpoints()))
    assert resumed_from < 8

    restarted = finish(Run(tmp_path / "victim", env, *overrides))
    assert f"resuming from {tmp_path / 'victim' / 'checkpoints' / str(resumed_from)}" in restarted.output()
    # Bit-exact: every logged number (losses, rewards, reward accuracy, gradient norm, fingerprints).
    assert metrics(restarted) == reference
