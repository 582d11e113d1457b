"""olmo_jax against the original OLMo trainer (ai2-olmo 0.6.0), run in its own virtualenv.

`benchmarks/compare_olmo_trainer.py` drives both trainers on one tiny OLMo-1 YAML, the same token files and
the same initial weights. The original's virtualenv is `$OLMO_ORIG_PYTHON`, else `.venvs/olmo-orig/bin/python`
under the repository (how to make it: the script's docstring); without it this test skips. It takes a few
minutes on two CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OLMO_PYTHON = Path(os.environ.get("OLMO_ORIG_PYTHON", REPO / ".venvs" / "olmo-orig" / "bin" / "python"))


@pytest.mark.slow
@pytest.mark.skipif(not OLMO_PYTHON.exists(), reason=f"no ai2-olmo virtualenv at {OLMO_PYTHON} (set OLMO_ORIG_PYTHON)")
def test_olmo_jax_trains_as_the_original_trainer(tmp_path):
    """30 steps agree to 1e-5 relative in CE and z-loss at every step, with equal batches, LRs and clip
    limits; two updates from the same weights agree to 1e-6 in every parameter with clipping inactive,
    active and warming; the clip limits at updates 1..5000 of OLMo-7B.yaml and OLMo-7B-0724.yaml equal
    the real `Trainer.train_step`'s; OLMo-1B.yaml's save_folder resolves as OmegaConf resolves it; a tiny
    OLMo-2 YAML (RMSNorm, QK-norm, norm_after, GQA) trains 10 steps with CE and z-loss within 1e-5."""
    out = tmp_path / "report.json"
    # One CPU device for olmo_jax's run (the test session's 8 fake devices would split its batch of 8).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, str(REPO / "benchmarks" / "compare_olmo_trainer.py"), "--olmo_python", str(OLMO_PYTHON)]
    done = subprocess.run([*command, "--json", str(out)], env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failures"] == [], done.stdout[-3000:]
    run = report["run"]
    assert len(run["steps"]) == 30 and run["all_batches_equal"] and run["all_clip_limits_equal"]
    assert len(report["olmo2"]["steps"]) == 10 and report["olmo2"]["all_batches_equal"]
    assert max(run["max_ce_rel_diff"], run["max_z_rel_diff"]) <= 1e-5
    assert run["clipped_steps"] and len(run["clipped_steps"]) < 30  # clipping both active and inactive
    for name in ("clipping inactive", "clipping active", "clipping warming"):
        assert report[name]["params"]["max_abs_diff"] <= 1e-6, name
    for limits in report["clip_limits"].values():
        assert limits["olmo_jax"] == limits["original"]
