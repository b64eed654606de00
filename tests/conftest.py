"""Shared fixtures: one real tritonserver per test session (127.0.0.1, free ports).

The served model is the SmolLM2-135M base (converted once to ~/.cache/padellm-ner), the
same model the in-process comparisons load. A missing tritonserver is a failure, not a
skip: the project installs it (nvidia-pytriton).
"""

from __future__ import annotations

import os
import queue
import re
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

SERVED_MODEL = "smollm2-135m"
#: NOTE: small bounds keep the suite fast on 2 CPU cores; the in-process side uses the same.
SERVED_MAX_MENTION_TOKENS = 8
SERVED_MAX_TEXT_CHARS = 500
SERVED_LABELS = ("LOC", "PER", "ORG", "MISC")


@dataclass
class ServedRepository:
    server: object  # padellm_ner.serving.TritonServer
    grpc_url: str
    metrics_url: str


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory):
    """tritonserver with ``padellm`` + the Python ``llm`` model, for the whole session."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from padellm_build.assemble import assemble_repository
    from padellm_ner.serving import TritonServer

    root = tmp_path_factory.mktemp("triton")
    repo = assemble_repository(
        root / "repository",
        SERVED_MODEL,
        list(SERVED_LABELS),
        llm_backend="python",
        device="cpu",
        dtype="float32",
        max_batch_size=64,
        max_text_chars=SERVED_MAX_TEXT_CHARS,
        max_mention_tokens=SERVED_MAX_MENTION_TOKENS,
    )
    server = TritonServer(repo, log_path=root / "tritonserver.log", startup_timeout=600)
    server.start()
    try:
        yield ServedRepository(server, server.grpc_url, server.metrics_url)
    finally:
        server.stop(timeout=15)


def stream_call(
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    client_timeout: float | None = 120.0,
    request_id: str = "",
) -> list:
    """One request on its own gRPC stream; the list of responses (``InferResult``) up to the
    final one. Raises the ``InferenceServerException`` of an error response."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    client = grpcclient.InferenceServerClient(url)
    results: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(lambda result, error: results.put((result, error)), stream_timeout=client_timeout)
    try:
        tensors = []
        for name, value in inputs.items():
            t = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            t.set_data_from_numpy(value)
            tensors.append(t)
        client.async_stream_infer(model, tensors, request_id=request_id, enable_empty_final_response=True)
        responses = []
        while True:
            result, error = results.get(timeout=(client_timeout or 600) + 30)
            if error is not None:
                raise error
            final = result.get_response().parameters.get("triton_final_response")
            if result.get_response().outputs:
                responses.append(result)
            if final is not None and final.bool_param:
                return responses
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def ner_inputs(
    text: str | bytes,
    labels: Sequence[str | bytes] | None = None,
    *,
    stream: bool = False,
    dedup: str | None = None,
    max_mentions: int | None = None,
) -> dict[str, np.ndarray]:
    inputs = {"TEXT": np.array([text], dtype=np.object_)}
    if labels is not None:
        inputs["LABELS"] = np.array(list(labels), dtype=np.object_)
    if stream:
        inputs["STREAM"] = np.array([True])
    if dedup is not None:
        inputs["DEDUP"] = np.array([dedup], dtype=np.object_)
    if max_mentions is not None:
        inputs["MAX_MENTIONS"] = np.array([max_mentions], dtype=np.int32)
    return inputs


def decode_entities(result) -> list[tuple]:
    """``(label, text, start, end, score)`` tuples of one padellm response."""
    labels = result.as_numpy("ENTITY_LABELS")
    texts = result.as_numpy("ENTITY_TEXTS")
    starts = result.as_numpy("ENTITY_STARTS")
    ends = result.as_numpy("ENTITY_ENDS")
    scores = result.as_numpy("ENTITY_SCORES")
    return [
        (
            labels[i].decode(),
            texts[i].decode(),
            None if starts[i] < 0 else int(starts[i]),
            None if ends[i] < 0 else int(ends[i]),
            float(scores[i]),
        )
        for i in range(len(labels))
    ]


def scrape_metrics(metrics_url: str) -> dict[str, float]:
    """``padellm_llm_*`` metric values from the metrics port."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        m = re.match(r"^(padellm_llm_\w+)\{[^}]*\}\s+([0-9.eE+-]+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values
