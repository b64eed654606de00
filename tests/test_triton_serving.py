"""End-to-end tests against a real tritonserver (session fixture in conftest.py).

Served: ``padellm`` (orchestrator, BLS) + ``llm`` (torch engine, in-flight batching),
both on SmolLM2-135M; the in-process side runs the same plan with ``TorchLLM``.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import (
    SERVED_LABELS,
    SERVED_MAX_MENTION_TOKENS,
    SERVED_MAX_TEXT_CHARS,
    decode_entities,
    ner_inputs,
    scrape_metrics,
    stream_call,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NUM_SENTENCES = 30


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    from padellm_ner.data import load_split

    return [ex.text for ex in load_split("conll2003", "test")[:NUM_SENTENCES]]


@pytest.fixture(scope="module")
def in_process(sentences):
    """Entities of each sentence from ``run_plan`` over ``TorchLLM`` (same model, same bounds)."""
    from padellm_ner.engine import TorchLLM
    from padellm_ner.plan import PaDeLLMPlan, PlanConfig, run_plan
    from tests.model_cache import smollm2_codec, smollm2_core

    llm, codec = TorchLLM(smollm2_core()), smollm2_codec()
    config = PlanConfig(max_mention_tokens=SERVED_MAX_MENTION_TOKENS)
    results = []
    for text in sentences:
        entities = run_plan(PaDeLLMPlan(text, SERVED_LABELS, codec, config), llm)
        results.append([(e.label, e.text, e.start, e.end, e.score) for e in entities])
    return results


def _same(served: list[tuple], expected: list[tuple]) -> None:
    assert [e[:4] for e in served] == [e[:4] for e in expected]
    for s, e in zip(served, expected):
        assert math.isclose(s[4], e[4], rel_tol=1e-3, abs_tol=1e-6)


def _extract(url: str, text, labels=None, **kwargs) -> list[tuple]:
    (response,) = stream_call(url, "padellm", ner_inputs(text, labels, **kwargs))
    assert response.as_numpy("LABEL")[0] == b""
    return decode_entities(response)


def test_unary_matches_in_process(triton_server, sentences, in_process):
    for text, expected in zip(sentences, in_process):
        _same(_extract(triton_server.grpc_url, text), expected)


def test_llm_model_matches_torch_llm(triton_server, sentences):
    """The served ``llm`` model (tensorrt_llm contract) decodes exactly like ``TorchLLM``,
    on forced mention prompts (the untrained base rarely predicts a non-zero count)."""
    from padellm_ensemble.llm_client import build_llm_inputs, parse_llm_outputs
    from padellm_ner.engine import TorchLLM
    from padellm_ner.llm import GenerationRequest
    from padellm_ner.prompts.padellm import template_for
    from tests.model_cache import smollm2_codec, smollm2_core

    codec, template = smollm2_codec(), template_for("en")
    requests = [
        GenerationRequest(
            prompt_ids=tuple(codec.encode(template.count_prompt(text, label))
                             + codec.encode(template.mention_prefix(1, 1))),
            max_new_tokens=SERVED_MAX_MENTION_TOKENS,
            stop_ids=(codec.end_id,),
        )
        for text in sentences[:6]
        for label in SERVED_LABELS[:2]
    ]
    expected = TorchLLM(smollm2_core()).generate(requests)
    for request, want in zip(requests, expected):
        responses = stream_call(triton_server.grpc_url, "llm", build_llm_inputs(request, codec.end_id))
        assert len(responses) == 1  # non-streaming: one response
        outputs = {n: responses[0].as_numpy(n) for n in ("output_ids", "sequence_length", "output_log_probs")}
        ids, log_probs = parse_llm_outputs(outputs)
        assert ids == want.token_ids
        np.testing.assert_allclose(log_probs, want.log_probs, rtol=1e-3, atol=1e-4)


def test_llm_refuses_a_prompt_longer_than_the_model_as_invalid_argument(triton_server, sentences):
    """A request over the model's positions is the caller's to fix: INVALID_ARGUMENT with
    the numbers, not INTERNAL, and the server goes on serving."""
    from tritonclient.utils import InferenceServerException

    from padellm_ensemble.llm_client import build_llm_inputs
    from padellm_ner.llm import GenerationRequest
    from tests.model_cache import smollm2_codec

    codec = smollm2_codec()
    request = GenerationRequest(prompt_ids=(42,) * 8190, max_new_tokens=8, stop_ids=(codec.end_id,))
    with pytest.raises(InferenceServerException) as info:
        stream_call(triton_server.grpc_url, "llm", build_llm_inputs(request, codec.end_id))
    message = info.value.message()
    assert message.startswith("[INVALID_ARGUMENT] ") and "too long" in message, message
    assert "8190" in message and "8192" in message, message
    short = GenerationRequest(prompt_ids=(42,) * 4, max_new_tokens=2, stop_ids=(codec.end_id,))
    with_prompt = {**build_llm_inputs(short, codec.end_id), "exclude_input_in_output": np.array([False])}
    with pytest.raises(InferenceServerException) as info:
        stream_call(triton_server.grpc_url, "llm", with_prompt)
    assert info.value.message().startswith("[INVALID_ARGUMENT] exclude_input_in_output"), info.value.message()
    _healthy(triton_server, sentences[0])


def test_a_bad_llm_request_fails_alone_while_extractions_go_on(triton_server, sentences, in_process):
    """Token ids outside the vocabulary used to fail the engine's whole batch (every
    request in flight, a user's extraction too): now refused on entry, INVALID_ARGUMENT.
    An empty ``stop_words_list`` ([2, 0]) means no stop words, not a server error."""
    from tritonclient.utils import InferenceServerException

    from padellm_ensemble.llm_client import build_llm_inputs, parse_llm_outputs
    from padellm_ner.llm import GenerationRequest
    from tests.model_cache import smollm2_codec

    codec = smollm2_codec()
    with ThreadPoolExecutor(4) as pool:
        served = [pool.submit(_extract, triton_server.grpc_url, text) for text in sentences[:4]]
        for bad_id in (999_999, -1, 2**31 - 1):
            request = GenerationRequest(prompt_ids=(42, bad_id, 42), max_new_tokens=4, stop_ids=())
            with pytest.raises(InferenceServerException) as info:
                stream_call(triton_server.grpc_url, "llm", build_llm_inputs(request, codec.end_id))
            message = info.value.message()
            assert message.startswith("[INVALID_ARGUMENT] ") and "outside the model's vocabulary" in message
        for future, expected in zip(served, in_process[:4]):
            _same(future.result(timeout=600), expected)
    request = GenerationRequest(tuple(codec.encode(sentences[0])), max_new_tokens=3, stop_ids=())
    inputs = {**build_llm_inputs(request, codec.end_id), "stop_words_list": np.zeros((2, 0), np.int32)}
    (response,) = stream_call(triton_server.grpc_url, "llm", inputs)
    assert len(parse_llm_outputs({"output_ids": response.as_numpy("output_ids")})[0]) == 3


def test_llm_streaming_one_response_per_token(triton_server, sentences):
    from padellm_ensemble.llm_client import build_llm_inputs, parse_llm_outputs
    from padellm_ner.llm import GenerationRequest
    from tests.model_cache import smollm2_codec

    codec = smollm2_codec()
    request = GenerationRequest(tuple(codec.encode(sentences[0])), max_new_tokens=6, stop_ids=())
    streamed = stream_call(triton_server.grpc_url, "llm", build_llm_inputs(request, codec.end_id, streaming=True))
    whole = stream_call(triton_server.grpc_url, "llm", build_llm_inputs(request, codec.end_id))
    assert len(streamed) == 6
    tokens = [parse_llm_outputs({"output_ids": r.as_numpy("output_ids")})[0] for r in streamed]
    assert all(len(t) == 1 for t in tokens)
    assert [t[0] for t in tokens] == parse_llm_outputs({"output_ids": whole[0].as_numpy("output_ids")})[0]


def test_grpc_transport_calls_the_llm_model_like_a_client(triton_server, sentences):
    """The orchestrator's default transport, driven directly: the same tokens as a plain
    stream call; a missing model or an unreachable server is an ``UpstreamError``
    marked UNAVAILABLE, never a hang."""
    from padellm_ensemble.grpc_transport import GrpcTransport
    from padellm_ensemble.llm_client import build_llm_inputs, parse_llm_outputs
    from padellm_ensemble.validation import ErrorCode, UpstreamError
    from padellm_ner.llm import GenerationRequest
    from padellm_ner.serving.triton_server import free_ports
    from tests.model_cache import smollm2_codec

    codec = smollm2_codec()
    request = GenerationRequest(tuple(codec.encode(sentences[0])), max_new_tokens=5, stop_ids=())
    inputs = build_llm_inputs(request, codec.end_id)
    transport = GrpcTransport(triton_server.grpc_url)
    try:
        got = [parse_llm_outputs(o) for o in transport("llm", inputs, "grpc-transport-1")]
        (want,) = stream_call(triton_server.grpc_url, "llm", inputs)
        assert [ids for ids, _ in got] == [parse_llm_outputs({"output_ids": want.as_numpy("output_ids")})[0]]
        assert len(got[0][0]) == 5
        with pytest.raises(UpstreamError) as info:
            list(transport("no_such_model", inputs, "grpc-transport-2"))
        assert info.value.code is ErrorCode.UNAVAILABLE
    finally:
        transport.close()
    (port,) = free_ports(1)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        list(GrpcTransport(f"127.0.0.1:{port}")("llm", inputs, "grpc-transport-3"))
    assert info.value.code is ErrorCode.UNAVAILABLE and time.monotonic() - started < 30


def test_streaming_one_message_per_label(triton_server, sentences):
    for text in sentences[:5]:
        responses = stream_call(triton_server.grpc_url, "padellm", ner_inputs(text, stream=True))
        labels = [r.as_numpy("LABEL")[0].decode() for r in responses]
        assert sorted(labels) == sorted(SERVED_LABELS)
        union = sorted(e for r in responses for e in decode_entities(r))
        unary = sorted(_extract(triton_server.grpc_url, text))
        assert [e[:4] for e in union] == [e[:4] for e in unary]
        for r in responses:
            label = r.as_numpy("LABEL")[0].decode()
            assert all(e[0] == label for e in decode_entities(r))


def test_twenty_concurrent_clients(triton_server, sentences, in_process):
    url = triton_server.grpc_url
    with ThreadPoolExecutor(20) as pool:
        served = list(pool.map(lambda text: _extract(url, text), sentences[:20]))
    for got, expected in zip(served, in_process[:20]):
        _same(got, expected)


def test_client_library_matches(triton_server, sentences, in_process):
    """The padellm_client SDK against this server (unary and streaming)."""
    from padellm_client import NERClient

    with NERClient(triton_server.grpc_url, timeout=120) as client:
        for text, expected in zip(sentences[:5], in_process[:5]):
            got = [(e.label, e.text, e.start, e.end, e.score) for e in client.extract(text)]
            _same(got, expected)
        results = list(client.stream(sentences[0]))
        assert sorted(r.label for r in results) == sorted(SERVED_LABELS)


def _wait_idle(metrics_url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while scrape_metrics(metrics_url).get("padellm_llm_active_requests", 0) > 0:
        assert time.monotonic() < deadline, "llm requests still active: cancellation did not stop them"
        time.sleep(0.2)


def _healthy(triton_server, text: str) -> None:
    assert triton_server.server.is_ready()
    assert isinstance(_extract(triton_server.grpc_url, text), list)


def test_deadline_exceeded_then_healthy(triton_server, sentences):
    from tritonclient.utils import InferenceServerException

    labels = [f"TYPE{i}" for i in range(48)]  # NOTE: enough work to outlast the deadline
    with pytest.raises(InferenceServerException) as info:
        stream_call(triton_server.grpc_url, "padellm", ner_inputs(sentences[1], labels), client_timeout=0.3)
    assert "DEADLINE_EXCEEDED" in str(info.value.status()) + str(info.value)
    _wait_idle(triton_server.metrics_url)
    _healthy(triton_server, sentences[2])


BAD_INPUTS = {
    "empty": (ner_inputs(""), "empty"),
    "whitespace": (ner_inputs(" \t\n "), "whitespace"),
    "invalid_utf8": (ner_inputs(b"caf\xe9 \xff"), "UTF-8"),
    "nul": (ner_inputs("Paris\x00London"), "NUL"),
    "too_long": (ner_inputs("a" * (SERVED_MAX_TEXT_CHARS + 1)), str(SERVED_MAX_TEXT_CHARS)),
    "no_labels": ({**ner_inputs("EU rejects German call ."), "LABELS": np.array([], dtype=np.object_)}, "LABELS"),
    "label_newline": ({**ner_inputs("EU rejects German call ."), "LABELS": np.array([b"PER", b"ORG\nX"], dtype=np.object_)},
                      "LABELS[1] contains the control character"),
    "bad_dedup": (ner_inputs("EU rejects German call .", dedup="maybe"), "DEDUP"),
    "bad_max_mentions": (ner_inputs("EU rejects German call .", max_mentions=0), "MAX_MENTIONS"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_invalid_argument(triton_server, case):
    from tritonclient.utils import InferenceServerException

    inputs, hint = BAD_INPUTS[case]
    with pytest.raises(InferenceServerException) as info:
        stream_call(triton_server.grpc_url, "padellm", inputs)
    message = info.value.message()
    assert message.startswith("[INVALID_ARGUMENT] "), message
    assert hint in message, message
    _healthy(triton_server, "EU rejects German call to boycott British lamb .")


def test_inflight_batching_metrics_and_join(triton_server, sentences):
    """A request arriving while another decodes joins its batch: fewer forwards than apart."""
    from padellm_ensemble.llm_client import build_llm_inputs
    from padellm_ner.llm import GenerationRequest
    from tests.model_cache import smollm2_codec

    codec, url, metrics = smollm2_codec(), triton_server.grpc_url, triton_server.metrics_url
    long = GenerationRequest(tuple(codec.encode(sentences[3])), max_new_tokens=64, stop_ids=())
    short = GenerationRequest(tuple(codec.encode(sentences[4])), max_new_tokens=24, stop_ids=())

    def run(request):
        return stream_call(url, "llm", build_llm_inputs(request, codec.end_id))

    def settled() -> dict[str, float]:
        time.sleep(1.2)  # NOTE: the model refreshes its metrics every 0.5 s
        return scrape_metrics(metrics)

    _wait_idle(metrics)
    before = settled()
    run(long)
    run(short)
    apart = settled()
    forwards_apart = apart["padellm_llm_forwards_total"] - before["padellm_llm_forwards_total"]
    # NOTE: the engine counts decode-step tokens; each request's first comes from its prefill
    assert apart["padellm_llm_tokens_total"] - before["padellm_llm_tokens_total"] >= 64 + 24 - 2
    assert forwards_apart >= 64 + 24 - 1

    thread = threading.Thread(target=run, args=(long,))
    thread.start()
    deadline = time.monotonic() + 30
    while scrape_metrics(metrics).get("padellm_llm_active_requests", 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # NOTE: let the long request decode a few steps first
    run(short)
    thread.join(120)
    together = settled()
    forwards_together = together["padellm_llm_forwards_total"] - apart["padellm_llm_forwards_total"]
    batch_sum = together["padellm_llm_batch_size_sum"] - apart["padellm_llm_batch_size_sum"]
    steps = together["padellm_llm_decode_steps_total"] - apart["padellm_llm_decode_steps_total"]
    assert forwards_together < forwards_apart - 10, (forwards_together, forwards_apart)
    assert batch_sum > steps  # some steps decoded both requests
    # the padding the prefill packing left is observable: slots - computed
    slots = together["padellm_llm_prefill_slots_total"]
    assert slots >= together["padellm_llm_prompt_tokens_computed_total"] > 0


def test_bench_load_reads_the_llm_counters_from_the_metrics_port(triton_server) -> None:
    """``bench load --metrics-url`` reads the served ``llm`` model's batching counters
    from Triton's metrics endpoint, the same values the metrics port shows."""
    from padellm_ner.bench.load import ENGINE_COUNTERS, metrics_counters
    from padellm_ner.engine_metrics import ENGINE_METRICS

    _wait_idle(triton_server.metrics_url)
    read = metrics_counters(triton_server.metrics_url)()
    shown = scrape_metrics(triton_server.metrics_url)
    assert set(read) == set(ENGINE_COUNTERS)
    assert all(read[key] == shown[ENGINE_METRICS[key][0]] for key in ENGINE_COUNTERS)
