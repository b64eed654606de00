"""Engine build profiles (A100 = sm80, H100 = sm90) sized for PaDeLLM-NER prompts.

Where the numbers come from (measured on CoNLL-2003 with the SmolLM2 tokenizer; other
Llama-family tokenizers are within ~20 %):

* A PaDeLLM prompt is ``text:\\n{sentence}\\nentity type:\\n{label}\\n\\n<num>``: the sentence
  tokens plus ~15. Prompts are 34 tokens at the median, 76 at p99 and 230 at the maximum
  (train split; test max 181). A mention request appends ``{count}\\n<mention {k}>``
  (~6 tokens) to that prompt.
* Outputs are short: a count (``PlanConfig.max_count_tokens`` = 4) or one mention
  (``PlanConfig.max_mention_tokens`` = 24, the longest gold mention is 16) plus the end id.
* Fan-out: one count request per label, then one branch per mention (``max_mentions``
  = 16 per label; gold max 21 of one label in a sentence). A 4-label sentence opens up
  to 4 + 64 requests at once, so the engine needs many slots rather than long sequences.

The engine is built for the worst case on the input side (``max_input_len`` 512 > 230 + 6
with room for longer sentences and other tokenizers) and the runtime only reserves KV
blocks for ``input_len + request_output_len`` of each request, so the margin costs nothing
at serving time.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_MENTION_TOKENS",
    "MAX_PROMPT_SUFFIX_TOKENS",
    "BuildProfile",
    "PROFILES",
    "get_profile",
]

#: Longest generation the plan asks for (``PlanConfig.max_mention_tokens``) + the end id.
MAX_MENTION_TOKENS = 24 + 1
#: Tokens a mention request appends to the count prompt (``"16\n<mention 16>"``).
MAX_PROMPT_SUFFIX_TOKENS = 8


@dataclass(frozen=True)
class BuildProfile:
    """Engine shape limits for ``trtllm-build`` plus the runtime knobs of the Triton model.

    Attributes:
        name: ``a100`` or ``h100``.
        gpu: human name of the target card.
        sm: CUDA compute capability the engine is built on (engines are not portable
            across SM versions: build on the card you serve on).
        dtype: ``convert_checkpoint.py --dtype``.
        max_batch_size: in-flight requests the engine schedules per iteration.
        max_input_len: longest prompt in tokens.
        max_seq_len: prompt + generated tokens of one request.
        max_num_tokens: tokens (context + generation) processed in one iteration; bounds
            the activation memory that ``trtllm-build`` reserves.
        kv_cache_free_gpu_mem_fraction: share of the GPU memory left after loading the
            engine that the runtime gives to the paged KV cache.
        fp8_note: how to go further on this card, or ``""``.
        batch_scheduler_policy: ``guaranteed_no_evict`` (outputs are <= 25 tokens, so
            reserving each request's output up front is cheap and nothing is evicted)
            or ``max_utilization``.
    """

    name: str
    gpu: str
    sm: int
    dtype: str
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    kv_cache_free_gpu_mem_fraction: float = 0.9
    fp8_note: str = ""
    batch_scheduler_policy: str = "guaranteed_no_evict"

    @property
    def max_output_len(self) -> int:
        """Generation room left for the longest prompt (``max_seq_len - max_input_len``)."""
        return self.max_seq_len - self.max_input_len

    def build_flags(self) -> list[str]:
        """The size flags of ``trtllm-build``, in a fixed order."""
        return [
            "--max_batch_size", str(self.max_batch_size),
            "--max_input_len", str(self.max_input_len),
            "--max_seq_len", str(self.max_seq_len),
            "--max_num_tokens", str(self.max_num_tokens),
        ]  # fmt: skip

    def template_values(self, engine_dir: str, tokenizer_dir: str = "") -> dict[str, str]:
        """Values for ``model_repository/tensorrt_llm/config.pbtxt`` (fill_template keys).

        The template writes out what every PaDeLLM deployment needs (KV-cache reuse,
        chunked context, greedy decoding); only these differ per card or install.

        Args:
            engine_dir: the engine folder as seen by tritonserver (``gpt_model_path``).
            tokenizer_dir: the model's HF folder (``tokenizer_dir``; the backend requires
                the key and only reads it for guided decoding, which PaDeLLM leaves off).
        """
        return {
            "tokenizer_dir": tokenizer_dir,
            # NOTE: Triton's batch size equals the engine's: the backend queues the rest.
            "triton_max_batch_size": str(self.max_batch_size),
            # NOTE: decoupled so the orchestrator can stream and stop (stop=True) a request.
            "decoupled_mode": "true",
            "engine_dir": engine_dir,
            "batching_strategy": "inflight_fused_batching",
            "batch_scheduler_policy": self.batch_scheduler_policy,
            "kv_cache_free_gpu_mem_fraction": str(self.kv_cache_free_gpu_mem_fraction),
        }


# NOTE: on both cards max_seq_len = max_input_len + 64: 25 tokens of output (count or
# mention + end id) and 8 of mention prefix leave 31 tokens of slack.
# max_num_tokens caps one iteration: 256 context requests of the p99 prompt (76 tokens)
# = 19.5k tokens, so 16384 on H100 takes a whole fan-out burst of ordinary sentences in one
# iteration (chunked context splits the rare long ones); A100 has ~1/3 of the H100's bf16
# throughput and often 40 GB, so it takes half the tokens per iteration.
PROFILES: dict[str, BuildProfile] = {
    "a100": BuildProfile(
        name="a100",
        gpu="NVIDIA A100 (40/80 GB)",
        sm=80,
        dtype="bfloat16",  # NOTE: sm80 has no FP8 tensor cores.
        max_batch_size=256,
        max_input_len=512,
        max_seq_len=576,
        max_num_tokens=8192,
        kv_cache_free_gpu_mem_fraction=0.85,
    ),
    "h100": BuildProfile(
        name="h100",
        gpu="NVIDIA H100 (80 GB)",
        sm=90,
        dtype="bfloat16",
        max_batch_size=256,
        max_input_len=512,
        max_seq_len=576,
        max_num_tokens=16384,
        kv_cache_free_gpu_mem_fraction=0.9,
        fp8_note=(
            "sm90 runs FP8: quantize the merged HF model with "
            "examples/quantization/quantize.py --qformat fp8 --kv_cache_dtype fp8 instead "
            "of convert_checkpoint.py, then run the same trtllm-build command; re-check F1 "
            "on the dev split before serving it (mention scores are log-probabilities)."
        ),
    ),
}


def get_profile(name: str) -> BuildProfile:
    """The profile called ``name`` (``a100`` or ``h100``).

    Raises:
        KeyError: unknown name, with the known ones in the message.
    """
    try:
        return PROFILES[name.lower()]
    except KeyError:
        raise KeyError(f"unknown build profile {name!r}; known: {', '.join(PROFILES)}") from None
