"""Decontamination: remove training documents that share an n-gram with evaluation data.

The evaluation data is read exactly as `olmo-jax eval` reads it: downstream task rows from `eval_dir`
(`olmo_jax.eval.sources`, either of its layouts), each turned into its scored text by the task's own template
(`olmo_jax.eval.tasks`: the context followed by the correct continuation, as the model sees it), and Paloma-layout
text sets from `paloma_dir` (`<source>/<split>/<domain>.jsonl.gz`, `olmo_jax.eval.perplexity`).

Every 13-gram of that text (after datatrove's normalisation: lowercase, no punctuation, numbers folded, words split
on whitespace) is hashed into one index file per task or Paloma domain, in the format datatrove's
`NGramsDecontFilter` reads; the filter then removes each training document with any indexed n-gram and records
which task and n-gram matched (listed in the report). This is GPT-3's 13-gram rule, and it catches every document
that contains one of Paloma's paragraphs of 13 or more words, which is what Dolma's Paloma decontamination removes.
An evaluation text shorter than n words has no n-gram and cannot be matched; the report counts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.text import ngrams, simplify_text

from olmo_jax import atomic
from olmo_jax.curate.shards import RemovalLog
from olmo_jax.curate.steps import WORDS, task_names
from olmo_jax.errors import CurationError, EvalError
from olmo_jax.eval.perplexity import find_text_sets, read_texts
from olmo_jax.eval.sources import load_rows
from olmo_jax.eval.tasks import resolve_tasks

INDEX_SUFFIX = ".index.hashes"


def evaluation_texts(params: dict[str, Any]) -> dict[str, list[str]]:
    """Index name -> texts: `task:<name>` (each row's context + correct continuation), `paloma:<source>:<domain>`."""
    texts: dict[str, list[str]] = {}
    try:
        for task in resolve_tasks(task_names(params["tasks"])):
            questions = [task.build(row) for row in load_rows(task, params["eval_dir"])]
            texts[f"task:{task.name}"] = [
                q.candidates[q.label].context + q.candidates[q.label].continuation for q in questions
            ]
        if params["paloma_dir"] is not None:
            for text_set in find_text_sets(params["paloma_dir"], params["paloma_split"]):
                texts[f"paloma:{text_set.source}:{text_set.domain}"] = read_texts(text_set.path)
    except (EvalError, KeyError, TypeError, ValueError) as e:
        raise CurationError(f"decontaminate: the evaluation data cannot be read ({e})") from None
    return texts


def ngram_hashes(text: str, config: NGramsDecontConfig) -> list[int]:
    """The hashes `NGramsDecontFilter` computes for the n-grams of a training document, for `text`."""
    hash_func = create_hash_func(config.hash_config)
    words = WORDS.word_tokenize(simplify_text(text, config.norm_config))
    return [hash_func(" ".join(gram)) for gram in ngrams(words, config.n_grams)]


def build_index(params: dict[str, Any], folder: Path) -> dict[str, dict[str, int]]:
    """Write one datatrove index file per evaluation set into `folder` (atomically); returns what each holds."""
    config = NGramsDecontConfig(n_grams=params["n_grams"])
    summary: dict[str, dict[str, int]] = {}
    with atomic.atomic_directory(folder) as tmp:
        for name, texts in evaluation_texts(params).items():
            hashes: set[int] = set()
            short = 0
            for text in texts:
                grams = ngram_hashes(text, config)
                short += not grams
                hashes.update(grams)
            array = np.array(sorted(hashes), dtype=config.hash_config.np_descr)
            array.tofile(tmp / f"{name}{INDEX_SUFFIX}")
            summary[name] = {"texts": len(texts), "too_short": short, "ngrams": len(hashes)}
        atomic.write_json(tmp / "summary.json", summary)
    return summary


def decontamination_filter(params: dict[str, Any], index: Path, log: RemovalLog) -> NGramsDecontFilter:
    config = NGramsDecontConfig(n_grams=params["n_grams"])
    return NGramsDecontFilter(index_folder=str(index), config=config, exclusion_writer=log, language=WORDS)
