"""``AsyncLLM`` over Triton: each ``GenerationRequest`` becomes one request to the ``llm``
(Python backend) or ``tensorrt_llm`` model, in the tensorrt_llm tensor contract.

The call itself is injected (``Transport``: gRPC loopback by default, or BLS; see
``triton_io.llm_transport``), so this module is plain Python and tested with a fake.

NOTE: a transport call blocks while it iterates responses. It runs on a dedicated,
bounded thread pool (never on the event loop, and not asyncio's small default executor,
see TRITON-NOTES); the pool size bounds this instance's in-flight LLM requests.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from padellm_ensemble.validation import ErrorCode, UpstreamError
from padellm_ner.llm import GenerationRequest, GenerationResult

__all__ = [
    "Transport",
    "LLM_OUTPUTS",
    "TritonAsyncLLM",
    "build_llm_inputs",
    "build_stop_inputs",
    "stop_words_tensor",
    "parse_llm_outputs",
]

logger = logging.getLogger(__name__)

#: (model_name, inputs, request_id) -> the model's responses as {name: array}; raises
#: ``UpstreamError`` on an error response.
Transport = Callable[[str, Mapping[str, np.ndarray], str], Iterable[Mapping[str, np.ndarray]]]

LLM_OUTPUTS = ("output_ids", "sequence_length", "output_log_probs", "cum_log_probs")


def stop_words_tensor(words: Sequence[int | Sequence[int]]) -> np.ndarray:
    """Stop words (a token id, or a tuple of ids) in tensorrt_llm's ``[2, n]`` layout.

    Row 0 holds the concatenated word ids, row 1 the cumulative end offsets of the words,
    padded with -1 to row 0's length.
    """
    seqs = [[int(w)] if isinstance(w, (int, np.integer)) else [int(x) for x in w] for w in words]
    flat = [x for s in seqs for x in s]
    offsets = np.cumsum([len(s) for s in seqs]).tolist()
    row1 = offsets + [-1] * (len(flat) - len(offsets))
    return np.array([flat, row1], dtype=np.int32)  # [2, total ids]


def _shape(value: np.ndarray, batch_dim: bool) -> np.ndarray:
    return value[np.newaxis] if batch_dim else value


def build_llm_inputs(
    request: GenerationRequest,
    end_id: int,
    *,
    batch_dim: bool = False,
    streaming: bool = False,
) -> dict[str, np.ndarray]:
    """The tensorrt_llm input tensors of one request.

    Args:
        end_id: the model's end id; it becomes ``end_id`` when it is one of the request's
            stop ids, and every other stop id goes to ``stop_words_list``.
        batch_dim: add a leading batch dimension of 1 (``tensorrt_llm`` has
            ``max_batch_size > 0``; the Python ``llm`` model has none).
    """
    prompt = np.asarray(request.prompt_ids, dtype=np.int32)  # [prompt_len]
    stops = list(dict.fromkeys(request.stop_ids))
    end = end_id if end_id in stops else -1
    words: list = [s for s in stops if s != end] + [tuple(w) for w in request.stop_words]
    inputs = {
        "input_ids": prompt,
        "input_lengths": np.array([len(prompt)], dtype=np.int32),
        "request_output_len": np.array([request.max_new_tokens], dtype=np.int32),
        "end_id": np.array([end], dtype=np.int32),
        "pad_id": np.array([end_id], dtype=np.int32),
        "streaming": np.array([streaming], dtype=bool),
        "return_log_probs": np.array([True], dtype=bool),
        # NOTE: per request, so the parse below holds whatever the tensorrt_llm model's
        # own exclude_input_in_output parameter says (NVIDIA's template leaves it false).
        "exclude_input_in_output": np.array([True], dtype=bool),
    }
    if words:
        inputs["stop_words_list"] = stop_words_tensor(words)
    return {name: _shape(value, batch_dim) for name, value in inputs.items()}


def build_stop_inputs(*, batch_dim: bool = False) -> dict[str, np.ndarray]:
    """A ``stop=True`` request: sent with the running request's id, it aborts it."""
    inputs = {
        "input_ids": np.zeros(1, dtype=np.int32),
        "input_lengths": np.array([1], dtype=np.int32),
        "request_output_len": np.array([1], dtype=np.int32),
        "stop": np.array([True], dtype=bool),
    }
    return {name: _shape(value, batch_dim) for name, value in inputs.items()}


def parse_llm_outputs(outputs: Mapping[str, np.ndarray]) -> tuple[list[int], list[float]]:
    """Token ids and log-probs of one response (beam 0), cut at ``sequence_length``.

    Accepts ``output_ids`` shaped ``[beam, len]`` or ``[batch, beam, len]``.
    """
    ids = _first_row(outputs["output_ids"])  # [len]
    length = len(ids)
    if outputs.get("sequence_length") is not None:
        length = min(length, int(np.asarray(outputs["sequence_length"]).reshape(-1)[0]))
    log_probs = outputs.get("output_log_probs")
    if log_probs is None:
        lp = [0.0] * length
    else:
        lp = [float(x) for x in _first_row(log_probs, np.float64)[:length]]
    return [int(x) for x in ids[:length]], lp


def _drop_outcome(future: asyncio.Future) -> None:
    """Retrieve the outcome of a call whose caller was cancelled, so asyncio does not log
    "Future exception was never retrieved" with a traceback for every cancelled request."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        logger.debug("a cancelled LLM call ended with %r", exc)


def _first_row(values: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """Row 0 of ``[len]``, ``[beam, len]`` or ``[batch, beam, len]``; an empty output
    (an aborted request is answered with ``output_ids`` [1, 0]) is an empty row."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim < 2 or arr.size == 0:
        return arr.reshape(-1)
    return arr.reshape(-1, arr.shape[-1])[0]


class TritonAsyncLLM:
    """``AsyncLLM`` that sends each request to a tensorrt_llm-contract model.

    Args:
        transport: performs one decoupled BLS call (see ``triton_io.bls_transport``).
        model_name: ``llm`` or ``tensorrt_llm``.
        end_id: the model's end id.
        batch_dim: the target model has a batch dimension (``tensorrt_llm``).
        max_inflight: threads, hence requests in flight at once from this instance; at
            least the LLM's batch size, or its in-flight batch cannot fill.
        omits_end_id: the target leaves the end id out of ``output_ids`` (TensorRT-LLM
            does: "generation will stop at the endId, but not include it in the output",
            NVIDIA/TensorRT-LLM#2190); a sequence that ended early then gets the end id
            back (log-prob 0.0: the engine does not report it), so it reads as a stop
            with the step count the ``llm`` model gives. Default: ``batch_dim``.
    """

    def __init__(
        self,
        transport: Transport,
        model_name: str,
        end_id: int,
        *,
        batch_dim: bool = False,
        max_inflight: int = 64,
        omits_end_id: bool | None = None,
    ) -> None:
        self.transport = transport
        self.model_name = model_name
        self.end_id = int(end_id)
        self.batch_dim = batch_dim
        self.omits_end_id = batch_dim if omits_end_id is None else omits_end_id
        self._pool = ThreadPoolExecutor(max_inflight, thread_name_prefix="padellm-bls")
        # NOTE: stops get their own threads so they never queue behind the calls they stop.
        self._stop_pool = ThreadPoolExecutor(4, thread_name_prefix="padellm-bls-stop")
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        req_id = f"padellm-{self._prefix}-{next(self._counter)}"
        inputs = build_llm_inputs(request, self.end_id, batch_dim=self.batch_dim)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self._call, req_id, inputs, request)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with self._lock:
                self._cancelled.add(req_id)
            loop.run_in_executor(self._stop_pool, self._stop, req_id)
            future.add_done_callback(_drop_outcome)  # NOTE: nobody awaits it any more
            raise

    def _call(
        self, req_id: str, inputs: Mapping[str, np.ndarray], request: GenerationRequest
    ) -> GenerationResult:
        with self._lock:
            if req_id in self._cancelled:  # NOTE: cancelled while queued: never send it
                self._cancelled.discard(req_id)
                return GenerationResult(finish_reason="aborted")
        token_ids: list[int] = []
        log_probs: list[float] = []
        try:
            for outputs in self.transport(self.model_name, inputs, req_id):
                if outputs.get("output_ids") is None:
                    continue  # an empty final response
                ids, lps = parse_llm_outputs(outputs)
                token_ids.extend(ids)
                log_probs.extend(lps)
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError(
                f"LLM model {self.model_name!r} failed: {exc}", ErrorCode.INTERNAL
            ) from exc
        finally:
            with self._lock:
                cancelled = req_id in self._cancelled
                self._cancelled.discard(req_id)
        ended_early = len(token_ids) < request.max_new_tokens and not request.stops_at(token_ids)
        if self.omits_end_id and ended_early and not cancelled and self.end_id in request.stop_ids:
            token_ids.append(self.end_id)
            log_probs.append(0.0)
        if request.stops_at(token_ids):
            reason = "stop"
        elif len(token_ids) >= request.max_new_tokens:
            reason = "length"
        else:
            reason = "aborted"
        return GenerationResult(token_ids=token_ids, log_probs=log_probs, finish_reason=reason)

    def _stop(self, req_id: str) -> None:
        try:
            for _ in self.transport(self.model_name, build_stop_inputs(batch_dim=self.batch_dim), req_id):
                pass
        except Exception:  # NOTE: best effort; the request may have finished already
            logger.debug("stop of %s failed", req_id, exc_info=True)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._stop_pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()
