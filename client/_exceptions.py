"""Errors raised by the padellm client.

Our exception hierarchy::

    PadellmError
    ├── APIConnectionError          the server could not be reached or the connection broke
    │   └── APITimeoutError         the call ran past its deadline
    └── APIStatusError              the server answered with an error (``.status``, ``.message``)
        ├── InvalidArgumentError    INVALID_ARGUMENT: bad input, e.g. empty text
        ├── NotFoundError           NOT_FOUND: the model is not loaded
        ├── UnavailableError        UNAVAILABLE: the server or model cannot serve now
        ├── InternalServerError     INTERNAL: the model failed
        └── DeadlineExceededError   DEADLINE_EXCEEDED (also an APITimeoutError)

Every error from ``tritonclient`` or ``grpc`` is turned into one of these by
:func:`map_exception`, raised ``from`` the original so nothing is lost.

Where a status comes from: a unary gRPC call carries a real status code
(``InferenceServerException.status()`` is ``"StatusCode.X"``); the decoupled ``padellm``
model is called over gRPC streaming, which loses the code, so the server puts it in front of
the message as ``"[INVALID_ARGUMENT] ..."`` and this module reads it back.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import grpc
from tritonclient.utils import InferenceServerException

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "DeadlineExceededError",
    "InternalServerError",
    "InvalidArgumentError",
    "NotFoundError",
    "PadellmError",
    "UnavailableError",
    "map_exception",
    "map_exceptions",
]


class PadellmError(Exception):
    """Base of every error this client raises."""

    status: str | None = None

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class APIConnectionError(PadellmError):
    """The server could not be reached, or the connection broke during a call."""

    def __init__(self, message: str = "Connection error.", *, status: str | None = None) -> None:
        super().__init__(message, status=status)


class APITimeoutError(APIConnectionError):
    """The call did not finish before its deadline."""

    def __init__(self, message: str = "Request timed out.", *, status: str | None = None) -> None:
        super().__init__(message, status=status)


class APIStatusError(PadellmError):
    """The server answered with an error; ``status`` is the gRPC status name."""

    status: str = "UNKNOWN"

    def __str__(self) -> str:
        return f"[{self.status}] {self.message}"


class InvalidArgumentError(APIStatusError):
    status = "INVALID_ARGUMENT"


class NotFoundError(APIStatusError):
    """The model is not loaded on the server (or the name is wrong)."""

    status = "NOT_FOUND"


class UnavailableError(APIStatusError):
    status = "UNAVAILABLE"


class InternalServerError(APIStatusError):
    status = "INTERNAL"


class DeadlineExceededError(APIStatusError, APITimeoutError):
    status = "DEADLINE_EXCEEDED"


_STATUS_CLASSES: dict[str, type[APIStatusError]] = {
    "INVALID_ARGUMENT": InvalidArgumentError,
    "NOT_FOUND": NotFoundError,
    "UNAVAILABLE": UnavailableError,
    "INTERNAL": InternalServerError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
}

_GRPC_CODES = frozenset(code.name for code in grpc.StatusCode)
# "[INVALID_ARGUMENT] text is empty", possibly behind a backend's own preamble
# ("Failed to process the request(s) for model ..., message: [INTERNAL] ...").
_PREFIX = re.compile(r"\[([A-Z_]+)\]\s?")
_DEADLINE_TEXT = re.compile(r"deadline exceeded", re.IGNORECASE)
_UNKNOWN_MODEL = re.compile(r"unknown model|model .* is not (found|ready)", re.IGNORECASE)
# Triton core's own checks of a request against the model config (INVALID_ARG there; the
# stream drops the code): a missing or unknown input, a wrong data type or shape, e.g. a
# client pointed at the ``llm`` model by ``model_name``.
_REQUEST_INVALID = re.compile(
    r"expected (number of )?inputs? .*but got|missing required input|unexpected inference input"
    r"|inference input '.*' data-type is|unexpected shape for input",
    re.IGNORECASE,
)
_TRANSPORT_TEXT = re.compile(
    r"connect|socket|connection|handshake|dns|resolv|hostname|unreachable|goaway|transport|ssl|tls",
    re.IGNORECASE,
)


def _normalize_status(status: object) -> str | None:
    """``"StatusCode.DEADLINE_EXCEEDED"`` / ``grpc.StatusCode.X`` / ``"X"`` -> ``"X"``."""
    if status is None:
        return None
    if isinstance(status, grpc.StatusCode):
        return status.name
    name = str(status).strip()
    if name.startswith("StatusCode."):
        name = name[len("StatusCode.") :]
    name = name.upper()
    return name or None


def _split_prefix(message: str) -> tuple[str | None, str]:
    """Find the first ``[CODE] `` naming a gRPC status; return (code, message without it)."""
    for match in _PREFIX.finditer(message):
        code = match.group(1)
        if code in _GRPC_CODES:
            if match.start() == 0:
                return code, message[match.end() :]
            return code, message
    return None, message


def map_exception(exc: BaseException) -> PadellmError:
    """The most specific :class:`PadellmError` for ``exc`` (not raised; ``raise ... from exc``).

    Accepts ``InferenceServerException``, ``grpc.RpcError`` and our own errors (returned as is).
    The ``[CODE] `` message prefix wins over the transport status: over gRPC streaming
    the transport status is absent and the prefix is the model's own code.
    """
    if isinstance(exc, PadellmError):
        return exc
    if isinstance(exc, InferenceServerException):
        message = exc.message()
        message = "" if message is None else str(message)
        transport_status = _normalize_status(exc.status())
    elif isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        details = exc.details() if hasattr(exc, "details") else None
        message = "" if details is None else str(details)
        transport_status = _normalize_status(exc.code())
    else:
        return PadellmError(f"{type(exc).__name__}: {exc}")

    prefix_status, text = _split_prefix(message)
    if prefix_status is not None:
        cls = _STATUS_CLASSES.get(prefix_status, APIStatusError)
        return cls(text, status=prefix_status)

    status = transport_status
    if status is None:
        # Streaming: no code and no prefix; recognise what Triton itself says.
        if _DEADLINE_TEXT.search(message):
            status = "DEADLINE_EXCEEDED"
        elif _UNKNOWN_MODEL.search(message):
            status = "NOT_FOUND"
        elif _REQUEST_INVALID.search(message):
            status = "INVALID_ARGUMENT"
        else:
            status = "UNKNOWN"
    elif status == "UNKNOWN" and _DEADLINE_TEXT.search(message):
        status = "DEADLINE_EXCEEDED"

    if status == "UNAVAILABLE" and (not message or _TRANSPORT_TEXT.search(message)):
        return APIConnectionError(message or "Connection error.", status=status)
    if status == "NOT_FOUND" or (status == "UNAVAILABLE" and _UNKNOWN_MODEL.search(message)):
        return NotFoundError(message, status="NOT_FOUND")
    cls = _STATUS_CLASSES.get(status, APIStatusError)
    return cls(message, status=status)


@contextlib.contextmanager
def map_exceptions() -> Iterator[None]:
    """Re-raise tritonclient / grpc errors raised inside the block as :class:`PadellmError`."""
    try:
        yield
    except (InferenceServerException, grpc.RpcError) as exc:
        raise map_exception(exc) from exc
