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


def test_a_users_folder_named_like_a_shared_dataset_is_read_by_its_content(tmp_path, monkeypatch) -> None:
    """``./resume`` holding English CoNLL used to be read as the shared Chinese Resume:
    tokens glued without spaces and Chinese prompt words for its tags."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resume").mkdir()
    (tmp_path / "resume" / "test.txt").write_text("EU B-ORG\nrejects O\nPeter B-NAME\nBlackburn I-NAME\n\n")
    (ex,) = load_split("resume", "test")
    assert ex.text == "EU rejects Peter Blackburn" and ex.lang == "en"
    info = dataset_info("resume")
    assert info.lang == "en" and info.label_words == {"ORG": "ORG", "NAME": "NAME"}
    # the shared one, by name or by its path, keeps its words
    assert dataset_info(str(datasets_root() / "resume")).word("NAME") == "人名"


def test_chinese_json_lines_with_escapes_are_chinese(tmp_path) -> None:
    """json.dumps writes \\u5f20 escapes by default: the raw file has no CJK character."""
    from padellm_ner.data.readers import detect_lang

    path = tmp_path / "test.jsonl"
    record = {"doc_id": "d1", "sent_id": 1, "tokens": list("张三在北京"),
              "entity_mentions": [{"start": 0, "end": 2, "entity_type": "PER"}]}  # fmt: skip
    path.write_text(json.dumps(record) + "\n")
    assert "\\u5f20" in path.read_text() and detect_lang(path) == "zh"
    (ex,) = load_split(str(tmp_path), "test")
    assert ex.text == "张三在北京" and ex.entities[0].text == "张三"


def test_two_files_for_one_split_are_an_error_and_names_are_case_blind(tmp_path) -> None:
    (tmp_path / "Test.txt").write_text("Paris B-LOC\n\n")
    (tmp_path / "VALIDATION.conll").write_text("Rome B-LOC\n\n")
    assert load_split(str(tmp_path), "test")[0].text == "Paris"
    assert load_split(str(tmp_path), "validation")[0].text == "Rome"  # the dev split
    (tmp_path / "test.bak").write_text("x B-FOO\n\n")
    with pytest.raises(InvalidInputError, match=r"2 files could be the 'test' split \(Test.txt, test.bak\)"):
        split_path(str(tmp_path), "test")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("Peter B-PER\nJones I_PER\n", "test.txt:2: tag 'I_PER' is not O or B-/I-/E-/S-/M-TYPE"),
        ("Peter b-per\n", "test.txt:1: tag 'b-per'"),
        ("# sent_id = 1\nPeter B-PER\n", "test.txt:1: tag '1'"),
        ("Peter B-PER\n\nJones\n", "test.txt:3: expected 'token tag' columns, got 'Jones'"),
    ],
)
def test_malformed_tagged_lines_are_errors_with_file_and_line(tmp_path, content: str, message: str) -> None:
    """A typo'd tag used to be read as O: its entities vanished from the gold data."""
    from padellm_ner.data.readers import read_file

    path = tmp_path / "test.txt"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        read_file(path, "test", "en")


def test_encoding_and_format_edge_cases(tmp_path) -> None:
    from padellm_ner.data.readers import read_file

    latin = tmp_path / "latin.txt"
    latin.write_bytes("Paris B-LOC\n\nK\xf6ln B-LOC\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"latin.txt:3: not UTF-8 \(byte 0xf6\)"):
        read_file(latin, "test", "en")
    brace = tmp_path / "brace.txt"  # a CoNLL file whose first token is '{'
    brace.write_text("{ O\nParis B-LOC\n}\tO\n")
    (ex,) = read_file(brace, "test")
    assert ex.text == "{ Paris }" and ex.entities[0].text == "Paris"
    years = tmp_path / "years.txt"  # tokens ending in digits are not Weibo's
    years.write_text("1990 B-DATE\nand O\n2000 B-DATE\n".replace("and O", "x1 O"))
    assert detect_format(years).strip_digit is False
    assert [e.text for e in read_file(years, "test")[0].entities] == ["1990", "2000"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"tokens": ["Peter", "x"], "entity_mentions": [{"start": 0, "end": 1, "entity_type": " PER"}]},
         "entity_type ' PER' has spaces around it"),
        ({"tokens": ["Peter", "x"], "entity_mentions": [{"start": 0, "end": 1, "entity_type": ""}]},
         "entity_type '' is not a label name"),
        ({"tokens": ["Peter", "x"], "entity_mentions": [{"start": 0.7, "end": 1, "entity_type": "PER"}]},
         "start 0.7 is not an integer offset"),
        ({"tokens": ["Peter", "x"], "entity_mentions": [{"start": False, "end": 1, "entity_type": "PER"}]},
         "start False is not an integer offset"),
        ({"tokens": "hello", "entity_mentions": []}, "tokens must be a list of strings"),
        ({"tokens": ["a", "", "b"], "entity_mentions": []}, "token 1 is empty"),
        ({"sentence": "x"}, 'expected {"tokens": [...]'),
        ({"text": " ", "entities": []}, "the sentence has no text"),
    ],
)
def test_malformed_json_lines_records_are_errors_with_file_and_line(tmp_path, record, message) -> None:
    from padellm_ner.data.readers import read_jsonlines

    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"tokens": ["ok"]}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(InvalidInputError, match=rf"test.jsonl:2: .*{re.escape(message)}"):
        read_jsonlines(path, "test", "en")


def test_character_offset_json_lines_are_gold_data(tmp_path) -> None:
    """``extract --output`` lines, corrected by hand, read back as a dataset."""
    from padellm_ner.data.readers import read_jsonlines

    path = tmp_path / "test.jsonl"
    lines = [
        {"id": 0, "text": "Japan beat Korea .", "entities": [
            {"label": "LOC", "text": "Korea", "start": 11, "end": 16, "score": 0.9},
            {"label": "LOC", "text": "Japan", "start": 0, "end": 5, "score": 0.99}]},
        {"text": "Nothing here .", "entities": []},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    first, second = read_jsonlines(path, "test", "en")
    assert [(e.label, e.text, e.start, e.end) for e in first.entities] == [
        ("LOC", "Japan", 0, 5), ("LOC", "Korea", 11, 16)]
    assert second.entities == [] and detect_format(path).kind == "jsonlines"
    lines[0]["entities"][0]["start"] = 10  # " Korea" is not what the record says
    path.write_text(json.dumps(lines[0]) + "\n")
    with pytest.raises(InvalidInputError, match=r"test.jsonl:1: entities LOC \[10, 16\) is ' Korea' in the text, not 'Korea'"):
        read_jsonlines(path, "test", "en")
    path.write_text(json.dumps({"text": "Japan", "entities": [{"label": "LOC", "start": 0, "end": 9}]}) + "\n")
    with pytest.raises(InvalidInputError, match=r"LOC \[0, 9\) is not a span of the 5 characters"):
        read_jsonlines(path, "test", "en")
