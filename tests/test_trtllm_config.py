"""The TensorRT-LLM deployment, as far as it can be checked without a GPU.

TensorRT-LLM itself cannot run here (no GPU, no NVIDIA package index): these tests check
the ``tensorrt_llm`` config template (fills completely from a build profile, parses as a
Triton ``ModelConfig``), the contract between it and the Python ``llm`` model (same input
and output tensors, so the orchestrator can call either), the build profiles' numbers
and the exact ``convert_checkpoint.py`` / ``trtllm-build`` command lines of
``engine_build --dry-run``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from padellm_build.assemble import assemble_repository
from padellm_build.fill_template import fill, placeholders
from padellm_build.make_perf_input import perf_input, pick_sentences
from padellm_build.trtllm import PROFILES, get_profile
from padellm_build.trtllm.engine_build import EngineBuildError, main
from padellm_build.trtllm.profiles import MAX_MENTION_TOKENS, MAX_PROMPT_SUFFIX_TOKENS
from padellm_ner.plan import PlanConfig
from padellm_ner.types import Entity, Example

REPO = Path(__file__).resolve().parent.parent
TRT_TEMPLATE = REPO / "model_repository" / "tensorrt_llm" / "config.pbtxt"
LLM_TEMPLATE = REPO / "model_repository" / "llm" / "config.pbtxt"
# The llm contract of docs/CONTRACTS.md: name -> (data type, dims, optional).
CONTRACT_INPUTS = {
    "input_ids": ("TYPE_INT32", [-1], False),
    "input_lengths": ("TYPE_INT32", [1], False),
    "request_output_len": ("TYPE_INT32", [1], False),
    "end_id": ("TYPE_INT32", [1], True),
    "pad_id": ("TYPE_INT32", [1], True),
    "streaming": ("TYPE_BOOL", [1], True),
    "return_log_probs": ("TYPE_BOOL", [1], True),
    "stop": ("TYPE_BOOL", [1], True),
    "exclude_input_in_output": ("TYPE_BOOL", [1], True),
    "stop_words_list": ("TYPE_INT32", [2, -1], True),
}
CONTRACT_OUTPUTS = {
    "output_ids": ("TYPE_INT32", [-1, -1]),
    "sequence_length": ("TYPE_INT32", [-1]),
    "cum_log_probs": ("TYPE_FP32", [-1]),
    "output_log_probs": ("TYPE_FP32", [-1, -1]),
}


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _trt_config(profile: str = "h100") -> model_config_pb2.ModelConfig:
    values = get_profile(profile).template_values(f"/engines/{profile}")
    return _parse(fill(TRT_TEMPLATE.read_text(), values))


def _tensors(tensors) -> dict[str, tuple[str, list[int], bool]]:
    """name -> (data type, dims, optional); outputs have no ``optional`` field (False)."""
    return {
        t.name: (
            model_config_pb2.DataType.Name(t.data_type),
            list(t.dims),
            bool(getattr(t, "optional", False)),
        )
        for t in tensors
    }


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_template_fills_completely_and_parses(profile: str) -> None:
    text = fill(TRT_TEMPLATE.read_text(), get_profile(profile).template_values("/engines/x"))
    assert not placeholders(text), "leftover ${...}"
    config = _parse(text)
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.name == "tensorrt_llm"
    assert config.backend == "tensorrtllm"
    assert config.max_batch_size == get_profile(profile).max_batch_size
    assert config.model_transaction_policy.decoupled
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["gpt_model_path"] == "/engines/x"
    assert params["batch_scheduler_policy"] in {"guaranteed_no_evict", "max_utilization"}
    assert 0.0 < float(params["kv_cache_free_gpu_mem_fraction"]) < 1.0
    for key in ("enable_kv_cache_reuse", "enable_chunked_context", "exclude_input_in_output"):
        assert params[key] == "true", key
    assert int(params["cancellation_check_period_ms"]) > 0
    # NOTE: optional and unset here: its parameters block is dropped (backend default).
    assert "max_tokens_in_paged_kv_cache" not in params
    # NOTE: read with no default by the backend (model_instance_state.cc): each missing
    # one fails the load with "Cannot find parameter with name"; "" = guided decoding off
    for key in ("tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path"):
        assert key in params, key
    assert params["guided_decoding_backend"] == ""


def test_template_follows_nvidia_tensor_conventions() -> None:
    config = _trt_config()
    inputs = {t.name: t for t in config.input}
    assert inputs["input_ids"].allow_ragged_batch
    for t in config.input:
        if list(t.dims) == [1]:
            assert t.HasField("reshape") and list(t.reshape.shape) == [], f"{t.name}: NVIDIA reshapes [1] to []"
    for name in ("stop_words_list", "bad_words_list"):
        assert list(inputs[name].dims) == [2, -1] and inputs[name].allow_ragged_batch
    assert _tensors(config.output) == {
        name: (dtype, dims, False) for name, (dtype, dims) in CONTRACT_OUTPUTS.items()
    }
    for name, spec in CONTRACT_INPUTS.items():
        assert _tensors(config.input)[name] == spec, name


def test_llm_model_declares_the_same_contract() -> None:
    """The contract test: the Python ``llm`` model and ``tensorrt_llm`` are interchangeable.

    Same names, data types, dims and optional flags for the contract tensors. Only the
    batch dimension differs (``llm`` has ``max_batch_size: 0``); the orchestrator adds it
    for ``tensorrt_llm`` through its ``llm_batch_dim`` parameter.
    """
    if not LLM_TEMPLATE.exists():
        pytest.fail(f"{LLM_TEMPLATE} is missing")
    llm_text = LLM_TEMPLATE.read_text()
    llm = _parse(fill(llm_text, dict.fromkeys(placeholders(llm_text), "x")))
    trt = _trt_config()
    llm_inputs, trt_inputs = _tensors(llm.input), _tensors(trt.input)
    assert llm_inputs == {name: trt_inputs[name] for name in llm_inputs}
    assert set(llm_inputs) == set(CONTRACT_INPUTS)
    required = {name for name, (_, _, optional) in trt_inputs.items() if not optional}
    assert required <= set(llm_inputs), "every required tensorrt_llm input is in the contract"
    assert _tensors(llm.output) == _tensors(trt.output)
    assert llm.model_transaction_policy.decoupled == trt.model_transaction_policy.decoupled


def test_assembled_tensorrtllm_repository_sets_the_batch_dimension(
    hf_dir: Path, tmp_path: Path
) -> None:
    out = assemble_repository(
        tmp_path / "repo", str(hf_dir), llm_backend="tensorrtllm",
        engine_dir="/engines/h100", max_batch_size=256,
    )  # fmt: skip
    trt = _parse((out / "tensorrt_llm" / "config.pbtxt").read_text())
    assert trt.parameters["gpt_model_path"].string_value == "/engines/h100"
    assert (out / "tensorrt_llm" / "1").is_dir()
    padellm = _parse((out / "padellm" / "config.pbtxt").read_text())
    assert padellm.parameters["llm_model_name"].string_value == "tensorrt_llm"
    assert padellm.parameters["llm_batch_dim"].string_value == "true"
    # the orchestrator keeps as many LLM requests in flight as the engine batches
    assert padellm.parameters["max_llm_inflight"].string_value == "256"
    # the backend's required keys are there; tokenizer_dir is the model's folder
    assert trt.parameters["tokenizer_dir"].string_value == str(hf_dir.resolve())
    assert trt.parameters["guided_decoding_backend"].string_value == ""
    # without a profile the scheduler and KV-cache share are the backend's defaults...
    assert "kv_cache_free_gpu_mem_fraction" not in trt.parameters
    # ...with one, the profile's values reach the deployed config
    h100 = get_profile("h100")
    out = assemble_repository(
        tmp_path / "repo-h100", str(hf_dir), llm_backend="tensorrtllm", engine_dir="/engines/h100",
        max_batch_size=h100.max_batch_size, trtllm_profile="h100",
    )  # fmt: skip
    trt = _parse((out / "tensorrt_llm" / "config.pbtxt").read_text())
    assert float(trt.parameters["kv_cache_free_gpu_mem_fraction"].string_value) == h100.kv_cache_free_gpu_mem_fraction
    assert trt.parameters["batch_scheduler_policy"].string_value == h100.batch_scheduler_policy
    with pytest.raises(ValueError, match="is not the h100 engine's"):
        assemble_repository(tmp_path / "repo-bad", str(hf_dir), llm_backend="tensorrtllm",
                            engine_dir="/engines/h100", max_batch_size=7, trtllm_profile="h100")  # fmt: skip


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profile_numbers_are_consistent(profile: str) -> None:
    p = get_profile(profile)
    plan = PlanConfig()
    assert p.dtype == "bfloat16"
    assert p.max_output_len >= MAX_PROMPT_SUFFIX_TOKENS + MAX_MENTION_TOKENS
    assert plan.max_mention_tokens + 1 <= MAX_MENTION_TOKENS
    assert p.max_seq_len >= p.max_input_len + plan.max_mention_tokens
    # NOTE: one sentence's whole fan-out (4 CoNLL labels x max_mentions) fits the batch.
    assert p.max_batch_size >= 4 * (1 + plan.max_mentions)
    # a full batch of prompts and every single longest prompt fit one iteration
    assert p.max_input_len <= p.max_num_tokens
    assert p.max_num_tokens >= p.max_batch_size * 32
    assert p.max_num_tokens <= p.max_batch_size * p.max_seq_len


def test_profiles_match_their_cards() -> None:
    assert (PROFILES["a100"].sm, PROFILES["h100"].sm) == (80, 90)
    assert PROFILES["a100"].fp8_note == ""  # NOTE: sm80 has no FP8
    assert "fp8" in PROFILES["h100"].fp8_note
    with pytest.raises(KeyError, match="known: a100, h100"):
        get_profile("v100")


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    model = tmp_path / "hf"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return model


@pytest.mark.parametrize(
    ("profile", "sizes"),
    [
        (
            "a100",
            "--max_batch_size 256 --max_input_len 512 --max_seq_len 576 --max_num_tokens 8192",
        ),
        (
            "h100",
            "--max_batch_size 256 --max_input_len 512 --max_seq_len 576 --max_num_tokens 16384",
        ),
    ],
)
def test_dry_run_prints_the_build_commands(
    profile: str, sizes: str, hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["--model", str(hf_dir), "--profile", profile, "--out", str(out), "--dry-run",
            "--trtllm-examples", "/opt/TensorRT-LLM/examples"]  # fmt: skip
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert lines == [
        f"python /opt/TensorRT-LLM/examples/models/core/llama/convert_checkpoint.py "
        f"--model_dir {hf_dir} --output_dir {out}/checkpoint --dtype bfloat16 --tp_size 1",
        f"trtllm-build --checkpoint_dir {out}/checkpoint --output_dir {out}/engine "
        "--gemm_plugin auto --gpt_attention_plugin auto --remove_input_padding enable "
        "--kv_cache_type paged --context_fmha enable --use_paged_context_fmha enable " + sizes,
    ]
    assert "--gather_generation_logits" not in " ".join(lines)


def test_dry_run_merges_an_adapter_first(
    hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(hf_dir), "peft_type": "LORA"})
    )
    out = tmp_path / "out"
    assert main(["--model", str(adapter), "--profile", "h100", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert any("merge the LoRA adapter into its base" in line for line in printed)
    assert not any("untie" in line for line in printed)  # the base does not tie
    convert = shlex.split(next(line for line in printed if "convert_checkpoint.py" in line))
    assert convert[convert.index("--model_dir") + 1] == str(out / "hf")


def test_tied_embeddings_are_untied_before_the_convert_script(tmp_path: Path) -> None:
    """SmolLM2 ties its head to its embeddings: its safetensors has no ``lm_head.weight``,
    which TensorRT-LLM's full-model convert path (SmoothQuant, int8 KV) reads and fails on
    (NVIDIA/TensorRT-LLM#2677). The build writes an untied copy with the same logits."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from padellm_build.trtllm.engine_build import plan_build, ties_embeddings, write_hf_dir
    from padellm_ner.models import resolve_model_dir
    from tests.model_cache import make_tiny_llama

    assert ties_embeddings(resolve_model_dir("smollm2-135m"))  # the real base does
    default = plan_build("default", get_profile("h100"), tmp_path / "d", Path("/x"))
    assert default.is_adapter and default.untie and default.hf_dir == tmp_path / "d" / "hf"

    tied = make_tiny_llama(tmp_path / "tied", tie_word_embeddings=True)
    with safe_open(str(tied / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())  # safe_open has no __contains__
    plan = plan_build(str(tied), get_profile("a100"), tmp_path / "out", Path("/x"))
    assert plan.untie and not plan.is_adapter and plan.hf_dir == tmp_path / "out" / "hf"
    assert shlex.join(plan.commands[0]).count(f"--model_dir {plan.hf_dir}") == 1
    write_hf_dir(plan.source_dir, plan.hf_dir, "float32", plan.untie)
    with safe_open(str(plan.hf_dir / "model.safetensors"), "pt") as f:
        head, embed = f.get_tensor("lm_head.weight"), f.get_tensor("model.embed_tokens.weight")
    assert torch.equal(head, embed)
    assert not ties_embeddings(plan.hf_dir) and (plan.hf_dir / "tokenizer_config.json").exists()
    ids = torch.tensor([[1, 5, 9, 2]])
    before = AutoModelForCausalLM.from_pretrained(tied).eval()
    after = AutoModelForCausalLM.from_pretrained(plan.hf_dir).eval()
    assert after.lm_head.weight.data_ptr() != after.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.allclose(before(ids).logits, after(ids).logits, atol=1e-6)

    untied = make_tiny_llama(tmp_path / "untied", tie_word_embeddings=False)
    plain = plan_build(str(untied), get_profile("a100"), tmp_path / "o2", Path("/x"))
    assert not plain.untie and plain.hf_dir == untied  # converted in place, nothing copied


def test_build_without_trtllm_is_a_clear_error(
    hf_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # NOTE: no trtllm-build anywhere
    assert main(["--model", str(hf_dir), "--profile", "a100", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "trtllm-build is not on PATH" in err and "1.2.x" in err  # 1.3 removed it
    assert issubclass(EngineBuildError, RuntimeError)


def test_the_convert_script_is_found_in_either_examples_layout(tmp_path: Path) -> None:
    """Releases since the examples moved keep the script in ``models/core/llama/``, older
    ones in ``llama/``: the build takes the one the checkout has."""
    from padellm_build.trtllm.engine_build import convert_script

    examples = tmp_path / "examples"
    current = examples / "models/core/llama/convert_checkpoint.py"
    older = examples / "llama/convert_checkpoint.py"
    assert convert_script(examples, "LlamaForCausalLM") == current  # neither: named as current
    older.parent.mkdir(parents=True)
    older.write_text("")
    assert convert_script(examples, "MistralForCausalLM") == older
    current.parent.mkdir(parents=True)
    current.write_text("")
    assert convert_script(examples, "LlamaForCausalLM") == current
    assert convert_script(examples, "Qwen2ForCausalLM") == examples / "models/core/qwen/convert_checkpoint.py"
    with pytest.raises(EngineBuildError, match="no convert script for 'GPT2LMHeadModel'"):
        convert_script(examples, "GPT2LMHeadModel")


def test_perf_input_layout() -> None:
    examples = [
        Example(f"Sentence number {i} is about Japan and Syria and Qatar .", [Entity("LOC", "Japan", 27, 32)])
        for i in range(50)
    ] + [Example(text="No entity in this sentence at all .", entities=[])]
    texts = pick_sentences(examples, 20)
    assert len(texts) == 20 and len(set(texts)) == 20
    assert perf_input(texts[:2]) == {"data": [{"TEXT": [texts[0]]}, {"TEXT": [texts[1]]}]}


def test_perf_input_takes_running_text_only(tmp_path: Path) -> None:
    """All-caps headlines, datelines and score lines are not what users send; Chinese text (no
    letter case) is kept, written as UTF-8 characters, not JSON escapes."""
    from padellm_build.make_perf_input import main as perf_main

    loc = [Entity("LOC", "Japan", 0, 5)]
    examples = [
        Example("SOCCER - JAPAN GET LUCKY WIN , CHINA IN SURPRISE DEFEAT .", loc),
        Example("LONDON 1996-08-30", loc),
        Example("Alba Berlin ( Germany ) 9 5 4 14", loc),
        Example("Japan began the defence of their Asian Cup title .", loc),
        Example("日本队在亚洲杯上以二比一战胜叙利亚队 。 我们 都 很 高兴", [Entity("LOC", "日本", 0, 2)]),
    ]
    assert pick_sentences(examples, 5) == [examples[3].text, examples[4].text]

    folder = tmp_path / "zh"
    folder.mkdir()
    (folder / "test.txt").write_text("日 B-LOC\n本 I-LOC\n很 O\n好 O\n， O\n我 O\n们 O\n都 O\n很 O\n高 O\n兴 O\n\n", encoding="utf-8")
    out = tmp_path / "perf.json"
    assert perf_main(["--dataset", str(folder), "--split", "test", "--num", "1", "--out", str(out)]) == 0
    assert "日本很好" in out.read_bytes().decode("utf-8")
    assert json.loads(out.read_bytes()) == {"data": [{"TEXT": ["日本很好，我们都很高兴"]}]}
