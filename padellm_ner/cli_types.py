"""Argparse value types with bounds: a number out of range is a usage error (exit 2).

Without them ``--limit -3`` slices ``sentences[:-3]`` (an evaluation of almost the whole
test set) and ``--timeout 0`` or ``--batch-tokens 0`` fail later, deep in the work.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

__all__ = [
    "flags_given", "fill_unset", "int_at_least", "int_between", "float_above", "float_at_least",
    "fraction", "positive_fraction", "port", "hedge_threshold", "device_name",
]


def flags_given(args: object, unset: dict[str, object]) -> list[str]:
    """The ``--flag`` names of the options in ``unset`` (attribute -> its value when not
    given) that ``args`` sets: what a command refuses when they cannot apply."""
    return [f"--{name.replace('_', '-')}" for name, value in unset.items() if getattr(args, name, value) != value]


def fill_unset(args: object, defaults: dict[str, object]) -> None:
    """Give the options left at None (so that giving them could be told apart) their defaults."""
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def _number(value: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A whole number ``>= minimum`` (``0``: a count that may be none; ``1``: at least one)."""

    def parse(value: str) -> int:
        n = int(_number(value, int))
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return n

    return parse


def int_between(minimum: int, maximum: int) -> Callable[[str], int]:
    """A whole number in ``[minimum, maximum]`` (a wait that must fit a timer)."""

    def parse(value: str) -> int:
        n = int(_number(value, int))
        if not minimum <= n <= maximum:
            raise argparse.ArgumentTypeError(f"must be between {minimum} and {maximum}, got {value}")
        return n

    return parse


def _float_bound(minimum: float, *, strict: bool) -> Callable[[str], float]:
    word = "greater than" if strict else "at least"

    def parse(value: str) -> float:
        x = float(_number(value, float))
        if not (x > minimum if strict else x >= minimum):  # NOTE: nan fails both
            raise argparse.ArgumentTypeError(f"must be {word} {minimum:g}, got {value}")
        return x

    return parse


def float_above(minimum: float) -> Callable[[str], float]:
    """A number strictly greater than ``minimum`` (a duration, a learning rate)."""
    return _float_bound(minimum, strict=True)


def float_at_least(minimum: float) -> Callable[[str], float]:
    """A number ``>= minimum`` (a wait that may be zero)."""
    return _float_bound(minimum, strict=False)


def fraction(value: str) -> float:
    """A share in ``[0, 1]`` (the warmup)."""
    x = float(_number(value, float))
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return x


def positive_fraction(value: str) -> float:
    """A share in ``(0, 1]``: some of a thing kept, never none (the zero-count sequences)."""
    x = float(_number(value, float))
    if not 0.0 < x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be greater than 0 and at most 1, got {value}")
    return x


def port(value: str) -> int:
    """A TCP port, 1..65535."""
    n = int(_number(value, int))
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 1 and 65535, got {value}")
    return n


def hedge_threshold(value: str) -> float:
    """``--count-hedge`` of extract, serve and assemble: one probability."""
    try:
        threshold = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--count-hedge {value!r} is not a number") from None
    if not 0.0 <= threshold <= 1.0:
        raise argparse.ArgumentTypeError(f"--count-hedge is {value}; it must be between 0 and 1")
    return threshold


_DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?")


def device_name(value: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` by its form alone, for a repository that
    may be served on another host (``models.pick_device`` checks that this torch has it)."""
    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device: use cpu, cuda, cuda:N or auto")
    return value
