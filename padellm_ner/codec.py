"""Text <-> token ids for the plan: one place that knows how prompts are tokenized.

Training and inference must tokenize identically: the prompt and each appended or
target piece are encoded separately and concatenated (no special tokens added), so the
forced ``{n}\\n<mention k>`` prefix at inference is the same ids the model was trained on.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

__all__ = ["PromptCodec"]


class PromptCodec:
    """Wraps an HF tokenizer with the few operations the plan and trainer need."""

    def __init__(self, tokenizer: Any, end_id: int) -> None:
        self.tokenizer = tokenizer
        self.end_id = int(end_id)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.end_id

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def strip_stop(self, ids: list[int]) -> list[int]:
        """Generated ids without the trailing stop token (end id or a newline id)."""
        if ids and (ids[-1] == self.end_id or ids[-1] in self.newline_ids):
            return ids[:-1]
        return ids

    @cached_property
    def newline_ids(self) -> frozenset[int]:
        """Every token whose text contains a newline: where a count ends."""
        vocab = self.tokenizer.get_vocab()
        ids = [i for i in vocab.values() if "\n" in self.tokenizer.decode([i])]
        return frozenset(ids)
