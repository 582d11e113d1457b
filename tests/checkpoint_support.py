"""Shared helpers for the checkpoint tests: reading what the trainer saved."""

from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp

from olmo_jax.checkpoint import META_ITEM, TrainMeta, checkpoint_manager


def read_train_meta(step_dir: Path) -> TrainMeta:
    """The `meta` item of a training checkpoint step (the trainer itself reads it only with the whole state)."""
    step_dir = Path(step_dir)
    with checkpoint_manager(step_dir.parent, read_only=True) as manager:
        item = manager.restore(int(step_dir.name), args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))
    return TrainMeta.from_json(item[META_ITEM], step_dir / META_ITEM)
