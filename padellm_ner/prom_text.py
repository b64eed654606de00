"""Read Triton's metrics endpoint (Prometheus text format) without a client library.

Why one reader: ``bench load --metrics-url`` sums the ``llm`` model's counters and
``serve``'s drain asks whether the orchestrator still has work; both read the same lines.
Torch-free, standard library only.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

__all__ = ["Sample", "read_samples", "parse_samples", "metric_sum"]

#: (metric name, labels, value)
Sample = tuple[str, dict[str, str], float]

_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str) -> Iterator[Sample]:
    """Every sample line of ``text``; comments, blanks and unreadable values are skipped."""
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        yield name, dict(_LABEL.findall(labels or "")), number


def read_samples(url: str, timeout: float = 5.0) -> list[Sample]:
    """The samples at ``url`` (``http://host:8002/metrics``); raises ``OSError`` when unreachable."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return list(parse_samples(response.read().decode()))


def metric_sum(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The sum of ``name`` over the samples whose labels include ``labels``; None when
    there is none (a metric absent is not a zero)."""
    values = [v for n, have, v in samples if n == name and all(have.get(k) == x for k, x in labels.items())]
    return sum(values) if values else None
