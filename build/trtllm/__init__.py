"""TensorRT-LLM engine build and the ``tensorrt_llm`` Triton model's settings.

TensorRT-LLM runs only on an NVIDIA GPU inside NVIDIA's container; this package holds
what can be decided and tested without one: the build profiles and the exact command
lines (``engine_build --dry-run``).
"""

from padellm_build.trtllm.profiles import PROFILES, BuildProfile, get_profile

__all__ = ["PROFILES", "BuildProfile", "get_profile"]
