"""Errors a user can act on; the CLI prints their message and exits non-zero."""

from __future__ import annotations

__all__ = ["PadellmError", "InvalidInputError"]


class PadellmError(Exception):
    """Base class of errors with a message meant for the user."""


class InvalidInputError(PadellmError, ValueError):
    """The caller's input is unusable (empty text, bad labels, unreadable file, ...)."""
