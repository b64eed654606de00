"""Micro-F1 two ways: the paper's string-set F1 and this project's character-span F1.

- Paper (METHOD.md, "Evaluation protocol"): per sentence, the SET of ``(label, text)``
  pairs of the prediction is compared with the gold set; counts are summed over sentences.
- Span: per sentence, sets of ``(label, start, end)``; every ungrounded prediction (no
  offsets) is a false positive, since it names no position in the text.

Precision, recall and F1 are 0 when their denominator is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from padellm_ner.types import Entity

__all__ = ["Score", "F1Report", "evaluate_predictions"]

logger = logging.getLogger(__name__)


@dataclass
class Score:
    """True positive, false positive and false negative counts, and what follows from them."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def add(self, tp: int = 0, fp: int = 0, fn: int = 0) -> None:
        self.tp += tp
        self.fp += fp
        self.fn += fn

    def to_dict(self) -> dict[str, Any]:
        """Precision, recall and F1 as percentages (0-100), plus the raw counts."""
        return {
            "precision": 100 * self.precision,
            "recall": 100 * self.recall,
            "f1": 100 * self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


@dataclass
class F1Report:
    """Micro scores and per-label scores under both matching rules.

    Attributes:
        micro: the paper's set-of-(label, text) micro score.
        per_label: the same rule, per label.
        span_micro: (label, start, end) micro score.
        span_per_label: the span rule, per label.
        num_sentences: sentences evaluated.
    """

    micro: Score = field(default_factory=Score)
    per_label: dict[str, Score] = field(default_factory=dict)
    span_micro: Score = field(default_factory=Score)
    span_per_label: dict[str, Score] = field(default_factory=dict)
    num_sentences: int = 0

    @property
    def f1(self) -> float:
        """The paper's micro-F1 as a fraction (0-1)."""
        return self.micro.f1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; top-level ``f1``/``precision``/``recall`` are the paper's, in percent."""
        return {
            "f1": 100 * self.micro.f1,
            "precision": 100 * self.micro.precision,
            "recall": 100 * self.micro.recall,
            "num_sentences": self.num_sentences,
            "set": {
                "micro": self.micro.to_dict(),
                "per_label": {k: v.to_dict() for k, v in sorted(self.per_label.items())},
            },
            "span": {
                "micro": self.span_micro.to_dict(),
                "per_label": {k: v.to_dict() for k, v in sorted(self.span_per_label.items())},
            },
        }

    def format_table(self) -> str:
        """A fixed-width text table: one row per label and a micro row, both rules."""
        header = (
            f"{'label':<16} {'P':>6} {'R':>6} {'F1':>6} {'tp':>6} {'fp':>6} {'fn':>6}"
            f" | {'span P':>6} {'span R':>6} {'span F1':>7}"
        )
        lines = [header, "-" * len(header)]
        labels = sorted(set(self.per_label) | set(self.span_per_label))

        def row(name: str, s: Score, span: Score) -> str:
            return (
                f"{name:<16} {100 * s.precision:6.2f} {100 * s.recall:6.2f} {100 * s.f1:6.2f}"
                f" {s.tp:6d} {s.fp:6d} {s.fn:6d} | {100 * span.precision:6.2f}"
                f" {100 * span.recall:6.2f} {100 * span.f1:7.2f}"
            )

        for label in labels:
            lines.append(
                row(label, self.per_label.get(label, Score()),
                    self.span_per_label.get(label, Score()))
            )
        lines.append("-" * len(header))
        lines.append(row("micro", self.micro, self.span_micro))
        lines.append(f"({self.num_sentences} sentences; F1 = set of (label, text) per sentence)")
        return "\n".join(lines)


def _count(
    gold: set[tuple], pred: set[tuple], micro: Score, per_label: dict[str, Score]
) -> None:
    for item in pred & gold:
        per_label.setdefault(item[0], Score()).add(tp=1)
    for item in pred - gold:
        per_label.setdefault(item[0], Score()).add(fp=1)
    for item in gold - pred:
        per_label.setdefault(item[0], Score()).add(fn=1)
    micro.add(tp=len(pred & gold), fp=len(pred - gold), fn=len(gold - pred))


def _spans(entities: Iterable[Entity]) -> set[tuple]:
    return {(e.label, e.start, e.end) for e in entities if e.grounded}


def evaluate_predictions(
    gold: Sequence[Sequence[Entity]], pred: Sequence[Sequence[Entity]]
) -> F1Report:
    """Score predicted entities against gold, sentence by sentence.

    Args:
        gold: gold entities per sentence.
        pred: predicted entities per sentence, aligned with ``gold``.

    Returns:
        An ``F1Report`` with the paper's set F1 and the span F1.

    Raises:
        ValueError: ``gold`` and ``pred`` hold different numbers of sentences.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted ones")
    report = F1Report(num_sentences=len(gold))
    for gold_entities, pred_entities in zip(gold, pred):
        _count(
            {(e.label, e.text) for e in gold_entities},
            {(e.label, e.text) for e in pred_entities},
            report.micro,
            report.per_label,
        )
        _count(_spans(gold_entities), _spans(pred_entities), report.span_micro, report.span_per_label)
        # NOTE: an ungrounded prediction names no span, so it can only be wrong.
        for entity in pred_entities:
            if not entity.grounded:
                report.span_micro.add(fp=1)
                report.span_per_label.setdefault(entity.label, Score()).add(fp=1)
        if any(not e.grounded for e in gold_entities):
            logger.warning("gold entity without offsets; it counts as a span false negative")
            for entity in gold_entities:
                if not entity.grounded:
                    report.span_micro.add(fn=1)
                    report.span_per_label.setdefault(entity.label, Score()).add(fn=1)
    return report
