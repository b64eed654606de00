"""The rules a text to analyse follows, checked before any model or server is reached.

Why here, apart from the extractor: the CLI checks a sentence or a JSONL line before the
model loads (in milliseconds, not after start-up) and must not import torch to do so.
"""

from __future__ import annotations

from padellm_ner.errors import InvalidInputError

__all__ = ["check_text"]


def check_text(text: str) -> None:
    """``InvalidInputError`` unless ``text`` is a non-blank sentence a tokenizer can take."""
    if not text or not text.strip():
        raise InvalidInputError("text is empty; pass the sentence to analyse")
    if "\x00" in text:
        raise InvalidInputError("text contains a NUL byte; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # NOTE: lone surrogates, e.g. undecodable argv bytes
        raise InvalidInputError(
            f"text is not valid Unicode at character {exc.start} (a lone surrogate; "
            "bytes that are not UTF-8?); pass UTF-8 text"
        ) from None
