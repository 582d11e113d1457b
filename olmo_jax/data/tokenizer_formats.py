"""What a tokenizer is: the `Tokenizer` interface over its two file formats, and SentencePiece training.

- `HFTokenizer`: a Hugging Face `tokenizers` JSON file (OLMo's GPT-NeoX-based ones);
- `SentencePieceTokenizer`: a SentencePiece `.model`;
- `tokenizer_from_file(path)` opens either; `train_sentencepiece` writes a new SentencePiece model.

Names such as "builtin" or `allenai/gpt-neox-olmo-dolma-v1_5` are resolved to files by
`olmo_jax.data.tokenizer.load_tokenizer`, which most callers use.

Special ids are read from the file, never assumed: OLMo's two GPT-NeoX files share a vocabulary but swap ids 0 and
50279, so `<|endoftext|>` is 50279 in `gpt-neox-olmo-dolma-v1_5` and 0 in `eleuther-ai-gpt-neox-20b-pii-special`.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from olmo_jax import atomic
from olmo_jax.errors import TokenizerError

# Special tokens looked up by content, most specific first.
_EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
_PAD_CANDIDATES = ("<|padding|>", "<|pad|>", "<pad>", "[PAD]")


class Tokenizer(abc.ABC):
    """Text ↔ token ids. `encode` never adds special tokens; documents get their EOS from the data pipeline."""

    kind: str
    path: str
    vocab_size: int
    eos_token_id: int
    pad_token_id: int | None

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""

    @abc.abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts (parallel inside the tokenizer library where it can be)."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special tokens are kept where the library can render them."""

    @abc.abstractmethod
    def token_text(self, token_id: int) -> str:
        """The written form of one token, e.g. "<|endoftext|>" for OLMo's EOS (what a chat template writes)."""

    @abc.abstractmethod
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """(ids, the character offset in `text` where each token starts) for text that may contain special
        tokens written out (EOS, PAD), which become their ids as transformers' tokenizers split them."""

    @functools.cached_property
    def identity(self) -> str:
        """`<kind>:<first 16 hex digits of the file's sha256>`: names the exact tokenizer in manifests."""
        return f"{self.kind}:{file_sha256(self.path)[:16]}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, vocab_size={self.vocab_size}, "
            f"eos_token_id={self.eos_token_id}, pad_token_id={self.pad_token_id})"
        )


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` JSON file (byte-level BPE for OLMo)."""

    kind = "hf"

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        try:
            self._tok = RustTokenizer.from_file(path)
        except Exception as e:  # the library raises plain Exceptions with long messages
            raise TokenizerError(f"tokenizer file {path} is not a valid tokenizers JSON file: {e}") from None
        self.path = path
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eos = _first_known_id(self._tok.token_to_id, _EOS_CANDIDATES)
        if eos is None:
            raise TokenizerError(f"tokenizer file {path} has no EOS token (looked for {', '.join(_EOS_CANDIDATES)})")
        self.eos_token_id = eos
        self.pad_token_id = _first_known_id(self._tok.token_to_id, _PAD_CANDIDATES)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The fast variant skips character offsets, which we never use (~40% quicker).
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        encoding = self._tok.encode(text, add_special_tokens=False)  # added tokens are split out in any case
        return encoding.ids, [start for start, _ in encoding.offsets]


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece `.model` file. `num_threads` bounds `encode_batch`'s threads (default: all cores)."""

    kind = "sentencepiece"

    def __init__(self, path: str) -> None:
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"tokenizer file {path} is not a valid SentencePiece model: {e}") from None
        self.path = path
        self.num_threads = os.cpu_count() or 1
        self.vocab_size = self._sp.get_piece_size()
        eos = self._sp.eos_id()
        if eos < 0:
            raise TokenizerError(f"SentencePiece model {path} has no EOS piece (trained with eos_id=-1)")
        self.eos_token_id = eos
        pad = self._sp.pad_id()
        self.pad_token_id = pad if pad >= 0 else None
        self._newline_id = self._atomic_newline_id()

    def _atomic_newline_id(self) -> int | None:
        """The id of "\\n" when it is a user-defined piece and the model neither adds a prefix space nor trims
        whitespace (as `train_sentencepiece` makes models). Then no piece spans a line break and lines can be
        encoded separately with the same result, several times faster than one long "sentence"."""
        try:
            from sentencepiece import sentencepiece_model_pb2
        except ImportError:  # protobuf missing: encode whole texts, which is just slower
            return None
        model = sentencepiece_model_pb2.ModelProto()
        model.ParseFromString(self._sp.serialized_model_proto())
        newline = self._sp.piece_to_id("\n")
        piece = model.pieces[newline]
        normalizer = model.normalizer_spec
        if piece.piece != "\n" or piece.type != piece.USER_DEFINED:
            return None
        return None if normalizer.add_dummy_prefix or normalizer.remove_extra_whitespaces else newline

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._newline_id is None:
            return self._sp.encode(list(texts), num_threads=self.num_threads)
        lines_per_text = [text.split("\n") for text in texts]
        encoded = iter(
            self._sp.encode([line for lines in lines_per_text for line in lines], num_threads=self.num_threads)
        )
        result = []
        for lines in lines_per_text:
            ids = list(next(encoded))
            for _ in range(len(lines) - 1):
                ids.append(self._newline_id)
                ids.extend(next(encoded))
            result.append(ids)
        return result

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_text(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        # SentencePiece reads "</s>" as four characters; transformers' tokenizer made from the same model
        # splits the special tokens out first and encodes the text between them on its own: so do we.
        specials = {self._sp.id_to_piece(i): i for i in (self.eos_token_id, self.pad_token_id) if i is not None}
        pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
        ids: list[int] = []
        starts: list[int] = []
        at = 0
        for part in re.split(pattern, text):
            if part in specials:
                ids.append(specials[part])
                starts.append(at)
            elif part:
                encoded = part.encode()
                char_at_byte = np.cumsum([0] + [len(c.encode()) for c in part])  # byte offset of each char
                for piece in self._sp.encode(part, return_type="proto").pieces:
                    ids.append(piece.id)
                    starts.append(at + int(np.searchsorted(char_at_byte, min(piece.begin, len(encoded)), "right")) - 1)
            at += len(part)
        return ids, starts


def _first_known_id(token_to_id, candidates: Sequence[str]) -> int | None:
    for token in candidates:
        token_id = token_to_id(token)
        if token_id is not None:
            return token_id
    return None


@functools.lru_cache(maxsize=64)
def _file_sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes (cached per path, size and modification time)."""
    stat = os.stat(path)
    return _file_sha256_cached(path, stat.st_size, stat.st_mtime_ns)


def tokenizer_from_file(path: str) -> Tokenizer:
    """Open the tokenizer file `path`: `.model` is SentencePiece, `.json` a tokenizers file, else sniffed."""
    if path.endswith(".model"):
        return SentencePieceTokenizer(path)
    if path.endswith(".json"):
        return HFTokenizer(path)
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    # A SentencePiece model is a protobuf; a tokenizers file is JSON. Sniff when the suffix says neither.
    return HFTokenizer(path) if head.startswith(b"{") else SentencePieceTokenizer(path)


def train_sentencepiece(
    texts: Iterable[str],
    output_path: str | os.PathLike,
    *,
    vocab_size: int = 8000,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    sample_every: int = 1,
) -> str:
    """Train a SentencePiece model on the lines of `texts` and write it atomically to `output_path`.

    Ids follow the tiny preset: pad 0, unk 1, eos 2, no BOS. The model is lossless on any text: no
    normalisation, whitespace kept as is (indentation included), newline a piece of its own, and bytes for
    characters outside the vocabulary. `sample_every=k` trains on every k-th non-empty line (deterministic).
    """
    import sentencepiece as spm

    if vocab_size < 300:
        raise TokenizerError(f"vocab size {vocab_size} is too small: 256 byte pieces and 4 specials need room")
    if sample_every < 1:
        raise TokenizerError(f"sample_every must be >= 1, got {sample_every}")
    lines = (line for text in texts for line in text.split("\n") if line.strip())
    sampled = (line for i, line in enumerate(lines) if i % sample_every == 0)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sampled,
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=0,
            unk_id=1,
            eos_id=2,
            bos_id=-1,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            user_defined_symbols=["\n"],
            character_coverage=character_coverage,
            max_sentence_length=1 << 16,
            shuffle_input_sentence=False,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(f"SentencePiece training failed: {e}") from None
    output = Path(output_path)
    atomic.write_bytes(output, model.getvalue())
    return str(output)
