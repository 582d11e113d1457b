"""Whole checkpoints: an olmo_jax run directory ↔ a Hugging Face OLMo (-1, -2 or -3) directory.

`to_hf` and `from_hf` write into a temporary sibling of the output directory and rename it at the end,
so a failed conversion leaves nothing at the output path. `python -m olmo_jax.convert --help` is the CLI.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from olmo_jax import atomic
from olmo_jax.checkpoint import (
    host_device_arrays,
    params_metadata,
    read_config,
    resolve_checkpoint,
    restore_params,
    write_params_checkpoint,
)
from olmo_jax.config import TokenizerConfig, TrainConfig
from olmo_jax.convert.hf import check_param_shapes, export_hf, hf_config_dict, import_hf
from olmo_jax.convert.tokenizer_files import (
    find_hf_tokenizer,
    resolve_tokenizer_file,
    tokenizer_identity,
    tokenizer_vocab_size,
    write_hf_tokenizer,
)
from olmo_jax.errors import ConversionError

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    del message


def to_hf(
    src: str | Path,
    out: str | Path,
    *,
    dtype: str | None = None,
    max_shard_size: int = 5 * 10**9,
    log: Log = _quiet,
) -> list[str]:
    """Convert an olmo_jax checkpoint (run dir → latest step) into an HF OLMo directory `out`.

    `dtype` None keeps the checkpoint's parameter dtype. Copies the run's tokenizer when it names a file, with
    the chat template when the run fine-tuned (objective sft or dpo).
    Returns the names of the files written.
    """
    out = Path(out)
    if out.exists():
        raise ConversionError(f"output {out} already exists; remove it or choose another path")
    step_dir = resolve_checkpoint(src)
    train_config = read_config(step_dir)
    config = train_config.model
    dtype = dtype or config.param_dtype
    # Fail on an unrepresentable config or mismatched shapes before reading any weights.
    hf_config_dict(config, dtype)
    check_param_shapes({name: s.shape for name, s in params_metadata(step_dir).items()}, config)
    tokenizer_file = _run_tokenizer_file(train_config.tokenizer.identifier, log)
    log(f"reading {step_dir}")
    params = restore_params(step_dir)
    with atomic.atomic_directory(out) as tmp:
        files = export_hf(params, config, tmp, dtype=dtype, max_shard_size=max_shard_size, progress=log)
        if tokenizer_file is not None:
            # A fine-tuned model carries the chat template it was trained with, for `apply_chat_template`.
            template = train_config.adapt.chat_template if train_config.objective != "pretrain" else None
            files += write_hf_tokenizer(tokenizer_file, tmp, config, chat_template=template)
    log(f"wrote {out} ({len(files)} files)")
    return files


def _run_tokenizer_file(identifier: str | None, log: Log) -> Path | None:
    """The run's tokenizer file, or None (with a note) when the run names none or it cannot be found."""
    if not identifier:
        log("the run names no tokenizer; none copied")
        return None
    try:
        return resolve_tokenizer_file(identifier)
    except (ImportError, ValueError, OSError) as e:
        log(f"tokenizer {identifier!r} not copied: {e}")
        return None


def from_hf(hf_dir: str | Path, out: str | Path, *, dtype: str | None = None, log: Log = _quiet) -> Path:
    """Convert an HF OLMo directory into an olmo_jax run directory `out` holding step 0; returns the step dir.

    `dtype` None keeps the stored precision (bf16 stays bf16, anything else becomes fp32). A tokenizer
    file in `hf_dir` is copied into `out` and named in the run's config.
    """
    hf_dir, out = Path(hf_dir), Path(out)
    if out.exists():
        raise ConversionError(f"output {out} already exists; remove it or choose another path")
    tokenizer_file = find_hf_tokenizer(hf_dir) if hf_dir.is_dir() else None
    vocab_size = tokenizer_vocab_size(tokenizer_file) if tokenizer_file else None
    config, params = import_hf(hf_dir, dtype=dtype, vocab_size=vocab_size, progress=log)
    with atomic.atomic_directory(out) as tmp:
        identifier = identity = None
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / tokenizer_file.name)
            identifier = str(out.absolute() / tokenizer_file.name)
            identity = tokenizer_identity(tmp / tokenizer_file.name)
        train_config = TrainConfig(
            run_name=hf_dir.absolute().name, model=config, tokenizer=TokenizerConfig(identifier=identifier)
        )
        log(f"writing {out} (step 0)")
        step_dir = write_params_checkpoint(
            tmp, 0, host_device_arrays(params), train_config, tokenizer_identity=identity
        )
    return out / step_dir.relative_to(tmp)
