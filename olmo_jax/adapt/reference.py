"""DPO's reference log-probs: computed once, before the first update, with the starting weights, and cached.

Training then needs no second model in memory: each preference row carries its reference's summed log-probs
of the chosen and rejected completions (`PreferenceSource.reference_logps`). The cache is
`<run_dir>/dpo_reference_logps.npz` (written atomically), keyed by the data's identity and where the starting
weights came from, so a resumed run reads the numbers its first step used.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import jax
import numpy as np

from olmo_jax import atomic
from olmo_jax.adapt.data import PreferenceSource
from olmo_jax.adapt.losses import label_logprobs, pair_logprobs
from olmo_jax.errors import CheckpointError

CACHE_NAME = "dpo_reference_logps.npz"


def compute_reference_logps(graphdef, params: dict, source: PreferenceSource, batch_size: int, sharding) -> np.ndarray:
    """Summed log-probs [N, 2] (chosen, rejected) of every row under `params`, `batch_size` rows at a time."""

    @jax.jit
    def score(params, batch):
        return pair_logprobs(*label_logprobs(graphdef, params, batch))[0]

    rows = np.arange(len(source))
    out = np.zeros((len(source), 2), np.float32)
    last = time.monotonic()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        padded = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0])])  # one compiled shape
        host = {"input_ids": source.read(padded), **source.row_fields(padded)}
        batch = {
            name: jax.make_array_from_callback(array.shape, sharding, lambda index, a=array: a[index])
            for name, array in host.items()
        }
        out[chunk] = np.asarray(jax.device_get(score(params, batch)))[: len(chunk)]
        if time.monotonic() - last > 5:
            print(f"olmo_jax: dpo reference log-probs: {start + len(chunk):,} of {len(rows):,} pairs", file=sys.stderr)
            last = time.monotonic()
    return out


def attach_reference_logps(run_dir: Path, key: str, source: PreferenceSource, compute, *, may_compute: bool) -> None:
    """Give `source` its reference log-probs: from the cache when it was made for `key`, else `compute()`
    (only when `may_compute`: at step 0, while the weights are still the reference's) and cache them."""
    path = Path(run_dir) / CACHE_NAME
    identity = f"{source.identity}|{key}"
    if path.is_file():
        with np.load(path) as cached:
            if str(cached["identity"]) == identity and cached["logps"].shape == (len(source), 2):
                source.reference_logps = cached["logps"]
                return
    if not may_compute:
        raise CheckpointError(
            f"{path} is missing or was made for other data or weights, and the run has moved past step 0, so "
            "the reference weights are gone; start the DPO run again in a new run directory"
        )
    logps = compute()
    buffer = io.BytesIO()
    np.savez(buffer, identity=np.array(identity), logps=logps)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, buffer.getvalue())
    source.reference_logps = logps
