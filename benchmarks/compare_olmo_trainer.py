"""olmo_jax side by side with the original OLMo trainer (PyPI ai2-olmo 0.6.0) on tiny OLMo-1 and OLMo-2 models.

    python benchmarks/compare_olmo_trainer.py [--olmo_python PATH] [--steps 30] [--json OUT]

Both trainers read one OLMo YAML (a 2-layer, d_model 64 OLMo-1 on 64-token instances: two micro-batches,
z-loss, grad-clip warmup, AdamW, a cosine schedule), the same two token files (the 30 steps cross three
epoch boundaries) and the same initial weights (made by olmo_jax's Mitchell init, handed to the original
as an OLMo state dict). The original runs its real `Trainer.fit` / `Trainer.train_step`,
`build_optimizer` and `build_scheduler` in its own virtualenv (`benchmarks/olmo_trainer_peer.py`);
olmo_jax runs `olmo_jax.train.fit` on one CPU device. Reported:
- per step: batch identity, LR, clip limit, and the relative difference of CE loss, z-loss and grad norm;
- two updates from the same weights and batches with clipping inactive, active and warming: the largest
  parameter difference;
- the clip limit at updates 1, 2, 500, 1000, 1001, 1002, 5000 under OLMo-7B.yaml's and OLMo-7B-0724.yaml's
  optimizer and scheduler sections, olmo_jax's `grad_clip_limit` against the real `train_step`;
- OLMo-1B.yaml's `save_folder` interpolation, resolved by OmegaConf with OLMo's resolvers and by olmo_jax.

The original's virtualenv: `$OLMO_ORIG_PYTHON`, else `.venvs/olmo-orig/bin/python` under the repository.
Make it with `python3 -m venv .venvs/olmo-orig && .venvs/olmo-orig/bin/pip install torch ai2-olmo==0.6.0
--no-deps && .venvs/olmo-orig/bin/pip install ai2-olmo-core==0.1.0 omegaconf rich boto3 google-cloud-storage
tokenizers packaging cached_path transformers importlib_resources datasets torchmetrics scikit-learn wandb
"numpy>=2" "pandas<2.3"` (0.6.0 pins numpy<2 yet runs with numpy 2; plain `pip install ai2-olmo` with
"numpy>=2" resolves to the older 0.2.2). Exit status 1 when a tolerance is exceeded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OLMO_PYTHON = REPO / ".venvs" / "olmo-orig" / "bin" / "python"
PEER = Path(__file__).resolve().parent / "olmo_trainer_peer.py"

# Acceptance tolerances: fp32 on both sides, different kernels and summation orders.
LOSS_RTOL = 1e-5  # relative, every step of the 30-step run
PARAM_ATOL = 1e-6  # absolute, after two updates

SEQ = 64
VOCAB = 500
INSTANCES = (41, 37)  # per token file: 78 instances, 9 batches of 8 an epoch (drop_last)

TINY_OLMO_YAML = """
run_name: parity
seed: 6198
model:
  d_model: 64
  n_heads: 4
  n_layers: 2
  mlp_ratio: 8
  weight_tying: false
  alibi: false
  rope: true
  flash_attention: false
  attention_dropout: 0.0
  attention_layer_norm: false
  multi_query_attention: false
  include_bias: false
  block_type: sequential
  layer_norm_type: default
  layer_norm_with_affine: false
  bias_for_layer_norm: false
  attention_layer_norm_with_affine: false
  activation_type: swiglu
  residual_dropout: 0.0
  embedding_dropout: 0.0
  max_sequence_length: {seq}
  vocab_size: {vocab}
  embedding_size: 512
  eos_token_id: 0
  pad_token_id: 1
  init_device: cpu
  init_fn: mitchell
optimizer:
  name: adamw
  learning_rate: {learning_rate}
  weight_decay: 0.1
  betas: [0.9, 0.95]
  eps: 1.0e-5
scheduler:
  name: cosine_with_warmup
  t_warmup: 5
  alpha_f: 0.1
  grad_clip_warmup_steps: {clip_warmup_steps}
  grad_clip_warmup_factor: {clip_warmup_factor}
max_grad_norm: {max_grad_norm}
softmax_auxiliary_loss: true
global_train_batch_size: 8
device_train_microbatch_size: 4
max_duration: {steps}
precision: fp32
save_interval: null
data:
  paths: {paths}
  memmap_dtype: uint16
  drop_last: true
  num_workers: 0
"""

# The same run with OLMo-2's block and recipe, as allenai/OLMo's configs/official-1124/OLMo2-7B-stage1.yaml
# sets them (RMSNorm with weights, QK-norm, norm_after, rope theta 500,000, normal init, AdamW
# eps 1e-8, decayed norms), with grouped-query attention (4 query heads over 2 key/value heads) added. The
# file's `auxiliary_loss_multiplier: 1e-5` is left out: ai2-olmo 0.6.0 weights z-loss by 1e-4 whatever it
# says (README, "What still differs"), and olmo_jax honours the key.
OLMO2_CHANGES = {
    "  attention_layer_norm: false\n": "  attention_layer_norm: true\n  n_kv_heads: 2\n  rope_theta: 500000\n",
    "  multi_query_attention: false\n": "",
    "  layer_norm_type: default\n": "  layer_norm_type: rms\n  layer_norm_eps: 1.0e-6\n  norm_after: true\n",
    "  layer_norm_with_affine: false\n": "  layer_norm_with_affine: true\n",
    "  attention_layer_norm_with_affine: false\n": "  attention_layer_norm_with_affine: true\n",
    "  init_fn: mitchell\n": "  init_fn: normal\n  init_std: 0.02\n  init_cutoff_factor: 3\n",
    "  eps: 1.0e-5\n": "  eps: 1.0e-8\n  decay_norm_and_bias: true\n",
}
OLMO2_STEPS = 10

# The optimizer and scheduler sections of allenai/OLMo's configs/official-0724/OLMo-7B.yaml and
# OLMo-7B-0724.yaml (with their batch and sequence sizes, which set the tokens per step). OLMo-7B-0724's
# `max_duration: 2ep` would need its data set to be counted; with `t_max` set nothing here reads it.
OFFICIAL = {
    "OLMo-7B.yaml": {
        "sections": "optimizer:\n  name: adamw\n  learning_rate: 3.0e-4\n  weight_decay: 0.1\n"
        "  betas: [0.9, 0.95]\nscheduler:\n  name: linear_with_warmup\n  t_warmup: 5000\n  alpha_f: 0.1\n"
        "  grad_clip_warmup_steps: 1000\n  grad_clip_warmup_factor: 10.0\nmax_grad_norm: 1.0\n"
        "max_duration: 2e12T\ndevice_train_microbatch_size: 2\n",
        "tokens_per_step": 2048 * 2048,
    },
    "OLMo-7B-0724.yaml": {
        "sections": "optimizer:\n  name: adamw\n  learning_rate: 3.0e-4\n  weight_decay: 0.1\n"
        "  decay_norm_and_bias: true\n  decay_embeddings: true\n  betas: [0.9, 0.95]\nscheduler:\n"
        "  name: cosine_with_warmup\n  units: tokens\n  t_warmup: 10485760000\n  t_max: 3e12\n  alpha_f: 0.1\n"
        "  grad_clip_warmup_steps: 2097152000\n  grad_clip_warmup_factor: 5\nmax_grad_norm: 1.0\n"
        "max_duration: 3e12T\ndevice_train_microbatch_size: 2\n",
        "tokens_per_step": 1024 * 4096,
    },
}
CLIP_UPDATES = (1, 2, 500, 1000, 1001, 1002, 5000)
# OLMo-1B.yaml's save_folder; /results (OLMo's cluster path) becomes a folder of this comparison's.
SAVE_FOLDER_1B = "${path.choose:${oc.env:SCRATCH_DIR,no_exist}/checkpoints,RESULTS}/${oc.env:SLURM_JOB_ID,${run_name}}"
RUN_LR = 3.0e-3  # the 30-step run: 10x OLMo-7B's peak, so that 30 steps visibly learn
# Two updates from the same weights and batches, at OLMo-7B's peak LR: (max_grad_norm, clip warmup steps,
# factor). Their parameter differences are fp32 rounding of the gradients, which Adam's first updates
# divide by |g| + eps: a gradient element near eps = 1e-5 passes its rounding error through at lr / eps,
# so the differences grow with the LR (at RUN_LR, 1.3e-6 at 4 of 196,608 weights; 4e-8 or less elsewhere).
TWO_UPDATE_LR = 3.0e-4
TWO_UPDATES = {
    "clipping inactive": ("null", "null", "null"),
    "clipping active": (0.05, "null", "null"),
    "clipping warming": (0.05, 1, 1000.0),  # update 1 clips at 0.05, update 2 at 50 (no clipping)
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.environ.get("OLMO_ORIG_PYTHON", str(DEFAULT_OLMO_PYTHON))
    p.add_argument("--olmo_python", default=default, help=f"ai2-olmo's virtualenv python (default {default})")
    p.add_argument("--steps", type=int, default=30, help="updates of the side-by-side run (default 30)")
    p.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write every measurement as JSON here")
    return p.parse_args()


# --------------------------------------------------------------------------------------------------
# Inputs both trainers read.
# --------------------------------------------------------------------------------------------------


def write_token_files(folder: Path) -> list[str]:
    """Raw uint16 token files (OLMo's format), each ending in a partial instance that both drop."""
    rng = np.random.default_rng(1234)
    paths = []
    for i, instances in enumerate(INSTANCES):
        path = folder / f"part-{i}.npy"
        rng.integers(0, VOCAB, instances * SEQ + 17, dtype=np.uint16).tofile(path)
        paths.append(str(path))
    return paths


def olmo_yaml(
    folder: Path,
    name: str,
    paths: list[str],
    steps: int,
    clip: tuple[Any, Any, Any],
    learning_rate: float,
    olmo2: bool = False,
) -> Path:
    max_grad_norm, warmup_steps, factor = clip
    text = TINY_OLMO_YAML.format(
        seq=SEQ, vocab=VOCAB, paths=json.dumps(paths), steps=steps, max_grad_norm=max_grad_norm,
        clip_warmup_steps=warmup_steps, clip_warmup_factor=factor, learning_rate=learning_rate,
    )  # fmt: skip
    for old, new in OLMO2_CHANGES.items() if olmo2 else ():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def olmo_state_dict(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """olmo_jax's parameters (kernels [in, out], layers stacked) as OLMo's state dict (Linear [out, in]).

    `att_proj` [d, 3, H, Dh] (or GQA's `q_proj` [d, H, Dh] and `kv_proj` [d, 2, K, Dh]) -> rows q, k, v, each
    head-major; `ff_proj` [d, 2, hidden] -> rows up then gate (OLMo's SwiGLU chunks x, gate); `lm_head` [d, V]
    -> `transformer.ff_out`; OLMo-2's norm weights -> `attn_norm`, `ff_norm`, `q_norm`, `k_norm` (flat over the
    projection) and `transformer.ln_f`.
    """
    out = {"transformer.wte.weight": params["wte"]}
    for i in range(params["attn_out"].shape[0]):
        prefix = f"transformer.blocks.{i}."
        d = params["attn_out"].shape[-1]
        if "att_proj" in params:
            out[prefix + "att_proj.weight"] = params["att_proj"][i].reshape(d, -1).T
        else:
            kv = params["kv_proj"][i]
            qkv = (params["q_proj"][i], kv[:, 0], kv[:, 1])
            out[prefix + "att_proj.weight"] = np.concatenate([a.reshape(d, -1).T for a in qkv])
        out[prefix + "attn_out.weight"] = params["attn_out"][i].reshape(-1, d).T
        out[prefix + "ff_proj.weight"] = params["ff_proj"][i].reshape(d, -1).T
        out[prefix + "ff_out.weight"] = params["ff_out"][i].T
        for name in ("attn_norm", "ff_norm", "q_norm", "k_norm"):
            if name in params:
                out[prefix + name + ".weight"] = params[name][i].reshape(-1)
    if "final_norm" in params:
        out["transformer.ln_f.weight"] = params["final_norm"]
    out["transformer.ff_out.weight"] = params["lm_head"].T
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------
# olmo_jax's side.
# --------------------------------------------------------------------------------------------------


def initial_weights(config_path: Path, run_dir: Path) -> tuple[str, dict[str, np.ndarray]]:
    """olmo_jax's Mitchell init for the YAML's model, saved as step 0 of `run_dir`; (step dir, numpy params)."""
    import jax
    from flax import nnx

    from olmo_jax.checkpoint import write_params_checkpoint
    from olmo_jax.config import load_config
    from olmo_jax.model import OLMo

    config = load_config(f"olmo:{config_path}")
    model = nnx.jit(lambda: OLMo(config.model, rngs=nnx.Rngs(config.seed)))()
    params = {k: np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(model, nnx.Param)).items()}
    step_dir = write_params_checkpoint(run_dir, 0, jax.tree.map(jax.numpy.asarray, params), config)
    return str(step_dir), params


def run_olmo_jax(config_path: Path, weights: str, run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """`olmo_jax.loop.fit` on the YAML from `weights`: (metrics.jsonl records plus batches, final params)."""
    from olmo_jax.checkpoint import resolve_checkpoint, restore_params
    from olmo_jax.config import data_spec, load_config
    from olmo_jax.data.pipeline import build_pipeline
    from olmo_jax.loop import fit
    from olmo_jax.optim import grad_clip_limit

    overrides = {
        "load_path": weights,
        "load_weights_only": "true",
        "save_folder": str(run_dir),
        "tokenizer.identifier": "null",  # not needed to train; OLMo's default "gpt2" is not on this machine
        "log_interval": "1",
    }
    config = load_config(f"olmo:{config_path}", overrides)
    fit(config, run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    pipeline = build_pipeline(data_spec(config))
    seq = config.sequence_length
    for record in records:
        batch = pipeline.batch(pipeline.cursor_at(record["step"] - 1))
        record["index"] = batch.indices.tolist()
        record["input_ids"] = batch.tokens.tolist()
        tokens_before = record["tokens_seen"] - record["batch_size"] * seq
        # What the loop hands the step (olmo_jax/train.py): the same call, the same arguments.
        record["clip_limit"] = grad_clip_limit(record["step"], tokens_before, config.max_grad_norm, config.scheduler)
        record["z_loss_weighted"] = record["z_loss"] * config.auxiliary_loss_multiplier
    params = restore_params(resolve_checkpoint(str(run_dir / "checkpoints")))
    return records, {k: np.asarray(v) for k, v in params.items()}


def olmo_jax_clip_limits(config_path: Path, tokens_per_step: int) -> dict[str, Any]:
    from olmo_jax.config import load_config
    from olmo_jax.optim import grad_clip_limit

    config = load_config(f"olmo:{config_path}")
    return {
        str(k): grad_clip_limit(k, (k - 1) * tokens_per_step, config.max_grad_norm, config.scheduler)
        for k in CLIP_UPDATES
    }


def olmo_jax_resolve(config_path: Path, env: dict[str, str], unset: list[str]) -> dict[str, Any]:
    from olmo_jax.config import load_config
    from olmo_jax.errors import ConfigError

    saved = dict(os.environ)
    os.environ.update(env)
    for name in unset:
        os.environ.pop(name, None)
    try:
        return {"values": {"save_folder": load_config(f"olmo:{config_path}").save_folder}}
    except ConfigError as e:
        return {"error": str(e)}
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --------------------------------------------------------------------------------------------------
# Comparison.
# --------------------------------------------------------------------------------------------------


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def compare_run(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for mine, orig in zip(ours, theirs, strict=True):
        assert mine["step"] == orig["step"], (mine["step"], orig["step"])
        rows.append(
            {
                "step": mine["step"],
                "same_batch": mine["index"] == orig["index"] and mine["input_ids"] == orig["input_ids"],
                "lr": mine["lr"],
                "lr_rel_diff": relative(mine["lr"], orig["lr"]),
                "clip_limit": mine["clip_limit"],
                "same_clip_limit": mine["clip_limit"] == orig["clip_limit"],
                "grad_norm": orig["grad_norm"],
                "clipped": orig["clip_limit"] is not None and orig["grad_norm"] > orig["clip_limit"],
                "ce_loss": mine["ce_loss"],
                "ce_rel_diff": relative(mine["ce_loss"], orig["ce_loss"]),
                "z_rel_diff": relative(mine["z_loss_weighted"], orig["z_loss"]),
                "grad_norm_rel_diff": relative(mine["grad_norm"], orig["grad_norm"]),
            }
        )
    return {
        "steps": rows,
        "max_ce_rel_diff": max(r["ce_rel_diff"] for r in rows),
        "max_z_rel_diff": max(r["z_rel_diff"] for r in rows),
        "max_grad_norm_rel_diff": max(r["grad_norm_rel_diff"] for r in rows),
        "max_lr_rel_diff": max(r["lr_rel_diff"] for r in rows),
        "all_batches_equal": all(r["same_batch"] for r in rows),
        "all_clip_limits_equal": all(r["same_clip_limit"] for r in rows),
        "clipped_steps": [r["step"] for r in rows if r["clipped"]],
    }


def param_diff(ours: dict[str, np.ndarray], theirs_path: Path, initial: dict[str, np.ndarray]) -> dict[str, Any]:
    """Largest |difference| of the parameters, and of the change from `initial` relative to the largest change."""
    mine = olmo_state_dict(ours)
    theirs = dict(np.load(theirs_path))
    diffs = {name: float(np.max(np.abs(mine[name] - theirs[name]))) for name in mine}
    largest_change = max(float(np.max(np.abs(theirs[name] - initial[name]))) for name in mine)
    return {
        "max_abs_diff": max(diffs.values()),
        "worst": max(diffs, key=diffs.get),
        "max_abs_diff_over_largest_change": max(diffs.values()) / largest_change,
    }


def main() -> int:
    args = parse_args()
    olmo_python = Path(args.olmo_python)
    if not olmo_python.exists():
        print(f"compare_olmo_trainer: no ai2-olmo virtualenv at {olmo_python} (set OLMO_ORIG_PYTHON)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="olmo_parity_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        paths = write_token_files(work)
        main_yaml = olmo_yaml(work, "run", paths, args.steps, (0.5, 10, 4.0), RUN_LR)
        weights_dir, init = initial_weights(main_yaml, work / "init")
        np.savez(work / "init.npz", **olmo_state_dict(init))
        olmo2_yaml = olmo_yaml(work, "olmo2", paths, OLMO2_STEPS, (0.5, 10, 4.0), RUN_LR, olmo2=True)
        olmo2_weights_dir, olmo2_init = initial_weights(olmo2_yaml, work / "olmo2_init")
        np.savez(work / "olmo2_init.npz", **olmo_state_dict(olmo2_init))

        jobs: dict[str, Any] = {}
        runs = {"run": main_yaml}
        for name, clip in TWO_UPDATES.items():
            runs[name] = olmo_yaml(work, name.replace(" ", "_"), paths, 2, clip, TWO_UPDATE_LR)
        for name, config in runs.items():
            jobs[name] = {
                "kind": "train", "config": str(config), "steps": args.steps if name == "run" else 2,
                "weights": str(work / "init.npz"), "save_folder": str(work / f"olmo_{config.stem}"),
                "params_out": str(work / f"olmo_{config.stem}_params.npz"),
            }  # fmt: skip
        jobs["olmo2"] = {
            "kind": "train", "config": str(olmo2_yaml), "steps": OLMO2_STEPS, "weights": str(work / "olmo2_init.npz"),
            "save_folder": str(work / "olmo_olmo2"), "params_out": str(work / "olmo_olmo2_params.npz"),
        }  # fmt: skip
        # The model section of the run, and `precision`, without which the original cannot train.
        tiny_model = TINY_OLMO_YAML.split("optimizer:")[0].format(seq=SEQ, vocab=VOCAB) + "precision: fp32\n"
        for name, official in OFFICIAL.items():
            config = work / f"clip_{name}"
            config.write_text(tiny_model + official["sections"])
            jobs[f"clip {name}"] = {
                "kind": "clip_limits", "config": str(config), "updates": list(CLIP_UPDATES),
                "tokens_per_step": official["tokens_per_step"], "save_folder": str(work / "olmo_clip"),
            }  # fmt: skip
        results_dir = work / "results"
        results_dir.mkdir(exist_ok=True)
        resolve_yamls = {}
        for name, results in (("results exists", results_dir), ("no path exists", work / "absent")):
            resolve_yamls[name] = work / f"save_folder_1b_{name.replace(' ', '_')}.yaml"
            resolve_yamls[name].write_text(
                tiny_model.replace("run_name: parity", "run_name: OLMo-1B")
                + "optimizer:\n  name: adamw\n"
                + f"save_folder: {SAVE_FOLDER_1B.replace('RESULTS', str(results))}\n"
            )
        (work / "scratch" / "checkpoints").mkdir(parents=True, exist_ok=True)
        resolve_cases = {
            "no SCRATCH_DIR or SLURM_JOB_ID, /results exists": ("results exists", {}, ["SCRATCH_DIR", "SLURM_JOB_ID"]),
            "no SCRATCH_DIR or SLURM_JOB_ID, no path exists": ("no path exists", {}, ["SCRATCH_DIR", "SLURM_JOB_ID"]),
            "SCRATCH_DIR and SLURM_JOB_ID set": (
                "results exists",
                {"SCRATCH_DIR": str(work / "scratch"), "SLURM_JOB_ID": "4242"},
                [],
            ),
        }
        for name, (yaml_name, env, unset) in resolve_cases.items():
            jobs[name] = {"kind": "resolve", "config": str(resolve_yamls[yaml_name]), "env": env, "unset": unset,
                          "keys": ["save_folder"]}  # fmt: skip
        (work / "jobs.json").write_text(json.dumps(jobs))
        peer_started = time.perf_counter()
        peer = subprocess.run(
            [str(olmo_python), str(PEER), str(work / "jobs.json"), str(work / "peer.json")],
            capture_output=True, text=True, check=False, cwd=work,
        )  # fmt: skip
        if peer.returncode != 0:
            print(peer.stderr[-4000:], file=sys.stderr)
            print("compare_olmo_trainer: the original trainer failed (output above)", file=sys.stderr)
            return 2
        peer_seconds = time.perf_counter() - peer_started
        theirs = json.loads((work / "peer.json").read_text())

        report: dict[str, Any] = {"olmo_python": str(olmo_python), "peer_seconds": round(peer_seconds, 1)}
        ours_started = time.perf_counter()
        for name, config in runs.items():
            records, params = run_olmo_jax(config, weights_dir, work / f"jax_{config.stem}")
            entry = compare_run(records, theirs[name]["steps"])
            entry["params"] = param_diff(params, Path(jobs[name]["params_out"]), olmo_state_dict(init))
            report[name] = entry
        records, params = run_olmo_jax(olmo2_yaml, olmo2_weights_dir, work / "jax_olmo2")
        report["olmo2"] = compare_run(records, theirs["olmo2"]["steps"])
        report["olmo2"]["params"] = param_diff(params, Path(jobs["olmo2"]["params_out"]), olmo_state_dict(olmo2_init))
        report["olmo_jax_seconds"] = round(time.perf_counter() - ours_started, 1)
        report["clip_limits"] = {
            name: {
                "olmo_jax": olmo_jax_clip_limits(work / f"clip_{name}", official["tokens_per_step"]),
                "original": theirs[f"clip {name}"]["limits"],
            }
            for name, official in OFFICIAL.items()
        }
        report["resolve"] = {
            name: {"olmo_jax": olmo_jax_resolve(resolve_yamls[yaml_name], env, unset), "original": theirs[name]}
            for name, (yaml_name, env, unset) in resolve_cases.items()
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    failures = print_report(report, args.steps)
    report["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 1 if failures else 0


def print_report(report: dict[str, Any], steps: int) -> list[str]:
    """Print the tables; return what exceeded a tolerance or disagreed."""
    failures = []
    run = report["run"]
    print(f"{steps}-step run, one YAML, same weights and token files (relative differences, olmo_jax vs original)")
    print(" step  batch  lr        clip  clipped  ce_loss   ce_rel    z_rel     gnorm_rel")
    for r in run["steps"]:
        print(
            f" {r['step']:4d}  {'same' if r['same_batch'] else 'DIFF':5s}  {r['lr']:.2e}  {r['clip_limit']!s:4s}  "
            f"{'yes' if r['clipped'] else 'no':7s}  {r['ce_loss']:.5f}  {r['ce_rel_diff']:.1e}  "
            f"{r['z_rel_diff']:.1e}  {r['grad_norm_rel_diff']:.1e}"
        )
    print(
        f"max over steps: ce {run['max_ce_rel_diff']:.2e}, z-loss {run['max_z_rel_diff']:.2e}, grad norm "
        f"{run['max_grad_norm_rel_diff']:.2e}, lr {run['max_lr_rel_diff']:.1e}; "
        f"batches equal: {run['all_batches_equal']}; "
        f"clip limits equal: {run['all_clip_limits_equal']}; clipped at steps {run['clipped_steps']}; "
        f"final params max |diff| {run['params']['max_abs_diff']:.2e}"
    )
    if run["max_ce_rel_diff"] > LOSS_RTOL or run["max_z_rel_diff"] > LOSS_RTOL:
        failures.append(f"loss differs by more than {LOSS_RTOL} relative")
    if not (run["all_batches_equal"] and run["all_clip_limits_equal"]):
        failures.append("batches or clip limits differ")
    olmo2 = report["olmo2"]
    print(
        f"\nOLMo-2 block and recipe (RMSNorm, QK-norm, norm_after, GQA 4/2 heads), {OLMO2_STEPS} steps: max over "
        f"steps ce {olmo2['max_ce_rel_diff']:.2e}, z-loss {olmo2['max_z_rel_diff']:.2e}, grad norm "
        f"{olmo2['max_grad_norm_rel_diff']:.2e}; batches equal: {olmo2['all_batches_equal']}; final params max "
        f"|diff| {olmo2['params']['max_abs_diff']:.2e} ({olmo2['params']['worst']})"
    )
    if olmo2["max_ce_rel_diff"] > LOSS_RTOL or olmo2["max_z_rel_diff"] > LOSS_RTOL:
        failures.append(f"OLMo-2 run: loss differs by more than {LOSS_RTOL} relative")
    if not olmo2["all_batches_equal"]:
        failures.append("OLMo-2 run: batches differ")
    print(f"\ntwo updates from the same weights and batches (lr {TWO_UPDATE_LR:g}): max |parameter difference|")
    for name in TWO_UPDATES:
        entry = report[name]
        limits = [r["clip_limit"] for r in entry["steps"]]
        clipped = [r["clipped"] for r in entry["steps"]]
        print(
            f"  {name:18s} limits {limits!s:14s} clipped {clipped!s:14s} {entry['params']['max_abs_diff']:.2e} "
            f"({entry['params']['worst']}; {entry['params']['max_abs_diff_over_largest_change']:.1e} of the largest "
            "change)"
        )
        if entry["params"]["max_abs_diff"] > PARAM_ATOL or not entry["all_clip_limits_equal"]:
            failures.append(f"{name}: parameters differ by more than {PARAM_ATOL} or clip limits differ")
    print("\nclip limit used at update (olmo_jax / original)")
    print("  " + "".join(f"{k:>12d}" for k in CLIP_UPDATES))
    for name, limits in report["clip_limits"].items():
        cells = [f"{limits['olmo_jax'][str(k)]:g}/{limits['original'][str(k)]:g}" for k in CLIP_UPDATES]
        print(f"  {name}: " + "".join(f"{c:>12s}" for c in cells))
        if limits["olmo_jax"] != limits["original"]:
            failures.append(f"clip limits differ for {name}")
    print("\nOLMo-1B.yaml save_folder (its /results moved under the work folder)")
    for name, result in report["resolve"].items():
        ours, theirs = result["olmo_jax"], result["original"]
        agree = ("error" in ours and "error" in theirs) or ours.get("values") == theirs.get("values")
        print(f"  {name}: olmo_jax {ours} | original {theirs} | {'agree' if agree else 'DIFFER'}")
        if not agree:
            failures.append(f"interpolation differs: {name}")
    print(f"\n{'OK' if not failures else 'FAILED: ' + '; '.join(failures)} ({report['seconds']} s)")
    return failures


if __name__ == "__main__":
    sys.exit(main())
