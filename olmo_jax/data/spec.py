"""`DataSpec`: the values the data pipeline takes from a run's config, and nothing else.

`olmo_jax.config.data_spec(config)` builds it from a `TrainConfig`, so that renaming a config field touches the
config and not the data package. It imports nothing, so the config module can build it without cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BatchSizeWarmup:
    """The 65B recipe: the global batch starts at `start_instances` and doubles every `double_every_tokens`."""

    start_instances: int
    double_every_tokens: int


@dataclass(frozen=True)
class DataSpec:
    """Which instances a run trains on, in which order and batches, and how the loader prepares them."""

    sequence_length: int  # tokens per instance
    global_batch_size: int  # instances per batch (the final size under batch-size warmup)
    seed: int  # the shuffle seed of the global order
    vocab_size: int  # the model's: token ids must stay below it
    eos_token_id: int  # the model's; a tokenizer with another EOS is refused
    paths: tuple[str, ...] = ()
    # {name: {"paths": [...], "weight": w}} or {name: [paths]}, as `DataConfig.sources`; empty: `paths`.
    sources: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # of the token files; None: uint16 when the vocabulary fits, else uint32
    drop_last: bool = True
    order: str = "olmo"  # `DataConfig.order`: whose epoch numbering seeds the shuffle
    batch_size_warmup: BatchSizeWarmup | None = None
    tokenizer: str | None = None  # identifier for `olmo_jax.data.tokenizer.load_tokenizer`
    builtin_corpus: bool = True  # use the built-in corpus when neither paths nor sources are given
    prefetch: int = 2  # host batches prepared ahead in the background (0: none)
    num_workers: int = 0  # threads preparing them (0 means 1)
    objective: str = "pretrain"  # sft / dpo: instances are rows of `chat_files` (`olmo_jax.adapt.data`)
    chat_files: tuple[str, ...] = ()
    chat_template: str = "tulu"
    packing: bool = True
