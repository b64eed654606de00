"""The small "LLM" interface the decoding plan talks to.

The in-process torch engine, the Triton orchestrator's client of the ``llm`` /
``tensorrt_llm`` model, and test fakes all implement it, so the PaDeLLM plan is written
once. Requests carry token ids (the ``tensorrt_llm`` contract is ids in, ids out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["GenerationRequest", "GenerationResult", "LLM", "AsyncLLM"]


@dataclass(frozen=True)
class GenerationRequest:
    """One greedy decoding job.

    Attributes:
        prompt_ids: the full prompt, token ids.  # [prompt_len]
        max_new_tokens: hard bound on generated tokens (``request_output_len``).
        stop_ids: token ids that end the sequence (``end_id`` plus single-token stop
            words); the stop token is returned in ``token_ids``.
    """

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_ids: tuple[int, ...] = ()


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


@runtime_checkable
class LLM(Protocol):
    """Synchronous batch generation: all requests decoded together, results in order."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


@runtime_checkable
class AsyncLLM(Protocol):
    """Asynchronous twin, used by the Triton orchestrator (one coroutine per request)."""

    async def agenerate(self, request: GenerationRequest) -> GenerationResult: ...
