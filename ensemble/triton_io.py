"""Everything that touches ``triton_python_backend_utils`` (only importable in a stub).

Adapters between Triton objects and the Triton-free logic: input getters, response
senders, the LLM transport for ``TritonAsyncLLM`` (gRPC loopback or BLS), and the custom
metrics of both models.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TypeVar

import numpy as np
import triton_python_backend_utils as pb_utils

from padellm_ensemble.llm_client import LLM_OUTPUTS
from padellm_ensemble.validation import ErrorCode, PadellmServingError, UpstreamError, upstream_code
from padellm_ner.engine_metrics import ENGINE_METRICS, REQUESTS_IN_FLIGHT

__all__ = [
    "input_getter",
    "llm_transport",
    "bls_transport",
    "SenderSink",
    "llm_send",
    "error_response",
    "EngineMetrics",
    "InFlightGauge",
    "FINAL",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

_CODES = {
    ErrorCode.INVALID_ARGUMENT: pb_utils.TritonError.INVALID_ARG,
    ErrorCode.UNAVAILABLE: pb_utils.TritonError.UNAVAILABLE,
    ErrorCode.INTERNAL: pb_utils.TritonError.INTERNAL,
}


def input_getter(request) -> Callable[[str], np.ndarray | None]:
    def get(name: str) -> np.ndarray | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    return get


def error_response(message: str, code: ErrorCode) -> pb_utils.InferenceResponse:
    """An error response whose message carries the code prefix (gRPC streams drop the code)."""
    text = message if message.startswith(code.prefix) else code.prefix + message
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(text, _CODES[code]))


def _outputs(outputs: Mapping[str, np.ndarray]) -> list:
    return [pb_utils.Tensor(name, value) for name, value in outputs.items()]


def llm_transport(params: Mapping[str, str]):
    """The orchestrator's ``Transport`` named by its ``llm_transport`` parameter."""
    from padellm_ensemble.grpc_transport import GrpcTransport, llm_url
    from padellm_ner.serving.loopback_tls import LoopbackTLS

    kind = (params.get("llm_transport") or "grpc").strip().lower()
    if kind == "grpc":
        return GrpcTransport(llm_url(params.get("llm_url")), LoopbackTLS.from_params(params))
    if kind == "bls":
        return bls_transport
    raise ValueError(f"llm_transport must be 'grpc' or 'bls', got {kind!r}")


def bls_transport(
    model_name: str, inputs: Mapping[str, np.ndarray], request_id: str
) -> Iterator[Mapping[str, np.ndarray]]:
    """One decoupled BLS call; yields each response's outputs (blocking: run it in a thread)."""
    request = pb_utils.InferenceRequest(
        model_name=model_name,
        inputs=_outputs(inputs),
        requested_output_names=list(LLM_OUTPUTS),
        request_id=request_id,
    )
    for response in request.exec(decoupled=True):
        if response.has_error():
            message = response.error().message()
            raise UpstreamError(f"LLM model {model_name!r}: {message}", upstream_code(message))
        yield {
            name: tensor.as_numpy()
            for name in LLM_OUTPUTS
            if (tensor := pb_utils.get_output_tensor_by_name(response, name)) is not None
        }


class SenderSink:
    """``ResponseSink`` over a decoupled model's response sender."""

    def __init__(self, sender) -> None:
        self.sender = sender

    def send(
        self,
        outputs: Mapping[str, np.ndarray] | None,
        *,
        error: PadellmServingError | None = None,
        final: bool = False,
    ) -> None:
        flags = FINAL if final else 0
        if error is not None:
            self.sender.send(error_response(str(error), error.code), flags=flags)
        elif outputs is not None:
            self.sender.send(pb_utils.InferenceResponse(output_tensors=_outputs(outputs)), flags=flags)
        else:
            self.sender.send(flags=flags)

    def is_cancelled(self) -> bool:
        return self.sender.is_cancelled()


def llm_send(sender) -> Callable[[Mapping[str, np.ndarray] | None, bool, str | None], None]:
    """The ``llm`` model's per-request send(outputs, final, error)."""

    def send(outputs: Mapping[str, np.ndarray] | None, final: bool, error: str | None = None) -> None:
        flags = FINAL if final else 0
        if error is not None:
            invalid = error.startswith(ErrorCode.INVALID_ARGUMENT.prefix)
            code = ErrorCode.INVALID_ARGUMENT if invalid else ErrorCode.INTERNAL
            sender.send(error_response(error, code), flags=flags)
        elif outputs is None:
            sender.send(flags=flags)
        else:
            sender.send(pb_utils.InferenceResponse(output_tensors=_outputs(outputs)), flags=flags)

    return send


class EngineMetrics:
    """In-flight batching evidence on the metrics port (``padellm_llm_*``).

    Counters mirror ``EngineStats`` (cumulative, pushed as deltas); the gauge is the
    number of requests currently in the running batch.
    """

    def __init__(self, model_name: str) -> None:
        labels = {"model": model_name}
        self._families = []
        self._counters = {}
        for field_name, (name, description) in ENGINE_METRICS.items():
            family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
            self._families.append(family)
            self._counters[field_name] = family.Metric(labels=labels)
        family = pb_utils.MetricFamily(
            name="padellm_llm_active_requests",
            description="Requests in the running batch",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self._families.append(family)
        self._active = family.Metric(labels=labels)
        self._seen: dict[str, float] = {}
        self._active_value: int | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start_refresher(self, refresh: Callable[[], None], interval_s: float = 0.5) -> None:
        """Refresh from a daemon thread too: stats move between request completions."""

        def run() -> None:
            while not self._stopped.wait(interval_s):
                try:
                    refresh()
                except Exception:  # NOTE: metrics must never take the model down
                    logger.debug("metrics refresh failed", exc_info=True)

        self._thread = threading.Thread(target=run, name="padellm-llm-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing and drop the metric objects, while the stub can still free them.

        NOTE: a ``pb_utils`` metric left for interpreter shutdown is freed after the stub's
        IPC is gone: the stub then segfaulted on every server stop (seen here).
        """
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:
            self._counters.clear()
            self._active = None
            self._families.clear()

    def update(self, stats, num_active: int) -> None:
        with self._lock:
            for field_name, metric in self._counters.items():
                value = float(getattr(stats, field_name, 0) or 0)
                delta = value - self._seen.get(field_name, 0.0)
                if delta > 0:
                    metric.increment(delta)
                    self._seen[field_name] = value
            # NOTE: only on a change: an idle stub makes no call to tritonserver, which
            # stops answering them once it is shutting down (the call then never returns)
            if self._active is not None and num_active != self._active_value:
                self._active.set(float(num_active))
                self._active_value = num_active


class InFlightGauge:
    """``padellm_requests_in_flight``: the orchestrator's extractions not yet answered in full.

    Why: tritonserver can keep a model UNLOADING with nothing to do (a gRPC stream a
    client cancelled can hold it); ``serve``'s drain then waited its whole timeout. With
    this gauge at 0 (and Triton's pending count) it knows.
    Updated on the stub's event loop only, so a plain counter.
    """

    def __init__(self, model_name: str) -> None:
        self._family = pb_utils.MetricFamily(
            name=REQUESTS_IN_FLIGHT,
            description="Extractions being answered (their final response not sent yet)",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self._gauge = self._family.Metric(labels={"model": model_name})
        self._count = 0
        self._gauge.set(0.0)

    async def counted(self, work: Awaitable[_T]) -> _T:
        """Await ``work`` (one request's handling), counted while it runs."""
        self._add(1)
        try:
            return await work
        finally:
            self._add(-1)

    def _add(self, delta: int) -> None:
        self._count += delta
        if self._gauge is not None:
            self._gauge.set(float(self._count))

    def stop(self) -> None:
        """Drop the metric objects while the stub can still free them (see EngineMetrics.stop)."""
        self._gauge = None
        self._family = None

