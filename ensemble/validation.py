"""Parse and validate the ``padellm`` model's inputs (pure: numpy arrays in, a request out).

Every rejection is a ``RequestValidationError`` whose message says what to send instead.
Error messages on the wire start with a code prefix (``[INVALID_ARGUMENT] ``): streaming
over gRPC drops the status code, so clients map the prefix (docs/CONTRACTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from padellm_ner.errors import InvalidInputError
from padellm_ner.labels import MAX_LABEL_CHARS, MAX_NUM_LABELS, check_labels
from padellm_ner.plan import Dedup

__all__ = [
    "ErrorCode",
    "PadellmServingError",
    "RequestValidationError",
    "UpstreamError",
    "upstream_code",
    "NERRequest",
    "parse_request",
    "MAX_LABEL_CHARS",
    "MAX_NUM_LABELS",
]


class ErrorCode(str, Enum):
    """The code prefix of an error message; the client maps it back to a class."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"

    @property
    def prefix(self) -> str:
        """How an error message on the wire starts: ``[CODE] ``."""
        return f"[{self.value}] "


class PadellmServingError(Exception):
    """An error the orchestrator reports to the caller with a code prefix."""

    code: ErrorCode = ErrorCode.INTERNAL

    @property
    def wire_message(self) -> str:
        return f"{self.code.prefix}{self}"


class RequestValidationError(PadellmServingError, ValueError):
    """The request is malformed; the message says what to fix."""

    code = ErrorCode.INVALID_ARGUMENT


class UpstreamError(PadellmServingError):
    """The LLM model failed or is unreachable."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code


def upstream_code(message: str) -> ErrorCode:
    """The code of an LLM model's error message: UNAVAILABLE when it is missing or down,
    INVALID_ARGUMENT when it refused the request (a text too long for the model)."""
    if ErrorCode.INVALID_ARGUMENT.prefix in message:
        return ErrorCode.INVALID_ARGUMENT
    lowered = message.lower()
    if any(s in lowered for s in ("unavailable", "not ready", "not found", "unknown model", "connect")):
        return ErrorCode.UNAVAILABLE
    return ErrorCode.INTERNAL


@dataclass(frozen=True)
class NERRequest:
    """One validated extraction request."""

    text: str
    labels: tuple[str, ...]
    max_mentions: int
    dedup: Dedup
    stream: bool


def _decode(value: object, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestValidationError(
                f"{what} is not valid UTF-8 (byte {exc.start}); send UTF-8 encoded text"
            ) from exc
    raise RequestValidationError(f"{what} must be a BYTES (string) tensor, got {type(value).__name__}")


def _single(array: np.ndarray | None, name: str) -> object | None:
    if array is None:
        return None
    flat = np.asarray(array).reshape(-1)
    if flat.size != 1:
        raise RequestValidationError(f"{name} must hold exactly one element, got {flat.size}")
    return flat[0]


def parse_request(
    text: np.ndarray | None,
    labels: np.ndarray | None = None,
    max_mentions: np.ndarray | None = None,
    dedup: np.ndarray | None = None,
    stream: np.ndarray | None = None,
    *,
    default_labels: Sequence[str],
    max_text_chars: int,
    max_mentions_limit: int = 64,
    default_max_mentions: int = 16,
) -> NERRequest:
    """Validate the raw input tensors of one request.

    Args:
        text: ``TEXT`` BYTES [1].
        labels: optional ``LABELS`` BYTES [-1]; absent means ``default_labels``.
        max_mentions: optional ``MAX_MENTIONS`` INT32 [1], 1..``max_mentions_limit``.
        dedup: optional ``DEDUP`` BYTES [1]: ``string``, ``span`` or ``off``.
        stream: optional ``STREAM`` BOOL [1].
        default_labels: the served model's labels.
        max_text_chars: longest accepted text, in characters.

    Raises:
        RequestValidationError: with a message that says what to fix.
    """
    raw = _single(text, "TEXT")
    if raw is None:
        raise RequestValidationError("TEXT is required: send one UTF-8 string")
    value = _decode(raw, "TEXT")
    if "\x00" in value:
        raise RequestValidationError(
            f"TEXT contains a NUL character at position {value.index(chr(0))}; remove NUL bytes"
        )
    if not value.strip():
        raise RequestValidationError("TEXT is empty or whitespace only; send the text to analyse")
    if len(value) > max_text_chars:
        raise RequestValidationError(
            f"TEXT has {len(value)} characters, more than the limit of {max_text_chars}; "
            "split it into shorter pieces (e.g. sentences)"
        )

    if labels is None:
        names = list(default_labels)
        if not names:
            raise RequestValidationError("LABELS is required: this server has no default labels")
    else:
        flat = np.asarray(labels).reshape(-1)
        if flat.size == 0:
            raise RequestValidationError(
                "LABELS is empty; send at least one entity label (e.g. PER) or omit LABELS "
                "for the server's defaults"
            )
        if flat.size > MAX_NUM_LABELS:  # NOTE: before decoding them all
            raise RequestValidationError(f"LABELS has {flat.size} labels; at most {MAX_NUM_LABELS} per request")
        decoded = [_decode(item, f"LABELS[{i}]") for i, item in enumerate(flat)]
        try:
            names = check_labels(decoded, "LABELS")  # NOTE: the rules the in-process Extractor applies
        except InvalidInputError as exc:
            raise RequestValidationError(str(exc)) from None

    count = default_max_mentions
    raw_count = _single(max_mentions, "MAX_MENTIONS")
    if raw_count is not None:
        if not isinstance(raw_count, (int, np.integer)) or isinstance(raw_count, (bool, np.bool_)):
            raise RequestValidationError("MAX_MENTIONS must be an INT32")
        count = int(raw_count)
        if not 1 <= count <= max_mentions_limit:
            raise RequestValidationError(
                f"MAX_MENTIONS is {count}; it must be between 1 and {max_mentions_limit}"
            )

    mode = Dedup.STRING
    raw_dedup = _single(dedup, "DEDUP")
    if raw_dedup is not None:
        name = _decode(raw_dedup, "DEDUP").strip().lower()
        try:
            mode = Dedup(name)
        except ValueError as exc:
            choices = ", ".join(d.value for d in Dedup)
            raise RequestValidationError(f"DEDUP is {name!r}; use one of {choices}") from exc

    raw_stream = _single(stream, "STREAM")
    return NERRequest(
        text=value,
        labels=tuple(dict.fromkeys(names)),
        max_mentions=count,
        dedup=mode,
        stream=bool(raw_stream) if raw_stream is not None else False,
    )
