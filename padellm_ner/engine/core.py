"""The engine core: ``step()`` = schedule -> execute -> update, as in vLLM's EngineCore."""

from __future__ import annotations

import logging
from typing import Any

import torch

from padellm_ner.engine.request import Request
from padellm_ner.engine.runner import EngineStats, ModelRunner
from padellm_ner.engine.scheduler import FcfsScheduler, SchedulerInterface
from padellm_ner.errors import InvalidInputError
from padellm_ner.llm import GenerationRequest, StepOutput
from padellm_ner.models import pick_device

__all__ = ["StepOutput", "EngineCore", "pick_device", "pick_dtype"]

logger = logging.getLogger(__name__)


def pick_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def _usable_length(config: Any) -> int | None:
    """Positions a request may use: the model's, or its sliding window where one applies.

    The runner's masks and cache are full attention; a model whose layers slide a window
    (Gemma3: 512 tokens) answers the same only while a whole request fits the window,
    so a longer one is refused with a clear error instead of decoded differently.
    """
    length = getattr(config, "max_position_embeddings", None)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or ()
    slides = "sliding_attention" in layer_types or (
        not layer_types and getattr(config, "use_sliding_window", bool(window))
    )
    if window and slides:
        return min(length, window) if length else window
    return length


class EngineCore:
    """Greedy decoding with in-flight batching over a Hugging Face causal LM.

    Not thread-safe: one thread calls ``add_request``/``abort_request``/``step``
    (``EngineLoop`` does this for servers).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        max_batch_size: int = 64,
        pad_id: int = 0,
        max_model_len: int | None = None,
        scheduler: SchedulerInterface | None = None,
        min_shared_prefix: int = 16,
    ) -> None:
        self.runner = ModelRunner(model, pad_id=pad_id, min_shared_prefix=min_shared_prefix)
        self.scheduler = scheduler or FcfsScheduler(max_batch_size)
        self.max_model_len = max_model_len or _usable_length(model.config)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._requests: dict[str, Request] = {}
        self.loaded: Any = None  # the LoadedModel when built by from_pretrained

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "default",
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 64,
    ) -> EngineCore:
        from padellm_ner.models import load_model

        device = pick_device(device)
        loaded = load_model(name_or_path, device=device, dtype=pick_dtype(dtype, device))
        pad = loaded.tokenizer.pad_token_id
        core = cls(loaded.model, max_batch_size, pad_id=loaded.end_id if pad is None else pad)
        core.loaded = loaded
        return core

    @property
    def stats(self) -> EngineStats:
        return self.runner.stats

    def add_request(self, req_id: str, request: GenerationRequest) -> None:
        """Queue a request; ValueError for a duplicate id, InvalidInputError when too long
        or when a prompt id is not in the vocabulary."""
        if req_id in self._requests:
            raise ValueError(f"request id {req_id!r} is already in the engine")
        req = Request.from_generation_request(req_id, request)
        if bad := next((t for t in req.prompt_ids if not 0 <= t < self.vocab_size), None):
            # NOTE: checked here, not in the forward: an id out of range there fails the
            # whole batch, every other request in flight with it
            raise InvalidInputError(
                f"token id {bad} is outside the model's vocabulary [0, {self.vocab_size}) "
                f"(request {req_id!r})"
            )
        total = len(req.prompt_ids) + req.max_new_tokens
        if self.max_model_len and req.max_new_tokens >= self.max_model_len:
            raise InvalidInputError(
                f"{req.max_new_tokens} new tokens asked for (request_output_len), over the "
                f"model's {self.max_model_len} positions (request {req_id!r})"
            )
        if self.max_model_len and total > self.max_model_len:
            # NOTE: the user's text is too long: an error they can act on (CLI message,
            # INVALID_ARGUMENT when served), not a crash
            raise InvalidInputError(
                f"text too long for this model: its prompt takes {len(req.prompt_ids)} tokens "
                f"and up to {req.max_new_tokens} more may be generated, over the model's "
                f"{self.max_model_len} positions (request {req_id!r})"
            )
        self._requests[req_id] = req
        self.scheduler.add_request(req)

    def abort_request(self, req_id: str) -> StepOutput | None:
        req = self.scheduler.abort_request(req_id)
        if req is None:
            return None
        self._requests.pop(req_id, None)
        return StepOutput.ended(req_id, "aborted")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[StepOutput]:
        """Schedule, run the forwards, retire finished requests; one output per request."""
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        self.runner.execute(sched)
        self.scheduler.update_from_output(sched)
        outputs = []
        for req in [*sched.decode_reqs, *sched.new_reqs]:
            finished = req.status.is_finished
            outputs.append(
                StepOutput(
                    req.req_id,
                    req.output_ids[-1],
                    req.log_probs[-1],
                    finished,
                    req.status.finish_reason if finished else None,
                )
            )
            if finished:
                self._requests.pop(req.req_id, None)
        return outputs

    def reset_prefix_cache(self) -> None:
        """Drop the prefix KV kept across requests (as vLLM's ``reset_prefix_cache``).

        A sentence's phases still share prefixes; a timed run no longer inherits the
        prefix another run of the same sentence left behind.
        """
        self.runner.reset_prefix_cache()

    def request(self, req_id: str) -> Request | None:
        return self._requests.get(req_id)

    def fail_all(self) -> list[str]:
        """Abort everything (after a runner error); returns the affected request ids."""
        ids = list(self._requests)
        for req_id in ids:
            self.scheduler.abort_request(req_id)
        self._requests.clear()
        # NOTE: the runner's batch may be half-updated after an exception; start clean.
        self.runner._reset()
        self.scheduler.schedule()  # flush finished ids of the aborted rows
        return ids


