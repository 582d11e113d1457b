"""OLMo-core's side of `benchmarks/compare_olmo_core_order.py`; runs in ai2-olmo-core's own virtualenv.

    OLMO_CORE_PYTHON olmo_core_order_peer.py JOB.json OUT.json

Nothing here imports olmo_jax. JOB.json: token file paths, dtype, sequence length, global batch size
(instances), seed, vocab/EOS/pad ids, epochs and a work folder. OLMo-core's own `NumpyFSLDataset` and
`NumpyFSLDataLoader` (as its trainer uses them: `reshuffle(epoch)` from epoch 1, one data-parallel rank)
produce every batch of those epochs; OUT.json receives each batch's instance indices and tokens.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from olmo_core.data import DataCollator, NumpyFSLDataLoader, NumpyFSLDataset


def main() -> int:
    job = json.loads(open(sys.argv[1]).read())
    dataset = NumpyFSLDataset(
        *job["paths"],
        sequence_length=job["sequence_length"],
        pad_token_id=job["pad_token_id"],
        eos_token_id=job["eos_token_id"],
        vocab_size=job["vocab_size"],
        dtype=getattr(np, job["dtype"]),
    )
    dataset.work_dir = job["work_dir"]
    dataset.prepare()
    loader = NumpyFSLDataLoader(
        dataset,
        global_batch_size=job["global_batch_size"] * job["sequence_length"],
        collator=DataCollator(pad_token_id=job["pad_token_id"]),
        work_dir=job["work_dir"],
        seed=job["seed"],
        shuffle=True,
        num_workers=0,
    )
    epochs = []
    for epoch in range(1, job["epochs"] + 1):  # the trainer's numbering (`Trainer.epoch` starts at 1)
        loader.reshuffle(epoch=epoch)
        batches = [{"index": batch["index"].tolist(), "input_ids": batch["input_ids"].tolist()} for batch in loader]
        loader.reset()
        epochs.append(batches)
    with open(sys.argv[2], "w") as f:
        json.dump({"instances": len(dataset), "epochs": epochs}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
