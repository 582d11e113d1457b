"""Deduplication: exact (URL, document text) and MinHash with datatrove's stages, paragraphs with a Bloom filter.

Each step that needs the whole corpus is a few stages (see `pipeline.py`, which runs them):
- `dedup_urls`, `dedup_documents`: datatrove's exact dedup. `ExactDedupSignature` hashes every document of a
  shard (its URL, or its text), `ExactFindDedups` (one task) merges the sorted hashes and lists every copy but
  one, and `ExactDedupFilter` drops them while the next stage reads the shard. Documents without a URL are never
  URL duplicates.
- `dedup_minhash`: datatrove's MinHash: signatures, buckets (one task per bucket), clusters (one task), filter;
  one document per cluster of near duplicates is kept.
- `dedup_paragraphs`: Dolma's paragraph dedup, which no engine ships: every line of every document is looked up
  in one Bloom filter and added to it; a line seen before is removed, and a document left with no text is
  removed. The filter holds the whole corpus, so this is one task that reads every shard in order (the first
  occurrence in shard order is the one kept) and writes every shard.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)

from olmo_jax.curate.shards import RemovalLog, shard_path
from olmo_jax.curate.steps import WORDS


def url_key(doc: Document) -> str:
    """The URL of a document; one that has none gets a key no other document has."""
    url = doc.metadata.get("url")
    return url if url else f"\0no url\0{doc.metadata['file']}\0{doc.metadata['line']}\0{doc.metadata.get('copy', 0)}"


def text_key(doc: Document) -> str:
    return doc.text


def exact_config(kind: str) -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=url_key if kind == "dedup_urls" else text_key)


def exact_stages(kind: str, work: Path) -> tuple[list[PipelineStep], list[PipelineStep], Path]:
    """(signature steps, find steps, duplicates folder) of an exact dedup; the signature steps follow a reader."""
    signatures, duplicates = work / "signatures", work / "duplicates"
    config = exact_config(kind)
    return (
        [ExactDedupSignature(output_folder=str(signatures), config=config, finder_workers=1)],
        [ExactFindDedups(data_folder=str(signatures), output_folder=str(duplicates), config=config)],
        duplicates,
    )


def exact_filter(kind: str, duplicates: Path, log: RemovalLog) -> PipelineStep:
    return ExactDedupFilter(data_folder=str(duplicates), config=exact_config(kind), exclusion_writer=log)


def minhash_config(params: dict[str, Any]) -> MinhashConfig:
    return MinhashConfig(**params)


def minhash_stages(params: dict[str, Any], work: Path) -> list[tuple[str, int, list[PipelineStep]]]:
    """(role, tasks, steps) of MinHash's signature (steps follow a reader), bucket and cluster stages."""
    config = minhash_config(params)
    signatures, buckets, clusters = work / "signatures", work / "buckets", work / "clusters"
    return [
        ("signatures", 0, [MinhashDedupSignature(output_folder=str(signatures), config=config, language=WORDS)]),
        (
            "buckets",
            config.num_buckets,
            [MinhashDedupBuckets(input_folder=str(signatures), output_folder=str(buckets), config=config)],
        ),
        ("clusters", 1, [MinhashDedupCluster(input_folder=str(buckets), output_folder=str(clusters), config=config)]),
    ]


def minhash_filter(work: Path, log: RemovalLog) -> PipelineStep:
    return MinhashDedupFilter(input_folder=str(work / "clusters"), exclusion_writer=log)


class BloomFilter:
    """A Bloom filter of `expected` keys with false-positive rate `rate`: m bits, k indices by double hashing
    of one 128-bit BLAKE2b digest (keyed by `seed`)."""

    def __init__(self, expected: int, rate: float, seed: int = 0) -> None:
        expected = max(expected, 1)
        self.m = max(64, math.ceil(-expected * math.log(rate) / math.log(2) ** 2))
        self.k = max(1, round(self.m / expected * math.log(2)))
        self.bits = np.zeros((self.m + 7) // 8, dtype=np.uint8)
        self.key = seed.to_bytes(8, "little")
        self._steps = np.arange(self.k, dtype=np.uint64)

    def _bits(self, items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(byte, bit) of each item's k indices, as [len(items), k] arrays."""
        digests = [hashlib.blake2b(item, digest_size=16, key=self.key).digest() for item in items]
        pairs = np.frombuffer(b"".join(digests), dtype="<u8").reshape(-1, 2)
        h1, h2 = pairs[:, :1], pairs[:, 1:] | np.uint64(1)
        with np.errstate(over="ignore"):  # the double hash wraps modulo 2**64 on purpose
            indices = (h1 + self._steps[None, :] * h2) % np.uint64(self.m)
        return indices >> np.uint64(3), (indices & np.uint64(7)).astype(np.uint8)

    def __contains__(self, item: bytes) -> bool:
        """Whether `item` was (probably) added: never False for an added item, True for others at `rate`."""
        byte, bit = self._bits([item])
        return bool(np.all((self.bits[byte] >> bit) & 1))

    def check_and_add(self, items: list[bytes]) -> np.ndarray:
        """For each item, whether it was (probably) added before it, by an earlier call or earlier in `items`;
        then adds them all. One call per document keeps the work in numpy."""
        if not items:
            return np.zeros(0, dtype=bool)
        byte, bit = self._bits(items)
        present = np.all((self.bits[byte] >> bit) & 1, axis=1)
        first: dict[bytes, int] = {}
        for position, item in enumerate(items):  # a repeat within `items` was added by its first occurrence
            if first.setdefault(item, position) != position:
                present[position] = True
        new = ~present
        np.bitwise_or.at(self.bits, byte[new].ravel(), np.left_shift(np.uint8(1), bit[new].ravel()))
        return present


def count_lines(folder: Path, tasks: int) -> int:
    """An upper bound of the paragraphs in every shard: lines of text (escaped newlines) plus one per document."""
    total = 0
    for shard in range(tasks):
        with open(shard_path(folder, shard), "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            for line in io.BufferedReader(stream):
                total += line.count(b"\\n") + 1
    return total


class ParagraphBloomDedup(PipelineStep):
    """Removes every line seen before in the corpus (see the module docstring); runs as the only task."""

    type = "🫂 - DEDUP"
    name = "🪷 Paragraph Bloom filter"

    def __init__(
        self,
        false_positive_rate: float,
        expected_paragraphs: int | None,
        seed: int,
        shards: Path,
        tasks: int,
        exclusion_writer: RemovalLog,
    ) -> None:
        super().__init__()
        self.false_positive_rate = false_positive_rate
        self.expected_paragraphs = expected_paragraphs
        self.seed = seed
        self.shards = str(shards)
        self.tasks = tasks
        self.exclusion_writer = exclusion_writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        expected = self.expected_paragraphs or count_lines(Path(self.shards), self.tasks)
        bloom = BloomFilter(expected, self.false_positive_rate, self.seed)
        with self.exclusion_writer as writer:
            for doc in data:
                lines = doc.text.split("\n")
                keys = [(n, line.strip().encode()) for n, line in enumerate(lines) if line.strip()]
                seen = bloom.check_and_add([key for _, key in keys])
                dropped = {n for (n, _), duplicate in zip(keys, seen, strict=True) if duplicate}
                kept = [line for n, line in enumerate(lines) if n not in dropped]
                if len(kept) != len(lines):
                    self.stat_update("removed_paragraphs", value=len(lines) - len(kept))
                    if not any(line.strip() for line in kept):
                        doc.metadata["filter_reason"] = "all_paragraphs_duplicate"
                        writer.write(doc, rank)
                        self.stat_update("dropped_all_paragraphs_duplicate")
                        continue
                    doc.text = "\n".join(kept)
                yield doc
