"""The document-level steps, their defaults, and the counting wrapper every step runs inside.

Engine filters are used as they are: `gopher_quality`, `gopher_repetition` and `c4` are datatrove's
`GopherQualityFilter`, `GopherRepetitionFilter` and `C4QualityFilter`, with datatrove's defaults (the Gopher and
C4 papers' values) as ours, and any of their constructor arguments accepted as a parameter. They split words with
`WhitespaceWords`: on whitespace, as Dolma's Gopher tagger does (`str.split`), which needs no spaCy model.

Written here, because no engine ships them: language identification with lingua (its models ship inside its
wheel, so nothing is downloaded) or a user's fastText model; Dolma-style PII masking (datatrove's email and IP
patterns and replacer, Dolma's phone pattern, Dolma's `|||EMAIL_ADDRESS|||` tokens); and `mix`, per-source up-
and down-sampling. The deduplication and decontamination steps are in `dedup.py` and `decontamination.py`.

`Counted` wraps every step: per source, documents, characters and tokens in and out (tokens with the output
tokenizer, EOS included, so the last step's count is the token files' size), documents whose text the step
changed, and the engine's own drop reasons. The counts land in datatrove's per-task stats files, which
`report.py` reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.pii import PIIFormatter, PIIReplacer
from datatrove.utils.word_tokenizers import WhitespaceTokenizer

from olmo_jax.data.tokenizer import load_tokenizer
from olmo_jax.errors import CurationError, EvalError
from olmo_jax.eval.tasks import resolve_tasks

EMAIL_TOKEN = "|||EMAIL_ADDRESS|||"
PHONE_TOKEN = "|||PHONE_NUMBER|||"
IP_TOKEN = "|||IP_ADDRESS|||"
# Dolma's phone pattern (`\s+\(?(\d{3})\)?[-\. ]*(\d{3})[-. ]?(\d{4})`) with the leading whitespace kept out of the
# match, so masking keeps the space before the number, and not matching the start of a longer run of digits.
PHONE_PATTERN = r"(?<=\s)\(?\d{3}\)?[-. ]*\d{3}[-. ]?\d{4}(?!\d)"

ENGINE_FILTERS: dict[str, type[BaseFilter]] = {
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4": C4QualityFilter,
}
# Parameters of our own steps, with their defaults. `None` means "no default": the step checks it.
OWN_DEFAULTS: dict[str, dict[str, Any]] = {
    # Dolma keeps documents whose English score is >= 0.5. lingua's cost grows with the length of the text, and
    # the first 2000 characters decide the language of all but mixed-language documents.
    "language": {
        "languages": ["en"],
        "min_score": 0.5,
        "backend": "lingua",
        "model_path": None,
        "candidates": None,
        "max_chars": 2000,
    },
    # Dolma v1 masks PII in documents with at most 5 spans and removes documents with more; every IPv4 address.
    "pii": {"remove_above": 5, "only_public_ips": False},
    "dedup_urls": {},
    "dedup_documents": {},
    # datatrove's MinhashConfig defaults (FineWeb's): 5-grams, 14 buckets of 8 hashes (similarity ~0.75 and up).
    "dedup_minhash": {"n_grams": 5, "num_buckets": 14, "hashes_per_bucket": 8, "seed": 1},
    "dedup_paragraphs": {"false_positive_rate": 1e-5, "expected_paragraphs": None, "seed": 0},
    # 13-grams, as GPT-3's decontamination and Dolma's (Paloma's) paragraph matching use.
    "decontaminate": {"tasks": ["core9"], "eval_dir": None, "paloma_dir": None, "paloma_split": "val", "n_grams": 13},
    "mix": {"weights": {}, "seed": 0},
    "custom": {"callable": None, "params": {}},
}
DEDUP_KINDS = ("dedup_urls", "dedup_documents", "dedup_minhash", "dedup_paragraphs")
STEP_KINDS = (*ENGINE_FILTERS, *OWN_DEFAULTS)


class WhitespaceWords(WhitespaceTokenizer):
    """Words split on whitespace (Dolma's Gopher tagger: `text.split()`); sentences by datatrove's regex."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()


WORDS = WhitespaceWords()


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


def step_defaults(kind: str) -> dict[str, Any]:
    """Every parameter of step `kind` with its default value."""
    if kind in ENGINE_FILTERS:
        signature = inspect.signature(ENGINE_FILTERS[kind].__init__)
        return {
            name: _jsonable(p.default)
            for name, p in signature.parameters.items()
            if name not in ("self", "exclusion_writer", "language") and p.default is not inspect.Parameter.empty
        }
    if kind in OWN_DEFAULTS:
        return dict(OWN_DEFAULTS[kind])
    raise CurationError(f"unknown step {kind!r}; steps: {', '.join(STEP_KINDS)}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _check_type(value: Any, default: Any, where: str, nullable: bool) -> Any:
    """`value` if it has the type of `default` (ints are floats too; lists and tuples are lists), or is None where
    that is allowed (datatrove's rules are switched off with None)."""
    if default is None or (value is None and nullable):
        return _jsonable(value)
    if isinstance(default, list) and isinstance(value, str):  # `languages: en` means [en]
        value = [value]
    ok = value is not None and {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, (list, tuple)),
        dict: isinstance(value, dict),
    }.get(type(default), True)
    if not ok:
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}
        raise CurationError(f"{where}: expected {expected.get(type(default), type(default).__name__)}, got {value!r}")
    return _jsonable(value)


def resolve_params(kind: str, given: dict[str, Any], where: str, sources: list[str], base: Path) -> dict[str, Any]:
    """The parameters of a `kind` step: the defaults, overridden by `given`, checked; relative paths from `base`."""
    defaults = step_defaults(kind)
    unknown = [k for k in given if k not in defaults]
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise CurationError(f"unknown parameter {where}.{unknown[0]}; valid parameters: {valid}")
    params = {}
    for key, default in defaults.items():
        nullable = kind in ENGINE_FILTERS or (kind, key) == ("pii", "remove_above")
        params[key] = _check_type(given[key], default, f"{where}.{key}", nullable) if key in given else default
    for key in ("model_path", "eval_dir", "paloma_dir"):
        if params.get(key) is not None:
            path = Path(os.path.expanduser(str(params[key])))
            params[key] = str(path if path.is_absolute() else base / path)
    _CHECKS.get(kind, lambda p, w, s: None)(params, where, sources)
    return params


def _check_language(params: dict[str, Any], where: str, sources: list[str]) -> None:
    if params["backend"] not in ("lingua", "fasttext"):
        raise CurationError(f"invalid value {params['backend']!r} for {where}.backend; valid choices: lingua, fasttext")
    if not 0 <= params["min_score"] <= 1:
        raise CurationError(f"{where}.min_score must be in [0, 1], got {params['min_score']}")
    if not params["languages"]:
        raise CurationError(f"{where}.languages must name at least one language (ISO 639-1 codes such as en)")
    if params["backend"] == "fasttext":
        path = params["model_path"]
        if path is None or not os.path.isfile(path):
            raise CurationError(f"{where}.model_path must name a fastText language-ID model file, got {path!r}")
        return
    for code in [*params["languages"], *(params["candidates"] or [])]:
        _lingua_language(code, where)


def _check_pii(params: dict[str, Any], where: str, sources: list[str]) -> None:
    above = params["remove_above"]
    if above is not None and (isinstance(above, bool) or not isinstance(above, int) or above < 0):
        raise CurationError(f"{where}.remove_above must be a count >= 0 or null (never remove), got {above!r}")


def _check_minhash(params: dict[str, Any], where: str, sources: list[str]) -> None:
    for key in ("n_grams", "num_buckets", "hashes_per_bucket"):
        if params[key] <= 0:
            raise CurationError(f"{where}.{key} must be positive, got {params[key]}")


def _check_paragraphs(params: dict[str, Any], where: str, sources: list[str]) -> None:
    if not 0 < params["false_positive_rate"] < 1:
        raise CurationError(f"{where}.false_positive_rate must be in (0, 1), got {params['false_positive_rate']}")
    expected = params["expected_paragraphs"]
    if expected is not None and (not isinstance(expected, int) or expected <= 0):
        raise CurationError(f"{where}.expected_paragraphs must be a positive integer or null (count them)")


def task_names(tasks: Any) -> list[str]:
    if tasks in (None, "", [], "none"):
        return []
    return tasks.split(",") if isinstance(tasks, str) else [str(t) for t in tasks]


def _check_decontaminate(params: dict[str, Any], where: str, sources: list[str]) -> None:
    """A decontaminate step needs evaluation data that exists: task rows in `eval_dir`, Paloma sets in `paloma_dir`."""
    if params["n_grams"] <= 0:
        raise CurationError(f"{where}.n_grams must be positive, got {params['n_grams']}")
    names = task_names(params["tasks"])
    try:
        resolve_tasks(names)
    except EvalError as e:
        raise CurationError(f"{where}.tasks: {e}") from None
    if names and params["eval_dir"] is None:
        raise CurationError(f"{where}.eval_dir must name the local data of tasks {','.join(names)} (or tasks: [])")
    if not names and params["paloma_dir"] is None:
        raise CurationError(f"{where} needs evaluation data: eval_dir (with tasks) or paloma_dir")
    for key in ("eval_dir", "paloma_dir"):
        if params[key] is not None and not os.path.isdir(params[key]):
            raise CurationError(f"{where}.{key} {params[key]} is not a directory")


def _check_mix(params: dict[str, Any], where: str, sources: list[str]) -> None:
    for name, weight in params["weights"].items():
        if name not in sources:
            raise CurationError(f"{where}.weights names {name!r}, which is not a source; sources: {', '.join(sources)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise CurationError(f"{where}.weights.{name} must be a finite number >= 0, got {weight!r}")


def _check_custom(params: dict[str, Any], where: str, sources: list[str]) -> None:
    target = params["callable"]
    if not isinstance(target, str) or ":" not in target:
        raise CurationError(f"{where}.callable must be 'module:ClassName' of a datatrove PipelineStep, got {target!r}")
    step_class = _import(target, where)
    if not (isinstance(step_class, type) and issubclass(step_class, PipelineStep)):
        raise CurationError(f"{where}.callable {target!r} is not a datatrove PipelineStep class")
    if not isinstance(params["params"], dict):
        raise CurationError(f"{where}.params must be a mapping of constructor arguments")


_CHECKS = {
    "language": _check_language,
    "pii": _check_pii,
    "dedup_minhash": _check_minhash,
    "dedup_paragraphs": _check_paragraphs,
    "decontaminate": _check_decontaminate,
    "mix": _check_mix,
    "custom": _check_custom,
}


def _import(target: str, where: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise CurationError(f"{where}.callable {target!r} cannot be imported ({e})") from None


def check_order(steps: list[Any]) -> None:
    """`mix` comes last: copies made before a dedup step would be deduplicated away."""
    kinds = [s.kind for s in steps]
    if "mix" in kinds and kinds.index("mix") != len(kinds) - 1:
        raise CurationError("mix must be the last step (its copies would be deduplicated by a later step)")
    if kinds.count("mix") > 1:
        raise CurationError("mix may appear once")


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------

_TOKENIZERS: dict[str, Any] = {}


def token_count(text: str, tokenizer: str) -> int:
    """Tokens of `text` with `tokenizer` plus the EOS that the token files add (the tokenizer is cached)."""
    if tokenizer not in _TOKENIZERS:
        _TOKENIZERS[tokenizer] = load_tokenizer(tokenizer)
    return len(_TOKENIZERS[tokenizer].encode(text)) + 1


def count_document(doc: Document, tokenizer: str | None) -> None:
    """Store the document's token count in its metadata (0 when tokens are not counted)."""
    doc.metadata["tokens"] = token_count(doc.text, tokenizer) if tokenizer else 0


def stat_key(label: str, source: str, metric: str) -> str:
    """The stats key `report.py` reads: `label|source|metric`."""
    return f"{label}|{source}|{metric}"


class Counted(PipelineStep):
    """Runs `inner` and counts, per source, what went in and what came out (see the module docstring)."""

    type = "📊 - COUNT"

    def __init__(self, inner: PipelineStep, label: str, tokenizer: str | None, changes_text: bool) -> None:
        self.name = label
        super().__init__()
        self.inner = inner
        self.label = label
        self.tokenizer = tokenizer
        self.changes_text = changes_text

    def _entering(self, data: DocumentsPipeline) -> Iterator[Document]:
        for doc in data:
            self._count(doc, "in")
            if self.changes_text:
                doc.metadata["_text_in"] = doc.text
            yield doc

    def _count(self, doc: Document, side: str) -> None:
        source = doc.metadata["source"]
        self.stat_update(stat_key(self.label, source, f"docs_{side}"))
        self.stat_update(stat_key(self.label, source, f"chars_{side}"), value=len(doc.text))
        self.stat_update(stat_key(self.label, source, f"tokens_{side}"), value=doc.metadata.get("tokens", 0))

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in self.inner.run(self._entering(data), rank, world_size):
            if self.changes_text:
                before = doc.metadata.pop("_text_in", doc.text)
                if doc.text != before:
                    if not doc.text.strip():
                        self.stat_update(stat_key(self.label, doc.metadata["source"], "emptied"))
                        continue
                    self.stat_update(stat_key(self.label, doc.metadata["source"], "changed"))
                    count_document(doc, self.tokenizer)
            self._count(doc, "out")
            yield doc
        for key, value in self.inner.stats.stats.items():
            if key.startswith(("dropped_", "masked_", "removed_")):
                self.stats[stat_key(self.label, "*", key)] += value


# --------------------------------------------------------------------------------------------------
# Our own steps
# --------------------------------------------------------------------------------------------------

_DETECTORS: dict[Any, Any] = {}


def _lingua_language(code: str, where: str) -> Any:
    try:
        from lingua import IsoCode639_1, Language
    except ImportError:
        raise CurationError("the language step needs lingua: pip install 'olmo_jax[curate]'") from None
    try:
        return Language.from_iso_code_639_1(IsoCode639_1.from_str(code))
    except (ValueError, AttributeError):
        raise CurationError(f"{where}: {code!r} is not an ISO 639-1 language code that lingua knows") from None


class LanguageIdFilter(BaseFilter):
    """Keeps a document when its score for one of `languages` is at least `min_score` (lingua, or fastText)."""

    name = "🌍 Language ID"

    def __init__(
        self,
        languages: list[str],
        min_score: float,
        backend: str,
        model_path: str | None,
        candidates: list[str] | None,
        max_chars: int,
        exclusion_writer: Any = None,
    ) -> None:
        super().__init__(exclusion_writer)
        self.languages = list(languages)
        self.min_score = min_score
        self.backend = backend
        self.model_path = model_path
        self.candidates = tuple(candidates) if candidates else None
        self.max_chars = max_chars

    def _lingua(self) -> Any:
        """One detector per process (its models take seconds to load), shared by every task it runs."""
        key = ("lingua", self.candidates)
        if key not in _DETECTORS:
            from lingua import LanguageDetectorBuilder

            if self.candidates:
                languages = [_lingua_language(c, "language.candidates") for c in self.candidates]
                builder = LanguageDetectorBuilder.from_languages(*languages)
            else:
                builder = LanguageDetectorBuilder.from_all_languages()
            _DETECTORS[key] = builder.build()
        return _DETECTORS[key]

    def _fasttext(self) -> Any:
        key = ("fasttext", self.model_path)
        if key not in _DETECTORS:
            try:
                from fasttext.FastText import _FastText
            except ImportError:
                raise CurationError("backend fasttext needs the fasttext package: pip install fasttext") from None
            _DETECTORS[key] = _FastText(self.model_path)
        return _DETECTORS[key]

    def scores(self, text: str) -> tuple[str, float, float]:
        """(most likely language, its score, the best score among `languages`)."""
        text = text[: self.max_chars]
        if self.backend == "fasttext":
            labels, probabilities = self._fasttext().predict(text.replace("\n", " "), k=-1)
            scores = {label.removeprefix("__label__"): float(p) for label, p in zip(labels, probabilities, strict=True)}
            best = max(scores, key=scores.get)
            return best, scores[best], max(scores.get(lang, 0.0) for lang in self.languages)
        values = self._lingua().compute_language_confidence_values(text)
        scores = {v.language.iso_code_639_1.name.lower(): v.value for v in values}
        best = values[0].language.iso_code_639_1.name.lower() if values else "unknown"
        return best, scores.get(best, 0.0), max(scores.get(lang, 0.0) for lang in self.languages)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        best, best_score, kept_score = self.scores(doc.text)
        doc.metadata["language"] = best
        doc.metadata["language_score"] = round(best_score, 4)
        return True if kept_score >= self.min_score else (False, "language")


class PiiMasker(BaseFilter):
    """Masks emails, phone numbers and IP addresses with Dolma's tokens; removes documents with too many."""

    name = "📞 PII (Dolma tokens)"

    def __init__(self, remove_above: int | None, only_public_ips: bool, exclusion_writer: Any = None) -> None:
        super().__init__(exclusion_writer)
        self.remove_above = remove_above
        self.formatter = PIIFormatter(
            email_replacement=EMAIL_TOKEN, ip_replacement=IP_TOKEN, only_remove_public_ips=only_public_ips
        )
        self.phones = PIIReplacer(PHONE_PATTERN, PHONE_TOKEN)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = self.phones.replace(self.formatter.format(doc.text))
        spans = {token: text.count(token) - doc.text.count(token) for token in (EMAIL_TOKEN, PHONE_TOKEN, IP_TOKEN)}
        total = sum(spans.values())
        if self.remove_above is not None and total > self.remove_above:
            return False, "pii_too_many"
        for token, count in spans.items():
            if count:
                self.stat_update(f"masked_{token.strip('|').lower()}", value=count)
        doc.text = text
        return True


def sample_fraction(seed: int, doc: Document) -> float:
    """A number in [0, 1) fixed by the document (source, id, file, line) and `seed`: which documents a fractional
    weight keeps does not depend on sharding or on the order documents arrive in."""
    m = doc.metadata
    key = f"{seed}\0{m['source']}\0{doc.id}\0{m['file']}\0{m['line']}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") / 2**64


class Mixer(PipelineStep):
    """Per-source weights, as `dolma mix` samples: weight 2.5 emits every document twice and a fixed half of them a
    third time; 0.3 keeps a fixed 30%; 0 drops the source. Copies are numbered in `metadata["copy"]`."""

    type = "🔀 - MIX"
    name = "🔀 Mix"

    def __init__(self, weights: dict[str, float], seed: int, exclusion_writer: Any = None) -> None:
        super().__init__()
        self.weights = dict(weights)
        self.seed = seed
        self.exclusion_writer = exclusion_writer

    def copies(self, doc: Document) -> int:
        weight = float(self.weights.get(doc.metadata["source"], 1.0))
        whole = math.floor(weight)
        return whole + (1 if sample_fraction(self.seed, doc) < weight - whole else 0)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        log = self.exclusion_writer
        with log if log is not None else _NoLog() as writer:
            for doc in data:
                copies = self.copies(doc)
                if copies == 0:
                    doc.metadata["filter_reason"] = "mix_sampled_out"
                    writer.write(doc, rank)
                    self.stat_update("dropped_mix_sampled_out")
                for copy in range(copies):
                    yield dataclasses.replace(doc, metadata={**doc.metadata, "copy": copy})


class _NoLog:
    def __enter__(self) -> _NoLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def write(self, doc: Document, rank: int) -> None:
        return None


def build_document_step(kind: str, params: dict[str, Any], exclusion_writer: Any) -> tuple[PipelineStep, bool]:
    """The datatrove step of a document-level `kind` and whether it changes text (rather than only dropping)."""
    if kind in ENGINE_FILTERS:
        pairs = ("top_n_grams", "dup_n_grams")  # datatrove wants ((n, fraction), ...)
        engine_params = {k: tuple(map(tuple, v)) if k in pairs else v for k, v in params.items()}
        step = ENGINE_FILTERS[kind](exclusion_writer=exclusion_writer, language=WORDS, **engine_params)
        return step, kind == "c4"  # C4 also removes lines
    if kind == "language":
        return LanguageIdFilter(exclusion_writer=exclusion_writer, **params), False
    if kind == "pii":
        return PiiMasker(exclusion_writer=exclusion_writer, **params), True
    if kind == "mix":
        return Mixer(exclusion_writer=exclusion_writer, **params), False
    if kind == "custom":
        step_class = _import(params["callable"], "custom")
        return step_class(**params["params"]), True
    raise CurationError(f"step {kind!r} is not a document-level step")
