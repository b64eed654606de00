"""Engine-side request state, kept apart from the wire ``GenerationRequest`` (as vLLM does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from padellm_ner.llm import GenerationRequest, GenerationResult, ends_with_stop_word

__all__ = ["RequestStatus", "Request"]


class RequestStatus(IntEnum):
    """Ordered so that ``status > RUNNING`` means finished."""

    WAITING = 0
    RUNNING = 1
    FINISHED_STOPPED = 2
    FINISHED_LENGTH = 3
    FINISHED_ABORTED = 4

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.RUNNING

    @property
    def finish_reason(self) -> str | None:
        return {
            RequestStatus.FINISHED_STOPPED: "stop",
            RequestStatus.FINISHED_LENGTH: "length",
            RequestStatus.FINISHED_ABORTED: "aborted",
        }.get(self)


@dataclass
class Request:
    """A request inside the engine: prompt, limits and what it has generated so far."""

    req_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    stop_ids: frozenset[int]
    stop_words: tuple[tuple[int, ...], ...] = ()
    status: RequestStatus = RequestStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)

    @classmethod
    def from_generation_request(cls, req_id: str, request: GenerationRequest) -> Request:
        if not request.prompt_ids:
            raise ValueError(f"request {req_id!r}: prompt_ids is empty")
        if request.max_new_tokens < 1:
            raise ValueError(f"request {req_id!r}: max_new_tokens must be >= 1")
        return cls(
            req_id=req_id,
            prompt_ids=list(request.prompt_ids),
            max_new_tokens=request.max_new_tokens,
            stop_ids=frozenset(request.stop_ids),
            stop_words=tuple(tuple(w) for w in request.stop_words if w),
        )

    def append_token(self, token_id: int, log_prob: float) -> None:
        """Record one generated token and finish the request if it stops or hits the limit."""
        self.output_ids.append(token_id)
        self.log_probs.append(log_prob)
        if token_id in self.stop_ids or ends_with_stop_word(self.output_ids, self.stop_words):
            self.status = RequestStatus.FINISHED_STOPPED
        elif len(self.output_ids) >= self.max_new_tokens:
            self.status = RequestStatus.FINISHED_LENGTH

    def to_result(self) -> GenerationResult:
        return GenerationResult(
            token_ids=list(self.output_ids),
            log_probs=list(self.log_probs),
            finish_reason=self.status.finish_reason or "length",
        )
