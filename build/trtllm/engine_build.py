"""Build a TensorRT-LLM engine for the ``tensorrt_llm`` Triton model.

Two steps, as in NVIDIA's examples: ``examples/models/core/<family>/convert_checkpoint.py``
turns a Hugging Face folder into a TensorRT-LLM checkpoint, then ``trtllm-build`` compiles
the engine with the limits of a build profile (``padellm_build.trtllm.profiles``). A LoRA
adapter is merged into its base first (the engine serves one merged model). A model with
tied embeddings (SmolLM2: no ``lm_head.weight`` in its safetensors) is written out with
the head as its own tensor first: some of TensorRT-LLM's convert paths read
``lm_head.weight`` and fail with a KeyError without it (the full-model path used by
SmoothQuant and int8 KV cache, NVIDIA/TensorRT-LLM#2677), others copy the embedding; an
untied copy converts the same on all of them.

Layout under ``--out``: ``hf/`` (merged and/or untied model, when needed), ``checkpoint/``,
``engine/``.
Run it inside NVIDIA's Triton TensorRT-LLM container on the GPU you will serve on
(``--dry-run`` prints the commands anywhere).

Usage::

    python -m padellm_build.trtllm.engine_build --model default --profile h100 \\
        --out /models/padellm --trtllm-examples TensorRT-LLM/examples
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from padellm_build.trtllm.profiles import PROFILES, BuildProfile, get_profile

__all__ = [
    "CONVERT_SCRIPTS",
    "SUPPORTED_TRTLLM",
    "EngineBuildError",
    "BuildPlan",
    "plan_build",
    "convert_command",
    "convert_script",
    "build_command",
    "ties_embeddings",
    "write_hf_dir",
    "main",
]

logger = logging.getLogger(__name__)

#: HF architecture -> convert script under ``<TensorRT-LLM>/examples`` (the layout of
#: releases since the examples moved to ``models/core``; older ones have ``llama/...``,
#: which ``convert_script`` takes when only that exists).
CONVERT_SCRIPTS: dict[str, str] = {
    "LlamaForCausalLM": "models/core/llama/convert_checkpoint.py",  # SmolLM2, Llama 2/3
    "MistralForCausalLM": "models/core/llama/convert_checkpoint.py",
    "Qwen2ForCausalLM": "models/core/qwen/convert_checkpoint.py",
}
#: NOTE: TensorRT-LLM's main branch removed the TensorRT engine workflow this module drives
#: (convert_checkpoint.py, trtllm-build) and the ``tensorrtllm`` C++ Triton backend in
#: mid-2026 (NVIDIA/TensorRT-LLM#15763, #15907); 1.2.x is the last release line with them.
SUPPORTED_TRTLLM = (
    "TensorRT-LLM 1.2.x or older (later releases removed trtllm-build and the tensorrtllm backend)"
)
_DEFAULT_EXAMPLES = os.environ.get("TRTLLM_EXAMPLES", "TensorRT-LLM/examples")


class EngineBuildError(RuntimeError):
    """The engine cannot be built here (missing tool, unsupported model, failed step)."""


@dataclass(frozen=True)
class BuildPlan:
    """What one build does, in order.

    Attributes:
        source_dir: the resolved ``--model`` folder (HF model or LoRA adapter).
        hf_dir: the HF folder given to the convert script (``out/hf`` when written here).
        is_adapter: ``source_dir`` is a LoRA adapter that must be merged into ``hf_dir``.
        untie: the model ties its head to its embeddings; ``hf_dir`` gets a separate
            ``lm_head.weight``.
        checkpoint_dir: TensorRT-LLM checkpoint folder.
        engine_dir: engine folder (``gpt_model_path`` of the Triton model).
        commands: the convert and build command lines.
    """

    source_dir: Path
    hf_dir: Path
    is_adapter: bool
    untie: bool
    checkpoint_dir: Path
    engine_dir: Path
    commands: tuple[tuple[str, ...], ...]


def convert_command(
    hf_dir: Path,
    checkpoint_dir: Path,
    profile: BuildProfile,
    trtllm_examples: Path,
    architecture: str = "LlamaForCausalLM",
    python: str = "python",
) -> list[str]:
    """``convert_checkpoint.py`` for ``architecture`` (single GPU, the profile's dtype)."""
    return [
        python, str(convert_script(trtllm_examples, architecture)),
        "--model_dir", str(hf_dir),
        "--output_dir", str(checkpoint_dir),
        "--dtype", profile.dtype,
        "--tp_size", "1",
    ]  # fmt: skip


def convert_script(trtllm_examples: Path, architecture: str) -> Path:
    """The convert script for ``architecture`` in this checkout: ``models/core/<family>/``
    where it exists, else the older ``<family>/`` layout, else the former (for messages)."""
    try:
        script = CONVERT_SCRIPTS[architecture]
    except KeyError:
        known = ", ".join(CONVERT_SCRIPTS)
        raise EngineBuildError(f"no convert script for {architecture!r} (known: {known})") from None
    current = trtllm_examples / script
    older = trtllm_examples / script.removeprefix("models/core/")
    return older if older.exists() and not current.exists() else current


def build_command(checkpoint_dir: Path, engine_dir: Path, profile: BuildProfile) -> list[str]:
    """``trtllm-build`` with paged KV cache and paged context FMHA.

    NOTE: ``--use_paged_context_fmha enable`` is what lets the runtime reuse KV blocks
    across requests (``enable_kv_cache_reuse``) and chunk long contexts. No
    ``--gather_generation_logits``: mention scores come from ``return_log_probs``.
    """
    return [
        "trtllm-build",
        "--checkpoint_dir", str(checkpoint_dir),
        "--output_dir", str(engine_dir),
        "--gemm_plugin", "auto",
        "--gpt_attention_plugin", "auto",
        "--remove_input_padding", "enable",
        "--kv_cache_type", "paged",
        "--context_fmha", "enable",
        "--use_paged_context_fmha", "enable",
        *profile.build_flags(),
    ]  # fmt: skip


def _architecture(hf_dir: Path) -> str:
    config = hf_dir / "config.json"
    if not config.exists():
        return "LlamaForCausalLM"  # NOTE: an adapter's base is merged later; ours are Llama.
    architectures = json.loads(config.read_text()).get("architectures") or ["LlamaForCausalLM"]
    return str(architectures[0])


def ties_embeddings(hf_dir: Path) -> bool:
    """The HF config ties the output head to the input embeddings (Llama's default: not)."""
    config = hf_dir / "config.json"
    if not config.exists():
        return False
    data = json.loads(config.read_text())
    text = data.get("text_config") if isinstance(data.get("text_config"), dict) else {}
    return bool(data.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))


def _adapter_base_dir(adapter_dir: Path) -> Path:
    from padellm_ner.models import adapter_base, resolve_model_dir

    base = adapter_base(adapter_dir)
    if base is None:
        raise EngineBuildError(f"{adapter_dir} is not a LoRA adapter folder")
    return resolve_model_dir(base)


def plan_build(
    model: str,
    profile: BuildProfile,
    out: Path,
    trtllm_examples: Path,
    python: str = "python",
) -> BuildPlan:
    """Resolve ``model`` and lay out the build under ``out`` (runs nothing).

    Args:
        model: ``default``, a base name (``smollm2-135m``), an HF folder or a LoRA adapter.
        profile: engine limits.
        out: output root.
        trtllm_examples: the ``examples`` folder of a TensorRT-LLM checkout that matches
            the container's ``tensorrt_llm`` version.
        python: interpreter that has ``tensorrt_llm`` installed.
    """
    from padellm_ner.models import resolve_model_dir

    source = resolve_model_dir(model)
    is_adapter = (source / "adapter_config.json").exists() and not (source / "config.json").exists()
    arch_dir = _adapter_base_dir(source) if is_adapter else source
    untie = ties_embeddings(arch_dir)
    hf_dir = out / "hf" if is_adapter or untie else source
    checkpoint_dir, engine_dir = out / "checkpoint", out / "engine"
    commands = (
        tuple(
            convert_command(
                hf_dir, checkpoint_dir, profile, trtllm_examples, _architecture(arch_dir), python
            )
        ),
        tuple(build_command(checkpoint_dir, engine_dir, profile)),
    )
    return BuildPlan(source, hf_dir, is_adapter, untie, checkpoint_dir, engine_dir, commands)


def write_hf_dir(source: Path, hf_dir: Path, dtype: str = "bfloat16", untie: bool = False) -> None:
    """Save ``source`` as a plain HF folder (weights + tokenizer) for the convert script.

    A LoRA adapter is folded into its base. With ``untie`` the output head becomes its own
    tensor (a copy of the embeddings) and the config says so, so ``lm_head.weight`` is in
    the safetensors; the logits are unchanged.
    """
    import torch

    from padellm_ner.models import load_model

    loaded = load_model(str(source), device="cpu", dtype=dtype, merge_adapter=True)
    model = loaded.model
    if untie:
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if head.weight.data_ptr() == embed.weight.data_ptr():  # NOTE: also when the same Parameter
            head.weight = torch.nn.Parameter(embed.weight.detach().clone())
        model.config.tie_word_embeddings = False
        text_config = getattr(model.config, "text_config", None)
        if text_config is not None and hasattr(text_config, "tie_word_embeddings"):
            text_config.tie_word_embeddings = False
    tmp = hf_dir.with_name(hf_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    shutil.rmtree(hf_dir, ignore_errors=True)
    tmp.rename(hf_dir)  # NOTE: a crash mid-way leaves only the .tmp folder


def _check_tools(plan: BuildPlan) -> None:
    if shutil.which("trtllm-build") is None:
        raise EngineBuildError(
            "trtllm-build is not on PATH: run this inside NVIDIA's Triton TensorRT-LLM container "
            "(nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3) on the target GPU, "
            f"with {SUPPORTED_TRTLLM}, or use --dry-run to print the commands"
        )
    script = Path(plan.commands[0][1])
    if not script.exists():
        raise EngineBuildError(
            f"{script} not found: pass --trtllm-examples <TensorRT-LLM checkout>/examples "
            f"(the checkout must match the container's tensorrt_llm version; {SUPPORTED_TRTLLM})"
        )


def _run(plan: BuildPlan, profile: BuildProfile) -> None:
    _check_tools(plan)
    if plan.hf_dir != plan.source_dir:
        logger.info("writing %s from %s (%s)", plan.hf_dir, plan.source_dir, _hf_step(plan))
        write_hf_dir(plan.source_dir, plan.hf_dir, profile.dtype, plan.untie)
    for command in plan.commands:
        logger.info("running %s", shlex.join(command))
        try:
            subprocess.run(command, check=True)
        except subprocess.CalledProcessError as exc:
            raise EngineBuildError(f"{command[0]} failed with exit code {exc.returncode}") from exc


def _hf_step(plan: BuildPlan) -> str:
    steps = (["merge the LoRA adapter into its base"] if plan.is_adapter else []) + (
        ["untie the embeddings (lm_head.weight as its own tensor)"] if plan.untie else []
    )
    return "; ".join(steps)


def _print_plan(plan: BuildPlan, profile: BuildProfile) -> None:
    print(f"# profile {profile.name}: {profile.gpu}, sm{profile.sm}, {profile.dtype}")
    if plan.hf_dir != plan.source_dir:
        print(f"# {plan.source_dir} -> {plan.hf_dir}: {_hf_step(plan)} (engine_build.write_hf_dir)")
    for command in plan.commands:
        print(shlex.join(command))
    if profile.fp8_note:
        print(f"# fp8 (optional): {profile.fp8_note}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="name, HF folder or LoRA adapter")
    parser.add_argument("--profile", choices=sorted(PROFILES), required=True)
    parser.add_argument("--out", type=Path, required=True, help="output root")
    parser.add_argument(
        "--trtllm-examples",
        type=Path,
        default=Path(_DEFAULT_EXAMPLES),
        help="examples/ of a TensorRT-LLM checkout ($TRTLLM_EXAMPLES)",
    )
    parser.add_argument("--python", default="python", help="interpreter with tensorrt_llm")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    profile = get_profile(args.profile)
    try:
        plan = plan_build(args.model, profile, args.out, args.trtllm_examples, args.python)
        if args.dry_run:
            _print_plan(plan, profile)
            return 0
        _run(plan, profile)
    except (EngineBuildError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"engine written to {plan.engine_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
