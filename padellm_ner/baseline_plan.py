"""The baselines' decoding, written once: prompts -> one pass of sequences -> entities.

AutoReg_Aug and AutoReg_Struct decode one sequence per sentence; OneStep one per label,
all at once. The in-process ``Extractor`` and the Triton orchestrator both go through
``BaselinePlan``, so a served AutoReg_Struct model answers like the in-process one and
``bench load`` compares PaDeLLM with a baseline served the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from padellm_ner.codec import PromptCodec
from padellm_ner.grounding import ground_mentions
from padellm_ner.llm import LLM, AsyncLLM, GenerationRequest, GenerationResult
from padellm_ner.plan import gather_or_cancel, generate_split
from padellm_ner.prompts import get_format
from padellm_ner.prompts.base import Completion
from padellm_ner.types import Entity

__all__ = ["BaselinePlan", "run_baseline", "run_baselines", "arun_baseline"]


class BaselinePlan:
    """One sentence under a baseline format.

    Args:
        method: ``ar_aug``, ``ar_struct`` or ``onestep``.
        label_words: ``{label: prompt word}`` of the labels asked for (in order); entities
            come back under the keys.
        max_new_tokens: token limit of each sequence.
    """

    def __init__(
        self,
        method: str,
        text: str,
        label_words: dict[str, str],
        codec: PromptCodec,
        lang: str = "en",
        max_new_tokens: int = 160,
    ) -> None:
        self.text = text
        self.labels = list(label_words)
        self.codec = codec
        self.format = get_format(method, lang, label_words)
        self.prompts = self.format.prompts(text, self.labels)
        self.max_new_tokens = max_new_tokens
        self.results: list[GenerationResult] = []

    def requests(self) -> list[GenerationRequest]:
        """Every sequence of the sentence (decoded together: none depends on another)."""
        return [
            GenerationRequest(
                tuple(self.codec.encode_prompt(prompt)), self.max_new_tokens, (self.codec.end_id,)
            )
            for _label, prompt in self.prompts
        ]

    def accept(self, results: Sequence[GenerationResult]) -> list[Entity]:
        """Parse the completions into entities with offsets, ordered by position."""
        self.results = list(results)
        completions = [
            Completion(label, self.codec.decode(self.codec.strip_stop(r.token_ids)))
            for (label, _prompt), r in zip(self.prompts, results)
        ]
        # NOTE: a single-sequence output can name any label ("(ORLANDO: Magic)"); only the
        # labels asked for are answered, as PaDeLLM's per-label branches answer by design.
        asked = set(self.labels)
        pairs = [(tag, m) for tag, m in self.format.parse(self.text, completions) if tag in asked]
        # NOTE: one sequence-level probability for every entity (no per-mention split).
        score = math.exp(sum(sum(r.log_probs) for r in results))
        entities: list[Entity] = []
        for label in dict.fromkeys(tag for tag, _ in pairs):
            mentions = [m for tag, m in pairs if tag == label]
            seen: set[str] = set()
            for mention, span in zip(mentions, ground_mentions(self.text, mentions)):
                if span is None and mention in seen:
                    # NOTE: as PaDeLLM's plan: a repeat beyond the text's copies, or of a
                    # string it does not hold, is no further entity
                    continue
                seen.add(mention)
                start, end = span if span else (None, None)
                text = self.text[start:end] if span else mention  # NOTE: the text's own spacing
                entities.append(Entity(label, text, start, end, score))
        entities.sort(key=lambda e: (e.start is None, e.start or 0, e.end or 0, e.label))
        return entities

    @property
    def steps(self) -> list[int]:
        return [r.num_steps for r in self.results]


def run_baseline(plan: BaselinePlan, llm: LLM) -> list[Entity]:
    """Decode every sequence in one batch (in-process)."""
    return plan.accept(llm.generate(plan.requests()))


def run_baselines(plans: Sequence[BaselinePlan], llm: LLM) -> list[list[Entity]]:
    """Several sentences' sequences in one engine run (offline work such as ``evaluate``)."""
    results = generate_split(llm, [p.requests() for p in plans])
    return [plan.accept(part) for plan, part in zip(plans, results)]


async def arun_baseline(plan: BaselinePlan, llm: AsyncLLM) -> list[Entity]:
    """Send every sequence at once to an ``AsyncLLM`` (the Triton orchestrator)."""
    # NOTE: a failure or cancellation cancels the siblings; TritonAsyncLLM then sends stop=True.
    return plan.accept(await gather_or_cancel([llm.agenerate(r) for r in plan.requests()]))
