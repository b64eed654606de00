"""``Extractor.extract_batch`` (what ``evaluate`` uses) and ``aextract`` on concurrent
coroutines (``bench load --model``) answer each sentence as ``extract``.

Real parts: the committed default adapter on the SmolLM2 base, the real engine. Batching
sentences only changes how many rows share an engine step; greedy decoding must give every
sentence the same entities, scores and step counts as decoding it alone.
"""

from __future__ import annotations

import asyncio

import pytest

from padellm_ner.errors import InvalidInputError
from padellm_ner.extraction import Extractor
from padellm_ner.llm import GenerationRequest

TEXTS = [
    "Japan, co-hosts of the World Cup in 2002 with Korea, are favourites .",
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn",
]


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    return Extractor.from_pretrained("default", device="cpu", dtype="float32")


def _key(out) -> tuple:
    ents = [(e.label, e.text, e.start, e.end, round(e.score, 4)) for e in out.entities]
    return ents, out.num_sequences, out.num_generated_tokens, out.critical_path_steps


@pytest.mark.parametrize("method", ["padellm", "ar_struct"])
def test_batch_equals_one_at_a_time(extractor: Extractor, method: str) -> None:
    extractor.method, extractor.max_new_tokens = method, 24
    try:
        alone = [extractor.extract(t) for t in TEXTS]
        together = extractor.extract_batch(TEXTS)
    finally:
        extractor.method, extractor.max_new_tokens = "padellm", 160
    assert [_key(o) for o in together] == [_key(o) for o in alone]
    if method == "padellm":
        assert [o.counts for o in together] == [o.counts for o in alone]
        assert any(o.entities for o in alone)  # the adapter finds something: not a vacuous check


def test_batch_rejects_bad_input(extractor: Extractor) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        extractor.extract_batch(["Japan .", "  "])
    with pytest.raises(InvalidInputError, match="languages"):
        extractor.extract_batch(["Japan ."], langs=["en", "en"])


@pytest.mark.parametrize("method", ["padellm", "ar_struct"])
def test_concurrent_aextract_equals_one_at_a_time(extractor: Extractor, method: str) -> None:
    """Sentences sent concurrently through an ``EngineLoop`` (as the orchestrator sends
    them to the served ``llm`` model) join one running batch, with arrivals mixed across
    phases, and each gets the entities, scores and step counts it gets alone."""
    from padellm_ner.engine import AsyncEngineLLM, EngineLoop

    extractor.method, extractor.max_new_tokens = method, 24
    loop = EngineLoop(extractor.llm.core, batch_window_s=0.005)
    try:
        alone = [extractor.extract(t) for t in TEXTS]
        before = loop.stats
        llm = AsyncEngineLLM(loop)

        async def run() -> list:
            return await asyncio.gather(*(extractor.aextract(t, llm) for t in TEXTS))

        together = asyncio.run(run())
        after = loop.stats
        with pytest.raises(InvalidInputError, match="empty"):
            asyncio.run(extractor.aextract("  ", llm))
        # refused on the engine thread (too long), raised to the awaiting caller
        too_long = GenerationRequest((5,) * loop.core.max_model_len, 8, (2,))
        with pytest.raises(InvalidInputError, match="text too long"):
            asyncio.run(llm.agenerate(too_long))
    finally:
        loop.shutdown()
        extractor.method, extractor.max_new_tokens = "padellm", 160
    assert [_key(o) for o in together] == [_key(o) for o in alone]
    # the sentences shared engine steps: fewer prefills than requests
    prefills = after.num_prefill_forwards - before.num_prefill_forwards
    assert prefills < sum(o.num_sequences for o in alone)


def test_labels_follow_the_served_rules_in_process(extractor: Extractor) -> None:
    """One line, not empty, at most 64: what the orchestrator refuses, ``extract`` refuses
    too (it used to put a newline into the prompt and answer with label 'PER\\nLOC')."""
    for labels, message in ((["PER\nLOC"], r"labels\[0\] contains the control character"),
                            (["PER", ""], r"labels\[1\] is empty"),
                            ([f"L{i}" for i in range(65)], "at most 64"),
                            ("PER", "not one string")):
        with pytest.raises(InvalidInputError, match=message):
            extractor.extract("Japan beat Korea .", labels)
