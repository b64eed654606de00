"""LLM calls from the orchestrator to the ``llm`` / ``tensorrt_llm`` model over gRPC
(loopback to the same tritonserver): the default transport, plaintext or TLS
(``padellm_ner.serving.loopback_tls``).

Why not BLS by default: python_backend (2.51, and upstream since) builds the numpy
arrays of a BLS response without holding the GIL: ``InferRequest::Exec`` releases it,
and decoupled responses are loaded on the stub's queue-monitor thread. The orchestrator
runs many requests at once, so other Python threads run at the same time; under load
the stub's heap gets corrupted (seen here: a segfault in libpython, then "Stub process
'padellm_0_0' is not healthy" for every later request, because a decoupled model's stub
is never restarted). Over gRPC every Python object is made by a thread that holds the
GIL. BLS stays available (``llm_transport: bls``) where its speed matters more.

Triton-free (only ``tritonclient``), so it is tested against a real server directly.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator, Mapping

import numpy as np

from padellm_ensemble.llm_client import LLM_OUTPUTS
from padellm_ensemble.validation import UpstreamError, upstream_code
from padellm_ner.serving.loopback_tls import LoopbackTLS
from padellm_ner.serving.triton_server import LLM_URL_ENV

__all__ = ["DEFAULT_URL", "GrpcTransport", "llm_url"]

#: Triton's own default gRPC address.
DEFAULT_URL = "localhost:8001"


def llm_url(configured: str | None = None) -> str:
    """The config's ``llm_url``, else ``$PADELLM_LLM_URL``, else Triton's default port."""
    return configured or os.environ.get(LLM_URL_ENV) or DEFAULT_URL


def _message(exc: BaseException) -> str:
    """An ``InferenceServerException``'s message, or any exception's text."""
    return exc.message() if hasattr(exc, "message") else str(exc)


def _infer_inputs(inputs: Mapping[str, np.ndarray]) -> list:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, value in inputs.items():
        tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors


class GrpcTransport:
    """``Transport`` over tritonclient's gRPC stream API; one client per calling thread.

    Each call opens a stream, sends one request and yields its responses up to the final
    one (``enable_empty_final_response``), like ``exec(decoupled=True)``. A call left
    early (its generator closed) cancels its stream. ``tls``: the server's gRPC port
    serves TLS (``serve --grpc-server-cert``), so the loopback speaks it too.
    """

    def __init__(self, url: str, tls: LoopbackTLS | None = None) -> None:
        self.url = url
        self.tls = tls
        # NOTE: read the PEM files once, when the model loads, not per calling thread
        self._client_kwargs = tls.client_kwargs() if tls else {}
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(self.url, **self._client_kwargs)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def __call__(
        self, model_name: str, inputs: Mapping[str, np.ndarray], request_id: str
    ) -> Iterator[Mapping[str, np.ndarray]]:
        import tritonclient.grpc as grpcclient

        client = self._client()
        results: queue.SimpleQueue = queue.SimpleQueue()
        finished = False
        try:
            client.start_stream(lambda result, error: results.put((result, error)))
            try:
                client.async_stream_infer(
                    model_name,
                    _infer_inputs(inputs),
                    request_id=request_id,
                    outputs=[grpcclient.InferRequestedOutput(name) for name in LLM_OUTPUTS],
                    enable_empty_final_response=True,
                )
            except Exception:
                # NOTE: a stream that failed (e.g. connection refused) reports the cause
                # through the callback; prefer it to "stream no longer in valid state".
                with contextlib.suppress(queue.Empty):
                    _, error = results.get(timeout=1.0)
                    if error is not None:
                        raise error from None
                raise
            while not finished:
                result, error = results.get()
                if error is not None:
                    finished = True  # NOTE: an error response is the last one
                    message = _message(error)
                    raise UpstreamError(f"LLM model {model_name!r}: {message}", upstream_code(message))
                response = result.get_response()
                finished = response.parameters["triton_final_response"].bool_param
                outputs = {output.name: result.as_numpy(output.name) for output in response.outputs}
                if outputs:
                    yield outputs
        except UpstreamError:
            raise
        except Exception as exc:  # NOTE: connection refused, stream broken, ...
            message = _message(exc)
            raise UpstreamError(f"LLM model {model_name!r} at {self.url}: {message}", upstream_code(message)) from exc
        finally:
            with contextlib.suppress(Exception):  # NOTE: a broken channel has nothing to stop
                client.stop_stream(cancel_requests=not finished)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
