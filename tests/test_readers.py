"""The readers against the real shared files: counts exactly as datasets/README.md states."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from padellm_ner.data import (
    DATASET_NAMES,
    available_splits,
    dataset_info,
    datasets_root,
    load_split,
)
from padellm_ner.data.datasets import split_path
from padellm_ner.data.readers import decode_tags, detect_format, read_sentences
from padellm_ner.errors import InvalidInputError

# (sentences, tokens, {type: entities}) per split, from datasets/README.md "Per-split counts".
COUNTS = {
    ("conll2003", "train"): (14041, 203621, dict(LOC=7140, PER=6600, ORG=6321, MISC=3438)),
    ("conll2003", "dev"): (3250, 51362, dict(PER=1842, LOC=1837, ORG=1341, MISC=922)),
    ("conll2003", "test"): (3453, 46435, dict(LOC=1668, ORG=1661, PER=1617, MISC=702)),
    ("wnut17", "train"): (3394, 62730, {"person": 660, "location": 548, "group": 264,
                                        "corporation": 221, "product": 142, "creative-work": 140}),
    ("wnut17", "dev"): (1009, 15733, {"person": 470, "product": 114, "creative-work": 105,
                                      "location": 74, "group": 39, "corporation": 34}),
    ("wnut17", "test"): (1287, 23394, {"person": 429, "group": 165, "location": 150,
                                       "creative-work": 142, "product": 127, "corporation": 66}),
    ("weibo", "train"): (1350, 73778, {"PER.NOM": 772, "PER.NAM": 578, "GPE.NAM": 205,
                                       "ORG.NAM": 183, "LOC.NAM": 56, "LOC.NOM": 51,
                                       "ORG.NOM": 42, "GPE.NOM": 8}),
    ("weibo", "dev"): (270, 14509, {"PER.NOM": 208, "PER.NAM": 90, "ORG.NAM": 47, "GPE.NAM": 26,
                                    "LOC.NOM": 6, "LOC.NAM": 6, "ORG.NOM": 5, "GPE.NOM": 1}),
    ("weibo", "test"): (270, 14842, {"PER.NOM": 172, "PER.NAM": 113, "GPE.NAM": 47,
                                     "ORG.NAM": 39, "LOC.NAM": 19, "ORG.NOM": 17, "LOC.NOM": 9,
                                     "GPE.NOM": 2}),
    ("resume", "train"): (3821, 124099, dict(TITLE=6308, ORG=4613, NAME=952, EDU=858, PRO=287,
                                            CONT=260, RACE=115, LOC=47)),
    ("resume", "dev"): (463, 13890, dict(TITLE=690, ORG=523, NAME=110, EDU=106, CONT=33, PRO=18,
                                        RACE=15, LOC=2)),
    ("resume", "test"): (477, 15100, dict(TITLE=772, ORG=553, NAME=112, EDU=112, PRO=33, CONT=28,
                                         RACE=14, LOC=6)),
    ("ecommerce", "train"): (6000, 174562, dict(HCCX=20656, MISC=4322, HPPX=2803, XH=1616)),
    ("ecommerce", "dev"): (998, 29186, dict(HCCX=3430, MISC=755, HPPX=484, XH=272)),
    ("ecommerce", "test"): (1000, 29071, dict(HCCX=3378, MISC=729, HPPX=474, XH=285)),
    ("youku", "train"): (8001, 136240, dict(TELEVISION=7067, PER=3559, MISC=2128)),
    ("youku", "dev"): (1000, 16346, dict(TELEVISION=900, PER=424, MISC=257)),
    ("youku", "test"): (1001, 17213, dict(TELEVISION=905, PER=419, MISC=246)),
    ("msra", "test"): (3442, 172601, dict(LOC=2886, PER=1973, ORG=1331)),
    ("genia", "dev"): (1765, 45495, dict(protein=2466, DNA=1161, cell_type=576, cell_line=372,
                                         RNA=139)),
    ("genia", "test"): (1732, 46873, dict(protein=2900, DNA=1132, cell_type=578, cell_line=403,
                                          RNA=106)),
}
TOTALS = {  # entities per split as README states them, a check on the per-type table above
    ("conll2003", "train"): 23499, ("conll2003", "dev"): 5942, ("conll2003", "test"): 5648,
    ("wnut17", "train"): 1975, ("wnut17", "dev"): 836, ("wnut17", "test"): 1079,
    ("weibo", "train"): 1895, ("weibo", "dev"): 389, ("weibo", "test"): 418,
    ("resume", "train"): 13440, ("resume", "dev"): 1497, ("resume", "test"): 1630,
    ("ecommerce", "train"): 29397, ("ecommerce", "dev"): 4941, ("ecommerce", "test"): 4866,
    ("youku", "train"): 12754, ("youku", "dev"): 1581, ("youku", "test"): 1570,
    ("msra", "test"): 6190, ("genia", "dev"): 4714, ("genia", "test"): 5119,
}
ZH = {"weibo", "resume", "ecommerce", "youku", "msra"}


def _num_tokens(name: str, split: str) -> int:
    path = split_path(name, split)
    if name == "genia":
        return sum(len(json.loads(line)["tokens"]) for line in path.open() if line.strip())
    return sum(len(tokens) for tokens, _ in read_sentences(path, strip_digit=name == "weibo"))


@pytest.mark.parametrize(("name", "split"), sorted(COUNTS))
def test_split_counts(name: str, split: str) -> None:
    num_sentences, num_tokens, per_type = COUNTS[name, split]
    examples = load_split(name, split)
    assert len(examples) == num_sentences
    assert _num_tokens(name, split) == num_tokens
    counts = Counter(e.label for ex in examples for e in ex.entities)
    assert dict(counts) == per_type
    assert sum(counts.values()) == TOTALS[name, split]
    assert {ex.lang for ex in examples} == {"zh" if name in ZH else "en"}
    assert [ex.id for ex in examples[:2]] == [f"{split}:0", f"{split}:1"]
    for ex in examples:
        assert [(e.start, e.end) for e in ex.entities] == sorted((e.start, e.end) for e in ex.entities)
        for e in ex.entities:
            assert e.text == ex.text[e.start : e.end]
            assert e.text and e.text == e.text.strip()


def test_every_dataset_is_covered() -> None:
    assert {name for name, _ in COUNTS} == set(DATASET_NAMES)
    for name in DATASET_NAMES:
        assert set(available_splits(name)) == {s for n, s in COUNTS if n == name}


def test_text_forms() -> None:
    first = load_split("conll2003", "train")[0]
    assert first.text == "EU rejects German call to boycott British lamb ."
    assert [(e.label, e.text, e.start, e.end) for e in first.entities] == [
        ("ORG", "EU", 0, 2), ("MISC", "German", 11, 17), ("MISC", "British", 34, 41)]
    weibo = load_split("weibo", "train")[0]
    assert weibo.text.startswith("科技全方位资讯智能")  # segmentation digits stripped
    assert not any(ch.isdigit() for ch in weibo.text[:9])
    genia = load_split("genia", "dev")[0]
    assert genia.text.startswith("Expression of c-fos , c-jun and jun B in")
    assert ("DNA", "jun B") in [(e.label, e.text) for e in genia.entities]


def test_dataset_info() -> None:
    conll = dataset_info("conll2003")
    assert (conll.name, conll.lang) == ("conll2003", "en")
    assert conll.labels == ["LOC", "PER", "ORG", "MISC"]
    assert conll.label_words == {t: t for t in conll.labels}
    msra = dataset_info("msra")
    assert msra.lang == "zh" and msra.labels == ["LOC", "PER", "ORG"]
    assert msra.label_words == {"PER": "名称", "LOC": "地点", "ORG": "组织"}
    weibo = dataset_info("weibo")
    assert weibo.labels[:2] == ["PER.NOM", "PER.NAM"] and len(weibo.labels) == 8
    assert weibo.label_words["PER.NAM"] == "人名"
    for name in DATASET_NAMES:
        info = dataset_info(name)
        assert set(info.label_words) == set(info.labels)
        assert len(set(info.label_words.values())) == len(info.labels)  # words are distinct


def test_folder_path_detects_format() -> None:
    for name in ("weibo", "genia", "conll2003", "ecommerce"):
        folder = datasets_root() / name
        split = "dev"
        by_path = load_split(str(folder), split)
        assert [(ex.text, ex.entities, ex.lang) for ex in by_path] == [
            (ex.text, ex.entities, ex.lang) for ex in load_split(name, split)]
    assert detect_format(split_path("weibo", "dev")).strip_digit
    assert not detect_format(split_path("msra", "test")).strip_digit
    assert detect_format(split_path("genia", "dev")).kind == "jsonlines"


def test_folder_path_with_valid_split_name(tmp_path) -> None:
    (tmp_path / "valid.txt").write_text("Paris B-LOC\nis O\nnice O\n\n", encoding="utf-8")
    (ex,) = load_split(str(tmp_path), "dev")
    assert ex.text == "Paris is nice" and ex.entities[0].text == "Paris"
    assert dataset_info(str(tmp_path)).labels == ["LOC"]


def test_unknown_dataset_or_split_is_a_helpful_error() -> None:
    with pytest.raises(InvalidInputError, match="unknown dataset 'nope'.*conll2003"):
        load_split("nope", "train")
    with pytest.raises(InvalidInputError, match="no 'train' split.*available: test"):
        load_split("msra", "train")


def test_datasets_root_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PADELLM_DATASETS", str(tmp_path))
    assert datasets_root() == tmp_path


def test_decode_tags_ill_formed() -> None:
    spans = lambda tags: [(s.label, s.start_token, s.end_token) for s in decode_tags(tags)]  # noqa: E731
    assert spans(["B-A", "I-A", "O", "I-A", "I-B", "B-B"]) == [
        ("A", 0, 2), ("A", 3, 4), ("B", 4, 5), ("B", 5, 6)]
    assert spans(["B-A", "M-A", "E-A", "E-A", "S-B", "M-B"]) == [
        ("A", 0, 3), ("A", 3, 4), ("B", 4, 5), ("B", 5, 6)]
    assert spans([]) == []


def test_ill_formed_starts_match_readme() -> None:
    # README: weibo train 10 / test 4, resume train 2 entities start with I-/M-/E-.
    for name, split, expected in (("weibo", "train", 10), ("weibo", "test", 4),
                                  ("resume", "train", 2), ("youku", "dev", 0)):
        path = split_path(name, split)
        num = 0
        for _tokens, tags in read_sentences(path, strip_digit=name == "weibo"):
            for span in decode_tags(tags):
                num += tags[span.start_token][0] in "IME"
        assert num == expected, (name, split)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"tokens": ["EU", "rejects"], "entity_mentions": [{"start": 0, "end": 5, "entity_type": "ORG"}]},
         "ORG [0, 5) is not a span of the 2 tokens"),
        ({"tokens": ["EU", "rejects"], "entity_mentions": [{"start": 1, "end": 0, "entity_type": "ORG"}]},
         "ORG [1, 0) is not a span"),
        ({"tokens": ["EU", "rejects"], "entity_mentions": [{"start": 0, "end": 0, "entity_type": "ORG"}]},
         "ORG [0, 0) is not a span"),
        ({"tokens": ["EU", "rejects"], "entity_mentions": [{"start": -1, "end": 1, "entity_type": "ORG"}]},
         "ORG [-1, 1) is not a span"),
        ({"tokens": [], "entity_mentions": []}, "the sentence has no tokens"),
    ],
)
def test_json_lines_spans_outside_the_sentence_are_an_error_with_file_and_line(
    tmp_path, record, message
) -> None:
    from padellm_ner.data.readers import read_jsonlines

    path = tmp_path / "test.json"
    path.write_text(json.dumps({"tokens": ["ok"], "entity_mentions": []}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(InvalidInputError, match=rf"test.json:2: .*{re.escape(message)}"):
        read_jsonlines(path, "test", "en")
