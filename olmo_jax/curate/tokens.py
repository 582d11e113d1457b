"""The last stage: the curated shards → OLMo token files (by `prepare`), provenance tables, the report.

It runs as one task: `prepare` reads the final shards in shard order (so the token files keep the input order)
with its own worker pool, into a hidden folder that is renamed to `<output>/tokens` when it holds the token files,
`manifest.json` and a provenance table per token file. The report comes last: a finished run is one whose
`<output>/report.json` exists.
"""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from olmo_jax import atomic
from olmo_jax.curate import provenance
from olmo_jax.curate.report import write_report
from olmo_jax.curate.shards import read_shard, shard_path
from olmo_jax.data.prepare import prepare
from olmo_jax.errors import RunError

TOKENS_DIR = "tokens"


def write_provenance(folder: Path, manifest: dict[str, Any], shards: list[Path], lengths: np.ndarray) -> None:
    """One table per token file of `manifest`: its documents are the next `documents` of the shards, in order."""
    documents = (doc for path in shards for doc in read_shard(path))
    position = 0
    for entry in manifest["files"]:
        rows = []
        for _ in range(entry["documents"]):
            doc = next(documents, None)
            if doc is None:
                raise RunError(f"the shards hold fewer documents than {manifest['documents']} tokenized")
            m = doc.metadata
            rows.append({"source": m["source"], "id": doc.id, "file": m["file"], "line": m["line"]})
            rows[-1]["copy"] = m.get("copy", 0)
        file_lengths = lengths[position : position + len(rows)]
        if int(file_lengths.sum()) != entry["tokens"]:
            raise RunError(f"token file {entry['path']}: document lengths do not add up to {entry['tokens']} tokens")
        provenance.write_table(folder / entry["path"], rows, file_lengths)
        position += len(rows)
    if next(documents, None) is not None or position != len(lengths):
        raise RunError("the shards hold more documents than were tokenized")


class TokenizeStep(PipelineStep):
    """Tokenizes the final shards with `prepare` and writes provenance and the report (see the module docstring)."""

    type = "🔢 - TOKENIZE"
    name = "🔢 prepare + provenance + report"

    def __init__(
        self,
        shards: Path,
        tasks: int,
        output: Path,
        tokenizer: str,
        max_tokens_per_file: int,
        workers: int,
        report: dict[str, Any],
    ) -> None:
        super().__init__()
        self.shards = str(shards)
        self.tasks = tasks
        self.output = str(output)
        self.tokenizer = tokenizer
        self.max_tokens_per_file = max_tokens_per_file
        self.workers = workers
        self.report = report

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        output = Path(self.output)
        final = output / TOKENS_DIR
        for stale in [*output.glob(f".{TOKENS_DIR}.*.tmp"), final]:  # left by an attempt killed before completing
            shutil.rmtree(stale, ignore_errors=True)
        shards = [shard_path(self.shards, s) for s in range(self.tasks)]
        # A pool inside a daemonic process (a Ray actor's, a local pool worker's) cannot start children.
        workers = 1 if multiprocessing.current_process().daemon else self.workers
        lengths: list[np.ndarray] = []
        with atomic.atomic_directory(final) as tmp:
            manifest = prepare(
                [str(p) for p in shards],
                self.tokenizer,
                tmp,
                workers=workers,
                max_tokens_per_file=self.max_tokens_per_file,
                progress=False,
                on_documents=lengths.append,
            )
            all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
            write_provenance(tmp, manifest, shards, all_lengths)
        self.stat_update("documents", value=manifest["documents"])
        self.stat_update("tokens", value=manifest["tokens"])
        write_report(output, manifest, self.report)
        return
        yield  # a pipeline step is a generator; this one yields nothing
