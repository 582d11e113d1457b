"""olmo_jax's `data.order: olmo_core` against OLMo-core's own data loader (PyPI ai2-olmo-core).

    python benchmarks/compare_olmo_core_order.py [--olmo_core_python PATH] [--json OUT]

Three raw token files (uint32, the dolma2 tokenizer's width; each ends in a partial instance) are read by
OLMo-core's `NumpyFSLDataset` + `NumpyFSLDataLoader` in its own virtualenv
(`benchmarks/olmo_core_order_peer.py`) and by olmo_jax's data pipeline with `data.order=olmo_core`, for
three epochs of batches of 6 instances (the last, partial batch of each epoch dropped by both). Every
batch's instance indices and tokens must be equal. For contrast the report also says how many batches of
`data.order=olmo` (ai2-olmo's numbering, first epoch 0) differ from OLMo-core's.

OLMo-core's virtualenv: `$OLMO_CORE_PYTHON`, else `.venvs/olmo-core/bin/python` under the repository. Make it
with `python3 -m venv .venvs/olmo-core && .venvs/olmo-core/bin/pip install torch ai2-olmo-core==3.0.0`.
Exit status 1 when a batch differs, 2 when the peer cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = Path(os.environ.get("OLMO_CORE_PYTHON", REPO / ".venvs" / "olmo-core" / "bin" / "python"))
PEER = Path(__file__).resolve().parent / "olmo_core_order_peer.py"

SEQ, BATCH, EPOCHS, SEED = 16, 6, 3, 34521  # the seed of OLMo-core's OLMo-2 scripts
VOCAB, EOS, PAD = 100278, 100257, 100277
INSTANCES = (23, 17, 9)  # per file: 49 instances, 8 batches of 6 an epoch and one instance dropped


def write_token_files(folder: Path) -> list[str]:
    rng = np.random.default_rng(7)
    paths = []
    for i, n in enumerate(INSTANCES):
        path = folder / f"part-{i}.npy"
        rng.integers(0, VOCAB, n * SEQ + 5, dtype=np.uint32).tofile(path)
        paths.append(str(path))
    return paths


def olmo_jax_epochs(paths: list[str], order: str) -> tuple[int, list[list[dict]]]:
    from olmo_jax.data.pipeline import build_pipeline
    from olmo_jax.data.spec import DataSpec

    spec = DataSpec(
        sequence_length=SEQ, global_batch_size=BATCH, seed=SEED, vocab_size=VOCAB, eos_token_id=EOS,
        paths=tuple(paths), dtype="uint32", order=order, builtin_corpus=False,
    )  # fmt: skip
    pipeline = build_pipeline(spec)
    per_epoch = pipeline.instances_per_epoch // BATCH
    epochs = []
    for epoch in range(EPOCHS):
        batches = []
        for j in range(per_epoch):
            batch = pipeline.batch(pipeline.cursor_at(epoch * per_epoch + j))
            batches.append({"index": batch.indices.tolist(), "input_ids": batch.tokens.tolist()})
        epochs.append(batches)
    return pipeline.instances_per_epoch, epochs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--olmo_core_python", default=str(DEFAULT_PYTHON))
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    if not Path(args.olmo_core_python).exists():
        print(f"compare_olmo_core_order: no ai2-olmo-core virtualenv at {args.olmo_core_python}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="olmo_core_order_") as tmp:
        work = Path(tmp)
        paths = write_token_files(work)
        job = {
            "paths": paths, "dtype": "uint32", "sequence_length": SEQ, "global_batch_size": BATCH, "seed": SEED,
            "vocab_size": VOCAB, "eos_token_id": EOS, "pad_token_id": PAD, "epochs": EPOCHS,
            "work_dir": str(work / "olmo_core_work"),
        }  # fmt: skip
        (work / "job.json").write_text(json.dumps(job))
        peer = subprocess.run(
            [args.olmo_core_python, str(PEER), str(work / "job.json"), str(work / "out.json")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if peer.returncode != 0:
            print(peer.stderr[-4000:], file=sys.stderr)
            print("compare_olmo_core_order: OLMo-core's loader failed (output above)", file=sys.stderr)
            return 2
        theirs = json.loads((work / "out.json").read_text())
        instances, ours = olmo_jax_epochs(paths, "olmo_core")
        _, olmo_order = olmo_jax_epochs(paths, "olmo")
    flat_theirs = [b for epoch in theirs["epochs"] for b in epoch]
    flat_ours = [b for epoch in ours for b in epoch]
    report = {
        "instances": {"olmo_jax": instances, "olmo_core": theirs["instances"]},
        "batches": {"olmo_jax": len(flat_ours), "olmo_core": len(flat_theirs)},
        "equal_batches": sum(a == b for a, b in zip(flat_ours, flat_theirs, strict=False)),
        "olmo_order_batches_differing": sum(
            a["index"] != b["index"] for a, b in zip((b for e in olmo_order for b in e), flat_theirs, strict=False)
        ),
    }
    same_size = instances == theirs["instances"] and len(flat_ours) == len(flat_theirs)
    ok = report["ok"] = same_size and report["equal_batches"] == len(flat_theirs)
    print(
        f"{EPOCHS} epochs of batches of {BATCH} x {SEQ} tokens over {instances} instances in {len(INSTANCES)} files: "
        f"{report['equal_batches']}/{len(flat_theirs)} batches equal (indices and tokens) with data.order=olmo_core; "
        f"with data.order=olmo, {report['olmo_order_batches_differing']} differ from OLMo-core's"
    )
    print("OK" if ok else "FAILED")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
