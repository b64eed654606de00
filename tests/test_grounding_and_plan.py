"""The PaDeLLM plan and offset grounding, driven by a fake ``LLM`` over a char tokenizer."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence

import pytest

from padellm_ner.codec import PromptCodec
from padellm_ner.grounding import find_occurrences, ground_mentions
from padellm_ner.llm import LLM, AsyncLLM, GenerationRequest, GenerationResult
from padellm_ner.plan import Dedup, PaDeLLMPlan, PlanConfig, arun_plan, run_plan
from padellm_ner.prompts.padellm import parse_count

END_ID = 1


class CharTokenizer:
    """One token per character (id = code point + 2); enough of the HF surface for PromptCodec."""

    pad_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = False, **_: object) -> dict[str, list[int]]:
        return {"input_ids": [ord(ch) + 2 for ch in text]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i - 2) for i in ids if i >= 2)

    def get_vocab(self) -> dict[str, int]:
        return {chr(c): c + 2 for c in range(0x250)}


class FakeLLM:
    """Answers count prompts from ``counts`` and mention prompts from ``mentions``.

    ``mentions[(label, k)] = (text, log_prob)``: the log-prob is spread over the tokens.
    ``counts[label]`` is the count text, or ``(text, log_prob)`` spread over its digits.
    """

    def __init__(
        self,
        codec: PromptCodec,
        counts: dict[str, str | tuple[str, float]],
        mentions: dict[tuple[str, int], tuple[str, float]] | None = None,
    ) -> None:
        self.codec = codec
        self.counts = counts
        self.mentions = mentions or {}
        self.requests: list[GenerationRequest] = []

    def _answer(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        prompt = self.codec.decode(list(request.prompt_ids))
        head, _, tail = prompt.partition("<num>")
        label = head.rsplit("entity type:\n", 1)[1].rstrip("\n")
        if not tail:
            count = self.counts.get(label, "0")
            count, count_lp = count if isinstance(count, tuple) else (count, 0.0)
            ids = self.codec.encode(count + "\n") + [END_ID]
            log_probs = [count_lp / max(1, len(count))] * len(count) + [0.0] * (len(ids) - len(count))
        else:
            k = int(re.search(r"<mention (\d+)>", tail).group(1))
            text, log_prob = self.mentions[label, k]
            ids = self.codec.encode(text) + [END_ID]
            log_probs = [log_prob / max(1, len(ids) - 1)] * len(ids)
        out: list[int] = []
        for token in ids[: request.max_new_tokens]:
            out.append(token)
            if token in request.stop_ids:
                return GenerationResult(out, log_probs[: len(out)], "stop")
        return GenerationResult(out, log_probs[: len(out)], "length")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [self._answer(r) for r in requests]

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        await asyncio.sleep(0)
        return self._answer(request)


@pytest.fixture
def codec() -> PromptCodec:
    return PromptCodec(CharTokenizer(), END_ID)


def _plan(codec, text, labels, **config) -> PaDeLLMPlan:
    return PaDeLLMPlan(text, labels, codec, PlanConfig(**config))


def _triples(entities) -> list[tuple]:
    return [(e.label, e.text, e.start, e.end) for e in entities]


# -- count parsing -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "count", "ok"),
    [("0", 0, True), ("3", 3, True), (" 2\n<mention 1>", 2, True), ("12 apples", 0, False),
     ("abc", 0, False), ("", 0, False), ("-1", 0, False), ("99", 32, False)],
)
def test_parse_count(raw: str, count: int, ok: bool) -> None:
    parsed = parse_count(raw)
    assert (parsed.count, parsed.ok) == (count, ok)


def test_bad_counts_become_zero_and_large_ones_are_clamped(codec) -> None:
    text = "Korea Korea Korea Korea"
    llm = FakeLLM(
        codec,
        counts={"LOC": "99", "ORG": "abc", "PER": "x1"},
        mentions={("LOC", k): ("Korea", -0.1) for k in range(1, 4)},
    )
    plan = _plan(codec, text, ["LOC", "ORG", "PER"], max_mentions=3)
    entities = run_plan(plan, llm)
    assert plan.counts == {"LOC": 3, "ORG": 0, "PER": 0}
    assert plan.stats.num_bad_counts == 3  # clamped 99 is flagged too
    assert len(llm.requests) == 3 + 3  # three counts, then exactly three LOC mentions
    assert "3\n<mention 3>" in codec.decode(list(llm.requests[-1].prompt_ids))
    assert _triples(entities) == [("LOC", "Korea", 0, 5), ("LOC", "Korea", 6, 11),
                                  ("LOC", "Korea", 12, 17)]
    assert isinstance(llm, LLM) and isinstance(llm, AsyncLLM)


def test_count_without_newline_is_bounded(codec) -> None:
    llm = FakeLLM(codec, counts={"LOC": "123456789"})
    plan = _plan(codec, "x", ["LOC"], max_count_tokens=4, max_mentions=16)
    plan.accept_counts(llm.generate(plan.count_requests()))
    assert plan.counts == {"LOC": 16}  # "1234" (cut at 4 tokens), clamped to 16


# -- de-duplication ------------------------------------------------------------------
TEXT = "Korea beat Korea in Seoul ."


def _korea_llm(codec, loc_lp: float, org_lp: float) -> FakeLLM:
    return FakeLLM(
        codec,
        counts={"LOC": "2", "ORG": "1", "PER": "0"},
        mentions={("LOC", 1): ("Korea", loc_lp), ("LOC", 2): ("Korea", loc_lp),
                  ("ORG", 1): ("Korea", org_lp)},
    )


def test_dedup_keeps_the_more_probable_label_and_same_label_repeats(codec) -> None:
    plan = _plan(codec, TEXT, ["LOC", "ORG", "PER"])
    entities = run_plan(plan, _korea_llm(codec, loc_lp=-0.1, org_lp=-2.0))
    assert _triples(entities) == [("LOC", "Korea", 0, 5), ("LOC", "Korea", 11, 16)]
    assert entities[0].score == pytest.approx(math.exp(-0.1))
    dropped = [m for m in plan.resolve() if not m.kept]
    assert [(m.label, m.text) for m in dropped] == [("ORG", "Korea")]


def test_dedup_other_label_wins_when_more_probable(codec) -> None:
    entities = run_plan(_plan(codec, TEXT, ["LOC", "ORG"]), _korea_llm(codec, -3.0, -0.5))
    assert _triples(entities) == [("ORG", "Korea", 0, 5)]


def test_dedup_span_and_off(codec) -> None:
    off = run_plan(_plan(codec, TEXT, ["LOC", "ORG"], dedup=Dedup.OFF), _korea_llm(codec, -3, -1))
    assert len(off) == 3
    # span rule: ORG's Korea lands on (0, 5) like LOC's first one; the more probable wins
    span = run_plan(_plan(codec, TEXT, ["LOC", "ORG"], dedup=Dedup.SPAN), _korea_llm(codec, -3, -1))
    assert _triples(span) == [("ORG", "Korea", 0, 5), ("LOC", "Korea", 11, 16)]


# -- offsets ---------------------------------------------------------------------------
def test_ground_mentions_repeated_and_absent() -> None:
    text = "Korea and Japan : Korea"
    assert ground_mentions(text, ["Korea", "Korea"]) == [(0, 5), (18, 23)]
    assert ground_mentions(text, ["Korea", "Korea", "Korea"]) == [(0, 5), (18, 23), None]
    assert ground_mentions(text, ["Seoul", "Japan"]) == [None, (10, 15)]
    # whole words first: "Korea" inside "Koreans" is only a fallback
    assert find_occurrences("Koreans love Korea", "Korea") == [(13, 18), (0, 5)]
    assert ground_mentions("Koreans love Korea", ["Korea"]) == [(13, 18)]
    assert ground_mentions("北京和北京", ["北京", "北京"]) == [(0, 2), (3, 5)]
    assert ground_mentions("abc", [""]) == [None]
    # any script's letters bound a word, and a combining mark belongs to the letter before
    assert find_occurrences("Kölner in Köln", "Köln") == [(10, 14), (0, 4)]
    assert find_occurrences("Москвич и Москва", "Москв") == [(0, 5), (10, 15)]  # no whole one
    assert ground_mentions("Paris\u0301 is not Paris .", ["Paris"]) == [(14, 19)]
    assert ground_mentions("去北京和北京人", ["北京"]) == [(1, 3)]  # ideographs: no word boundary
    # the model's spacing may differ from the text's: still found, exact copies first
    assert ground_mentions("in New\u00a0York and New\tYork", ["New York", "New York"]) == [(3, 11), (16, 24)]
    assert ground_mentions("New  York or New York", ["New York"]) == [(13, 21)]
    assert ground_mentions("NewYork", ["New York"]) == [None]


def test_plan_keeps_ungrounded_mentions_without_offsets(codec) -> None:
    llm = FakeLLM(
        codec,
        counts={"LOC": "2", "PER": "1"},
        mentions={("LOC", 1): ("Seoul", -0.2), ("LOC", 2): ("Atlantis", -0.3),
                  ("PER", 1): ("", -0.1)},  # an empty mention is no entity
    )
    entities = run_plan(_plan(codec, TEXT, ["LOC", "PER"]), llm)
    assert _triples(entities) == [("LOC", "Seoul", 20, 25), ("LOC", "Atlantis", None, None)]
    assert not entities[1].grounded
    for e in entities:
        assert e.start is None or TEXT[e.start : e.end] == e.text


def test_an_entity_spaced_otherwise_in_the_text_gets_the_texts_own_words(codec) -> None:
    text = "Flights to New\u00a0York today ."
    llm = FakeLLM(codec, counts={"LOC": "1"}, mentions={("LOC", 1): ("New York", -0.2)})
    entities = run_plan(_plan(codec, text, ["LOC"]), llm)
    assert _triples(entities) == [("LOC", "New\u00a0York", 11, 19)]
    assert text[entities[0].start : entities[0].end] == entities[0].text


def test_plan_drops_repeats_beyond_the_copies_in_the_text(codec) -> None:
    """Two LOC "Seoul" for a sentence holding one: the surplus copy is no entity."""
    llm = FakeLLM(
        codec,
        counts={"LOC": "3", "ORG": "1"},
        mentions={("LOC", 1): ("Seoul", -0.5), ("LOC", 2): ("Seoul", -0.1),
                  ("LOC", 3): ("Atlantis", -0.4), ("ORG", 1): ("Seoul", -0.3)},
    )
    plan = _plan(codec, TEXT, ["LOC", "ORG"])
    entities = run_plan(plan, llm)
    # LOC's surest "Seoul" branch (-0.1) decides the label; the surplus copy is then dropped
    assert _triples(entities) == [("LOC", "Seoul", 20, 25), ("LOC", "Atlantis", None, None)]
    assert [(m.label, m.k) for m in plan.resolve() if not m.kept] == [("LOC", 2), ("ORG", 1)]


def test_plan_keeps_one_of_repeated_strings_the_text_does_not_hold(codec) -> None:
    """A model looping on a string not in the text ("111...", 16 times) gave 16 entities
    without offsets (16 span false positives); it is one entity."""
    llm = FakeLLM(codec, counts={"LOC": "3"},
                  mentions={("LOC", k): ("Atlantis", -0.1 * k) for k in (1, 2, 3)})  # fmt: skip
    entities = run_plan(_plan(codec, TEXT, ["LOC"]), llm)
    assert _triples(entities) == [("LOC", "Atlantis", None, None)]


def test_arun_plan_matches_run_plan_and_streams_labels(codec) -> None:
    seen: list[tuple[str, int]] = []

    async def on_label(label, entities) -> None:
        seen.append((label, len(entities)))

    llm = _korea_llm(codec, -0.1, -2.0)
    plan = _plan(codec, TEXT, ["LOC", "ORG", "PER"])
    entities = asyncio.run(arun_plan(plan, llm, max_concurrency=2, on_label=on_label))
    assert _triples(entities) == _triples(
        run_plan(_plan(codec, TEXT, ["LOC", "ORG", "PER"]), _korea_llm(codec, -0.1, -2.0)))
    assert seen[0] == ("PER", 0)  # a zero-count label is final right after counting
    assert sorted(seen) == [("LOC", 2), ("ORG", 0), ("PER", 0)]


# -- count hedging -----------------------------------------------------------------------
def _hedge_llm(codec) -> FakeLLM:
    """LOC and ORG doubt their count of 1, PER its 0; MISC is sure of its 0."""
    return FakeLLM(
        codec,
        counts={"LOC": ("1", math.log(0.6)), "ORG": ("1", math.log(0.5)),
                "PER": ("0", math.log(0.5)), "MISC": "0"},
        mentions={("LOC", 1): ("Korea", -0.1), ("LOC", 2): ("Seoul", -0.2),  # a new mention
                  ("ORG", 1): ("Korea", -3.0), ("ORG", 2): ("Korea", -0.1),  # a repeat
                  ("PER", 1): ("Korea", -0.05)},  # LOC's surer Korea wins de-dup
    )


HEDGE_LABELS = ["LOC", "ORG", "PER", "MISC"]


def test_count_hedge_decodes_one_more_branch_for_a_doubted_count(codec) -> None:
    llm = _hedge_llm(codec)
    plan = _plan(codec, TEXT, HEDGE_LABELS, count_hedge=0.7)
    entities = run_plan(plan, llm)
    assert plan.counts == {"LOC": 1, "ORG": 1, "PER": 0, "MISC": 0}  # the greedy counts
    assert plan.count_probs["LOC"] == pytest.approx(0.6) and plan.count_probs["MISC"] == 1.0
    assert plan.hedged == {"LOC", "ORG", "PER"}
    assert plan.mention_keys == [("LOC", 1), ("LOC", 2), ("ORG", 1), ("ORG", 2), ("PER", 1)]
    prompts = [codec.decode(list(r.prompt_ids)) for r in llm.requests[4:]]
    # NOTE: a hedge branch is written as the count it stands for.
    assert [p.rsplit("<num>", 1)[1] for p in prompts] == [
        "1\n<mention 1>", "2\n<mention 2>", "1\n<mention 1>", "2\n<mention 2>", "1\n<mention 1>"]
    assert _triples(entities) == [("LOC", "Korea", 0, 5), ("LOC", "Seoul", 20, 25)]
    assert entities[1].score == pytest.approx(math.exp(-0.2) * (1 - 0.6))  # P(mention) (1 - P(n))
    assert plan.stats.num_sequences == 4 + 5  # hedges cost sequences ...
    assert plan.stats.critical_path_steps_batch == 2 + 6  # ... but no step beyond the longest
    plain = run_plan(_plan(codec, TEXT, HEDGE_LABELS), _hedge_llm(codec))
    assert _triples(plain) == [("LOC", "Korea", 0, 5)]  # the paper's plan misses Seoul


@pytest.mark.parametrize("tau", [0.0, 0.55, 0.65, 1.0])
def test_count_hedge_resolved_lower_equals_decoded_lower(codec, tau: float) -> None:
    """One decode at the highest threshold answers every lower one (evaluate's sweep)."""
    high = _plan(codec, TEXT, HEDGE_LABELS, count_hedge=1.0)
    run_plan(high, _hedge_llm(codec))
    direct = run_plan(_plan(codec, TEXT, HEDGE_LABELS, count_hedge=tau), _hedge_llm(codec))
    assert [e.to_dict() for e in high.entities(tau)] == [e.to_dict() for e in direct]


def test_count_hedge_streams_each_label_once_and_is_bounded(codec) -> None:
    seen: list[tuple[str, int]] = []

    async def on_label(label, entities) -> None:
        seen.append((label, len(entities)))

    plan = _plan(codec, TEXT, HEDGE_LABELS, count_hedge=0.7)
    entities = asyncio.run(arun_plan(plan, _hedge_llm(codec), on_label=on_label))
    assert _triples(entities) == [("LOC", "Korea", 0, 5), ("LOC", "Seoul", 20, 25)]
    assert seen[0] == ("MISC", 0)  # sure of its zero: final after counting
    assert sorted(seen) == [("LOC", 2), ("MISC", 0), ("ORG", 0), ("PER", 0)]
    capped = _plan(codec, TEXT, HEDGE_LABELS, count_hedge=0.7, max_mentions=1)
    run_plan(capped, _hedge_llm(codec))
    assert capped.hedged == {"PER"}  # a count at max_mentions gets no branch beyond it
    with pytest.raises(ValueError, match="count_hedge"):
        PlanConfig(count_hedge=1.5)


def test_baseline_answers_only_the_labels_asked_for(codec) -> None:
    """AutoReg_Struct writes one free-form sequence; labels not asked for are dropped."""
    from padellm_ner.baseline_plan import BaselinePlan

    plan = BaselinePlan("ar_struct", TEXT, {"LOC": "LOC", "PER": "PER"}, codec)
    output = "((PER: Korea), (ORLANDO: Korea), (ORG: Korea), (LOC: Seoul))"
    ids = codec.encode(output) + [END_ID]
    entities = plan.accept([GenerationResult(ids, [-0.1] * len(ids), "stop")])
    assert _triples(entities) == [("PER", "Korea", 0, 5), ("LOC", "Seoul", 20, 25)]
