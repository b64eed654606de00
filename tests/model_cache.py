"""Real models loaded once per test process (the SmolLM2 base takes ~40 s to convert once)."""

from __future__ import annotations

import functools

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
