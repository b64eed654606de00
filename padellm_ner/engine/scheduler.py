"""Who runs this step: admission into the running batch, first come first served.

Requests join the batch between decode steps (in-flight batching) and leave it the step
they finish; the runner frees their KV rows through ``finished_req_ids``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field

from padellm_ner.engine.request import Request, RequestStatus

__all__ = ["SchedulerOutput", "SchedulerInterface", "FcfsScheduler"]


@dataclass
class SchedulerOutput:
    """The plan of one engine step."""

    # requests entering the batch this step: prefilled, then merged in
    new_reqs: list[Request] = field(default_factory=list)
    # requests already in the batch: one decode token each
    decode_reqs: list[Request] = field(default_factory=list)
    # requests that left since the last step; their KV rows are dropped first
    finished_req_ids: set[str] = field(default_factory=set)

    @classmethod
    def make_empty(cls) -> SchedulerOutput:
        return cls()

    @property
    def is_empty(self) -> bool:
        return not self.new_reqs and not self.decode_reqs and not self.finished_req_ids


class SchedulerInterface(ABC):
    """The contract between the engine and a scheduling policy."""

    @abstractmethod
    def add_request(self, request: Request) -> None:
        """Queue a request; it joins the batch at a later ``schedule``."""

    @abstractmethod
    def abort_request(self, req_id: str) -> Request | None:
        """Finish a request as aborted; returns it, or None if unknown or already done."""

    @abstractmethod
    def schedule(self) -> SchedulerOutput:
        """Decide the next step: ``{new, decode, finished}`` requests."""

    @abstractmethod
    def update_from_output(self, sched: SchedulerOutput) -> list[Request]:
        """After the runner appended tokens: retire finished requests; return them."""

    @abstractmethod
    def has_unfinished(self) -> bool: ...


class FcfsScheduler(SchedulerInterface):
    """Admit waiting requests in arrival order while the batch has room."""

    def __init__(self, max_batch_size: int = 64) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in the batch and prefilled
        self._finished_ids: set[str] = set()

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def abort_request(self, req_id: str) -> Request | None:
        for req in self.waiting:
            if req.req_id == req_id:
                self.waiting.remove(req)
                req.status = RequestStatus.FINISHED_ABORTED
                return req
        for req in self.running:
            if req.req_id == req_id:
                self.running.remove(req)
                req.status = RequestStatus.FINISHED_ABORTED
                self._finished_ids.add(req_id)
                return req
        return None

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(
            decode_reqs=list(self.running), finished_req_ids=self._finished_ids
        )
        self._finished_ids = set()
        while self.waiting and len(self.running) + len(out.new_reqs) < self.max_batch_size:
            req = self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            out.new_reqs.append(req)
        self.running.extend(out.new_reqs)
        return out

    def update_from_output(self, sched: SchedulerOutput) -> list[Request]:
        finished = [r for r in self.running if r.status.is_finished]
        if finished:
            self.running = [r for r in self.running if not r.status.is_finished]
            self._finished_ids.update(r.req_id for r in finished)
        return finished

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)
