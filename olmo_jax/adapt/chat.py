"""Chat templates: conversations as text, token ids and the mask of the tokens fine-tuning learns.

Two templates, by name, each kept twice: as the Jinja source transformers' `apply_chat_template` runs (written
into an exported `tokenizer_config.json`) and as the Python below, which also knows which characters belong
to assistant turns. Tests render both and compare.

- `olmo`: OLMo-1's instruct models (allenai/OLMo-7B-Instruct's tokenizer_config.json). The text starts with
  EOS; `<|user|>\\n{content}\\n` and `<|assistant|>\\n{content}{eos}\\n`; system messages are not rendered.
- `tulu`: Tulu-3's, used by OLMo-2's and OLMo-3's instruct models. The text starts with BOS (OLMo's
  tokenizers have none, so their EOS is written, as OLMo-2's instruct tokenizer does);
  `<|system|>\\n{content}\\n`, `<|user|>\\n{content}\\n`, `<|assistant|>\\n{content}{eos}` followed by
  `\\n` unless it is the last message.

Trained tokens (labels) are each assistant turn's content and the EOS after it: what the model must produce
once the prompt ends with `<|assistant|>\\n`. The role headers, user and system turns and the newline after
an EOS are context only. Token ids come from tokenizing the whole text at once, as `apply_chat_template`
does; a token is trained when it starts inside a trained span.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from olmo_jax.data.tokenizer_formats import Tokenizer
from olmo_jax.errors import DataError

ROLES = ("system", "user", "assistant")

# transformers renders these with jinja2 (trim_blocks=True, lstrip_blocks=True): a newline right after a
# {% ... %} tag is dropped, the one after a {{ ... }} expression kept.
JINJA_TEMPLATES = {
    "olmo": (
        "{{ eos_token }}{% for message in messages %}\n"
        "{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n"
        "{{ '<|assistant|>' }}\n"
        "{% endif %}\n"
        "{% endfor %}"
    ),
    "tulu": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
        "{% elif message['role'] == 'assistant' %}{% if not loop.last %}"
        "{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}"
        "{% else %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}{% endif %}"
        "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
        "{% endfor %}"
    ),
}
TEMPLATES = tuple(JINJA_TEMPLATES)


def check_template(name: str) -> str:
    """`name` if it is a known template, else a one-line error listing them."""
    if name not in JINJA_TEMPLATES:
        raise DataError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}")
    return name


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """The messages of one conversation, checked: a non-empty list of {"role", "content"} with known roles."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: expected a non-empty list of messages, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {i} is not an object with a string 'content'")
        if message.get("role") not in ROLES:
            raise DataError(
                f"{where}: message {i} has role {message.get('role')!r}; expected one of {', '.join(ROLES)}"
            )
    return messages


def render_pieces(
    messages: Sequence[dict[str, str]],
    template: str,
    eos: str,
    *,
    add_generation_prompt: bool = False,
    trained_turns: str = "all",
) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces; their concatenation is the template's text.
    `trained_turns`: "all" assistant turns (SFT) or the "last" message only (a DPO completion)."""
    check_template(template)
    pieces: list[tuple[str, bool]] = [(eos, False)]  # OLMo: EOS first; Tulu: BOS, which is EOS for OLMo's tokenizers
    last = len(messages) - 1
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "assistant":
            pieces += [("<|assistant|>\n", False), (content + eos, trained_turns == "all" or i == last)]
            if template == "olmo" or i != last:
                pieces.append(("\n", False))
        elif role == "user" or template == "tulu":
            pieces.append((f"<|{role}|>\n{content}\n", False))
    if add_generation_prompt:
        pieces.append(("<|assistant|>\n", False))
    return pieces


def render(messages: Sequence[dict[str, str]], template: str, eos: str, *, add_generation_prompt: bool = False) -> str:
    """The conversation as the template's text (what `apply_chat_template(..., tokenize=False)` returns)."""
    return "".join(
        text for text, _ in render_pieces(messages, template, eos, add_generation_prompt=add_generation_prompt)
    )


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[dict[str, str]],
    template: str,
    *,
    add_generation_prompt: bool = False,
    trained_turns: str = "all",
) -> tuple[np.ndarray, np.ndarray]:
    """(token ids int32 [n], trained bool [n]) of a conversation under `template` (see `render_pieces`)."""
    eos = tokenizer.token_text(tokenizer.eos_token_id)
    pieces = render_pieces(
        messages, template, eos, add_generation_prompt=add_generation_prompt, trained_turns=trained_turns
    )
    ids, starts = tokenizer.encode_with_offsets("".join(text for text, _ in pieces))
    # Trained character spans, then the tokens that start inside one.
    bounds = np.cumsum([0] + [len(text) for text, _ in pieces])
    piece_of_token = np.searchsorted(bounds, np.asarray(starts, dtype=np.int64), side="right") - 1
    trained_piece = np.array([trained for _, trained in pieces] + [False])
    return np.asarray(ids, dtype=np.int32), trained_piece[piece_of_token]
