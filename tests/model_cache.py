"""Real models loaded once per test process (the SmolLM2 base takes ~40 s to convert once)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from padellm_ner.codec import PromptCodec
from padellm_ner.engine import EngineCore

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@functools.cache
def smollm2_core(max_batch_size: int = 64) -> EngineCore:
    """The real SmolLM2-135M base, fp32 on CPU."""
    return EngineCore.from_pretrained(
        "smollm2-135m", device="cpu", dtype="float32", max_batch_size=max_batch_size
    )


@functools.cache
def smollm2_codec() -> PromptCodec:
    loaded = smollm2_core().loaded
    return PromptCodec(loaded.tokenizer, loaded.end_id)


def make_tiny_llama(
    path: Path, *, generation_config: dict[str, Any] | None = None, **overrides: Any
) -> Path:
    """A 2-layer, hidden-64 random LlamaForCausalLM (seed 0) with the real SmolLM2 tokenizer.

    ``overrides`` replace ``LlamaConfig`` settings; ``generation_config`` (kwargs of a
    ``GenerationConfig``) replaces the one derived from the config. Saved to ``path``.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from padellm_ner.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
    }
    settings.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    if generation_config is not None:
        model.generation_config = GenerationConfig(**generation_config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
