"""Readers of the shared NER file formats, all producing ``Example``s with char offsets.

Supported: CoNLL-2003 (4 columns, ``-DOCSTART-`` skipped), two-column BIO/IOB2/BMES/BIOES
(tab or space separated, CRLF tolerated), Weibo (a segmentation digit after each
character, stripped), GENIA-style JSON lines (``tokens`` + ``entity_mentions``, nested
token spans) and character-offset JSON lines (``text`` + ``entities`` with ``label``,
``start``, ``end``: the shape of ``extract --output`` lines, so corrected output is gold
data). In token formats English text is the tokens joined by one space; Chinese text is
the characters concatenated. A malformed line is an error naming ``file:line``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from padellm_ner.errors import InvalidInputError
from padellm_ner.lang import detect_lang as detect_text_lang
from padellm_ner.lang import is_cjk
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
#: a tag of BIO / IOB2 / BIOES / BMES: O, or a prefix, a hyphen and a type
_TAG = re.compile(r"O|[BIMES]-\S+")


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
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read dataset file {path}: {exc}") from exc
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInputError(
            f"{path}:{line}: not UTF-8 (byte {data[exc.start]:#04x}); convert the file, "
            "e.g. iconv -f latin1 -t utf-8"
        ) from exc
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
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            if tokens:
                yield tokens, tags
            tokens, tags = [], []
            continue
        cols = _columns(line)
        if cols[0] == _DOCSTART:
            continue
        if len(cols) < 2:
            raise InvalidInputError(f"{path}:{lineno}: expected 'token tag' columns, got {line!r}")
        tag = cols[-1].strip()
        if not _TAG.fullmatch(tag):
            # NOTE: read as O, a typo'd tag (B_PER, b-per) silently dropped its entities
            raise InvalidInputError(
                f"{path}:{lineno}: tag {tag!r} is not O or B-/I-/E-/S-/M-TYPE "
                f"(BIO, BIOES or BMES), in {line!r}"
            )
        token = _strip_digit(cols[0]) if strip_digit else cols[0]
        tokens.append(token)
        tags.append(tag)
    if tokens:
        yield tokens, tags


def read_tagged(path: Path, split: str, lang: str, strip_digit: bool = False) -> list[Example]:
    """Read a one-token-per-line file (tag in the last column) into examples."""
    return [
        _example(tokens, decode_tags(tags), lang, f"{split}:{i}")
        for i, (tokens, tags) in enumerate(read_sentences(path, strip_digit))
    ]


_RECORD_SHAPES = (
    '{"tokens": [...], "entity_mentions": [{"start", "end", "entity_type"}]} (token offsets) '
    'or {"text": "...", "entities": [{"label", "start", "end"}]} (character offsets)'
)


class _BadRecord(ValueError):
    """One JSON lines record is malformed; the message says what to fix."""


def _label(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _BadRecord(f"{field} {value!r} is not a label name")
    if value != value.strip():
        # NOTE: ' PER' never matched the prompt's 'PER': one fn and one fp per mention
        raise _BadRecord(f"{field} {value!r} has spaces around it")
    return value


def _offset(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRecord(f"{field} {value!r} is not an integer offset")
    return value


def _mentions(row: dict, key: str) -> list:
    value = row.get(key, [])
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise _BadRecord(f"{key} must be a list of objects")
    return value


def _token_record(row: dict, lang: str, example_id: str) -> Example:
    tokens = row["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise _BadRecord("tokens must be a list of strings")
    if not "".join(tokens).strip():
        raise _BadRecord("the sentence has no tokens")
    if not all(tokens):
        raise _BadRecord(f"token {tokens.index('')} is empty")
    spans = [
        TokenSpan(
            _label(m.get("entity_type"), "entity_type"),
            _offset(m.get("start"), "start"),
            _offset(m.get("end"), "end"),
        )
        for m in _mentions(row, "entity_mentions")
    ]
    for span in spans:
        if not 0 <= span.start_token < span.end_token <= len(tokens):
            raise _BadRecord(
                f"entity_mentions {span.label} [{span.start_token}, {span.end_token}) is not "
                f"a span of the {len(tokens)} tokens (start inclusive, end exclusive)"
            )
    return _example(tokens, spans, lang, example_id)


def _text_record(row: dict, lang: str, example_id: str) -> Example:
    text = row["text"]
    if not isinstance(text, str) or not text.strip():
        raise _BadRecord("the sentence has no text")
    entities = []
    for m in _mentions(row, "entities"):
        label = _label(m.get("label"), "label")
        start, end = _offset(m.get("start"), "start"), _offset(m.get("end"), "end")
        if not 0 <= start < end <= len(text):
            raise _BadRecord(
                f"entities {label} [{start}, {end}) is not a span of the {len(text)} "
                "characters (start inclusive, end exclusive)"
            )
        given = m.get("text")
        if given is not None and given != text[start:end]:
            raise _BadRecord(
                f"entities {label} [{start}, {end}) is {text[start:end]!r} in the text, "
                f"not {given!r}"
            )
        entities.append(Entity(label, text[start:end], start, end))
    entities.sort(key=lambda e: (e.start, e.end))
    return Example(text=text, entities=entities, lang=lang, id=example_id)


def read_jsonlines(path: Path, split: str, lang: str) -> list[Example]:
    """Read JSON lines: GENIA-style token records, or character-offset text records."""
    examples = []
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        example_id = f"{split}:{len(examples)}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not ("tokens" in row or "text" in row):
                raise _BadRecord(f"expected {_RECORD_SHAPES}")
            read = _token_record if "tokens" in row else _text_record
            examples.append(read(row, lang, example_id))
        except _BadRecord as exc:
            raise InvalidInputError(f"{path}:{lineno}: {exc}") from exc
        except ValueError as exc:
            raise InvalidInputError(f"{path}:{lineno}: bad JSON lines record: {exc}") from exc
    return examples


def _head(path: Path, num_lines: int = 400) -> list[str]:
    lines = []
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            lines.append(line.rstrip("\r\n"))
            if len(lines) >= num_lines:
                break
    return lines


def _sample_text(lines: Sequence[str], jsonlines: bool) -> str:
    """The sentence text of a file's head: tokens, not tags, keys or escapes."""
    if not jsonlines:
        return "".join(cols[0] for cols in map(_columns, lines) if cols)
    parts = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            tokens = row.get("tokens")
            text = row.get("text")
            if isinstance(tokens, list):
                parts.extend(t for t in tokens if isinstance(t, str))
            elif isinstance(text, str):
                parts.append(text)
    return "".join(parts)


def _is_json_record(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        # NOTE: a CoNLL file may start with a '{' token; a broken JSON line is reported
        # by the JSON lines reader with its line number
        cols = _columns(line)
        return not (len(cols) >= 2 and _TAG.fullmatch(cols[-1].strip()))


def detect_lang(path: Path) -> str:
    """The language of the sentences of the file's head, by the one rule of ``padellm_ner.lang``."""
    lines = [line for line in _head(path) if line.strip()]
    jsonlines = bool(lines) and _is_json_record(lines[0])
    return detect_text_lang(_sample_text(lines, jsonlines))


def detect_format(path: Path) -> FileFormat:
    """Guess a file's format from its content."""
    numbered = [(n, line) for n, line in enumerate(_head(path), 1) if line.strip()]
    if not numbered:
        raise InvalidInputError(f"{path} is empty")
    if _is_json_record(numbered[0][1]):
        return FileFormat("jsonlines")
    for lineno, line in numbered:
        if len(_columns(line)) < 2 and not line.startswith(_DOCSTART):
            raise InvalidInputError(
                f"{path}:{lineno}: expected 'token tag' columns, got {line!r} (nor is the "
                f"file JSON lines: {_RECORD_SHAPES})"
            )
    rows = [_columns(line) for _, line in numbered if not line.startswith(_DOCSTART)]
    # NOTE: Weibo tokens are one Chinese character plus a segmentation digit ("科0"); an
    # English file whose tokens all end in a digit ("1990") is not Weibo.
    tokens = [cols[0] for cols in rows]
    weibo = all(len(t) >= 2 and t[-1].isdigit() for t in tokens) and (
        sum(is_cjk(t[0]) for t in tokens) > len(tokens) / 2
    )
    return FileFormat("tagged", strip_digit=weibo)


def read_file(path: Path, split: str, lang: str | None = None) -> list[Example]:
    """Read one split file, detecting its format (and language unless given)."""
    fmt = detect_format(path)
    lang = lang or detect_lang(path)
    if fmt.kind == "jsonlines":
        return read_jsonlines(path, split, lang)
    return read_tagged(path, split, lang, strip_digit=fmt.strip_digit)
