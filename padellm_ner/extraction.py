"""``Extractor``: one model + one method, text in, entities out (in-process).

PaDeLLM runs the shared plan (``plan.py``); the baselines (AutoReg_Aug, AutoReg_Struct,
OneStep) decode their prompts with the same engine and parse with their format. The
model folder's ``padellm.json`` (written by ``train``) says which method and labels it
was trained for; extract, evaluate and bench all go through this class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from padellm_ner.baseline_plan import BaselinePlan, arun_baseline, run_baselines
from padellm_ner.codec import PromptCodec
from padellm_ner.engine import TorchLLM
from padellm_ner.errors import InvalidInputError
from padellm_ner.labels import check_labels
from padellm_ner.lang import detect_lang
from padellm_ner.llm import LLM, AsyncLLM
from padellm_ner.model_info import ModelInfo, read_model_info, retag
from padellm_ner.plan import PaDeLLMPlan, PlanConfig, PlanStats, arun_plan, run_plans
from padellm_ner.text_rules import check_text
from padellm_ner.types import Entity

__all__ = ["ModelInfo", "ExtractionOutput", "Extractor", "read_model_info", "detect_lang"]

logger = logging.getLogger(__name__)

@dataclass
class ExtractionOutput:
    """Entities of one text plus what decoding them cost."""

    entities: list[Entity]
    num_sequences: int
    num_generated_tokens: int
    critical_path_steps: int  # slowest branch (PaDeLLM Multi) or the one sequence (AR)
    critical_path_steps_batch: int  # phase-synchronised (PaDeLLM Batch)
    counts: dict[str, int] | None = None  # PaDeLLM: predicted count per label (tag)
    count_probs: dict[str, float] | None = None  # PaDeLLM: P(that count) per label (tag)
    hedged: tuple[str, ...] = ()  # PaDeLLM: labels (tags) given the count_hedge branch
    # PaDeLLM with ``Extractor.hedge_sweep``: the entities at each count_hedge threshold
    entities_at: dict[float, list[Entity]] | None = None


class Extractor:
    """Extract entities with one model and one method."""

    def __init__(
        self,
        llm: LLM,
        codec: PromptCodec,
        info: ModelInfo | None = None,
        method: str | None = None,
        plan_config: PlanConfig | None = None,
        max_new_tokens: int = 160,
        hedge_sweep: Sequence[float] = (),
    ) -> None:
        """``hedge_sweep``: count_hedge thresholds to resolve every sentence at as well
        (``ExtractionOutput.entities_at``); decode with ``plan_config.count_hedge`` at
        least their highest for the sweep to mean what it says."""
        self.llm = llm
        self.codec = codec
        self.info = info or ModelInfo()
        self.method = method or self.info.format
        self.plan_config = plan_config or PlanConfig()
        self.max_new_tokens = max_new_tokens
        self.hedge_sweep = tuple(hedge_sweep)

    @classmethod
    def from_pretrained(
        cls,
        model: str = "default",
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 64,
        method: str | None = None,
        plan_config: PlanConfig | None = None,
        count_hedge: float | None = None,
    ) -> Extractor:
        """``count_hedge``: ``None`` takes the threshold recorded with the model
        (``padellm.json``), else ``plan_config``'s."""
        llm = TorchLLM.from_pretrained(
            model, device=device, dtype=dtype, max_batch_size=max_batch_size
        )
        loaded = llm.core.loaded
        info = read_model_info(loaded.path)
        codec = PromptCodec(loaded.tokenizer, loaded.end_id)
        plan_config = plan_config or PlanConfig()
        hedge = count_hedge if count_hedge is not None else info.count_hedge
        if hedge is not None:
            plan_config = replace(plan_config, count_hedge=hedge)
        return cls(llm, codec, info, method=method, plan_config=plan_config)

    @property
    def default_labels(self) -> list[str]:
        return list(self.info.tags)

    def extract(
        self, text: str, labels: Sequence[str] | None = None, lang: str | None = None
    ) -> ExtractionOutput:
        """Entities of ``text`` for ``labels`` (tags; default: the model's)."""
        return self.extract_batch([text], labels, [lang])[0]

    def extract_batch(
        self,
        texts: Sequence[str],
        labels: Sequence[str] | None = None,
        langs: Sequence[str | None] | None = None,
    ) -> list[ExtractionOutput]:
        """Several sentences in one engine run (each phase of every sentence batched together).

        For offline work (``evaluate``): per sentence the result is ``extract``'s, since
        decoding is greedy; the engine reads the weights once per step for all of them.
        """
        labels, langs = self._check(texts, labels, langs)
        if self.method == "padellm":
            plans, tag_of = self._padellm_plans(texts, labels, langs)
            found = run_plans(plans, self.llm)
            return [self._padellm_output(p, f, tag_of) for p, f in zip(plans, found)]
        plans = self._baseline_plans(texts, labels, langs)
        return [_baseline_output(p, f) for p, f in zip(plans, run_baselines(plans, self.llm))]

    async def aextract(
        self,
        text: str,
        llm: AsyncLLM,
        labels: Sequence[str] | None = None,
        lang: str | None = None,
    ) -> ExtractionOutput:
        """``extract`` over an ``AsyncLLM``, one coroutine per request as the orchestrator
        sends them: concurrent calls on one ``AsyncEngineLLM`` share its running batch."""
        labels, langs = self._check([text], labels, [lang])
        if self.method == "padellm":
            plans, tag_of = self._padellm_plans([text], labels, langs)
            return self._padellm_output(plans[0], await arun_plan(plans[0], llm), tag_of)
        plan = self._baseline_plans([text], labels, langs)[0]
        return _baseline_output(plan, await arun_baseline(plan, llm))

    def _check(
        self,
        texts: Sequence[str],
        labels: Sequence[str] | None,
        langs: Sequence[str | None] | None,
    ) -> tuple[list[str], list[str]]:
        """The labels (default: the model's) and each text's language, or a clear error."""
        labels = check_labels(labels if labels is not None else self.default_labels)
        langs = list(langs) if langs is not None else [None] * len(texts)
        if len(langs) != len(texts):
            raise InvalidInputError(f"{len(texts)} texts but {len(langs)} languages")
        for text in texts:
            check_text(text)
        langs = [
            lang or (self.info.lang if self.info.trained else detect_lang(text))
            for text, lang in zip(texts, langs)
        ]
        return labels, langs

    def _padellm_plans(
        self, texts: Sequence[str], labels: list[str], langs: Sequence[str]
    ) -> tuple[list[PaDeLLMPlan], dict[str, str]]:
        words = self.info.words_for(labels)
        plans = [
            PaDeLLMPlan(text, list(words.values()), self.codec, self.plan_config, lang)
            for text, lang in zip(texts, langs)
        ]
        return plans, {word: tag for tag, word in words.items()}

    def _padellm_output(
        self, plan: PaDeLLMPlan, found: list[Entity], tag_of: dict[str, str]
    ) -> ExtractionOutput:
        output = _output(retag(found, tag_of), plan.stats)
        output.counts = {tag_of.get(w, w): n for w, n in plan.counts.items()}
        output.count_probs = {tag_of.get(w, w): p for w, p in plan.count_probs.items()}
        output.hedged = tuple(tag_of.get(w, w) for w in plan.labels if w in plan.hedged)
        if self.hedge_sweep:
            output.entities_at = {tau: retag(plan.entities(tau), tag_of) for tau in self.hedge_sweep}
        return output

    def _baseline_plans(
        self, texts: Sequence[str], labels: list[str], langs: Sequence[str]
    ) -> list[BaselinePlan]:
        words = self.info.words_for(labels)
        return [
            BaselinePlan(self.method, text, words, self.codec, lang, self.max_new_tokens)
            for text, lang in zip(texts, langs)
        ]


def _baseline_output(plan: BaselinePlan, entities: list[Entity]) -> ExtractionOutput:
    steps = plan.steps
    return ExtractionOutput(
        entities=entities,
        num_sequences=len(steps),
        num_generated_tokens=sum(steps),
        critical_path_steps=max(steps, default=0),
        critical_path_steps_batch=max(steps, default=0),
    )


def _output(entities: list[Entity], stats: PlanStats) -> ExtractionOutput:
    return ExtractionOutput(
        entities=entities,
        num_sequences=stats.num_sequences,
        num_generated_tokens=stats.num_generated_tokens,
        critical_path_steps=stats.critical_path_steps,
        critical_path_steps_batch=stats.critical_path_steps_batch,
    )


def entity_dicts(entities: Sequence[Entity]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in entities]
