"""The ``padellm`` orchestrator: validate, run the PaDeLLM plan over the LLM model, reply.

Triton-free: ``triton_io`` adapts Triton requests and response senders to the small
``ResponseSink`` / input-getter interfaces used here, so tests drive it with fakes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from padellm_ensemble.validation import (
    ErrorCode,
    NERRequest,
    PadellmServingError,
    UpstreamError,
    parse_request,
)
from padellm_ner.baseline_plan import BaselinePlan, arun_baseline
from padellm_ner.codec import PromptCodec
from padellm_ner.labels import check_labels
from padellm_ner.lang import LANGS, detect_lang
from padellm_ner.llm import AsyncLLM
from padellm_ner.model_info import read_model_info, retag, words_for
from padellm_ner.plan import PaDeLLMPlan, PlanConfig, arun_plan
from padellm_ner.types import Entity

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "OrchestratorConfig",
    "Orchestrator",
    "ResponseSink",
    "FinalGuard",
    "entity_tensors",
    "build_orchestrator",
]

logger = logging.getLogger(__name__)

#: Wire tensor names of the ``padellm`` model (docs/CONTRACTS.md).
INPUT_NAMES = ("TEXT", "LABELS", "MAX_MENTIONS", "DEDUP", "STREAM")
OUTPUT_NAMES = (
    "LABEL",
    "ENTITY_LABELS",
    "ENTITY_TEXTS",
    "ENTITY_STARTS",
    "ENTITY_ENDS",
    "ENTITY_SCORES",
)


class ResponseSink(Protocol):
    """Where responses of one request go (a Triton response sender in production)."""

    def send(
        self,
        outputs: Mapping[str, np.ndarray] | None,
        *,
        error: PadellmServingError | None = None,
        final: bool = False,
    ) -> None: ...

    def is_cancelled(self) -> bool: ...


@dataclass(frozen=True)
class OrchestratorConfig:
    """Parameters of the served model (config.pbtxt ``parameters``).

    Attributes:
        labels: default labels when a request sends none.
        lang: prompt language; empty means "detect each text's" (an untrained base).
        max_text_chars: longest accepted TEXT.
        max_concurrency: LLM requests in flight per extraction (the fan-out bound).
        plan: decoding bounds (max_mentions is the default and the upper limit).
        cancel_poll_s: how often a running request checks for client cancellation.
        method: ``padellm``, or a baseline (``ar_struct``, ``ar_aug``, ``onestep``) served
            the same way for comparison (``bench load``).
        max_new_tokens: a baseline sequence's token limit.
        label_words: ``{tag: prompt word}`` the model was trained with (``padellm.json``);
            requests and responses speak tags, the prompts the words.
    """

    labels: tuple[str, ...]
    lang: str = ""
    max_text_chars: int = 2000
    max_concurrency: int = 64
    plan: PlanConfig = PlanConfig()
    cancel_poll_s: float = 0.05
    method: str = "padellm"
    max_new_tokens: int = 160
    label_words: Mapping[str, str] = field(default_factory=dict)


def entity_tensors(label: str, entities: Sequence[Entity]) -> dict[str, np.ndarray]:
    """One response's output tensors; ``-1`` offsets mean "not found in the text"."""
    return {
        "LABEL": np.array([label.encode("utf-8")], dtype=np.object_),
        "ENTITY_LABELS": np.array([e.label.encode("utf-8") for e in entities], dtype=np.object_),
        "ENTITY_TEXTS": np.array([e.text.encode("utf-8") for e in entities], dtype=np.object_),
        "ENTITY_STARTS": np.array([-1 if e.start is None else e.start for e in entities], dtype=np.int32),
        "ENTITY_ENDS": np.array([-1 if e.end is None else e.end for e in entities], dtype=np.int32),
        "ENTITY_SCORES": np.array([e.score for e in entities], dtype=np.float32),
    }


class Orchestrator:
    """Handles one ``padellm`` request at a time per coroutine; many run concurrently."""

    def __init__(self, config: OrchestratorConfig, codec: PromptCodec, llm: AsyncLLM) -> None:
        self.config = config
        self.codec = codec
        self.llm = llm

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if close is not None:
            close()

    def parse(self, get: Callable[[str], np.ndarray | None]) -> NERRequest:
        return parse_request(
            get("TEXT"),
            get("LABELS"),
            get("MAX_MENTIONS"),
            get("DEDUP"),
            get("STREAM"),
            default_labels=self.config.labels,
            max_text_chars=self.config.max_text_chars,
            max_mentions_limit=self.config.plan.max_mentions,
            default_max_mentions=self.config.plan.max_mentions,
        )

    async def handle(self, get: Callable[[str], np.ndarray | None], sink: ResponseSink) -> None:
        """Validate, extract and respond; never raises (errors become error responses)."""
        sink = FinalGuard(sink)
        try:
            request = self.parse(get)
            task = asyncio.ensure_future(self._extract(request, sink))
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.config.cancel_poll_s)
                if done:
                    task.result()
                    return
                if sink.is_cancelled():
                    # NOTE: cancelling the plan cancels every branch; TritonAsyncLLM sends
                    # stop=True for the LLM requests still running.
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    logger.info("request cancelled by the client")
                    self._send_final(sink)
                    return
        except PadellmServingError as exc:
            self._send_error(sink, exc)
        except Exception as exc:  # NOTE: anything else is our bug: say INTERNAL, keep serving
            logger.exception("extraction failed")
            self._send_error(sink, UpstreamError(f"extraction failed: {exc}", ErrorCode.INTERNAL))

    async def _extract(self, request: NERRequest, sink: ResponseSink) -> None:
        if self.config.method != "padellm":
            await self._extract_baseline(request, sink)
            return
        config = self.config.plan
        words = words_for(self.config.label_words, request.labels)
        tag_of = {word: tag for tag, word in words.items()}
        plan = PaDeLLMPlan(
            request.text,
            list(words.values()),
            self.codec,
            PlanConfig(
                max_mentions=request.max_mentions,
                max_count_tokens=config.max_count_tokens,
                max_mention_tokens=config.max_mention_tokens,
                dedup=request.dedup,
                count_hedge=config.count_hedge,
            ),
            lang=self._lang(request.text),
        )
        if request.stream:
            num_sent = 0

            async def on_label(word: str, entities: list[Entity]) -> None:
                nonlocal num_sent
                num_sent += 1
                # NOTE: arun_plan calls on_label once per label, so the last one is final.
                sink.send(
                    entity_tensors(tag_of.get(word, word), retag(entities, tag_of)),
                    final=num_sent == len(plan.labels),
                )

            await arun_plan(plan, self.llm, self.config.max_concurrency, on_label)
            if num_sent != len(plan.labels):
                self._send_final(sink)
        else:
            entities = await arun_plan(plan, self.llm, self.config.max_concurrency)
            sink.send(entity_tensors("", retag(entities, tag_of)), final=True)

    async def _extract_baseline(self, request: NERRequest, sink: ResponseSink) -> None:
        """A baseline decodes all labels together: streaming sends them one by one at the end."""
        plan = BaselinePlan(
            self.config.method,
            request.text,
            words_for(self.config.label_words, request.labels),
            self.codec,
            self._lang(request.text),
            self.config.max_new_tokens,
        )
        entities = await arun_baseline(plan, self.llm)
        if not request.stream:
            sink.send(entity_tensors("", entities), final=True)
            return
        for i, label in enumerate(plan.labels):
            mine = [e for e in entities if e.label == label]
            sink.send(entity_tensors(label, mine), final=i == len(plan.labels) - 1)

    @staticmethod
    def _send_error(sink: ResponseSink, exc: PadellmServingError) -> None:
        try:
            sink.send(None, error=exc, final=True)
        except Exception:
            logger.warning("could not send an error response", exc_info=True)

    def _lang(self, text: str) -> str:
        """The model's language; an untrained base's follows the text, as ``extract``'s does."""
        return self.config.lang or detect_lang(text)

    @staticmethod
    def _send_final(sink: ResponseSink) -> None:
        try:
            sink.send(None, final=True)
        except Exception:
            logger.debug("could not close a cancelled request", exc_info=True)


class FinalGuard:
    """A ``ResponseSink`` that touches its sender no more once the final response is sent.

    Why: python_backend 2.51 frees a request's response factory with its final response;
    ``is_cancelled()`` asked after that made tritonserver read freed memory and crash
    (SIGSEGV in ``TRITONBACKEND_ResponseFactoryIsCancelled``, seen after ~130 streamed
    requests). ``handle`` polls for a cancel until its task ends, and a streamed request
    sends its final response from inside that task, so the poll could come after it.
    """

    def __init__(self, sink: ResponseSink) -> None:
        self.sink = sink
        self.finished = False

    def send(
        self,
        outputs: Mapping[str, np.ndarray] | None,
        *,
        error: PadellmServingError | None = None,
        final: bool = False,
    ) -> None:
        if self.finished:
            logger.debug("a response after the final one was dropped")
            return
        self.finished = final
        self.sink.send(outputs, error=error, final=final)

    def is_cancelled(self) -> bool:
        return not self.finished and self.sink.is_cancelled()


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def build_orchestrator(params: Mapping[str, str], transport) -> Orchestrator:
    """The orchestrator of a ``padellm`` model instance from its config parameters.

    Args:
        params: config.pbtxt ``parameters`` (string values; empty means unset).
        transport: the LLM call (``triton_io.llm_transport``: gRPC loopback or BLS).
    """
    import json

    from padellm_ensemble.llm_client import TritonAsyncLLM
    from padellm_ner.models import end_token_id, load_tokenizer, resolve_model_dir

    def get(key: str, default: str) -> str:
        value = params.get(key)
        return default if value is None or value == "" else value

    model = get("model", "default")
    model_dir = resolve_model_dir(model)
    tokenizer = load_tokenizer(str(model_dir))
    end_id = int(get("end_id", "-1"))
    if end_id < 0:
        end_id = end_token_id(tokenizer, model_dir)
    codec = PromptCodec(tokenizer, end_id)
    _ = codec.newline_ids  # NOTE: computed once here (a vocab scan), not on the first request
    labels = tuple(json.loads(get("labels", "[]")))
    if labels:  # NOTE: served defaults follow the rules of a request's LABELS
        labels = tuple(check_labels(labels, "the padellm config's labels"))
    # NOTE: the method the model was trained for (padellm.json), unless the config overrides it.
    info = read_model_info(model_dir)
    plan = PlanConfig(
        max_mentions=int(get("max_mentions", "16")),
        max_count_tokens=int(get("max_count_tokens", "4")),
        max_mention_tokens=int(get("max_mention_tokens", "24")),
        count_hedge=float(get("count_hedge", str(info.count_hedge or 0.0))),
    )
    method = get("method", "") or info.format
    lang = get("lang", info.lang if info.trained else "")
    if lang not in ("", *LANGS):
        raise ValueError(f"the padellm config's lang must be one of {LANGS} (or empty: detect), got {lang!r}")
    config = OrchestratorConfig(
        method=method,
        label_words=dict(info.label_words),
        max_new_tokens=int(get("max_new_tokens", "160")),
        labels=labels,
        lang=lang,
        max_text_chars=int(get("max_text_chars", "2000")),
        max_concurrency=int(get("max_concurrency", "64")),
        plan=plan,
    )
    llm = TritonAsyncLLM(
        transport,
        get("llm_model_name", "llm"),
        end_id,
        batch_dim=_flag(params.get("llm_batch_dim"), False),
        max_inflight=int(get("max_llm_inflight", "64")),  # NOTE: assemble fills the LLM batch size
    )
    logger.info(
        "padellm orchestrator: model %s, method %s, labels %s, lang %s, llm %s, count_hedge %g",
        model, method, labels, lang or "detect", llm.model_name, plan.count_hedge,
    )  # fmt: skip
    return Orchestrator(config, codec, llm)
