"""The original OLMo trainer's side of `benchmarks/compare_olmo_trainer.py`; runs in ai2-olmo's own virtualenv.

    OLMO_PYTHON olmo_trainer_peer.py JOBS.json OUT.json

Nothing here imports olmo_jax: JOBS.json says what to run, OUT.json receives what the original did.
Each job is one of:
- `train`: scripts/train.py's set-up (ai2-olmo 0.6.0) on the CPU, one gloo process and no FSDP wrapper,
  the model loaded from an `.npz` of OLMo state-dict tensors, then the real `Trainer.fit`, stopped after
  `steps` updates. Recorded per update, around the real `Trainer.train_step`: the batch (indices and
  tokens), `train/CrossEntropyLoss`, `train/ZLoss`, `optim/total_grad_norm`, the LR the update used, and
  the clip limit the param groups held when `clip_grads_and_collect_metrics` ran; at the end, the
  parameters.
- `clip_limits`: the clip limit the real `Trainer.train_step` uses at given update numbers. Update k is
  reached as `fit` reaches it: its bookkeeping (global_step, tokens seen) is set to update k-1's, one real
  step stores that step's limit in the param groups, then the counters move to k and a second real step
  records the limit it clips with (update 1: a fresh optimizer's).
- `resolve`: values of keys after `TrainConfig.load` (OmegaConf with OLMo's resolvers), or the error.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from olmo.config import TrainConfig
from olmo.data import build_train_dataloader
from olmo.model import OLMo
from olmo.optim import build_optimizer, build_scheduler
from olmo.torch_util import get_world_size, seed_all
from olmo.train import Trainer


def init_process_group() -> None:
    """One gloo process on the loopback interface: `train_step` reduces its losses with torch.distributed."""
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)


def load_config(path: str, save_folder: str) -> TrainConfig:
    """`TrainConfig.load` and the fields scripts/train.py fills in before building anything."""
    cfg = TrainConfig.load(path)
    cfg.save_folder = save_folder
    cfg.save_overwrite = True
    cfg.model.precision = cfg.precision
    cfg.device_train_batch_size = cfg.global_train_batch_size // get_world_size()
    cfg.device_train_grad_accum = cfg.device_train_batch_size // cfg.device_train_microbatch_size
    if cfg.optimizer.no_decay_norm_and_bias is not None:
        cfg.optimizer.decay_norm_and_bias = not cfg.optimizer.no_decay_norm_and_bias
        cfg.optimizer.decay_embeddings = not cfg.optimizer.no_decay_norm_and_bias
        cfg.optimizer.no_decay_norm_and_bias = None
    return cfg


def build_trainer(cfg: TrainConfig, weights: str | None, with_loader: bool) -> Trainer:
    seed_all(cfg.seed)
    loader = build_train_dataloader(cfg) if with_loader else None
    model = OLMo(cfg.model)
    if weights is not None:
        state = {name: torch.from_numpy(array) for name, array in np.load(weights).items()}
        model.load_state_dict(state, strict=True)
    # train_step hands `dist_model.process_group` to the clipping; a plain module (no FSDP) has none.
    model.process_group = None
    return Trainer(
        cfg=cfg,
        epoch=cfg.epoch,
        model=model,
        dist_model=model,
        optim=build_optimizer(cfg, model),
        scheduler=build_scheduler(cfg),
        train_loader=loader,
        device=torch.device("cpu"),
        evaluators=[],
        indices_file=None,
    )


def record_clip_limits(trainer: Trainer, limits: list[Any]) -> None:
    """Append the limit the param groups hold each time the real clipping runs."""
    clip = trainer.optim.clip_grads_and_collect_metrics

    def recording(*args: Any, **kwargs: Any) -> Any:
        limits.append(trainer.optim.param_groups[0]["max_grad_norm"])
        return clip(*args, **kwargs)

    trainer.optim.clip_grads_and_collect_metrics = recording


def train(job: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(job["config"], job["save_folder"])
    # Stop after the compared updates: with stop_at unset the original would go on to max_steps + 10.
    cfg.stop_at = job["steps"]
    # No checkpoints (the comparison reads the parameters from memory).
    cfg.save_interval = cfg.save_interval_unsharded = cfg.save_interval_ephemeral = None
    cfg.save_num_checkpoints_to_keep = 0
    trainer = build_trainer(cfg, job["weights"], with_loader=True)
    limits: list[Any] = []
    record_clip_limits(trainer, limits)
    steps: list[dict[str, Any]] = []
    real_step = trainer.train_step

    def recording_step(batch: dict[str, Any], reduce_global_loss: bool = True) -> dict[str, float]:
        record = {
            "step": trainer.global_step,
            "tokens_seen": trainer.global_train_tokens_seen,
            "index": batch["index"].tolist(),
            "input_ids": batch["input_ids"].tolist(),
        }
        metrics = real_step(batch, reduce_global_loss=True)
        record.update(
            ce_loss=metrics["train/CrossEntropyLoss"],
            z_loss=metrics.get("train/ZLoss"),  # weighted by the trainer's fixed 1e-4
            grad_norm=metrics["optim/total_grad_norm"],
            lr=trainer.optim.param_groups[0]["lr"],  # set before optim.step: this update's
            clip_limit=limits[-1],
        )
        steps.append(record)
        return metrics

    trainer.train_step = recording_step
    trainer.fit()
    params = {name: p.detach().numpy().copy() for name, p in trainer.model.state_dict().items()}
    np.savez(job["params_out"], **params)
    return {"steps": steps}


def clip_limits(job: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(job["config"], job["save_folder"])
    tokens_per_step = job["tokens_per_step"]
    rng = np.random.default_rng(0)
    rows = cfg.device_train_microbatch_size
    batch = {
        "input_ids": torch.from_numpy(
            rng.integers(0, cfg.model.vocab_size, (rows, cfg.model.max_sequence_length), dtype=np.int64)
        )
    }
    out = {}
    for update in job["updates"]:
        trainer = build_trainer(cfg, None, with_loader=False)
        limits: list[Any] = []
        record_clip_limits(trainer, limits)
        for step in ([update - 1] if update > 1 else []) + [update]:
            trainer.global_step = step  # Trainer.fit's bookkeeping before each train_step
            trainer.global_train_tokens_seen = step * tokens_per_step
            trainer.train_step(batch, reduce_global_loss=True)
        out[str(update)] = limits[-1]
    return {"limits": out}


def resolve(job: dict[str, Any]) -> dict[str, Any]:
    os.environ.update(job.get("env", {}))
    for name in job.get("unset", []):
        os.environ.pop(name, None)
    try:
        cfg = TrainConfig.load(job["config"])
    except Exception as e:  # the original's own error, reported as text
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    values = {}
    for key in job["keys"]:
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        values[key] = node
    return {"values": values}


def main() -> int:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    init_process_group()
    handlers = {"train": train, "clip_limits": clip_limits, "resolve": resolve}
    results = {name: handlers[job["kind"]](job) for name, job in jobs.items()}
    Path(sys.argv[2]).write_text(json.dumps(results))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
