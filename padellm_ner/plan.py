"""The PaDeLLM decoding plan, written once.

labels -> count prompts -> counts (bounded) -> mention prompts with ``{n}\\n<mention k>``
appended -> greedy mentions with log-probs -> cross-label de-dup -> character offsets.

The plan is a small state machine with no I/O: it hands out ``GenerationRequest``s and
takes ``GenerationResult``s, so the in-process engine (``run_plan``), the Triton
orchestrator (``arun_plan`` over an ``AsyncLLM``) and tests drive the same code.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from padellm_ner.codec import PromptCodec
from padellm_ner.grounding import ground_mentions
from padellm_ner.llm import LLM, AsyncLLM, GenerationRequest, GenerationResult
from padellm_ner.prompts.padellm import parse_count, template_for
from padellm_ner.types import Entity

__all__ = ["PlanConfig", "Dedup", "Mention", "PlanStats", "PaDeLLMPlan", "run_plan", "run_plans", "generate_split", "arun_plan", "gather_or_cancel"]

logger = logging.getLogger(__name__)


class Dedup(str, Enum):
    """How predictions of one string under several labels are resolved."""

    STRING = "string"  # the paper: keep the string only under its most probable label
    SPAN = "span"  # only the same character span under several labels conflicts
    OFF = "off"


@dataclass(frozen=True)
class PlanConfig:
    """Bounds and switches of one extraction.

    Attributes:
        max_mentions: upper bound on a parsed count (fan-out per label).
        max_count_tokens: tokens allowed for the count ("12\\n" is 2-3 tokens).
        max_mention_tokens: tokens allowed for one mention string.
        dedup: cross-label de-duplication rule.
        count_hedge: when the greedy count ``n`` of a label has probability below this,
            one more branch decodes mention ``n+1`` (prefix ``{n+1}\n<mention n+1>``) in
            the same mention phase, so it costs a sequence but no decode step. Its mention
            counts only when it is new to the label and survives de-dup, scored
            ``P(mention) * (1 - P(n))``. A count too low always loses recall; this buys
            some back where the model itself doubts its count. 0 is the paper (off).
    """

    max_mentions: int = 16
    max_count_tokens: int = 4
    max_mention_tokens: int = 24
    dedup: Dedup = Dedup.STRING
    count_hedge: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.count_hedge <= 1.0:
            raise ValueError(f"count_hedge is {self.count_hedge}; it must be between 0 and 1")


@dataclass
class Mention:
    """One decoded mention branch, before it becomes an ``Entity``."""

    label: str
    k: int
    text: str
    log_prob: float
    num_steps: int
    start: int | None = None
    end: int | None = None
    kept: bool = True
    hedge: bool = False  # the extra branch ``n+1`` of a doubted count (``count_hedge``)

    @property
    def score(self) -> float:
        return math.exp(self.log_prob)


@dataclass
class PlanStats:
    """What the decode cost, for evaluate and bench.

    Attributes:
        count_steps: decode steps of each label's count branch.
        mention_steps: decode steps of each mention branch, keyed ``(label, k)``.
        num_sequences: sequences decoded (count + mention branches).
        num_generated_tokens: tokens generated over all sequences.
    """

    count_steps: dict[str, int] = field(default_factory=dict)
    mention_steps: dict[tuple[str, int], int] = field(default_factory=dict)
    num_bad_counts: int = 0

    @property
    def num_sequences(self) -> int:
        return len(self.count_steps) + len(self.mention_steps)

    @property
    def num_generated_tokens(self) -> int:
        return sum(self.count_steps.values()) + sum(self.mention_steps.values())

    @property
    def critical_path_steps_batch(self) -> int:
        """Batch mode: the longest count, then the longest mention (two synchronised phases)."""
        counts = max(self.count_steps.values(), default=0)
        mentions = max(self.mention_steps.values(), default=0)
        return counts + mentions

    @property
    def critical_path_steps(self) -> int:
        """Multi mode: the slowest single branch, count steps plus its mention steps."""
        worst = dict(self.count_steps)
        for (label, _k), steps in self.mention_steps.items():
            worst[label] = max(worst[label], self.count_steps[label] + steps)
        return max(worst.values(), default=0)


class PaDeLLMPlan:
    """Extraction of one text: call the phases in order.

    ``count_requests`` -> ``accept_counts`` -> ``mention_requests`` -> ``accept_mentions``
    -> ``entities``. ``label_done(label)`` tells streaming callers a label is final.
    """

    def __init__(
        self,
        text: str,
        labels: Sequence[str],
        codec: PromptCodec,
        config: PlanConfig | None = None,
        lang: str = "en",
    ) -> None:
        if not labels:
            raise ValueError("labels must not be empty")
        self.text = text
        self.labels = list(dict.fromkeys(labels))  # NOTE: de-duplicated, order kept
        self.codec = codec
        self.config = config or PlanConfig()
        self.template = template_for(lang)
        self.counts: dict[str, int] = {}
        self.count_probs: dict[str, float] = {}  # P(greedy count) per label
        self.hedged: set[str] = set()  # labels given the extra branch ``n+1``
        self.mentions: dict[str, list[Mention]] = {}
        self.stats = PlanStats()
        self._prompt_ids = {
            label: codec.encode_prompt(self.template.count_prompt(text, label)) for label in self.labels
        }
        self._mention_keys: list[tuple[str, int]] = []

    # -- phase 1: counts -------------------------------------------------------------
    def count_requests(self) -> list[GenerationRequest]:
        """One request per label, in ``self.labels`` order; decoding stops at a newline."""
        stop = (self.codec.end_id, *sorted(self.codec.newline_ids))
        return [
            GenerationRequest(
                prompt_ids=tuple(self._prompt_ids[label]),
                max_new_tokens=self.config.max_count_tokens,
                stop_ids=stop,
            )
            for label in self.labels
        ]

    def accept_counts(self, results: Sequence[GenerationResult]) -> None:
        if len(results) != len(self.labels):
            raise ValueError(f"expected {len(self.labels)} count results, got {len(results)}")
        for label, result in zip(self.labels, results):
            raw = self.codec.decode(self.codec.strip_stop(result.token_ids))
            # NOTE: a count that ran out of tokens without a newline or end id is cut
            # mid-number; parse_count still bounds it.
            parsed = parse_count(raw, self.config.max_mentions)
            self.stats.num_bad_counts += not parsed.ok
            self.counts[label] = parsed.count
            num_digits = len(self.codec.strip_stop(result.token_ids))
            self.count_probs[label] = math.exp(sum(result.log_probs[:num_digits]))
            if (
                parsed.ok
                and self.count_probs[label] < self.config.count_hedge
                and parsed.count < self.config.max_mentions
            ):
                self.hedged.add(label)
            self.stats.count_steps[label] = result.num_steps
            self.mentions[label] = []
        self._mention_keys = [
            (label, k)
            for label in self.labels
            for k in range(1, self.counts[label] + 1 + (label in self.hedged))
        ]

    # -- phase 2: mentions -----------------------------------------------------------
    @property
    def mention_keys(self) -> list[tuple[str, int]]:
        """``(label, k)`` of each mention request, in request order."""
        return list(self._mention_keys)

    def mention_requests(self) -> list[GenerationRequest]:
        """One request per (label, k): count prompt + appended ``{n}\\n<mention k>``.

        A hedge branch (``k = n+1``) is written as the count it stands for: ``{n+1}``.
        """
        requests = []
        for label, k in self._mention_keys:
            count = max(self.counts[label], k)
            prefix = self.codec.encode(self.template.mention_prefix(count, k))
            requests.append(
                GenerationRequest(
                    prompt_ids=tuple(self._prompt_ids[label] + prefix),
                    max_new_tokens=self.config.max_mention_tokens,
                    stop_ids=(self.codec.end_id,),
                )
            )
        return requests

    def accept_mention(self, key: tuple[str, int], result: GenerationResult) -> None:
        """Record one finished mention branch (any order)."""
        label, k = key
        ids = self.codec.strip_stop(result.token_ids)
        num_scored = len(ids)
        text = self.codec.decode(ids).strip()
        log_prob = float(sum(result.log_probs[:num_scored]))
        hedge = k > self.counts[label]
        if hedge:
            # NOTE: the branch exists only if the count was wrong: weigh it by 1 - P(n).
            log_prob += math.log(max(1.0 - self.count_probs[label], 1e-12))
        self.mentions[label].append(Mention(label, k, text, log_prob, result.num_steps, hedge=hedge))
        self.stats.mention_steps[key] = result.num_steps

    def accept_mentions(self, results: Sequence[GenerationResult]) -> None:
        if len(results) != len(self._mention_keys):
            raise ValueError(
                f"expected {len(self._mention_keys)} mention results, got {len(results)}"
            )
        for key, result in zip(self._mention_keys, results):
            self.accept_mention(key, result)

    def label_done(self, label: str) -> bool:
        """All branches of ``label`` have been accepted."""
        return label in self.counts and len(self.mentions[label]) == self.num_branches(label)

    def num_branches(self, label: str) -> int:
        """Mention branches of ``label``: its count, plus one when it is hedged."""
        return self.counts[label] + (label in self.hedged)

    @property
    def done(self) -> bool:
        return len(self.counts) == len(self.labels) and all(map(self.label_done, self.labels))

    # -- phase 3: resolve -----------------------------------------------------------
    def resolve(self, count_hedge: float | None = None) -> list[Mention]:
        """Ground offsets and apply de-dup; returns every branch with ``kept`` set.

        ``count_hedge`` (default: the config's) keeps only the hedge branches of counts
        less probable than it: decoded once at a high threshold, a plan can be resolved
        at any lower one with the same result as decoding at that one (``evaluate``'s
        threshold sweep).
        """
        hedge_below = self.config.count_hedge if count_hedge is None else count_hedge
        branches: list[Mention] = []
        for label in self.labels:
            ordered = sorted(self.mentions.get(label, []), key=lambda m: m.k)
            ordered = [m for m in ordered if m.text]  # NOTE: an empty mention is no entity
            named = {m.text for m in ordered if not m.hedge}
            # NOTE: a hedge that repeats the label's own mention says the count was right.
            ordered = [
                m for m in ordered
                if not m.hedge or (self.count_probs[label] < hedge_below and m.text not in named)
            ]  # fmt: skip
            seen: set[str] = set()
            for mention, span in zip(ordered, ground_mentions(self.text, [m.text for m in ordered])):
                mention.start, mention.end = span if span else (None, None)
                # NOTE: a repeat with no copy of its text left in the sentence (the model
                # named "Korea" twice, the text holds it once) is no entity; nor is the
                # repeat of a string the text does not hold at all (one such entity, once).
                mention.kept = span is not None or mention.text not in seen
                seen.add(mention.text)
            branches.extend(ordered)
        if self.config.dedup != Dedup.OFF:
            best: dict[object, Mention] = {}
            # NOTE: a label's confidence in a string is its most probable branch, surplus
            # repeats included; they are dropped after the labels are decided.
            for m in branches:
                key = m.text if self.config.dedup == Dedup.STRING else (m.start, m.end, m.text)
                if self.config.dedup == Dedup.SPAN and m.start is None:
                    continue
                if key not in best or m.log_prob > best[key].log_prob:
                    best[key] = m
            for m in branches:
                key = m.text if self.config.dedup == Dedup.STRING else (m.start, m.end, m.text)
                winner = best.get(key)
                # NOTE: same-label repeats are left alone; only other labels lose.
                if winner is not None and winner.label != m.label:
                    m.kept = False
        return branches

    def entities(self, count_hedge: float | None = None) -> list[Entity]:
        """The final entities, ordered by position (ungrounded ones last)."""
        kept = [m for m in self.resolve(count_hedge) if m.kept]
        # NOTE: a grounded entity's text is the sentence's own (its spacing may differ
        # from the model's string: "New\u00a0York" for "New York")
        entities = [
            Entity(m.label, m.text if m.start is None else self.text[m.start : m.end], m.start, m.end, m.score)
            for m in kept
        ]
        return sorted(entities, key=lambda e: (e.start is None, e.start or 0, e.end or 0, e.label))

    def entities_of(self, label: str) -> list[Entity]:
        return [e for e in self.entities() if e.label == label]


def run_plan(plan: PaDeLLMPlan, llm: LLM) -> list[Entity]:
    """Batch mode: all counts in one batch, then all mentions in one batch."""
    return run_plans([plan], llm)[0]


def run_plans(plans: Sequence[PaDeLLMPlan], llm: LLM) -> list[list[Entity]]:
    """Batch mode over several sentences at once (offline work such as ``evaluate``).

    Every sentence's counts go in one engine run, then every sentence's mentions: the
    weights are read once per step for all of them, which is what makes a CPU fast.
    Greedy decoding makes each sentence's result the same as with ``run_plan`` alone.
    """
    results = generate_split(llm, [p.count_requests() for p in plans])
    for plan, part in zip(plans, results):
        plan.accept_counts(part)
    results = generate_split(llm, [p.mention_requests() for p in plans])
    for plan, part in zip(plans, results):
        if part:
            plan.accept_mentions(part)
    return [p.entities() for p in plans]


def generate_split(
    llm: LLM, groups: Sequence[Sequence[GenerationRequest]]
) -> list[list[GenerationResult]]:
    """One ``llm.generate`` over several groups of requests, results handed back per group."""
    flat = [r for group in groups for r in group]
    out = llm.generate(flat) if flat else []
    parts, at = [], 0
    for group in groups:
        parts.append(list(out[at : at + len(group)]))
        at += len(group)
    return parts


LabelCallback = Callable[[str, list[Entity]], Awaitable[None]]


async def arun_plan(
    plan: PaDeLLMPlan,
    llm: AsyncLLM,
    max_concurrency: int = 64,
    on_label: LabelCallback | None = None,
) -> list[Entity]:
    """Every count at once, then every mention at once, over an ``AsyncLLM``.

    Args:
        max_concurrency: bound on in-flight requests to the LLM (the fan-out).
        on_label: awaited once per label with that label's final entities, as soon as
            they are final: labels with count 0 right after counting; with de-dup off a
            label when its last mention arrives; with de-dup on the remaining labels
            once every mention is in (de-dup needs all probabilities).
    """
    gate = asyncio.Semaphore(max_concurrency)

    async def call(request: GenerationRequest) -> GenerationResult:
        async with gate:
            return await llm.agenerate(request)

    counts = await gather_or_cancel([call(r) for r in plan.count_requests()])
    plan.accept_counts(counts)
    sent: set[str] = set()

    async def emit_ready() -> None:
        if on_label is None:
            return
        for label in plan.labels:
            if label in sent or not plan.label_done(label):
                continue
            if plan.num_branches(label) and plan.config.dedup != Dedup.OFF and not plan.done:
                continue
            sent.add(label)
            await on_label(label, plan.entities_of(label))

    await emit_ready()

    async def mention(key: tuple[str, int], request: GenerationRequest) -> None:
        plan.accept_mention(key, await call(request))
        await emit_ready()

    await gather_or_cancel(
        [mention(key, r) for key, r in zip(plan.mention_keys, plan.mention_requests())]
    )
    await emit_ready()
    return plan.entities()


async def gather_or_cancel(coros: list[Awaitable]) -> list:
    """``asyncio.gather`` that cancels the siblings when one fails (no orphaned branches)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
