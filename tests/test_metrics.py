"""Metrics against hand-computed numbers."""

from __future__ import annotations

import json

import pytest

from padellm_ner.metrics import F1Report, evaluate_predictions
from padellm_ner.types import Entity

E = Entity
GOLD = [
    [E("LOC", "Japan", 0, 5), E("MISC", "World Cup", 10, 19), E("LOC", "Korea", 30, 35)],
    [E("PER", "Moret", 0, 5), E("PER", "Moret", 10, 15)],  # same string twice: one set item
    [],
]
PRED = [
    # Korea at the wrong occurrence: right for the paper's F1, wrong span; FIFA ungrounded.
    [E("LOC", "Japan", 0, 5), E("LOC", "Korea", 40, 45), E("ORG", "FIFA", None, None, 0.3)],
    [E("PER", "Moret", 0, 5)],
    [E("LOC", "Paris", 0, 5)],
]


def _counts(score) -> tuple[int, int, int]:
    return (score.tp, score.fp, score.fn)


def test_paper_set_f1() -> None:
    report = evaluate_predictions(GOLD, PRED)
    # S1: tp Japan, Korea; fp ORG FIFA; fn MISC. S2: tp Moret (sets). S3: fp Paris.
    assert _counts(report.micro) == (3, 2, 1)
    assert report.micro.precision == pytest.approx(3 / 5)
    assert report.micro.recall == pytest.approx(3 / 4)
    assert report.micro.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert {k: _counts(v) for k, v in report.per_label.items()} == {
        "LOC": (2, 1, 0), "MISC": (0, 0, 1), "ORG": (0, 1, 0), "PER": (1, 0, 0)}
    assert report.per_label["LOC"].f1 == pytest.approx(0.8)


def test_span_f1() -> None:
    report = evaluate_predictions(GOLD, PRED)
    # S1: tp Japan; fp Korea@40 and ungrounded FIFA; fn Korea@30, World Cup.
    # S2: tp Moret@0; fn Moret@10. S3: fp Paris.
    assert _counts(report.span_micro) == (2, 3, 3)
    assert report.span_micro.f1 == pytest.approx(0.4)
    assert {k: _counts(v) for k, v in report.span_per_label.items()} == {
        "LOC": (1, 2, 1), "MISC": (0, 0, 1), "ORG": (0, 1, 0), "PER": (1, 0, 1)}


def test_to_dict_and_table() -> None:
    report = evaluate_predictions(GOLD, PRED)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["f1"] == pytest.approx(100 * 2 * 0.6 * 0.75 / 1.35)  # 66.67
    assert data["precision"] == pytest.approx(60.0) and data["recall"] == pytest.approx(75.0)
    assert data["num_sentences"] == 3
    assert data["set"]["per_label"]["LOC"] == {
        "precision": pytest.approx(200 / 3), "recall": 100.0, "f1": pytest.approx(80.0),
        "tp": 2, "fp": 1, "fn": 0}
    assert data["span"]["micro"]["f1"] == pytest.approx(40.0)
    table = report.format_table()
    assert "micro" in table and "MISC" in table and "66.67" in table and "40.00" in table


def test_perfect_and_empty() -> None:
    perfect = evaluate_predictions(GOLD, GOLD)
    assert perfect.micro.f1 == 1.0 and perfect.span_micro.f1 == 1.0
    assert perfect.to_dict()["f1"] == 100.0
    empty = evaluate_predictions([[], []], [[], []])
    assert isinstance(empty, F1Report) and empty.to_dict()["f1"] == 0.0
    assert empty.micro.precision == 0.0 and empty.micro.recall == 0.0


def test_misaligned_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 gold sentences but 1"):
        evaluate_predictions([[], []], [[]])
