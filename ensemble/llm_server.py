"""The ``llm`` model's logic: tensorrt_llm-contract requests onto the in-flight engine.

Each request is submitted to an ``EngineLoop``; the engine thread calls back once per
generated token and this module turns tokens into tensorrt_llm-shaped responses
(``output_ids`` [1, n], ``sequence_length`` [1], ``output_log_probs`` [1, n],
``cum_log_probs`` [1]). Triton-free: ``triton_io`` supplies the tensors and the sender.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from padellm_ensemble.validation import ErrorCode
from padellm_ner.llm import GenerationRequest, StepOutput

__all__ = ["LLMWireRequest", "LLMWireError", "parse_llm_request", "llm_output_tensors", "InflightLLMServer"]

logger = logging.getLogger(__name__)


class LLMWireError(ValueError):
    """A malformed tensorrt_llm-contract request."""


@dataclass(frozen=True)
class LLMWireRequest:
    req_id: str
    request: GenerationRequest | None  # None for a stop request
    streaming: bool = False
    return_log_probs: bool = False
    stop: bool = False


def _scalar(get: Callable[[str], np.ndarray | None], name: str, default):
    value = get(name)
    if value is None:
        return default
    flat = np.asarray(value).reshape(-1)
    if flat.size == 0:
        return default
    return flat[0].item()


def parse_llm_request(get: Callable[[str], np.ndarray | None], req_id: str) -> LLMWireRequest:
    """Read the tensorrt_llm inputs of one request (batch dimension optional)."""
    req_id = req_id or uuid.uuid4().hex
    if bool(_scalar(get, "stop", False)):
        return LLMWireRequest(req_id=req_id, request=None, stop=True)
    if not bool(_scalar(get, "exclude_input_in_output", True)):
        # NOTE: TensorRT-LLM would return the prompt in front of the tokens; this model
        # returns the generated tokens only, so it refuses rather than answer otherwise.
        raise LLMWireError("exclude_input_in_output=false is not supported: output_ids holds the generated tokens only")
    input_ids = get("input_ids")
    if input_ids is None:
        raise LLMWireError("input_ids is required")
    ids = np.asarray(input_ids).reshape(-1)  # [prompt_len]
    length = int(_scalar(get, "input_lengths", len(ids)))
    if not 0 < length <= len(ids):
        raise LLMWireError(f"input_lengths is {length}; input_ids has {len(ids)} ids")
    max_new = int(_scalar(get, "request_output_len", 0))
    if max_new < 1:
        raise LLMWireError(f"request_output_len must be >= 1, got {max_new}")
    stops: list[int] = []
    end_id = int(_scalar(get, "end_id", -1))
    if end_id >= 0:
        stops.append(end_id)
    multi: list[tuple[int, ...]] = []
    words = get("stop_words_list")
    if words is not None and np.asarray(words).size:  # NOTE: [2, 0]: no stop words
        words = np.asarray(words)
        if words.ndim < 2 or words.size % (2 * words.shape[-1]):
            raise LLMWireError(f"stop_words_list has shape {list(words.shape)}; send [2, n] (ids, offsets)")
        table = words.reshape(-1, 2, words.shape[-1])[0]  # [2, n]
        flat, offsets = table[0], [int(o) for o in table[1] if o >= 0]
        start = 0
        for end in offsets:
            if not start < end <= len(flat):
                raise LLMWireError(f"stop_words_list: offset {end} after {start} is out of range")
            word = tuple(int(x) for x in flat[start:end])
            if len(word) == 1:
                stops.append(word[0])
            else:
                multi.append(word)
            start = end
    return LLMWireRequest(
        req_id=req_id,
        request=GenerationRequest(
            prompt_ids=tuple(int(x) for x in ids[:length]),
            max_new_tokens=max_new,
            stop_ids=tuple(dict.fromkeys(stops)),
            stop_words=tuple(dict.fromkeys(multi)),
        ),
        streaming=bool(_scalar(get, "streaming", False)),
        return_log_probs=bool(_scalar(get, "return_log_probs", False)),
    )


def llm_output_tensors(token_ids: list[int], log_probs: list[float], cum_log_prob: float) -> dict[str, np.ndarray]:
    """Beam-1 outputs without a batch dimension."""
    return {
        "output_ids": np.array([token_ids], dtype=np.int32).reshape(1, len(token_ids)),  # [1, n]
        "sequence_length": np.array([len(token_ids)], dtype=np.int32),  # [1]
        "output_log_probs": np.array([log_probs], dtype=np.float32).reshape(1, len(log_probs)),  # [1, n]
        "cum_log_probs": np.array([cum_log_prob], dtype=np.float32),  # [1]
    }


#: send(outputs or None, final, error message or None) for one request; raises if the
#: client is gone.
Send = Callable[[Mapping[str, np.ndarray] | None, bool, "str | None"], None]


@dataclass
class _Active:
    wire: LLMWireRequest
    send: Send
    is_cancelled: Callable[[], bool]
    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    num_sent: int = 0


class InflightLLMServer:
    """Routes wire requests to an ``EngineLoop`` and engine outputs back to senders.

    Args:
        loop: a started ``padellm_ner.engine.EngineLoop`` (or anything with ``submit``,
            ``abort`` and ``stats``).
        on_finish: called after a request leaves (metrics refresh).
    """

    def __init__(self, loop, on_finish: Callable[[], None] | None = None) -> None:
        self.loop = loop
        self.on_finish = on_finish
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()

    @property
    def num_active(self) -> int:
        return len(self._active)

    def submit(self, wire: LLMWireRequest, send: Send, is_cancelled: Callable[[], bool]) -> None:
        if wire.stop:
            self.abort(wire.req_id)
            send(None, True, None)
            return
        with self._lock:
            if wire.req_id in self._active:
                raise LLMWireError(f"request id {wire.req_id!r} is already running")
            self._active[wire.req_id] = _Active(wire, send, is_cancelled)
        self.loop.submit(wire.req_id, wire.request, self._on_step)

    def abort(self, req_id: str) -> None:
        if req_id in self._active:
            self.loop.abort(req_id)

    def _on_step(self, out: StepOutput) -> None:
        """Engine thread: one generated token (or an abort) of one request."""
        state = self._active.get(out.req_id)
        if state is None:
            return
        failure = out.failure
        # NOTE: an abort or a failure carries no new token (token_id None).
        if out.token_id is not None and out.token_id >= 0 and failure is None:
            state.token_ids.append(int(out.token_id))
            state.log_probs.append(float(out.log_prob))
        if not out.finished and state.is_cancelled():
            self.loop.abort(out.req_id)  # NOTE: the engine answers with a finished output
            return
        try:
            if out.finished:
                with self._lock:
                    self._active.pop(out.req_id, None)
                if failure is not None and failure.kind == "invalid":
                    # NOTE: the code prefix makes it INVALID_ARGUMENT on the wire
                    state.send(None, True, ErrorCode.INVALID_ARGUMENT.prefix + failure.message)
                elif failure is not None:
                    state.send(None, True, f"engine error: {failure.message}")
                else:
                    start = state.num_sent if state.wire.streaming else 0
                    ids, lps = state.token_ids[start:], state.log_probs[start:]
                    state.send(llm_output_tensors(ids, lps, sum(state.log_probs)), True, None)
                if self.on_finish is not None:
                    self.on_finish()
            elif state.wire.streaming:
                ids, lps = state.token_ids[state.num_sent:], state.log_probs[state.num_sent:]
                state.num_sent = len(state.token_ids)
                if ids:
                    state.send(llm_output_tensors(ids, lps, sum(state.log_probs)), False, None)
        except Exception:  # NOTE: the client is gone; stop decoding for it
            logger.debug("send failed for %s; aborting it", out.req_id, exc_info=True)
            if not out.finished:
                self.loop.abort(out.req_id)
            else:
                with self._lock:
                    self._active.pop(out.req_id, None)
