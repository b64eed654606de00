"""Bounds the engine enforces and the command lines check up front (torch-free).

Why a module of its own: the engine imports torch and the CLI must not, so a bound both
need cannot live in either.
"""

from __future__ import annotations

__all__ = ["MAX_BATCH_WINDOW_US"]

#: the longest ``--batch-window-us`` (10 s): a batching window, not a timer (a value over
#: threading.TIMEOUT_MAX killed the engine thread while the server still said ready)
MAX_BATCH_WINDOW_US = 10_000_000
