"""Output formats: exact renders from METHOD.md and gold round-trips on every shared split."""

from __future__ import annotations

from collections import Counter

import pytest

from padellm_ner.data import DATASET_NAMES, available_splits, dataset_info, load_split
from padellm_ner.errors import InvalidInputError
from padellm_ner.prompts import Completion, get_format
from padellm_ner.types import Entity, Example

FORMAT_NAMES = ("padellm", "ar_aug", "ar_struct", "onestep")
SPLITS = [(name, split) for name in DATASET_NAMES for split in available_splits(name)]


def _overlapping(example: Example) -> bool:
    spans = sorted((e.start, e.end) for e in example.entities)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
@pytest.mark.parametrize(("name", "split"), SPLITS)
def test_round_trip_on_shared_split(name: str, split: str, fmt_name: str) -> None:
    info = dataset_info(name)
    fmt = get_format(fmt_name, info.lang, info.label_words)
    num_checked = 0
    for example in load_split(name, split):
        # NOTE: ar_aug brackets cannot nest, so GENIA sentences with overlapping
        # (nested) mentions are left out for it; every other format covers them.
        if fmt_name == "ar_aug" and _overlapping(example):
            continue
        pairs = fmt.render(example, info.labels)
        completions = [Completion(pair.label, pair.target) for pair in pairs]
        got = fmt.parse(example.text, completions)
        assert Counter(got) == Counter((e.label, e.text) for e in example.entities), example.id
        num_checked += 1
    assert num_checked > 0.7 * len(load_split(name, split))


def test_conll_train_sequence_counts() -> None:
    info = dataset_info("conll2003")
    fmt = get_format("padellm", "en", info.label_words)
    pairs = [p for ex in load_split("conll2003", "train") for p in fmt.render(ex, info.labels)]
    assert len(pairs) == 62878
    assert sum(p.target_pieces == ("0",) for p in pairs) == 39379


def test_method_example_renders_exactly() -> None:
    example = load_split("conll2003", "train")[0]
    assert example.text == "EU rejects German call to boycott British lamb ."
    fmt = get_format("padellm", "en")
    pairs = fmt.render(example, ["ORG", "MISC", "PER", "LOC"])
    prompt = "text:\nEU rejects German call to boycott British lamb .\nentity type:\n{}\n\n<num>"
    assert [(p.label, p.prompt, p.target_pieces) for p in pairs] == [
        ("ORG", prompt.format("ORG"), ("1\n<mention 1>", "EU")),
        ("MISC", prompt.format("MISC"), ("2\n<mention 1>", "German")),
        ("MISC", prompt.format("MISC"), ("2\n<mention 2>", "British")),
        ("PER", prompt.format("PER"), ("0",)),
        ("LOC", prompt.format("LOC"), ("0",)),
    ]
    assert [p.target for p in pairs[:2]] == ["1\n<mention 1>EU", "2\n<mention 1>German"]


def test_chinese_prompts_use_label_words() -> None:
    info = dataset_info("msra")
    fmt = get_format("padellm", "zh", info.label_words)
    example = Example("张三在北京", [Entity("PER", "张三", 0, 2)], "zh")
    pairs = fmt.render(example, ["PER", "LOC"])
    assert pairs[0].prompt == "文本:\n张三在北京\n指定NER标签:\n名称\n\n<数量>"
    assert pairs[0].target == "1\n<第1文段>张三" and pairs[1].target == "0"
    struct = get_format("ar_struct", "zh", info.label_words)
    assert struct.render(example, ["PER"])[0].target == "((名称: 张三))"
    assert struct.parse(example.text, [Completion(None, "((名称: 张三))")]) == [("PER", "张三")]


def _japan() -> Example:
    text = "Japan , co-hosts of the World Cup in 2002 with Korea and FIFA ."
    spans = [("LOC", "Japan"), ("MISC", "World Cup"), ("LOC", "Korea"), ("ORG", "FIFA")]
    return Example(text, [Entity(lab, m, text.index(m), text.index(m) + len(m)) for lab, m in spans])


def test_baseline_renders() -> None:
    ex, labels = _japan(), ["LOC", "MISC", "ORG", "PER"]
    aug = get_format("ar_aug").render(ex, labels)
    assert [p.target for p in aug] == [
        "[Japan | LOC] , co-hosts of the [World Cup | MISC] in 2002 with [Korea | LOC] and "
        "[FIFA | ORG] ."]
    assert aug[0].prompt.startswith("text:\nJapan , co-hosts") and aug[0].label is None
    assert "LOC, MISC, ORG, PER" in aug[0].prompt
    struct = get_format("ar_struct").render(ex, labels)
    assert struct[0].target == "((LOC: Japan), (MISC: World Cup), (LOC: Korea), (ORG: FIFA))"
    assert get_format("ar_struct").render(Example("x"), labels)[0].target == "()"
    one = get_format("onestep").render(ex, labels)
    assert [(p.label, p.target) for p in one] == [
        ("LOC", '["Japan", "Korea"]'), ("MISC", '["World Cup"]'), ("ORG", '["FIFA"]'),
        ("PER", "[]")]


def test_parsers_keep_awkward_mentions() -> None:
    struct = get_format("ar_struct")
    out = "((ORG: Foo (Bar)), (MISC: a, b: c), (LOC: x)), (PER: ,)))"
    assert struct.parse("", [Completion(None, out)]) == [
        ("ORG", "Foo (Bar)"), ("MISC", "a, b: c"), ("LOC", "x)"), ("PER", ",)")]
    aug = get_format("ar_aug")
    text = "the PDGF[B] gene and [3H]calcitriol/VDR [ x ]"
    out = "the [PDGF[B] | protein] gene and [[3H]calcitriol/VDR | protein] [ x ]"
    assert aug.parse(text, [Completion(None, out)]) == [
        ("protein", "PDGF[B]"), ("protein", "[3H]calcitriol/VDR")]
    assert aug.parse("", [Completion(None, "[Sotheby | ' s | corporation] sold")]) == [
        ("corporation", "Sotheby | ' s")]


GARBAGE = ["", "   ", "\n\n", "((", "()", "[]", "[ | ]", "((LOC:", "[x |", "]]]][[[", "{}",
           '["unterminated', "null", "12", "0", "abc\n<mention 1>", "<mention 1>x", "\x00\ufffd",
           "[1, 2, {}]", "((: x), ( : ))", "(( : x))", "[x |  ]"]


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_garbage_parses_to_nothing(fmt_name: str) -> None:
    fmt = get_format(fmt_name)
    for junk in GARBAGE:
        assert fmt.parse("some text", [Completion("LOC", junk), Completion(None, junk)]) == [], junk


def test_partial_outputs_keep_complete_items() -> None:
    one = get_format("onestep")
    assert one.parse("", [Completion("PER", '["Jacques Moret", "Mor')]) == [("PER", "Jacques Moret")]
    struct = get_format("ar_struct")
    assert struct.parse("", [Completion(None, "((LOC: Japan), (LOC: Kor")]) == [("LOC", "Japan")]
    pade = get_format("padellm")
    got = pade.parse("", [Completion("MISC", "2\n<mention 2>British"),
                          Completion("MISC", "2\n<mention 1>German"), Completion("PER", "0"),
                          Completion("ORG", "1\n<mention 1>")])
    assert got == [("MISC", "German"), ("MISC", "British")]


def test_unknown_format_is_an_error() -> None:
    with pytest.raises(InvalidInputError, match="unknown output format 'bogus'.*padellm"):
        get_format("bogus")
    with pytest.raises(InvalidInputError, match="language"):
        get_format("padellm", "fr")
