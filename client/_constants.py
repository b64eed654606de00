"""Defaults of the padellm client, kept in one place (as openai-python's ``_constants.py``)."""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "NOT_GIVEN",
    "NotGiven",
]

DEFAULT_URL: Final = "127.0.0.1:8001"
DEFAULT_MODEL_NAME: Final = "padellm"
# Seconds for one whole call (the gRPC stream deadline). ``None`` means no deadline.
DEFAULT_TIMEOUT: Final = 60.0
# In-flight requests of one ``extract_many`` call.
DEFAULT_CONCURRENCY: Final = 8


class NotGiven(enum.Enum):
    """Type of :data:`NOT_GIVEN`: an argument the caller left out.

    ``timeout=NOT_GIVEN`` uses the client's timeout; ``timeout=None`` means no deadline.
    """

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> Literal[False]:
        return False


NOT_GIVEN: Final = NotGiven.NOT_GIVEN
