"""olmo_jax's `data.order: olmo_core` against OLMo-core's own loader (ai2-olmo-core in its own virtualenv).

`benchmarks/compare_olmo_core_order.py` runs OLMo-core's `NumpyFSLDataset` + `NumpyFSLDataLoader` on three
token files for three epochs and compares every batch. The virtualenv is `$OLMO_CORE_PYTHON`, else
`.venvs/olmo-core/bin/python` under the repository (how to make it: the script's docstring); without it
this test skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(os.environ.get("OLMO_CORE_PYTHON", REPO / ".venvs" / "olmo-core" / "bin" / "python"))


@pytest.mark.slow
@pytest.mark.skipif(not PYTHON.exists(), reason=f"no ai2-olmo-core virtualenv at {PYTHON} (set OLMO_CORE_PYTHON)")
def test_every_batch_equals_olmo_cores_loader(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = REPO / "benchmarks" / "compare_olmo_core_order.py"
    command = [sys.executable, str(script), "--olmo_core_python", str(PYTHON)]
    done = subprocess.run([*command, "--json", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"], done.stdout
    assert report["batches"]["olmo_core"] == 24 and report["equal_batches"] == 24
    assert report["olmo_order_batches_differing"] > 0  # ai2-olmo's numbering is another order
