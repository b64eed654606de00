"""padellm_client: a small gRPC client for the padellm-ner Triton server.

``NERClient`` (blocking) and ``AsyncNERClient`` (asyncio) call the decoupled ``padellm``
model over gRPC streaming; see client/README.md.
"""

from ._client import AsyncNERClient, ClientState, NERClient
from ._constants import NOT_GIVEN
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    DeadlineExceededError,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    PadellmError,
    UnavailableError,
)
from ._types import Entity, LabelResult

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncNERClient",
    "ClientState",
    "DeadlineExceededError",
    "Entity",
    "InternalServerError",
    "InvalidArgumentError",
    "LabelResult",
    "NERClient",
    "NotFoundError",
    "PadellmError",
    "UnavailableError",
]
