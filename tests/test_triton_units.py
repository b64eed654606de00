"""Triton-free tests of the serving logic: template filler, assembly, validation, the
BLS LLM client, the llm model's request mapping and the orchestrator (fakes, no server)."""

from __future__ import annotations

import asyncio
import re
import threading

import numpy as np
import pytest

from padellm_build.fill_template import TemplateError, fill, parse_substitutions
from padellm_build.fill_template import main as fill_main
from padellm_ensemble.llm_client import TritonAsyncLLM, build_llm_inputs, parse_llm_outputs
from padellm_ensemble.llm_server import InflightLLMServer, LLMWireError, parse_llm_request
from padellm_ensemble.orchestrator import Orchestrator, OrchestratorConfig
from padellm_ensemble.validation import RequestValidationError, parse_request
from padellm_ner.llm import GenerationRequest, GenerationResult, StepOutput

TEMPLATE = """# optional: color, size
name: "${name}"
parameters { key: "color" value: { string_value: "${color}" } }
parameters {
  key: "size"
  value: { string_value: "${size}" }
}
"""


# -- fill_template -------------------------------------------------------------------
def test_fill_removes_unset_optional_blocks():
    text = fill(TEMPLATE, {"name": "m", "color": "red"})
    assert 'name: "m"' in text and '"red"' in text
    assert "size" not in text.split("\n", 1)[1] and "${" not in text


def test_fill_rejects_unknown_and_missing_keys():
    with pytest.raises(TemplateError, match="unknown keys"):
        fill(TEMPLATE, {"name": "m", "colour": "red"})
    with pytest.raises(TemplateError, match=r"unfilled: \['name'\]"):
        fill(TEMPLATE, {"color": "red"})


def test_fill_reads_nvidias_colon_style_blocks():
    """NVIDIA's templates write ``parameters: {`` (protobuf text format allows both)."""
    template = (
        "# optional: a\n"
        'parameters: {\n  key: "a"\n  value: {\n    string_value: "${a}"\n  }\n}\n'
        'parameters {\n  key: "b"\n  value: {\n    string_value: "${b}"\n  }\n}\n'
    )
    out = fill(template, {"b": "x"})
    assert 'key: "a"' not in out and 'string_value: "x"' in out
    assert 'string_value: "1"' in fill(template, {"a": "1", "b": "x"})


def test_fill_cli(tmp_path, capsys):
    path = tmp_path / "config.pbtxt"
    path.write_text(TEMPLATE)
    assert parse_substitutions(r"name:a\,b,size:3") == {"name": "a,b", "size": "3"}
    assert fill_main([str(path), "name:x,size:3", "-i"]) == 0
    assert '"x"' in path.read_text() and "color" not in path.read_text().split("\n", 1)[1]
    path.write_text(TEMPLATE)
    assert fill_main([str(path), "nam:x"]) == 2


def test_assemble_makes_model_folders_absolute_and_rejects_missing_ones(tmp_path, monkeypatch):
    from padellm_build.assemble import assemble_repository
    from padellm_ner.models import ModelNotFoundError

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)  # NOTE: tritonserver runs model.py elsewhere: "m" must not stay relative
    repo = assemble_repository(tmp_path / "r", "m", ["A"])
    assert f'string_value: "{tmp_path / "m"}"' in (repo / "llm" / "config.pbtxt").read_text()
    with pytest.raises(ModelNotFoundError, match="neither a known name"):
        assemble_repository(tmp_path / "r2", "no-such-model", ["A"])
    assert not (tmp_path / "r2").exists()


def test_assemble_serves_the_model_tags_not_its_prompt_words(tmp_path):
    import json

    from padellm_build.assemble import assemble_repository

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    record = {"format": "padellm", "tags": ["PER.NAM"], "labels": ["人名"], "lang": "zh"}
    (tmp_path / "m" / "padellm.json").write_text(json.dumps(record))
    padellm = (assemble_repository(tmp_path / "r", str(tmp_path / "m")) / "padellm" / "config.pbtxt").read_text()
    assert '"[\\"PER.NAM\\"]"' in padellm and "人名" not in padellm
    assert 'key: "lang" value: { string_value: "zh" }' in padellm


def test_assemble_python_repository(tmp_path):
    from padellm_build.assemble import assemble_repository

    repo = assemble_repository(
        tmp_path / "r", "/nonexistent-model", ["A", 'B"x'], max_mention_tokens=5, check_model=False
    )
    padellm = (repo / "padellm" / "config.pbtxt").read_text()
    assert '"[\\"A\\", \\"B\\\\\\"x\\"]"' in padellm  # JSON, escaped for pbtxt
    assert '"llm"' in padellm and "${" not in padellm and 'key: "max_concurrency"' not in padellm
    assert 'key: "llm_transport"' not in padellm  # NOTE: unset means gRPC loopback
    assert (repo / "llm" / "1" / "model.py").exists() and "${" not in (repo / "llm" / "config.pbtxt").read_text()
    with pytest.raises(FileExistsError):
        assemble_repository(repo, "/nonexistent-model", check_model=False)
    assert assemble_repository(repo, "/nonexistent-model", check_model=False, overwrite=True) == repo
    # --overwrite replaces a repository it wrote, never another folder (it used to rmtree it)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a padellm-ner model repository"):
        assemble_repository(other, "/nonexistent-model", check_model=False, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    # ...nor what a user added to a repository it wrote (another model, notes)
    (repo / "mymodel").mkdir()
    (repo / "NOTES.txt").write_text("mine")
    (repo / "tritonserver.log").write_text("a log")
    with pytest.raises(FileExistsError, match=r"holds more than this writes \(NOTES.txt, mymodel\)"):
        assemble_repository(repo, "/nonexistent-model", check_model=False, overwrite=True)
    assert (repo / "NOTES.txt").read_text() == "mine" and (repo / "mymodel").is_dir()
    bls = assemble_repository(tmp_path / "b", "/nonexistent-model", llm_transport="bls", check_model=False)
    assert 'key: "llm_transport" value: { string_value: "bls" }' in (bls / "padellm" / "config.pbtxt").read_text()
    assert 'key: "batch_window_us"' not in (repo / "llm" / "config.pbtxt").read_text()  # the model's 5 ms
    off = assemble_repository(tmp_path / "w", "/nonexistent-model", batch_window_us=0, check_model=False)
    assert 'key: "batch_window_us" value: { string_value: "0" }' in (off / "llm" / "config.pbtxt").read_text()
    assert 'key: "count_hedge"' not in padellm  # NOTE: unset means the model's recorded value
    assert 'key: "max_llm_inflight" value: { string_value: "64" }' in padellm  # the LLM's batch
    hedged = assemble_repository(tmp_path / "h", "/nonexistent-model", count_hedge=0.6, check_model=False)
    assert 'key: "count_hedge" value: { string_value: "0.6" }' in (hedged / "padellm" / "config.pbtxt").read_text()


# -- validation ------------------------------------------------------------------------
def _parse(text, labels=None, **kw):
    return parse_request(
        np.array([text], dtype=object), None if labels is None else np.array(labels, dtype=object),
        default_labels=("PER", "LOC"), max_text_chars=20, **kw,
    )


@pytest.mark.parametrize(
    "text,labels,hint",
    [("", None, "empty"), ("  \n", None, "whitespace"), (b"\xff", None, "UTF-8"),
     ("a\x00b", None, "NUL"), ("x" * 21, None, "20"), ("ok", [], "LABELS is empty")],
)
def test_validation_errors_say_what_to_fix(text, labels, hint):
    with pytest.raises(RequestValidationError, match=hint) as info:
        _parse(text, labels)
    assert info.value.wire_message.startswith("[INVALID_ARGUMENT] ")


def test_validation_defaults_and_options():
    req = _parse("Paris", ["ORG", "ORG", "PER"], dedup=np.array([b"span"], dtype=object),
                 max_mentions=np.array([3], dtype=np.int32), stream=np.array([True]))
    assert req.labels == ("ORG", "PER") and req.max_mentions == 3 and req.stream and req.dedup.value == "span"
    assert _parse(b"Paris").labels == ("PER", "LOC")


# -- llm client (BLS) -----------------------------------------------------------------
def test_build_llm_inputs_contract():
    req = GenerationRequest((5, 6, 7), 4, (2, 10, 11))
    inputs = build_llm_inputs(req, end_id=2)
    assert inputs["input_ids"].dtype == np.int32 and inputs["input_ids"].shape == (3,)
    assert inputs["end_id"].tolist() == [2]
    assert inputs["stop_words_list"].tolist() == [[10, 11], [1, 2]]
    # sent per request: NVIDIA's tensorrt_llm template leaves the model parameter false,
    # and a prompt in front of output_ids would be parsed as generated tokens
    assert inputs["exclude_input_in_output"].tolist() == [True]
    batched = build_llm_inputs(req, end_id=2, batch_dim=True)
    assert batched["input_ids"].shape == (1, 3) and batched["stop_words_list"].shape == (1, 2, 2)
    # the llm model reads back what the client sends
    wire = parse_llm_request(inputs.get, "r1")
    assert wire.request == GenerationRequest((5, 6, 7), 4, (2, 10, 11))
    assert parse_llm_request(batched.get, "r1").request == wire.request
    # stop words of several tokens travel in the same [2, n] table (offsets padded with -1)
    req = GenerationRequest((5, 6, 7), 4, (2, 10), stop_words=((7, 8, 9), (3, 4)))
    inputs = build_llm_inputs(req, end_id=2)
    assert inputs["stop_words_list"].tolist() == [[10, 7, 8, 9, 3, 4], [1, 4, 6, -1, -1, -1]]
    assert parse_llm_request(inputs.get, "r2").request == req
    bad = {**inputs, "stop_words_list": np.array([[10, 7], [1, 5]], dtype=np.int32)}
    with pytest.raises(LLMWireError, match="out of range"):
        parse_llm_request(bad.get, "r3")
    # the llm model returns generated tokens only, so it refuses to be asked otherwise
    with_prompt = {**inputs, "exclude_input_in_output": np.array([False])}
    with pytest.raises(LLMWireError, match="exclude_input_in_output"):
        parse_llm_request(with_prompt.get, "r4")
    assert parse_llm_request({k: v for k, v in inputs.items() if k != "exclude_input_in_output"}.get, "r5").request == req


def test_parse_llm_outputs_cuts_at_sequence_length():
    out = {"output_ids": np.array([[[4, 5, 0]]], dtype=np.int32), "sequence_length": np.array([[2]]),
           "output_log_probs": np.array([[[-1.0, -2.0, 0.0]]], dtype=np.float32)}
    assert parse_llm_outputs(out) == ([4, 5], [-1.0, -2.0])
    # an aborted request's answer: no ids at all ([1, 0]), with or without log-probs
    empty = {"output_ids": np.zeros((1, 0), np.int32), "sequence_length": np.array([0], np.int32),
             "output_log_probs": np.zeros((1, 0), np.float32)}  # fmt: skip
    assert parse_llm_outputs(empty) == ([], [])
    assert parse_llm_outputs({"output_ids": np.zeros((1, 1, 0), np.int32)}) == ([], [])


def test_bls_llm_streams_and_stops_on_cancel():
    calls, release = [], threading.Event()

    def transport(model, inputs, req_id):
        calls.append((req_id, bool(inputs.get("stop", [False])[0])))
        if inputs.get("stop") is not None:
            release.set()
            return
        release.wait(5)
        yield {"output_ids": np.array([[7]], dtype=np.int32), "output_log_probs": np.array([[-0.5]], dtype=np.float32)}

    llm = TritonAsyncLLM(transport, "llm", end_id=2)

    async def main():
        task = asyncio.ensure_future(llm.agenerate(GenerationRequest((1,), 3, (2,))))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)

    asyncio.run(main())
    assert [stop for _, stop in calls] == [False, True] and calls[0][0] == calls[1][0]
    llm.close()


def test_a_tensorrt_llm_sequence_that_ended_early_gets_its_end_id_back():
    """TensorRT-LLM stops at end_id but leaves it out of output_ids (NVIDIA/TensorRT-LLM#2190;
    a fake of its answer here: TensorRT-LLM cannot run on this machine); the torch llm
    model keeps it. Both must read as a stop, with the same steps."""
    def engine(include_end: bool):
        def transport(model, inputs, req_id):
            ids = [7, 8, 2] if include_end else [7, 8]
            yield {"output_ids": np.array([[ids]], dtype=np.int32),
                   "output_log_probs": np.array([[[-0.5] * len(ids)]], dtype=np.float32)}  # fmt: skip
        return transport

    request = GenerationRequest((1,), 5, (2,))
    torch_like = TritonAsyncLLM(engine(True), "llm", end_id=2)
    trt_like = TritonAsyncLLM(engine(False), "tensorrt_llm", end_id=2, batch_dim=True)
    a, b = (asyncio.run(llm.agenerate(request)) for llm in (torch_like, trt_like))
    assert a.finish_reason == b.finish_reason == "stop"
    assert a.token_ids == b.token_ids == [7, 8, 2] and a.num_steps == b.num_steps
    assert b.log_probs == [-0.5, -0.5, 0.0]  # the engine does not report the end's log-prob
    # a sequence that ran to its limit, or one without the end id among its stops, is left alone
    full = asyncio.run(trt_like.agenerate(GenerationRequest((1,), 2, (2,))))
    no_end = asyncio.run(trt_like.agenerate(GenerationRequest((1,), 5, (9,))))
    assert (full.token_ids, full.finish_reason) == ([7, 8], "length")
    assert (no_end.token_ids, no_end.finish_reason) == ([7, 8], "aborted")
    for llm in (torch_like, trt_like):
        llm.close()


# -- llm model mapping (fake engine loop) ---------------------------------------------
class _FakeLoop:
    def __init__(self):
        self.submitted, self.aborted = {}, []

    def submit(self, req_id, request, callback):
        self.submitted[req_id] = (request, callback)

    def abort(self, req_id):
        self.aborted.append(req_id)


def test_step_output_failure_protocol():
    """The engine thread's finish reasons, read back in one place (StepOutput.failure)."""
    assert StepOutput("a", 5, -0.1, True, "stop").failure is None
    assert StepOutput.ended("a", "aborted").failure is None and StepOutput.ended("a", "aborted").token_id is None
    bad = StepOutput.failed("a", "invalid", ValueError("text too long: 900 tokens"))
    assert bad.finished and bad.token_id is None and bad.failure == ("invalid", "text too long: 900 tokens")
    assert StepOutput.failed("a", "error", "CUDA OOM").failure == ("error", "CUDA OOM")


def test_inflight_server_maps_failures_to_wire_errors():
    loop, sent = _FakeLoop(), []
    server = InflightLLMServer(loop)
    for req_id, kind in (("i", "invalid"), ("e", "error")):
        server.submit(parse_llm_request(build_llm_inputs(GenerationRequest((1,), 3, ()), 2).get, req_id),
                      lambda o, f, e: sent.append((o, f, e)), lambda: False)
        loop.submitted[req_id][1](StepOutput.failed(req_id, kind, "why"))
    assert sent == [(None, True, "[INVALID_ARGUMENT] why"), (None, True, "engine error: why")]


def test_inflight_server_streaming_and_unary():
    loop, sent = _FakeLoop(), []
    server = InflightLLMServer(loop)
    inputs = build_llm_inputs(GenerationRequest((1, 2), 3, ()), end_id=2, streaming=True)
    server.submit(parse_llm_request(inputs.get, "s"), lambda o, f, e: sent.append((o, f, e)), lambda: False)
    _, cb = loop.submitted["s"]
    cb(StepOutput("s", 9, -0.1, False))
    cb(StepOutput("s", 8, -0.2, True, "length"))
    assert [o["output_ids"].tolist() for o, _, _ in sent] == [[[9]], [[8]]] and [f for _, f, _ in sent] == [False, True]
    sent.clear()
    server.submit(parse_llm_request(build_llm_inputs(GenerationRequest((1,), 3, ()), 2).get, "u"),
                  lambda o, f, e: sent.append((o, f, e)), lambda: False)
    _, cb = loop.submitted["u"]
    cb(StepOutput("u", 9, -0.1, False))
    cb(StepOutput("u", 8, -0.2, True, "length"))
    assert len(sent) == 1 and sent[0][0]["output_ids"].tolist() == [[9, 8]] and sent[0][1]
    assert sent[0][0]["cum_log_probs"][0] == pytest.approx(-0.3)
    # stop=True aborts a running request by id
    server.submit(parse_llm_request(build_llm_inputs(GenerationRequest((1,), 3, ()), 2).get, "x"),
                  lambda *a: None, lambda: False)
    stop = {"input_ids": np.zeros(1, np.int32), "stop": np.array([True])}
    server.submit(parse_llm_request(stop.get, "x"), lambda *a: None, lambda: False)
    assert loop.aborted == ["x"]
    with pytest.raises(LLMWireError):
        parse_llm_request({"input_ids": np.array([1], np.int32), "request_output_len": np.array([0], np.int32)}.get, "y")


# -- orchestrator (fake LLM) -----------------------------------------------------------
class _Codec:
    end_id = 0
    newline_ids = frozenset({1})
    pad_id = 0

    def encode(self, text):
        return [ord(c) % 50 + 2 for c in text]

    encode_prompt = encode

    def decode(self, ids):
        return "".join({3: "1", 4: "P"}.get(i, "") for i in ids)

    def strip_stop(self, ids):
        return ids[:-1] if ids and ids[-1] in (0, 1) else ids


class _FakeLLM:
    """Count 1 for every label, mention "P" (found in the text "P")."""

    async def agenerate(self, request):
        await asyncio.sleep(0)
        if request.stop_ids != (0,):
            return GenerationResult([3, 1], [-0.1, -0.1], "stop")
        return GenerationResult([4, 0], [-0.5, -0.1], "stop")


class _Sink:
    def __init__(self, cancelled=False):
        self.sent, self.cancelled = [], cancelled

    def send(self, outputs, *, error=None, final=False):
        self.sent.append((outputs, error, final))

    def is_cancelled(self):
        return self.cancelled


def _orchestrator():
    return Orchestrator(OrchestratorConfig(labels=("A", "B"), max_text_chars=100), _Codec(), _FakeLLM())


def test_orchestrator_unary_stream_and_errors():
    orch = _orchestrator()
    text = {"TEXT": np.array([b"P"], dtype=object)}
    sink = _Sink()
    asyncio.run(orch.handle(text.get, sink))
    ((outputs, error, final),) = sink.sent
    assert error is None and final and outputs["LABEL"].tolist() == [b""]
    assert outputs["ENTITY_TEXTS"].tolist() == [b"P"] and outputs["ENTITY_STARTS"].tolist() == [0]

    sink = _Sink()
    asyncio.run(orch.handle({**text, "STREAM": np.array([True]), "DEDUP": np.array([b"off"], dtype=object)}.get, sink))
    assert [o["LABEL"][0] for o, _, _ in sink.sent] == [b"A", b"B"] and [f for *_, f in sink.sent] == [False, True]

    sink = _Sink()
    asyncio.run(orch.handle({"TEXT": np.array([b" "], dtype=object)}.get, sink))
    ((_, error, final),) = sink.sent
    assert final and error.wire_message.startswith("[INVALID_ARGUMENT] ")


def test_orchestrator_stops_when_cancelled():
    class _SlowLLM:
        async def agenerate(self, request):
            await asyncio.sleep(30)

    orch = Orchestrator(OrchestratorConfig(labels=("A",), cancel_poll_s=0.01), _Codec(), _SlowLLM())
    sink = _Sink(cancelled=True)
    asyncio.run(asyncio.wait_for(orch.handle({"TEXT": np.array([b"P"], dtype=object)}.get, sink), 5))
    assert sink.sent == [(None, None, True)]


@pytest.mark.parametrize("method", ["ar_struct", "ar_aug", "onestep"])
def test_orchestrator_serves_a_baseline_like_the_extractor(method):
    """A baseline model is served through the same orchestrator (for ``bench load``).

    The LLM is a scripted stand-in answering with the format's own gold rendering, encoded
    by the real SmolLM2 tokenizer; the in-process Extractor gets the same answers.
    """
    from padellm_ner.codec import PromptCodec
    from padellm_ner.extraction import Extractor, ModelInfo
    from padellm_ner.models import load_tokenizer
    from padellm_ner.prompts import get_format
    from padellm_ner.types import Entity, Example

    text = "Peter Blackburn met Japan in Japan ."
    gold = Example(text, [Entity("PER", "Peter Blackburn", 0, 15), Entity("LOC", "Japan", 20, 25),
                          Entity("LOC", "Japan", 29, 34)])  # fmt: skip
    labels = ["LOC", "PER", "ORG"]
    # the model's prompt words differ from its tags: requests and responses speak tags
    words = {"LOC": "location", "PER": "person", "ORG": "organization"}
    fmt = get_format(method, "en", words)
    targets = {p.prompt: p.target for p in fmt.render(gold, labels)}
    tokenizer = load_tokenizer("smollm2-135m")
    codec = PromptCodec(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"))

    def answer(request):
        ids = [*codec.encode(targets[codec.decode(list(request.prompt_ids))]), codec.end_id]
        return GenerationResult(ids, [-0.01] * len(ids), "stop")

    class _Scripted:
        def generate(self, requests):
            return [answer(r) for r in requests]

        async def agenerate(self, request):
            await asyncio.sleep(0)
            return answer(request)

    config = OrchestratorConfig(labels=tuple(labels), method=method, label_words=words)
    orch = Orchestrator(config, codec, _Scripted())
    sink = _Sink()
    asyncio.run(orch.handle({"TEXT": np.array([text.encode()], dtype=object)}.get, sink))
    ((outputs, error, final),) = sink.sent
    assert error is None and final
    served = list(zip(outputs["ENTITY_LABELS"].tolist(), outputs["ENTITY_TEXTS"].tolist(),
                      outputs["ENTITY_STARTS"].tolist(), outputs["ENTITY_ENDS"].tolist()))  # fmt: skip
    assert served == [(b"PER", b"Peter Blackburn", 0, 15), (b"LOC", b"Japan", 20, 25), (b"LOC", b"Japan", 29, 34)]

    info = ModelInfo(format=method, tags=labels, label_words=words)
    local = Extractor(_Scripted(), codec, info).extract(text)
    assert [(e.label.encode(), e.text.encode(), e.start, e.end) for e in local.entities] == served

    sink = _Sink()
    stream = {"TEXT": np.array([text.encode()], dtype=object), "STREAM": np.array([True])}
    asyncio.run(orch.handle(stream.get, sink))
    assert [o["LABEL"][0] for o, _, _ in sink.sent] == [b"LOC", b"PER", b"ORG"]
    assert [f for *_, f in sink.sent] == [False, False, True]
    assert sum(len(o["ENTITY_TEXTS"]) for o, _, _ in sink.sent) == 3


def test_orchestrator_prompts_with_the_model_words_and_answers_with_tags():
    """A model trained with ``--labels-file`` (tag -> words): PaDeLLM prompts carry the words.

    Scripted LLM (fake of the LLM protocol) answering PaDeLLM prompts by the word it reads;
    real SmolLM2 tokenizer and the real plan.
    """
    import re

    from padellm_ner.codec import PromptCodec
    from padellm_ner.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    codec = PromptCodec(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    text = "Peter Blackburn met Japan ."
    found = {"person name": ["Peter Blackburn"], "place name": ["Japan"]}
    seen_words = []

    async def agenerate(request):
        prompt = codec.decode(list(request.prompt_ids))
        match = re.match(r"text:\n(.*)\nentity type:\n(.*)\n\n<num>(.*)", prompt, re.S)
        seen_words.append(match.group(2))
        mentions = found.get(match.group(2), [])
        tail = re.search(r"<mention (\d+)>$", match.group(3))
        if tail is None:
            answer = f"{len(mentions)}\n" if mentions else "0"
        else:
            answer = mentions[int(tail.group(1)) - 1]
        ids = codec.encode(answer) + ([] if answer.endswith("\n") else [codec.end_id])
        return GenerationResult(ids, [-0.01] * len(ids), "stop")

    class _Scripted:
        pass

    llm = _Scripted()
    llm.agenerate = agenerate
    words = {"PER.NAM": "person name", "GPE.NAM": "place name", "ORG.NAM": "organization name"}
    config = OrchestratorConfig(labels=tuple(words), label_words=words)
    orch = Orchestrator(config, codec, llm)
    sink = _Sink()
    asyncio.run(orch.handle({"TEXT": np.array([text.encode()], dtype=object)}.get, sink))
    ((outputs, error, final),) = sink.sent
    assert error is None and final
    assert set(seen_words) == set(words.values())
    assert list(zip(outputs["ENTITY_LABELS"].tolist(), outputs["ENTITY_STARTS"].tolist())) == [
        (b"PER.NAM", 0), (b"GPE.NAM", 20)
    ]
    sink = _Sink()
    stream = {"TEXT": np.array([text.encode()], dtype=object), "STREAM": np.array([True]),
              "LABELS": np.array([b"GPE.NAM"], dtype=object)}  # fmt: skip
    asyncio.run(orch.handle(stream.get, sink))
    ((outputs, error, final),) = sink.sent
    assert outputs["LABEL"].tolist() == [b"GPE.NAM"] and outputs["ENTITY_LABELS"].tolist() == [b"GPE.NAM"]



# -- server addresses ----------------------------------------------------------------
def test_orchestrator_reaches_its_own_server_on_loopback(tmp_path, monkeypatch):
    """A server listening on every interface is still called on 127.0.0.1 by its own
    orchestrator; a config's ``llm_url`` wins over the environment."""
    from padellm_ensemble.grpc_transport import llm_url
    from padellm_ner.serving.triton_server import LLM_URL_ENV, TritonServer

    ports = {"grpc_port": 9001, "http_port": 9002, "metrics_port": 9003, "log_path": tmp_path / "s.log"}
    wide = TritonServer(tmp_path, host="0.0.0.0", **ports)
    assert wide.grpc_url == "0.0.0.0:9001" and wide.loopback_grpc_url == "127.0.0.1:9001"
    assert TritonServer(tmp_path, **ports).loopback_grpc_url == "127.0.0.1:9001"
    monkeypatch.setenv(LLM_URL_ENV, "127.0.0.1:9001")
    assert llm_url(None) == llm_url("") == "127.0.0.1:9001"
    assert llm_url("llm-host:8001") == "llm-host:8001"
    monkeypatch.delenv(LLM_URL_ENV)
    assert llm_url(None) == "localhost:8001"


def _openssl_cert(folder, name: str, san: str | None):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    extra = ["-addext", f"subjectAltName={san}"] if san else []
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         *extra, "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_loopback_tls_trusts_names_and_presents_what_the_server_accepts(tmp_path):
    """What ``serve`` gives the orchestrator's loopback for each kind of certificate;
    the config parameters carry it unchanged (a real server: tests/test_serve_cli.py)."""
    from padellm_ner.serving.loopback_tls import LoopbackTLS, certificate_names, loopback_tls

    ip_cert, ip_key = _openssl_cert(tmp_path, "localhost", "IP:127.0.0.1,DNS:localhost")
    dns_cert, dns_key = _openssl_cert(tmp_path, "svc.internal", "DNS:*.svc.internal,DNS:svc.internal")
    cn_cert, cn_key = _openssl_cert(tmp_path, "cn-only.example", None)
    ca = tmp_path / "ca.pem"
    ca.write_text(ip_cert.read_text())
    assert certificate_names(ip_cert) == (["localhost"], ["127.0.0.1"])
    assert certificate_names(cn_cert) == (["cn-only.example"], [])  # NOTE: the CN counts without a SAN
    assert certificate_names(ip_key) == ([], [])  # not a certificate

    plain = loopback_tls("127.0.0.1", ip_cert, ip_key)
    assert plain == LoopbackTLS((str(ip_cert),), None, None, None)  # the address is named: no override
    assert loopback_tls("localhost", ip_cert, ip_key).server_name is None
    assert loopback_tls("127.0.0.1", dns_cert, dns_key).server_name == "svc.internal"  # not the wildcard
    assert loopback_tls("127.0.0.1", cn_cert, cn_key).server_name == "cn-only.example"
    mutual = loopback_tls("127.0.0.1", ip_cert, ip_key, client_ca=ca)
    assert mutual.root_certs == (str(ip_cert), str(ca)) and (mutual.client_cert, mutual.client_key) == (
        str(ip_cert), str(ip_key))  # fmt: skip
    own = loopback_tls("127.0.0.1", ip_cert, ip_key, client_ca=ip_cert, loopback_ca=ca,
                       loopback_cert=dns_cert, loopback_key=dns_key)  # fmt: skip
    assert own.root_certs == (str(ca),) and own.client_cert == str(dns_cert) and own.client_key == str(dns_key)
    for tls in (plain, mutual, own, loopback_tls("127.0.0.1", dns_cert, dns_key)):
        assert LoopbackTLS.from_params(tls.params()) == tls
    assert LoopbackTLS.from_params({}) is None
    kwargs = loopback_tls("127.0.0.1", dns_cert, dns_key).client_kwargs()
    assert ("grpc.ssl_target_name_override", "svc.internal") in kwargs["channel_args"]


def test_assemble_writes_the_loopback_tls(tmp_path, capsys):
    """``llm_tls`` fills the orchestrator's ``llm_tls_*`` parameters, which the transport
    reads back; without it they are absent (plaintext). The CLI checks its options."""
    from padellm_build.assemble import assemble_repository
    from padellm_build.assemble import main as assemble_main
    from padellm_ner.serving.loopback_tls import LoopbackTLS, loopback_tls

    def parse_parameters(config: str) -> dict[str, str]:
        return dict(re.findall(r'key: "(\w+)" value: \{ string_value: "([^"]*)" \}', config))

    cert, key = _openssl_cert(tmp_path, "svc.internal", "DNS:svc.internal")
    tls = loopback_tls("127.0.0.1", cert, key, client_ca=cert)
    repo = assemble_repository(tmp_path / "r", "/nonexistent-model", llm_tls=tls, check_model=False)
    config = (repo / "padellm" / "config.pbtxt").read_text()
    assert LoopbackTLS.from_params(parse_parameters(config)) == tls
    plain = assemble_repository(tmp_path / "p", "/nonexistent-model", check_model=False)
    assert "llm_tls_" not in (plain / "padellm" / "config.pbtxt").read_text().split("name:", 1)[1]
    base = ["--out", str(tmp_path / "c"), "--model", "/nonexistent-model", "--no-check-model"]
    with pytest.raises(SystemExit) as exit_info:
        assemble_main([*base, "--llm-tls-client-cert", str(cert)])
    assert exit_info.value.code == 2 and "need --llm-tls-root-cert" in capsys.readouterr().err
    assert assemble_main([*base, "--llm-tls-root-cert", str(cert), "--llm-tls-server-name", "svc.internal"]) == 0
    written = parse_parameters((tmp_path / "c" / "padellm" / "config.pbtxt").read_text())
    assert LoopbackTLS.from_params(written) == LoopbackTLS((str(cert),), server_name="svc.internal")


def test_upstream_code_keeps_an_llm_refusal_invalid_argument():
    from padellm_ensemble.validation import ErrorCode, upstream_code

    assert upstream_code("[INVALID_ARGUMENT] text too long for this model") == ErrorCode.INVALID_ARGUMENT
    assert upstream_code("[INTERNAL] engine error: boom") == ErrorCode.INTERNAL
    assert upstream_code("failed to connect to all addresses") == ErrorCode.UNAVAILABLE


def test_the_sender_is_left_alone_once_the_final_response_is_sent():
    """python_backend 2.51 frees a response factory with the final response: asking it
    ``is_cancelled()`` afterwards crashed tritonserver (SIGSEGV). ``handle`` polls for a
    cancel until its task ends, after a streamed request's final response; the guard
    answers for the sender then, and drops anything sent after the final response."""
    from padellm_ensemble.orchestrator import FinalGuard

    class _StrictSink(_Sink):
        def is_cancelled(self):
            assert not any(final for *_, final in self.sent), "is_cancelled() after the final response"
            return False

    inner = _StrictSink()
    guard = FinalGuard(inner)
    assert guard.is_cancelled() is False
    guard.send({"x": 1}, final=False)
    assert guard.is_cancelled() is False
    guard.send({"x": 2}, final=True)
    assert guard.is_cancelled() is False  # answered by the guard, the sender is not asked
    guard.send(None, final=True)  # e.g. a late cancel's closing response
    assert [final for *_, final in inner.sent] == [False, True]

    # and handle() goes through it: every request, streamed or not, ends with one final
    orch = _orchestrator()
    for stream in (False, True):
        sink = _StrictSink()
        request = {"TEXT": np.array([b"P"], dtype=object), "STREAM": np.array([stream])}
        asyncio.run(orch.handle(request.get, sink))
        assert [final for *_, final in sink.sent].count(True) == 1 and sink.sent[-1][2]
