"""Readers of the shared NER file formats, all producing ``Example``s with char offsets.

Supported: CoNLL-2003 (4 columns, ``-DOCSTART-`` skipped), two-column BIO/IOB2/BMES
(tab or space separated, CRLF tolerated), Weibo (a segmentation digit after each
character, stripped) and GENIA-style JSON lines (nested token spans). English text is
the tokens joined by one space; Chinese text is the characters concatenated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from padellm_ner.errors import InvalidInputError
from padellm_ner.types import Entity, Example

__all__ = [
    "FileFormat",
    "TokenSpan",
    "decode_tags",
    "detect_format",
    "detect_lang",
    "read_file",
    "read_sentences",
    "read_tagged",
    "read_jsonlines",
]

logger = logging.getLogger(__name__)

_DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class FileFormat:
    """How to read one file.

    Attributes:
        kind: ``"tagged"`` (one token per line, tag in the last column) or ``"jsonlines"``.
        strip_digit: drop the trailing segmentation digit of each token (Weibo).
    """

    kind: str
    strip_digit: bool = False


@dataclass(frozen=True)
class TokenSpan:
    """An entity in token offsets: ``start_token`` inclusive, ``end_token`` exclusive."""

    label: str
    start_token: int
    end_token: int


def decode_tags(tags: Sequence[str]) -> list[TokenSpan]:
    """Entity spans of a BIO / IOB2 / BMES / BIOES tag sequence.

    An entity starts at B- or S-, and also at I-/M-/E- that follow O, another type, or a
    closed entity (ill-formed input starts a new entity rather than being dropped).
    E- and S- close the entity; O closes it.
    """
    spans: list[TokenSpan] = []
    label: str | None = None  # the open entity's type
    start = 0
    for i, tag in enumerate(tags):
        prefix, _, kind = tag.partition("-")
        if tag == "O" or not kind or prefix not in {"B", "I", "M", "E", "S"}:
            if tag != "O":
                logger.debug("unknown tag %r treated as O", tag)
            if label is not None:
                spans.append(TokenSpan(label, start, i))
            label = None
            continue
        continues = prefix in {"I", "M", "E"} and label == kind
        if not continues:
            if label is not None:
                spans.append(TokenSpan(label, start, i))
            label, start = kind, i
        if prefix in {"E", "S"}:
            spans.append(TokenSpan(kind, start, i + 1))
            label = None
    if label is not None:
        spans.append(TokenSpan(label, start, len(tags)))
    return spans


def _token_offsets(tokens: Sequence[str], lang: str) -> tuple[str, list[tuple[int, int]]]:
    sep = " " if lang == "en" else ""
    offsets: list[tuple[int, int]] = []
    pos = 0
    for token in tokens:
        offsets.append((pos, pos + len(token)))
        pos += len(token) + len(sep)
    return sep.join(tokens), offsets


def _example(
    tokens: Sequence[str], spans: Sequence[TokenSpan], lang: str, example_id: str
) -> Example:
    text, offsets = _token_offsets(tokens, lang)
    entities = []
    for span in spans:
        start, end = offsets[span.start_token][0], offsets[span.end_token - 1][1]
        entities.append(Entity(span.label, text[start:end], start, end))
    entities.sort(key=lambda e: (e.start, e.end))
    return Example(text=text, entities=entities, lang=lang, id=example_id)


def _lines(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read dataset file {path}: {exc}") from exc
    # NOTE: splitlines() would also split on U+2028 etc. inside tokens; split on \n only.
    return [line.rstrip("\r") for line in raw.split("\n")]


def _columns(line: str) -> list[str]:
    # NOTE: split on ASCII space only: Ecommerce has U+3000 (ideographic space) tokens.
    cols = line.split("\t") if "\t" in line else line.split(" ")
    return [c for c in cols if c]


def _strip_digit(token: str) -> str:
    # NOTE: Weibo appends the character's position in its word, which can be two digits
    # ("p10"), and the character itself can be a digit ("20"): keep the first character.
    return token[:1] + token[1:].rstrip("0123456789")


def read_sentences(path: Path, strip_digit: bool = False) -> Iterator[tuple[list[str], list[str]]]:
    """``(tokens, tags)`` of each sentence of a one-token-per-line file."""
    tokens: list[str] = []
    tags: list[str] = []
    for line in _lines(path):
        if not line.strip():
            if tokens:
                yield tokens, tags
            tokens, tags = [], []
            continue
        cols = _columns(line)
        if cols[0] == _DOCSTART:
            continue
        if len(cols) < 2:
            raise InvalidInputError(f"{path}: expected 'token tag' columns, got {line!r}")
        token = _strip_digit(cols[0]) if strip_digit else cols[0]
        tokens.append(token)
        tags.append(cols[-1].strip())
    if tokens:
        yield tokens, tags


def read_tagged(path: Path, split: str, lang: str, strip_digit: bool = False) -> list[Example]:
    """Read a one-token-per-line file (tag in the last column) into examples."""
    return [
        _example(tokens, decode_tags(tags), lang, f"{split}:{i}")
        for i, (tokens, tags) in enumerate(read_sentences(path, strip_digit))
    ]


def read_jsonlines(path: Path, split: str, lang: str) -> list[Example]:
    """Read GENIA-style JSON lines: ``tokens`` and ``entity_mentions`` in token offsets."""
    examples = []
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            tokens = [str(t) for t in row["tokens"]]
            spans = [
                TokenSpan(str(m["entity_type"]), int(m["start"]), int(m["end"]))
                for m in row.get("entity_mentions", [])
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{path}:{lineno}: bad JSON lines record: {exc}") from exc
        if not "".join(tokens).strip():
            raise InvalidInputError(f"{path}:{lineno}: the sentence has no tokens")
        for span in spans:
            if not 0 <= span.start_token < span.end_token <= len(tokens):
                raise InvalidInputError(
                    f"{path}:{lineno}: entity_mentions {span.label} [{span.start_token}, "
                    f"{span.end_token}) is not a span of the {len(tokens)} tokens "
                    "(start inclusive, end exclusive)"
                )
        examples.append(_example(tokens, spans, lang, f"{split}:{len(examples)}"))
    return examples


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def _head(path: Path, num_lines: int = 400) -> list[str]:
    lines = []
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            lines.append(line.rstrip("\r\n"))
            if len(lines) >= num_lines:
                break
    return lines


def detect_lang(path: Path) -> str:
    """``"zh"`` when the file's head is mostly CJK characters, else ``"en"``."""
    sample = "".join(_head(path))
    num_cjk = sum(map(_is_cjk, sample))
    return "zh" if num_cjk > 0.1 * max(1, sum(ch.isalpha() for ch in sample)) else "en"


def detect_format(path: Path) -> FileFormat:
    """Guess a file's format from its content."""
    lines = [line for line in _head(path) if line.strip()]
    if not lines:
        raise InvalidInputError(f"{path} is empty")
    if lines[0].lstrip().startswith("{"):
        return FileFormat("jsonlines")
    rows = [_columns(line) for line in lines if not line.startswith(_DOCSTART)]
    if any(len(cols) < 2 for cols in rows):
        raise InvalidInputError(f"{path}: unrecognised format (expected 'token tag' lines)")
    # NOTE: Weibo tokens are one character plus a segmentation digit ("科0").
    tokens = [cols[0] for cols in rows]
    weibo = all(len(t) >= 2 and t[-1].isdigit() for t in tokens)
    return FileFormat("tagged", strip_digit=weibo)


def read_file(path: Path, split: str, lang: str | None = None) -> list[Example]:
    """Read one split file, detecting its format (and language unless given)."""
    fmt = detect_format(path)
    lang = lang or detect_lang(path)
    if fmt.kind == "jsonlines":
        return read_jsonlines(path, split, lang)
    return read_tagged(path, split, lang, strip_digit=fmt.strip_digit)
