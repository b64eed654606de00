"""The torch engine's counters (``EngineStats``) as the ``llm`` model exports them.

One table for the exporter (``padellm_ensemble.triton_io``) and for readers of the metrics
port (``bench load --metrics-url``). It lives outside ``padellm_ner.engine`` so that
importing it loads no torch: the orchestrator's stub imports ``triton_io`` too.
"""

from __future__ import annotations

__all__ = ["ENGINE_METRICS", "REQUESTS_IN_FLIGHT"]

#: ``EngineStats`` field -> (metric name, help text).
ENGINE_METRICS = {
    "num_forwards": ("padellm_llm_forwards_total", "Model forward passes (prefill + decode)"),
    "num_decode_steps": ("padellm_llm_decode_steps_total", "Decode steps (one forward for all active sequences)"),
    "num_prefill_forwards": ("padellm_llm_prefill_forwards_total", "Prefill forward passes"),
    "num_tokens_decoded": ("padellm_llm_tokens_total", "Tokens generated"),
    "sum_batch_size": ("padellm_llm_batch_size_sum", "Sum over decode steps of the sequences in the step"),
    "num_tokens_prefilled": ("padellm_llm_first_tokens_total", "Tokens sampled from prefill logits (each request's first)"),
    "num_prompt_tokens": ("padellm_llm_prompt_tokens_total", "Prompt tokens of admitted requests"),
    "num_prompt_tokens_shared": ("padellm_llm_prompt_tokens_shared_total", "Prompt tokens whose KV came from a shared prefix (computed once per group, or cached)"),
    "num_prompt_tokens_cached": ("padellm_llm_prompt_tokens_cached_total", "Shared-prefix tokens found in the prefix KV cache (no forward)"),
    "num_prompt_tokens_computed": ("padellm_llm_prompt_tokens_computed_total", "Prompt tokens run through a forward (the prefill work actually done)"),
    "num_prefill_slots": ("padellm_llm_prefill_slots_total", "Prefill columns run through a forward, padding included (slots - computed = padding)"),
}

#: The orchestrator's gauge (label ``model``): extractions it has not answered in full yet.
#: ``serve``'s drain reads it to tell an orchestrator still at work from one tritonserver
#: keeps from unloading with nothing left to do.
REQUESTS_IN_FLIGHT = "padellm_requests_in_flight"
