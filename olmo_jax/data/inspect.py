"""`inspect`: which instances and tokens made up global batch N, rebuilt from the run's config alone.

OLMo answered this from index files written during training (now gone for the published runs); here the order
is recomputed (see `olmo_jax.data.order`), so only the config and the token files are needed. The fingerprint and
checksum printed for each step are those of `olmo_jax.data.pipeline`, which the trainer can log per step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from olmo_jax.config import data_spec, load_config
from olmo_jax.curate import provenance
from olmo_jax.data.pipeline import DataPipeline, token_checksum
from olmo_jax.data.spec import DataSpec
from olmo_jax.errors import ConfigError


def resolve_data_spec(run_dir: str | None, config: str | None, overrides: dict[str, str]) -> DataSpec:
    """The data spec of a run directory's config (`<run_dir>/config.yaml`) or of `--config`, with overrides
    applied; `build_pipeline` turns it into the run's batches."""
    if run_dir is not None and config is not None:
        raise ConfigError("give a run directory or --config, not both")
    if run_dir is not None:
        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"run directory {run_dir} has no config.yaml (is it a run directory?)")
        return data_spec(load_config(str(path), overrides))
    if config is None:
        raise ConfigError("give a run directory or --config=NAME|PATH")
    return data_spec(load_config(config, overrides))


def inspect_step(pipeline: DataPipeline, step: int, *, decode: bool = False) -> dict[str, Any]:
    """What training step `step` saw, as a JSON-serialisable dict: the instances with file, offset and tokens.

    Steps are numbered as the trainer logs them (OLMo's `global_step`): step N is the N-th update, which
    trained on global batch N-1 of the order.
    """
    if step < 1:
        raise ConfigError(f"--step must be >= 1 (training steps are numbered from 1, as in metrics.jsonl), got {step}")
    cursor = pipeline.cursor_at(step - 1)
    batch = pipeline.batch(cursor)
    if decode and pipeline.tokenizer is None:
        raise ConfigError("--decode needs a tokenizer: set tokenizer.identifier (--config.tokenizer.identifier=...)")
    instances = []
    for index, tokens in zip(batch.indices.tolist(), batch.tokens, strict=True):
        location = pipeline.source.locate(index)
        instance: dict[str, Any] = {
            "index": index,
            "path": location.path,
            "offset": location.offset,
            "tokens": tokens.tolist(),
        }
        if location.source:
            instance["source"] = location.source
        origins = provenance.documents_in(location.path, location.offset, location.offset + len(tokens))
        if origins is not None:  # a curated token file: the documents behind the instance
            instance["documents"] = [origin.to_dict() for origin in origins]
        if decode:
            instance["text"] = pipeline.tokenizer.decode(tokens.tolist())
        instances.append(instance)
    return {
        "step": step,
        "epoch": cursor.epoch,
        "batch_size": len(instances),
        "fingerprint": batch.fingerprint,
        "checksum": int(token_checksum(batch.tokens)),
        "instances": instances,
    }


def format_json(record: dict[str, Any]) -> str:
    """One line of JSON."""
    return json.dumps(record, ensure_ascii=False)


def format_text(record: dict[str, Any], preview: int = 80) -> str:
    """A human-readable block; `preview` limits the characters of text (or tokens) shown per instance (0: all)."""
    lines = [
        f"step {record['step']}  epoch {record['epoch']}  {record['batch_size']} instances  "
        f"fingerprint {record['fingerprint']}  checksum {record['checksum']}"
    ]
    for row, instance in enumerate(record["instances"]):
        where = f"{instance['path']} @ token {instance['offset']}"
        if "source" in instance:
            where = f"[{instance['source']}] {where}"
        lines.append(f"  row {row:>4}  index {instance['index']:>10}  {where}")
        for doc in instance.get("documents", []):
            lines.append(f"            document [{doc['source']}] {doc['id']}  ({doc['file']}:{doc['line']})")
        if "text" in instance:
            text = instance["text"]
            shown = text if preview <= 0 else text[:preview]
            lines.append(f"            text {shown!r}{' ...' if len(shown) < len(text) else ''}")
        else:
            tokens = instance["tokens"]
            shown = tokens if preview <= 0 else tokens[:preview]
            lines.append(f"            tokens {' '.join(map(str, shown))}{' ...' if len(shown) < len(tokens) else ''}")
    return "\n".join(lines)
