"""The small "LLM" interface the decoding plan talks to.

The in-process torch engine, the Triton orchestrator's client of the ``llm`` /
``tensorrt_llm`` model, and test fakes all implement it, so the PaDeLLM plan is written
once. Requests carry token ids (the ``tensorrt_llm`` contract is ids in, ids out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "LLM",
    "AsyncLLM",
    "StepFailure",
    "StepOutput",
    "ends_with_stop_word",
]


@dataclass(frozen=True)
class GenerationRequest:
    """One greedy decoding job.

    Attributes:
        prompt_ids: the full prompt, token ids.  # [prompt_len]
        max_new_tokens: hard bound on generated tokens (``request_output_len``).
        stop_ids: token ids that end the sequence (``end_id`` plus single-token stop
            words); the stop token is returned in ``token_ids``.
        stop_words: stop words of several tokens (``stop_words_list``); the sequence ends
            once its generated tokens end with one, and the word stays in ``token_ids``.
    """

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_ids: tuple[int, ...] = ()
    stop_words: tuple[tuple[int, ...], ...] = ()

    def stops_at(self, token_ids: Sequence[int]) -> bool:
        """True when generated ``token_ids`` end with a stop id or a stop word."""
        return bool(token_ids) and (
            token_ids[-1] in self.stop_ids or ends_with_stop_word(token_ids, self.stop_words)
        )


def ends_with_stop_word(token_ids: Sequence[int], words: Sequence[tuple[int, ...]]) -> bool:
    """True when ``token_ids`` end with one of the (multi-token) stop ``words``."""
    n = len(token_ids)
    return any(0 < len(w) <= n and tuple(token_ids[n - len(w) :]) == w for w in words)


@dataclass
class GenerationResult:
    """What greedy decoding produced for one request.

    Attributes:
        token_ids: generated ids, including the stop token when one ended the sequence.
        log_probs: log-probability of each generated token.  # [len(token_ids)]
        finish_reason: ``"stop"`` (a stop id), ``"length"`` or ``"aborted"``.
    """

    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    finish_reason: str = "length"

    @property
    def num_steps(self) -> int:
        """Decode steps this sequence needed (one token per step)."""
        return len(self.token_ids)


class StepFailure(NamedTuple):
    """Why a request ended without a result: ``invalid`` is the caller's to fix."""

    kind: Literal["invalid", "error"]
    message: str


_FAILURE_PREFIXES: dict[Literal["invalid", "error"], str] = {"invalid": "invalid: ", "error": "error: "}


@dataclass(frozen=True)
class StepOutput:
    """One request's news from one engine step: a token, and whether it finished.

    ``finish_reason`` is ``"stop"``, ``"length"`` or ``"aborted"`` for a request that
    ended normally, and ``"invalid: <why>"`` (bad input, e.g. a text too long) or
    ``"error: <why>"`` (the engine failed) for one that did not. The string travels
    across the engine thread; ``failure`` is the one place that reads it back, so the
    served ``llm`` model and the in-process async engine map it alike. ``token_id`` is
    None when the output carries no token (an abort or a failure).
    """

    req_id: str
    token_id: int | None
    log_prob: float
    finished: bool
    finish_reason: str | None = None

    @classmethod
    def ended(cls, req_id: str, reason: str) -> StepOutput:
        """A finished output without a token (``"aborted"``)."""
        return cls(req_id, None, 0.0, True, reason)

    @classmethod
    def failed(cls, req_id: str, kind: Literal["invalid", "error"], message: object) -> StepOutput:
        """A request that ended without a result; ``kind`` as in ``StepFailure``."""
        return cls.ended(req_id, f"{_FAILURE_PREFIXES[kind]}{message}")

    @property
    def failure(self) -> StepFailure | None:
        """The failure this output reports, or None for a token or a normal end."""
        reason = self.finish_reason or ""
        for kind, prefix in _FAILURE_PREFIXES.items():
            if reason.startswith(prefix):
                return StepFailure(kind, reason.removeprefix(prefix))
        return None


@runtime_checkable
class LLM(Protocol):
    """Synchronous batch generation: all requests decoded together, results in order."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


@runtime_checkable
class AsyncLLM(Protocol):
    """Asynchronous twin, used by the Triton orchestrator (one coroutine per request)."""

    async def agenerate(self, request: GenerationRequest) -> GenerationResult: ...
