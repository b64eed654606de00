"""Text <-> token ids for the plan: one place that knows how prompts are tokenized.

Training and inference must tokenize identically: the prompt (after the tokenizer's own
leading ``<bos>``, if it has one) and each appended or target piece are encoded
separately and concatenated (no other special tokens added), so the
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
        """Ids of ``text`` as plain text: a ``<|im_end|>`` typed by a user stays characters.

        Why: prompts and targets hold no special tokens (the end id is appended as an id),
        so a special-token string in a sentence or a label must not become a control token
        (it would end the prompt, or inject one).
        """
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt's ids: the tokenizer's leading special tokens, then ``encode(text)``.

        Gemma needs its ``<bos>`` first (it degrades badly without it); SmolLM2 adds
        nothing, so its prompts are the same ids as ``encode``.
        """
        return [*self.prompt_head, *self.encode(text)]

    @cached_property
    def prompt_head(self) -> tuple[int, ...]:
        """Special ids the tokenizer puts before a text (a ``<bos>``), never after it."""
        plain = self.encode("a")
        full = list(self.tokenizer("a", add_special_tokens=True, split_special_tokens=True)["input_ids"])
        at = next((i for i in range(len(full)) if full[i : i + len(plain)] == plain), 0)
        return tuple(full[:at])

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
