"""``EngineLoop``: a background thread that drives ``EngineCore`` for a server.

Submissions and aborts from any thread go through an inbox that the engine thread
drains between steps, so requests join the running batch between decode steps
(in-flight batching) and the core itself stays single-threaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from padellm_ner.engine.core import EngineCore, StepOutput
from padellm_ner.engine.runner import EngineStats
from padellm_ner.errors import InvalidInputError
from padellm_ner.limits import MAX_BATCH_WINDOW_US
from padellm_ner.llm import GenerationRequest

__all__ = ["EngineLoop", "StepCallback"]

logger = logging.getLogger(__name__)

StepCallback = Callable[[StepOutput], None]


@dataclass
class _Submit:
    req_id: str
    request: GenerationRequest
    callback: StepCallback


@dataclass
class _Abort:
    req_id: str


class EngineLoop:
    """Thread-safe front of one ``EngineCore``; callbacks run on the engine thread.

    ``batch_window_s``: when the engine is idle, how long it waits after a request
    arrives for others before its first step (like Triton's ``max_queue_delay``). The
    orchestrator's count requests arrive a few ms apart; admitted together they share
    one prefill of their common prefix. 0 (default) steps at once.
    """

    def __init__(
        self, core: EngineCore, name: str = "padellm-engine", batch_window_s: float = 0.0
    ) -> None:
        self.core = core
        if not 0.0 <= batch_window_s <= MAX_BATCH_WINDOW_US / 1e6:
            raise ValueError(f"batch_window_s is {batch_window_s}; it must be 0 to {MAX_BATCH_WINDOW_US / 1e6:g} s")
        self.batch_window_s = batch_window_s
        self._inbox: list[_Submit | _Abort] = []
        self._callbacks: dict[str, StepCallback] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def stats(self) -> EngineStats:
        return self.core.stats.snapshot()

    @property
    def num_active(self) -> int:
        return len(self._callbacks)

    def submit(self, req_id: str, request: GenerationRequest, callback: StepCallback) -> None:
        """Queue a request; ``callback`` gets one ``StepOutput`` per generated token.

        A refused request is reported through the callback as a finished output whose
        ``failure`` says why (``invalid`` for bad input, ``error`` otherwise) rather than
        raised here, because validation happens on the engine thread.
        """
        with self._wake:
            if self._stopping:
                raise RuntimeError("engine loop is shut down")
            self._inbox.append(_Submit(req_id, request, callback))
            self._wake.notify()

    def abort(self, req_id: str) -> None:
        with self._wake:
            self._inbox.append(_Abort(req_id))
            self._wake.notify()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    # -- engine thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                idle = not self.core.has_unfinished()
                while not self._inbox and not self.core.has_unfinished() and not self._stopping:
                    self._wake.wait()
                if idle and self.batch_window_s > 0:
                    deadline = time.monotonic() + self.batch_window_s
                    while not self._stopping and (left := deadline - time.monotonic()) > 0:
                        self._wake.wait(left)
                if self._stopping:
                    break
                inbox, self._inbox = self._inbox, []
            for item in inbox:
                self._apply(item)
            if not self.core.has_unfinished():
                continue
            try:
                outputs = self.core.step()
            except Exception as exc:  # noqa: BLE001 - report to every waiting request
                logger.exception("engine step failed")
                for req_id in self.core.fail_all():
                    self._emit(StepOutput.failed(req_id, "error", exc))
                continue
            for out in outputs:
                self._emit(out)
        for req_id in self.core.fail_all():
            self._emit(StepOutput.ended(req_id, "aborted"))

    def _apply(self, item: _Submit | _Abort) -> None:
        if isinstance(item, _Abort):
            out = self.core.abort_request(item.req_id)
            if out is not None:
                self._emit(out)
            return
        try:
            self.core.add_request(item.req_id, item.request)
        except InvalidInputError as exc:  # NOTE: the caller's to fix (a text too long)
            item.callback(StepOutput.failed(item.req_id, "invalid", exc))
            return
        except ValueError as exc:
            item.callback(StepOutput.failed(item.req_id, "error", exc))
            return
        self._callbacks[item.req_id] = item.callback

    def _emit(self, out: StepOutput) -> None:
        callback = self._callbacks.pop(out.req_id, None) if out.finished else (
            self._callbacks.get(out.req_id)
        )
        if callback is None:
            return
        try:
            callback(out)
        except Exception:  # noqa: BLE001 - a broken client must not stop the engine
            logger.exception("callback for %s failed", out.req_id)
