"""``evaluate_model`` against a hand-computed F1.

The LLM here is a scripted stand-in that answers PaDeLLM prompts from a table (a fake
of the ``LLM`` protocol, as STYLE.md allows for plan logic): the point is to check the
scoring arithmetic end to end through the real plan, codec and SmolLM2 tokenizer, with
known predictions. Real-model evaluation is exercised by tests/test_train.py.
"""

from __future__ import annotations

import re

import pytest

from padellm_ner.codec import PromptCodec
from padellm_ner.errors import InvalidInputError
from padellm_ner.evaluate import evaluate_model
from padellm_ner.extraction import Extractor
from padellm_ner.llm import GenerationRequest, GenerationResult
from padellm_ner.models import load_tokenizer
from padellm_ner.types import Entity, Example

LABELS = ["LOC", "PER", "ORG", "MISC"]


def _ex(text: str, *spans: tuple[str, str]) -> Example:
    entities = []
    for label, mention in spans:
        start = text.index(mention)
        entities.append(Entity(label, mention, start, start + len(mention)))
    return Example(text, sorted(entities, key=lambda e: e.start))


EXAMPLES = [
    _ex("EU rejects German call to boycott British lamb .",
        ("ORG", "EU"), ("MISC", "German"), ("MISC", "British")),
    _ex("Peter Blackburn met Japan .", ("PER", "Peter Blackburn"), ("LOC", "Japan")),
    _ex("BRUSSELS 1996-08-22", ("LOC", "BRUSSELS")),
]
# what the scripted model answers: (sentence index, label) -> mentions
ANSWERS = {
    (0, "ORG"): ["EU"], (0, "MISC"): ["German", "British"],  # all right: 3 tp
    (1, "LOC"): ["Japan", "Blackburn"],  # 1 tp, 1 fp; PER missed: 1 fn
    (2, "LOC"): ["Brussels"],  # not in the text: 1 fp, 1 fn
}


class ScriptedLLM:
    """Answers count and mention prompts from ``ANSWERS`` via the real tokenizer."""

    def __init__(self, codec: PromptCodec) -> None:
        self.codec = codec

    def _answer(self, prompt: str) -> str:
        match = re.match(r"text:\n(.*)\nentity type:\n(.*)\n\n<num>(.*)", prompt, re.S)
        assert match, prompt
        index = [e.text for e in EXAMPLES].index(match.group(1))
        mentions = ANSWERS.get((index, match.group(2)), [])
        tail = re.search(r"<mention (\d+)>$", match.group(3))
        if tail is None:
            return f"{len(mentions)}\n" if mentions else "0"
        return mentions[int(tail.group(1)) - 1]

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for req in requests:
            answer = self._answer(self.codec.decode(list(req.prompt_ids)))
            ids = self.codec.encode(answer)
            if not answer.endswith("\n"):
                ids.append(self.codec.end_id)
            results.append(GenerationResult(ids, [-0.1] * len(ids), "stop"))
        return results


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    tokenizer = load_tokenizer("smollm2-135m")
    codec = PromptCodec(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return Extractor(ScriptedLLM(codec), codec)


def test_evaluate_matches_hand_computed_f1(extractor: Extractor) -> None:
    result = evaluate_model(extractor, EXAMPLES, LABELS, progress=False)
    micro = result.report.micro
    assert (micro.tp, micro.fp, micro.fn) == (4, 2, 2)
    assert result.report.to_dict()["f1"] == pytest.approx(100 * 2 * (4 / 6) * (4 / 6) / (8 / 6))
    span = result.report.span_micro  # "Blackburn" grounds inside "Peter Blackburn": still fp
    assert (span.tp, span.fp, span.fn) == (4, 2, 2)
    per = result.report.per_label
    assert (per["LOC"].tp, per["LOC"].fp, per["LOC"].fn) == (1, 2, 1)
    assert (per["PER"].tp, per["PER"].fp, per["PER"].fn) == (0, 0, 1)
    assert result.count_accuracy == pytest.approx(10 / 12)  # sentence 2: PER and LOC wrong
    assert result.count_too_low == pytest.approx(1 / 12)  # PER: 0 said, 1 there
    assert result.count_too_high == pytest.approx(1 / 12)  # LOC: 2 said, 1 there
    assert "(too low 8.33%, too high 8.33%)" in result.format_text()
    # 4 count branches per sentence + one branch per predicted mention (3, 2, 1)
    assert result.mean_sequences_per_sentence == pytest.approx((4 + 3 + 4 + 2 + 4 + 1) / 3)


def test_shards_merge_to_the_whole(extractor: Extractor, tmp_path, capsys) -> None:
    """``evaluate --merge`` of per-shard ``--json`` reports equals one run over all."""
    import json

    from padellm_ner.cli import main
    from padellm_ner.evaluate import merge_results, result_from_dict

    whole = evaluate_model(extractor, EXAMPLES, LABELS, progress=False).to_dict()
    parts = [evaluate_model(extractor, EXAMPLES[:1], LABELS, progress=False),
             evaluate_model(extractor, EXAMPLES[1:], LABELS, progress=False)]  # fmt: skip
    merged = merge_results([result_from_dict(p.to_dict()) for p in parts]).to_dict()
    for key in ("f1", "count_accuracy", "count_too_low", "count_too_high",
                "mean_sequences_per_sentence", "mean_tokens_per_sequence"):
        assert merged[key] == pytest.approx(whole[key])
    assert merged["set"] == whole["set"] and merged["span"] == whole["span"]

    files = []
    for i, part in enumerate(parts):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(part.to_dict()))
    assert main(["evaluate", "--merge", *map(str, files), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(whole["f1"])
    (tmp_path / "bad.json").write_text("{}")
    assert main(["evaluate", "--merge", str(tmp_path / "bad.json")]) == 2
    assert "not an `evaluate --json` report" in capsys.readouterr().err

    # shards that are not of one run are refused: the same file twice, another model
    run = {"model": "m", "dataset": "conll2003", "split": "test"}
    parts[0].shard, parts[1].shard = {**run, "skip": 0, "sentences": 1}, {**run, "skip": 1, "sentences": 2}
    assert merge_results(parts).shard == {**run, "skip": 0, "sentences": 3}
    for i, part in enumerate(parts):
        files[i].write_text(json.dumps(part.to_dict()))
    assert main(["evaluate", "--merge", str(files[0]), str(files[1]), str(files[1])]) == 2
    assert "the shards overlap: sentences 1..3 and 1..3" in capsys.readouterr().err
    parts[1].shard["model"] = "other"
    with pytest.raises(InvalidInputError, match="differ in model: m, other"):
        merge_results(parts)
    parts[1].shard["model"] = "m"
    # shards asked for other labels (or run with another method or de-dup) score other things
    parts[0].shard["labels"], parts[1].shard["labels"] = ["LOC", "PER"], ["LOC"]
    with pytest.raises(InvalidInputError, match=re.escape('differ in labels: ["LOC", "PER"], ["LOC"]')):
        merge_results(parts)
    parts[1].shard["labels"] = ["LOC", "PER"]
    parts[0].shard["method"], parts[1].shard["method"] = "ar_struct", "onestep"
    with pytest.raises(InvalidInputError, match="differ in method: ar_struct, onestep"):
        merge_results(parts)
    parts[1].shard["method"] = "ar_struct"
    assert merge_results(parts).shard["labels"] == ["LOC", "PER"]
    # a hand-edited field of the wrong type: a message, not a traceback
    broken = parts[0].to_dict()
    broken["shard"] = {**run, "skip": "abc", "sentences": 1}
    files[1].write_text(json.dumps(broken))
    assert main(["evaluate", "--merge", str(files[0]), str(files[1])]) == 2
    assert "a report has a malformed field" in capsys.readouterr().err


def test_batching_sentences_does_not_change_the_report(extractor: Extractor) -> None:
    one = evaluate_model(extractor, EXAMPLES, LABELS, progress=False).to_dict()
    two = evaluate_model(extractor, EXAMPLES, LABELS, progress=False, batch_sentences=2).to_dict()
    assert two == one



class HedgingLLM(ScriptedLLM):
    """``ScriptedLLM`` that doubts sentence 1's PER count of 0 (P 0.4; every other count
    has P 0.905) and answers hedge branches (``k`` past the count) from ``HEDGES``."""

    HEDGES = {(1, "PER"): "Peter Blackburn",  # the missed PER: a hedge finds it
              (0, "LOC"): "EU"}  # a wrong guess: ORG's surer "EU" wins de-dup

    def _answer(self, prompt: str) -> str:
        match = re.match(r"text:\n(.*)\nentity type:\n(.*)\n\n<num>(.*)", prompt, re.S)
        index = [e.text for e in EXAMPLES].index(match.group(1))
        tail = re.search(r"<mention (\d+)>$", match.group(3))
        known = ANSWERS.get((index, match.group(2)), [])
        if tail is not None and int(tail.group(1)) > len(known):
            return self.HEDGES.get((index, match.group(2)), "")
        return super()._answer(prompt)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results = super().generate(requests)
        for req, result in zip(requests, results):
            prompt = self.codec.decode(list(req.prompt_ids))
            if prompt.startswith(EXAMPLES[1].text, len("text:\n")) and prompt.endswith("PER\n\n<num>"):
                result.log_probs = [-0.916] + result.log_probs[1:]  # P("0") = 0.4
        return results


def test_count_hedge_sweep_matches_hand_computed_f1(tmp_path, capsys) -> None:
    import json

    from padellm_ner.evaluate import merge_results, result_from_dict
    from padellm_ner.plan import PlanConfig

    tokenizer = load_tokenizer("smollm2-135m")
    codec = PromptCodec(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    swept = Extractor(HedgingLLM(codec), codec, plan_config=PlanConfig(count_hedge=1.0),
                      hedge_sweep=(0.0, 0.5, 1.0))
    result = evaluate_model(swept, EXAMPLES, LABELS, progress=False)
    scores = {s.count_hedge: (s.report.micro.tp, s.report.micro.fp, s.report.micro.fn)
              for s in result.sweep}  # fmt: skip
    assert scores == {0.0: (4, 2, 2), 0.5: (5, 2, 1), 1.0: (5, 2, 1)}
    assert [s.hedge_branches for s in result.sweep] == [0.0, pytest.approx(1 / 3), 4.0]
    assert result.count_hedge == 1.0 and result.report.micro.tp == 5
    for tau, (tp, fp, fn) in scores.items():  # the sweep is what decoding at each gives
        alone = evaluate_model(Extractor(HedgingLLM(codec), codec, plan_config=PlanConfig(count_hedge=tau)),
                               EXAMPLES, LABELS, progress=False)  # fmt: skip
        assert (alone.report.micro.tp, alone.report.micro.fp, alone.report.micro.fn) == (tp, fp, fn)
    assert "count_hedge" in result.format_text() and "hedges/sent" in result.format_sweep()
    parts = [evaluate_model(swept, EXAMPLES[:2], LABELS, progress=False),
             evaluate_model(swept, EXAMPLES[2:], LABELS, progress=False)]  # fmt: skip
    merged = merge_results([result_from_dict(json.loads(json.dumps(p.to_dict()))) for p in parts])
    assert [s.report.to_dict() for s in merged.sweep] == [s.report.to_dict() for s in result.sweep]
    plain = evaluate_model(Extractor(HedgingLLM(codec), codec), EXAMPLES[:1], LABELS, progress=False)
    with pytest.raises(Exception, match="count_hedge"):
        merge_results([parts[0], plain])


@pytest.mark.parametrize("value", ["x", "1.5", "-0.1", ","])
def test_bad_count_hedge_is_a_cli_error(value: str, capsys) -> None:
    from padellm_ner.cli import main

    assert main(["evaluate", "--dataset", "conll2003", "--count-hedge", value, "--limit", "1"]) == 2
    assert "--count-hedge" in capsys.readouterr().err


def test_arguments_that_would_score_nothing_are_refused_before_the_model_loads(tmp_path, capsys) -> None:
    """A typo in --labels (``PERSON`` for ``PER``) would cost a whole run that scores
    only false positives; it is refused while nothing but the dataset has been read."""
    from padellm_ner.cli import main

    assert main(["evaluate", "--dataset", "conll2003", "--labels", "PERSON", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "conll2003 tags none of them" in err and "PER" in err
    # a folder whose files read but tag nothing (plain text) would have failed after the load
    untagged = tmp_path / "untagged"
    untagged.mkdir()
    (untagged / "test.txt").write_text("hello world\nthis is not conll\n")
    assert main(["evaluate", "--dataset", str(untagged), "--split", "test"]) == 2
    assert "test.txt:1: tag 'world' is not O or B-/I-/E-/S-/M-TYPE" in capsys.readouterr().err
    (untagged / "test.txt").write_text("hello O\nworld O\n")  # CoNLL, but no entity at all
    assert main(["evaluate", "--dataset", str(untagged), "--split", "test"]) == 2
    assert "tags no entity in any split" in capsys.readouterr().err
    # a shard past the end would have scored 0 sentences and exited 0
    assert main(["evaluate", "--dataset", "conll2003", "--skip", "3453"]) == 2
    assert "--skip 3453 leaves no sentence: conll2003/test has 3453" in capsys.readouterr().err
    # a split that holds no sentence (only -DOCSTART-) while another split tags entities
    docstart = tmp_path / "docstart"
    docstart.mkdir()
    (docstart / "train.txt").write_text("Japan B-LOC\nwins O\n")
    (docstart / "test.txt").write_text("-DOCSTART- -X- -X- O\n\n")
    assert main(["evaluate", "--dataset", str(docstart), "--split", "test"]) == 2
    assert f"{docstart}/test has no sentences" in capsys.readouterr().err


def test_a_sentence_the_model_refuses_is_named(extractor: Extractor) -> None:
    """A sentence too long for the model used to abort the run with the engine's request
    id; the error now says which sentence, whichever batch it was decoded in."""
    from padellm_ner.evaluate import SentenceError

    class Refusing(ScriptedLLM):
        def generate(self, requests):
            if any("BRUSSELS" in self.codec.decode(list(r.prompt_ids)) for r in requests):
                raise InvalidInputError("text too long for this model")
            return super().generate(requests)

    refusing = Extractor(Refusing(extractor.codec), extractor.codec)
    for batch in (1, 2, 3):
        with pytest.raises(SentenceError) as info:
            evaluate_model(refusing, EXAMPLES, LABELS, progress=False, batch_sentences=batch)
        assert info.value.index == 2 and "text too long" in info.value.why


def test_what_the_model_would_refuse_is_refused_before_it_loads(tmp_path, capsys) -> None:
    """A blank sentence or more than 64 labels failed mid-run, after the model loaded."""
    from padellm_ner.cli import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "test.txt").write_text("Japan B-LOC\nwins O\n\n\u3000 O\n\n")
    assert main(["evaluate", "--dataset", str(data), "--model", "/nonexistent"]) == 2
    assert "data/test sentence #1 ('\\u3000'): text is empty" in capsys.readouterr().err
    many = tmp_path / "many"  # NOTE: another folder: splits are cached by path
    many.mkdir()
    (many / "test.txt").write_text("".join(f"w{i} B-T{i}\n" for i in range(66)) + "\n")
    assert main(["evaluate", "--dataset", str(many), "--model", "/nonexistent"]) == 2
    assert "the labels of" in (err := capsys.readouterr().err) and "66 labels; at most 64" in err


def test_merge_refuses_holes_and_run_options(extractor: Extractor, tmp_path, capsys) -> None:
    import json

    from padellm_ner.cli import main

    parts = [evaluate_model(extractor, EXAMPLES[:1], LABELS, progress=False),
             evaluate_model(extractor, EXAMPLES[2:], LABELS, progress=False)]  # fmt: skip
    run = {"model": "m", "dataset": "conll2003", "split": "test"}
    parts[0].shard, parts[1].shard = {**run, "skip": 0, "sentences": 1}, {**run, "skip": 2, "sentences": 1}
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    for part, path in zip(parts, files):
        path.write_text(json.dumps(part.to_dict()))
    assert main(["evaluate", "--merge", *map(str, files)]) == 2
    assert "the shards leave sentences 1..2 out" in capsys.readouterr().err
    assert main(["evaluate", "--merge", str(files[0]), "--dataset", "wnut17", "--limit", "5"]) == 2
    assert "--dataset, --limit would be ignored" in capsys.readouterr().err
