"""Fine-tuning data as fixed-length instances: chat conversations (SFT) and preference pairs (DPO).

Both read JSON lines once, tokenize with a chat template (`olmo_jax.adapt.chat`) and lay the result out as
rows of `seq_len` tokens that the pretraining machinery then shuffles, batches, fingerprints and resumes
exactly as token files (`olmo_jax.data.pipeline`): an instance is a row, and a row has extra fields.

- SFT (`ConversationSource`): with packing, conversations are placed in file order into a row until the next
  one does not fit (next fit), each with its own segment id (1, 2, ...; 0 is padding), so attention never
  crosses a conversation and RoPE restarts at each (`olmo_jax.model.Packing`). Without packing, one
  conversation per row. A conversation longer than `seq_len` is cut at `seq_len` (as Open-Instruct truncates);
  one with no trained token left is skipped and counted.
- DPO (`PreferenceSource`): one pair per row, the prompt + chosen completion as segment 1 and the prompt +
  rejected completion as segment 2; only the final assistant turn is trained (scored). A pair that does not
  fit in one row is skipped and counted. `reference_logps` [N, 2] (the reference model's summed log-probs of
  chosen and rejected) is attached once computed (`olmo_jax.adapt.dpo.reference_logps`).

Fields per row: `label_mask` (int32 [T]: 1 where the token is trained, i.e. scored as the label of the
position before it), `segment_ids` (int32 [T]) and, for DPO, `reference_logps` (float32 [2]).
Preference rows come in two layouts: {"prompt", "chosen", "rejected"} strings (the prompt becomes a user
turn, the completions assistant turns), or "chosen"/"rejected" as whole conversations that share every
message but the last, which is the assistant's.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from olmo_jax.adapt.chat import check_messages, check_template, encode_chat
from olmo_jax.adapt.demo import resolve_train_file
from olmo_jax.data.tokenizer_formats import Tokenizer
from olmo_jax.errors import DataError


def _records(paths: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) for every JSON line of `paths`; `where` is "file:line" for error messages."""
    if not paths:
        raise DataError("no fine-tuning data: set adapt.train_files to JSON-lines files")
    for path in map(resolve_train_file, paths):
        if not Path(path).is_file():
            raise DataError(f"fine-tuning data file {path} does not exist")
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected a JSON object")
                yield where, record


def _identity(kind: str, paths: Sequence[str], tokenizer: Tokenizer, template: str, seq_len: int, packing: bool) -> str:
    digest = hashlib.sha256(f"{kind}|{tokenizer.identity}|{template}|{seq_len}|{packing}".encode())
    for path in map(resolve_train_file, paths):
        stat = Path(path).stat()
        digest.update(f"|{Path(path).name}:{stat.st_size}".encode())
    return digest.hexdigest()[:16]


class _Progress:
    """One line on stderr every few seconds while the data is tokenized."""

    def __init__(self, what: str) -> None:
        self.what, self.count, self.last = what, 0, time.monotonic()

    def tick(self) -> None:
        self.count += 1
        if time.monotonic() - self.last > 5:
            print(f"olmo_jax: {self.what}: {self.count:,} tokenized", file=sys.stderr, flush=True)
            self.last = time.monotonic()


class _RowSource:
    """Instances laid out as rows of three int32 arrays [N, T] (the `InstanceSource` interface)."""

    files: tuple = ()  # no token files: `check_tokenizer` has no manifest to read
    seq_len: int
    identity: str
    tokens: np.ndarray
    label_mask: np.ndarray
    segment_ids: np.ndarray
    skipped: int

    def __len__(self) -> int:
        return len(self.tokens)

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.tokens[np.asarray(indices, dtype=np.int64)]

    def row_fields(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The rows' label masks and segment ids."""
        rows = np.asarray(indices, dtype=np.int64)
        return {"label_mask": self.label_mask[rows], "segment_ids": self.segment_ids[rows]}

    def read_fields(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Every field the train step reads besides the tokens."""
        return self.row_fields(indices)

    @property
    def efficiency(self) -> float:
        """Fraction of the rows' tokens that are not padding."""
        return float((self.segment_ids > 0).mean())

    def _lay_out(self, rows: list[list[tuple[np.ndarray, np.ndarray]]], pad_id: int) -> None:
        n, t = len(rows), self.seq_len
        if n == 0:
            raise DataError("the fine-tuning data has no usable example (every one was skipped)")
        self.tokens = np.full((n, t), pad_id, np.int32)
        self.label_mask = np.zeros((n, t), np.int32)
        self.segment_ids = np.zeros((n, t), np.int32)
        for r, parts in enumerate(rows):
            at = 0
            for segment, (ids, trained) in enumerate(parts, 1):
                self.tokens[r, at : at + len(ids)] = ids
                self.label_mask[r, at : at + len(ids)] = trained
                self.segment_ids[r, at : at + len(ids)] = segment
                at += len(ids)


class ConversationSource(_RowSource):
    """SFT conversations (see the module docstring)."""

    def __init__(
        self, paths: Sequence[str], tokenizer: Tokenizer, template: str, seq_len: int, *, packing: bool = True
    ) -> None:
        check_template(template)
        self.seq_len, self.skipped, self.conversations = seq_len, 0, 0
        progress = _Progress("SFT conversations")
        rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
        used = seq_len  # tokens in the last row; a full one makes the first conversation open a row
        for where, record in _records(paths):
            messages = check_messages(record.get("messages"), where + ": 'messages'")
            if not any(m["role"] == "assistant" for m in messages):
                raise DataError(f"{where}: the conversation has no assistant turn, so nothing to train on")
            ids, trained = encode_chat(tokenizer, messages, template)
            ids, trained = ids[:seq_len], trained[:seq_len]
            progress.tick()
            if not trained[1:].any():  # the first token is never a label
                self.skipped += 1
                continue
            self.conversations += 1
            if not packing or used + len(ids) > seq_len:
                rows.append([])
                used = 0
            rows[-1].append((ids, trained))
            used += len(ids)
        self._lay_out(rows, tokenizer.pad_token_id or 0)
        self.identity = _identity("sft", paths, tokenizer, template, seq_len, packing)


def preference_messages(record: dict[str, Any], where: str) -> tuple[list[dict], list[dict]]:
    """(chosen, rejected) as whole conversations ending in the assistant's completion."""
    for key in ("chosen", "rejected"):
        if key not in record:
            raise DataError(f"{where}: a preference row needs 'chosen' and 'rejected'; {key!r} is missing")
    if isinstance(record["chosen"], str) and isinstance(record["rejected"], str):
        if not isinstance(record.get("prompt"), str):
            raise DataError(f"{where}: 'chosen' and 'rejected' are strings, so a string 'prompt' is needed")
        prompt = [{"role": "user", "content": record["prompt"]}]
        return tuple(prompt + [{"role": "assistant", "content": record[k]}] for k in ("chosen", "rejected"))
    chosen = check_messages(record["chosen"], where + ": 'chosen'")
    rejected = check_messages(record["rejected"], where + ": 'rejected'")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise DataError(f"{where}: 'chosen' and 'rejected' must end with the assistant's turn")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{where}: 'chosen' and 'rejected' must share every message but the last")
    return chosen, rejected


class PreferenceSource(_RowSource):
    """DPO preference pairs (see the module docstring)."""

    def __init__(self, paths: Sequence[str], tokenizer: Tokenizer, template: str, seq_len: int) -> None:
        check_template(template)
        self.seq_len, self.skipped = seq_len, 0
        progress = _Progress("preference pairs")
        rows = []
        for where, record in _records(paths):
            pair = []
            for messages in preference_messages(record, where):
                ids, trained = encode_chat(tokenizer, messages, template, trained_turns="last")
                pair.append((ids, trained))
            progress.tick()
            if sum(len(ids) for ids, _ in pair) > seq_len:
                self.skipped += 1
                continue
            rows.append(pair)
        self._lay_out(rows, tokenizer.pad_token_id or 0)
        self.identity = _identity("dpo", paths, tokenizer, template, seq_len, True)
        self.reference_logps: np.ndarray | None = None

    def read_fields(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        fields = self.row_fields(indices)
        if self.reference_logps is None:
            raise RuntimeError("the reference log-probs must be attached before batches are read")
        fields["reference_logps"] = self.reference_logps[np.asarray(indices, dtype=np.int64)]
        return fields
