"""A small generated corpus with planted items for the curation tests, and a step that kills its run once.

Ordinary documents are random English sentences from word lists (so no two share a line or a 5-gram by accident,
and every one passes the language, Gopher and C4 rules); each planted item is meant for exactly one step.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

NOUNS = (
    "garden river teacher market window doctor village engine farmer mountain library student painter harbor "
    "kitchen forest museum station bridge captain lantern orchard valley meadow island tower desert castle "
    "sailor baker miner poet singer dancer hunter writer pilot nurse soldier farmer merchant weaver potter "
    "blanket basket bottle candle carpet needle pocket ribbon saddle ticket wagon helmet barrel anchor compass"
).split()
VERBS = (
    "carried painted watched followed answered visited repaired opened closed measured gathered cleaned "
    "described studied borrowed noticed delivered collected arranged protected discovered explained finished "
    "ordered covered remembered"
).split()
ADJECTIVES = (
    "quiet narrow ancient bright heavy gentle careful golden modern patient silver simple honest wooden curious "
    "famous distant frozen humble clever sudden broken hidden lovely steady"
).split()
ADVERBS = "slowly quickly early later often rarely gladly calmly proudly softly".split()
CONNECTORS = ("with", "near", "behind", "beyond", "under", "after", "before", "beside")

GERMAN = (
    "Der alte Bauer ging am frühen Morgen über die nassen Felder zum Fluss hinunter. Er wollte sehen, ob das "
    "Wasser in der Nacht gestiegen war. Die Kinder des Dorfes spielten schon vor der Schule auf der Brücke und "
    "riefen ihm fröhlich zu. Später kochte seine Frau eine warme Suppe für die ganze Familie, und alle saßen "
    "lange zusammen am großen Tisch in der Küche. Am Abend erzählte der Großvater Geschichten von früher."
)
FRENCH = (
    "La vieille dame marchait lentement dans les rues étroites de la ville pour acheter du pain frais. Elle "
    "saluait les voisins et parlait avec le boulanger de la pluie et du beau temps. Les enfants couraient vers "
    "l'école en riant, et les oiseaux chantaient dans les arbres du jardin public. Le soir, elle lisait un livre "
    "près de la fenêtre en écoutant la musique douce de la radio. Ensuite elle préparait le dîner pour sa famille."
)
PARAGRAPH = "Subscribe to the weekly letter from the village museum for stories about old bridges and quiet harbors."
ARC_QUESTION = (
    "Which property of a mineral can be determined just by looking at it when a student examines a sample in the "
    "school laboratory?"
)
ARC_ROW = {
    "id": "Mercury_7175875",
    "question": ARC_QUESTION,
    "choices": {"text": ["luster", "mass", "weight", "hardness"], "label": ["A", "B", "C", "D"]},
    "answerKey": "A",
}
PALOMA_PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening to polish the great lens before lighting the "
    "lamp that guided fishing boats safely past the rocks at the mouth of the bay."
)


def sentence(rng: random.Random) -> str:
    words = [
        "The",
        rng.choice(ADJECTIVES),
        rng.choice(NOUNS),
        rng.choice(ADVERBS),
        rng.choice(VERBS),
        "the",
        rng.choice(NOUNS),
        rng.choice(CONNECTORS),
        "a",
        rng.choice(ADJECTIVES),
        rng.choice(NOUNS),
        "and",
        "the",
        rng.choice(NOUNS),
        "of",
        "the",
        rng.choice(NOUNS),
    ]
    return " ".join(words) + "."


def paragraph(rng: random.Random, sentences: int = 3) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def article(rng: random.Random, paragraphs: int = 3) -> str:
    """About 150 words: three lines of three sentences."""
    return "\n".join(paragraph(rng) for _ in range(paragraphs))


@dataclass
class Corpus:
    """The files written, the spec's sources, and which planted document each step must remove or change."""

    root: Path
    sources: list[dict]
    removed: dict[str, set[str]] = field(default_factory=dict)
    changed: dict[str, set[str]] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)


def write_jsonl(path: Path, records: list[dict | str]) -> None:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")


def build_corpus(root: Path, seed: int = 0, ordinary: int = 12) -> Corpus:
    """Two sources in three files, every planted item once (see the module docstring)."""
    rng = random.Random(seed)
    (root / "web").mkdir(parents=True)
    (root / "wiki").mkdir()
    corpus = Corpus(root=root, sources=[])

    def doc(doc_id: str, text: str, url: str | None = None) -> dict:
        corpus.texts[doc_id] = text
        record = {"id": doc_id, "text": text}
        if url:
            record["url"] = url
        return record

    def plant(step: str, doc_id: str, text: str, url: str | None = None, changes: bool = False) -> dict:
        (corpus.changed if changes else corpus.removed).setdefault(step, set()).add(doc_id)
        return doc(doc_id, text, url)

    web_a = [doc(f"web-{i}", article(rng), f"https://web.example/{i}") for i in range(ordinary)]
    web_b = [doc(f"web-b{i}", article(rng), f"https://web.example/b{i}") for i in range(ordinary)]
    wiki = [doc(f"wiki-{i}", article(rng)) for i in range(ordinary)]
    original = corpus.texts["web-3"]
    words = original.split(" ")
    words[20] = "lighthouse" if words[20] != "lighthouse" else "harbor"
    web_a += [
        plant("language", "de-1", GERMAN),
        plant("language", "fr-1", FRENCH),
        plant("gopher_quality", "short-1", paragraph(rng, 1)),
        plant("gopher_repetition", "repeat-1", "\n".join([sentence(rng)] * 4 + [paragraph(rng) for _ in range(2)])),
        plant("c4", "lorem-1", article(rng) + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."),
        plant("c4", "curly-1", article(rng) + "\nThe parser reads the {config} block before the main loop starts."),
        plant("c4", "js-1", article(rng) + "\nPlease enable JavaScript to see the comments below.", changes=True),
        plant(
            "pii",
            "pii-1",
            article(rng) + f"\nWrite to jane.doe@example.com or call (555) 123-4567 from {'203.0.113.7'} today.",
            changes=True,
        ),
        plant(
            "pii",
            "pii-many",
            article(rng) + "\n" + " ".join(f"Mail user{i}@mail.example.org now." for i in range(6)),
        ),
        plant("dedup_urls", "url-dup", article(rng), "https://web.example/5"),
        plant("dedup_minhash", "near-3", " ".join(words)),
        plant("decontaminate", "arc-leak", article(rng) + f"\nQuestion: {ARC_QUESTION} Answer: luster."),
        plant("decontaminate", "paloma-leak", article(rng) + "\n" + PALOMA_PASSAGE),
    ]
    # A shared line: its first occurrence (shard order: web/a, web/b, wiki) stays, the later two are removed.
    for record in (web_b[1], wiki[2], wiki[4]):
        record["text"] = corpus.texts[record["id"]] = corpus.texts[record["id"]] + "\n" + PARAGRAPH
    corpus.changed["dedup_paragraphs"] = {wiki[2]["id"], wiki[4]["id"]}
    web_b += [plant("dedup_documents", "copy-web", original)]
    wiki += [plant("dedup_documents", "copy-wiki", original), '{"id": "broken", "text": ', {"id": "blank", "text": " "}]
    write_jsonl(root / "web" / "a.jsonl.gz", web_a)
    write_jsonl(root / "web" / "b.jsonl", web_b)
    write_jsonl(root / "wiki" / "all.jsonl", wiki)
    corpus.sources = [
        {"name": "web", "paths": [str(root / "web" / "*.jsonl*")]},
        {"name": "wiki", "paths": [str(root / "wiki")]},
    ]
    corpus.kept = {"web": 2 * ordinary + 1 + 1, "wiki": ordinary}  # ordinary + js-1 + pii-1
    return corpus


def write_eval_data(root: Path) -> tuple[Path, Path]:
    """An ARC-Easy task file (eval's JSON-lines layout) and one Paloma-layout domain; returns (eval_dir, paloma)."""
    eval_dir, paloma = root / "eval", root / "paloma"
    eval_dir.mkdir(parents=True)
    other = {**ARC_ROW, "id": "other", "question": "Which gas do plants take in from the air to make their food?"}
    write_jsonl(eval_dir / "arc_easy.validation.jsonl", [ARC_ROW, other])
    domain = paloma / "c4_en" / "val"
    domain.mkdir(parents=True)
    write_jsonl(domain / "val_news.jsonl.gz", [{"text": PALOMA_PASSAGE}, {"text": "Too short to match."}])
    return eval_dir, paloma


class KillOnce(PipelineStep):
    """Passes documents on; the first time task `rank` runs (no `marker` file yet) it kills its process group."""

    type = "🧪 - TEST"
    name = "kill once"

    def __init__(self, marker: str, rank: int) -> None:
        super().__init__()
        self.marker = marker
        self.rank = rank

    def run(self, data, rank: int = 0, world_size: int = 1):
        if rank == self.rank and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.killpg(os.getpgrp(), signal.SIGKILL)
        yield from data
