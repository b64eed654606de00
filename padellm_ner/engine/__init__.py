"""The torch engine: greedy decoding with in-flight batching (scheduler / runner / core)."""

from padellm_ner.engine.async_llm import AsyncEngineLLM
from padellm_ner.engine.core import EngineCore, StepOutput, pick_device, pick_dtype
from padellm_ner.engine.loop import EngineLoop
from padellm_ner.engine.request import Request, RequestStatus
from padellm_ner.engine.runner import EngineStats, ModelRunner
from padellm_ner.engine.scheduler import FcfsScheduler, SchedulerInterface, SchedulerOutput
from padellm_ner.engine.torch_llm import TorchLLM

__all__ = [
    "AsyncEngineLLM",
    "EngineCore",
    "EngineLoop",
    "EngineStats",
    "FcfsScheduler",
    "ModelRunner",
    "Request",
    "RequestStatus",
    "SchedulerInterface",
    "SchedulerOutput",
    "StepOutput",
    "TorchLLM",
    "pick_device",
    "pick_dtype",
]
