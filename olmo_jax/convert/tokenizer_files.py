"""Tokenizer files next to converted weights, in the forms `transformers.AutoTokenizer` loads.

- An HF `tokenizers` JSON file becomes `tokenizer.json` plus a `tokenizer_config.json`.
- A SentencePiece model becomes `tokenizer.model` plus a `tokenizer_config.json`; transformers 5 builds
  its fast tokenizer from the SentencePiece model when loading (the `sentencepiece` package is needed).
Both configs name the EOS and PAD tokens by their strings, looked up from the model config's ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from olmo_jax.adapt.chat import JINJA_TEMPLATES
from olmo_jax.config import ModelConfig
from olmo_jax.data.tokenizer import resolve_tokenizer_path
from olmo_jax.data.tokenizer_formats import tokenizer_from_file
from olmo_jax.errors import ConversionError

HF_JSON_NAME = "tokenizer.json"
SENTENCEPIECE_NAME = "tokenizer.model"


def find_hf_tokenizer(hf_dir: Path) -> Path | None:
    """The tokenizer file of an HF model directory (`tokenizer.json`, else `tokenizer.model`), if any."""
    for name in (HF_JSON_NAME, SENTENCEPIECE_NAME):
        if (hf_dir / name).is_file():
            return hf_dir / name
    return None


def _is_sentencepiece(path: Path) -> bool:
    """SentencePiece models are binary protobufs; tokenizers files are JSON (judged by content if unnamed)."""
    if path.suffix in (".model", ".json"):
        return path.suffix == ".model"
    with open(path, "rb") as f:
        return not f.read(64).lstrip().startswith(b"{")


def token_strings(path: Path, ids: list[int]) -> list[str | None]:
    """The token strings of `ids` in the tokenizer file `path` (None where an id is out of range)."""
    try:
        if _is_sentencepiece(path):
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
            return [processor.id_to_piece(i) if 0 <= i < processor.get_piece_size() else None for i in ids]
        import tokenizers

        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # both libraries raise bare Exceptions (or RuntimeError) for unreadable files
        raise ConversionError(f"tokenizer file {path} cannot be read: {e}") from None
    return [tokenizer.id_to_token(i) for i in ids]


def tokenizer_vocab_size(path: Path) -> int:
    """Number of tokens (added tokens included) in the tokenizer file `path`."""
    if _is_sentencepiece(path):
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    import tokenizers

    return tokenizers.Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)


def resolve_tokenizer_file(identifier: str | None) -> Path | None:
    """The file behind a config's `tokenizer.identifier`: a path as is, else what the data package resolves
    it to (e.g. "builtin" or a known `owner/name`). None when there is no identifier."""
    if not identifier:
        return None
    if Path(identifier).is_file():
        return Path(identifier)
    return Path(resolve_tokenizer_path(identifier))


def tokenizer_identity(path: Path) -> str:
    """The data package's identity string for a tokenizer file (kind + hash), as manifests and checkpoints hold it."""
    return tokenizer_from_file(str(path)).identity


def write_hf_tokenizer(
    source: Path, out_dir: Path, config: ModelConfig, *, chat_template: str | None = None
) -> list[str]:
    """Copy the tokenizer file `source` into `out_dir` for AutoTokenizer, with `chat_template` (a name in
    `olmo_jax.adapt.chat`) as its Jinja source when given; returns the names written."""
    name = SENTENCEPIECE_NAME if _is_sentencepiece(source) else HF_JSON_NAME
    shutil.copyfile(source, out_dir / name)
    eos, pad = token_strings(source, [config.eos_token_id, config.pad_token_id])
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": eos,
        "pad_token": pad,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": config.max_sequence_length,
    }
    if chat_template is not None:
        tokenizer_config["chat_template"] = JINJA_TEMPLATES[chat_template]
        if chat_template == "tulu":  # the template opens with BOS; OLMo's tokenizers use their EOS (as OLMo-2's)
            tokenizer_config["bos_token"] = eos
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return [name, "tokenizer_config.json"]
