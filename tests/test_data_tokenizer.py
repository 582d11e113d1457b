"""Tokenizers: OLMo's HF files give their own special ids (the EOS trap), SentencePiece training is lossless."""

from __future__ import annotations

import pydoc_data.topics
from pathlib import Path

import pytest

from olmo_jax.data.tokenizer import TOKENIZERS_DIR_ENV, load_tokenizer
from olmo_jax.data.tokenizer_formats import SentencePieceTokenizer, train_sentencepiece
from olmo_jax.errors import TokenizerError

SHARED_TOKENIZERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers"
DOLMA = SHARED_TOKENIZERS / "allenai_gpt-neox-olmo-dolma-v1_5.json"
PII = SHARED_TOKENIZERS / "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"


@pytest.fixture
def shared_tokenizers(shared_data):
    """OLMo's tokenizer files in ../shared/data (skips when that folder is absent)."""
    return shared_data / "tokenizers"


def test_olmo_dolma_tokenizer_takes_eos_and_pad_from_the_file(shared_tokenizers):
    tok = load_tokenizer(str(DOLMA))
    assert (tok.vocab_size, tok.eos_token_id, tok.pad_token_id) == (50280, 50279, 1)
    assert tok.identity.startswith("hf:") and len(tok.identity) == 3 + 16


def test_the_pii_special_file_has_its_eos_at_0_not_50279(shared_tokenizers):
    # The trap: same vocabulary, ids 0 and 50279 swapped. Reading EOS from the file gets it right.
    tok = load_tokenizer(str(PII))
    assert tok.eos_token_id == 0
    assert tok.decode([50279]) == "|||IP_ADDRESS|||"


def test_encode_adds_no_special_tokens_and_decode_round_trips(shared_tokenizers):
    tok = load_tokenizer(str(DOLMA))
    text = "Hello world!\n\tIndented — ünïcode 🙂"
    ids = tok.encode(text)
    assert tok.eos_token_id not in ids
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "x"]) == [ids, tok.encode("x")]


def test_hub_names_resolve_to_local_files_and_otherwise_fail_clearly(shared_tokenizers, monkeypatch, tmp_path):
    monkeypatch.setenv(TOKENIZERS_DIR_ENV, str(shared_tokenizers))
    assert load_tokenizer("allenai/gpt-neox-olmo-dolma-v1_5").path == str(DOLMA)
    (tmp_path / "me_tok.json").write_bytes(DOLMA.read_bytes())
    monkeypatch.setenv(TOKENIZERS_DIR_ENV, str(tmp_path))
    assert load_tokenizer("me/tok").path == str(tmp_path / "me_tok.json")


def test_unknown_names_and_missing_files_are_clear_errors():
    with pytest.raises(TokenizerError, match="nothing is downloaded: pass a path"):
        load_tokenizer("nobody/no-such-tokenizer")
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer("/no/such/tokenizer.json")


@pytest.fixture(scope="module")
def small_sentencepiece(tmp_path_factory) -> str:
    texts = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)[:20]]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("sp") / "sp.model", vocab_size=600)


def test_trained_sentencepiece_has_the_tiny_presets_special_ids(small_sentencepiece):
    tok = load_tokenizer(small_sentencepiece)
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.vocab_size, tok.pad_token_id, tok.eos_token_id) == (600, 0, 2)
    assert tok.identity.startswith("sentencepiece:")


def test_trained_sentencepiece_is_lossless_on_code_and_unseen_characters(small_sentencepiece):
    tok = load_tokenizer(small_sentencepiece)
    text = "def f(x):\n    return x  # two  spaces\n\n\tTab, leading space, 日本語, emoji 🙂\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eos_token_id not in ids and 1 not in ids  # no EOS added, nothing unknown (byte fallback)


def test_training_is_deterministic(small_sentencepiece, tmp_path):
    texts = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)[:20]]
    again = train_sentencepiece(texts, tmp_path / "again.model", vocab_size=600)
    assert Path(again).read_bytes() == Path(small_sentencepiece).read_bytes()


def test_line_by_line_encoding_equals_sentencepieces_own_whole_text_encoding(small_sentencepiece):
    import sentencepiece

    reference = sentencepiece.SentencePieceProcessor(model_file=small_sentencepiece)
    texts = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)[20:40]]
    texts += ["\n", "\n\nstarts with blank lines", "ends with spaces  \n  ", ""]
    assert load_tokenizer(small_sentencepiece).encode_batch(texts) == reference.encode(texts)
