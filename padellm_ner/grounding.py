"""Map predicted mention strings back to character offsets in the source text.

PaDeLLM predicts strings, not positions. The k-th mention of a label is mapped to its
occurrence in the text after the (k-1)-th one's, preferring whole-word matches, so
repeated strings ("Korea ... Korea") get distinct offsets. A string that does not occur
is kept without offsets and flagged (``Entity.grounded`` is False), never guessed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["find_occurrences", "ground_mentions"]


def _is_mark(ch: str) -> bool:
    """A combining mark: part of the character before it (``e`` + U+0301 is one letter)."""
    return unicodedata.category(ch).startswith("M")


def _is_word_char(ch: str) -> bool:
    # NOTE: letters and digits of any script (``Köln``, ``Москва``) and combining marks,
    # but not wide CJK characters: Chinese and Japanese have no spaces, so a mention next
    # to another ideograph is still a whole word there.
    if _is_mark(ch):
        return True
    return ch.isalnum() and unicodedata.east_asian_width(ch) not in ("W", "F")


def find_occurrences(text: str, mention: str) -> list[tuple[int, int]]:
    """All (start, end) occurrences of ``mention`` in ``text``, whole-word ones first."""
    if not mention:
        return []
    whole: list[tuple[int, int]] = []
    partial: list[tuple[int, int]] = []
    for start, end in _matches(text, mention):
        left_ok = start == 0 or not (_is_word_char(text[start - 1]) and _is_word_char(mention[0]))
        right_ok = end == len(text) or not (
            _is_word_char(text[end]) and (_is_word_char(mention[-1]) or _is_mark(text[end]))
        )
        (whole if left_ok and right_ok else partial).append((start, end))
    return whole + partial


def _matches(text: str, mention: str) -> list[tuple[int, int]]:
    """Where ``mention`` occurs exactly; failing that, with any whitespace between its
    words (the model writes "New York" for the text's "New\u00a0York" or "New\tYork")."""
    spans = []
    start = text.find(mention)
    while start != -1:
        spans.append((start, start + len(mention)))
        start = text.find(mention, start + 1)
    words = mention.split()
    if not spans and len(words) > 1:
        pattern = r"\s+".join(map(re.escape, words))
        spans = [m.span() for m in re.finditer(pattern, text)]
    return spans


def ground_mentions(
    text: str, mentions: Sequence[str]
) -> list[tuple[int, int] | None]:
    """Offsets for one label's mentions, given in order of appearance.

    Each mention takes the first unused whole-word occurrence at or after the previous
    mention's start; failing that, any unused occurrence; failing that, ``None``. An
    occurrence may space its words differently (callers take ``text[start:end]`` as the
    entity's text, so offsets and text always agree).
    """
    used: set[tuple[int, int]] = set()
    cursor = 0
    spans: list[tuple[int, int] | None] = []
    for mention in mentions:
        candidates = [span for span in find_occurrences(text, mention) if span not in used]
        after = [span for span in candidates if span[0] >= cursor]
        pick = (after or candidates or [None])[0]
        if pick is not None:
            used.add(pick)
            cursor = pick[0]
        spans.append(pick)
    return spans
