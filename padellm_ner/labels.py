"""The rules a label name follows, in process and served alike.

A label is written into a prompt line (``entity type:\\n{label}``), so it is one
non-empty line of text: a newline in it rewrites the prompt's layout, and an empty one
asks the model about nothing. The served orchestrator applied these rules and the
in-process ``Extractor`` did not; both now call ``check_labels``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from padellm_ner.errors import InvalidInputError

__all__ = ["MAX_LABEL_CHARS", "MAX_NUM_LABELS", "check_labels"]

MAX_LABEL_CHARS = 100
MAX_NUM_LABELS = 64


def check_labels(labels: Iterable[str], what: str = "labels") -> list[str]:
    """The names stripped, or ``InvalidInputError`` naming the first bad one (``what[i]``)."""
    if isinstance(labels, (str, bytes)):
        raise InvalidInputError(f"{what} must be a list of names, not one string ({labels!r})")
    labels = list(labels)
    if not labels:
        raise InvalidInputError(f"{what} is empty; name at least one entity type (e.g. PER)")
    if len(labels) > MAX_NUM_LABELS:
        raise InvalidInputError(f"{what} has {len(labels)} labels; at most {MAX_NUM_LABELS} per request")
    names = []
    for i, raw in enumerate(labels):
        if not isinstance(raw, str):
            raise InvalidInputError(f"{what}[{i}] is a {type(raw).__name__}, not a string")
        name = raw.strip()
        if not name:
            raise InvalidInputError(f"{what}[{i}] is empty; send label names like PER")
        if bad := next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None):
            raise InvalidInputError(
                f"{what}[{i}] contains the control character {bad!r}; a label is one line of text"
            )
        if len(name) > MAX_LABEL_CHARS:
            raise InvalidInputError(f"{what}[{i}] is longer than {MAX_LABEL_CHARS} characters")
        names.append(name)
    return names
