"""Which tokenizer: `load_tokenizer(identifier)` turns a config's or a command line's tokenizer name into a
`Tokenizer` (see `olmo_jax.data.tokenizer_formats` for the interface and the two file formats).

An identifier is a path to a `tokenizer.json`-style file or a SentencePiece `.model`, the word "builtin" (the
built-in demo corpus's SentencePiece model, trained on first use), or a hub-style name such as
`allenai/gpt-neox-olmo-dolma-v1_5`, resolved to a local file `<owner>_<name>.json` in `$OLMO_JAX_TOKENIZERS_DIR`
or in `<cache>/tokenizers/` (the cache folder of `olmo_jax.data.builtin`); nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from olmo_jax.data.builtin import cache_root, ensure_builtin_tokenizer
from olmo_jax.data.tokenizer_formats import Tokenizer, tokenizer_from_file
from olmo_jax.errors import TokenizerError

TOKENIZERS_DIR_ENV = "OLMO_JAX_TOKENIZERS_DIR"


def tokenizer_search_dirs() -> list[Path]:
    """Folders searched for `owner_name.json` when a hub-style name is given, in order."""
    dirs = []
    if os.environ.get(TOKENIZERS_DIR_ENV):
        dirs.append(Path(os.environ[TOKENIZERS_DIR_ENV]).expanduser())
    dirs.append(cache_root() / "tokenizers")  # a place to drop OLMo's tokenizer files once
    return dirs


def resolve_tokenizer_path(identifier: str) -> str:
    """The local file behind `identifier` (a path, "builtin", or an `owner/name` resolved in the search dirs)."""
    if identifier == "builtin":
        return ensure_builtin_tokenizer()
    path = Path(identifier).expanduser()
    if path.is_file():
        return str(path)
    if path.exists():
        raise TokenizerError(f"tokenizer {identifier!r} is not a file")
    if "/" in identifier and not identifier.startswith((".", "/", "~")):
        file_name = identifier.replace("/", "_")
        names = (file_name, file_name + ".json", file_name + ".model")
        for folder in tokenizer_search_dirs():
            for name in names:
                if (folder / name).is_file():
                    return str(folder / name)
        searched = ", ".join(str(d) for d in tokenizer_search_dirs())
        raise TokenizerError(
            f"tokenizer {identifier!r} was not found as {file_name}.json in {searched}; nothing is downloaded: "
            f"pass a path to a tokenizer JSON or SentencePiece .model file, or set ${TOKENIZERS_DIR_ENV}"
        )
    raise TokenizerError(f"tokenizer file {identifier} does not exist")


def load_tokenizer(identifier: str) -> Tokenizer:
    """Load a tokenizer from a path, "builtin", or an `owner/name` found locally (see the module docstring)."""
    return tokenizer_from_file(resolve_tokenizer_path(identifier))
