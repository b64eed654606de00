"""``AsyncEngineLLM``: an ``EngineLoop`` behind the ``AsyncLLM`` interface, in process.

The orchestrator sends one coroutine per LLM request and the served ``llm`` model admits
them into its running batch as they come. This adapter gives an in-process caller the
same arrival pattern without Triton: concurrent ``agenerate`` calls join one running batch
between decode steps. ``bench load --model`` measures the engine and the plan under
concurrency with it, so the served run's difference is what Triton, gRPC and the
orchestrator add.
"""

from __future__ import annotations

import asyncio
import itertools

from padellm_ner.engine.core import StepOutput
from padellm_ner.engine.loop import EngineLoop
from padellm_ner.errors import InvalidInputError
from padellm_ner.llm import GenerationRequest, GenerationResult

__all__ = ["AsyncEngineLLM"]


class AsyncEngineLLM:
    """``await agenerate(request)`` on an ``EngineLoop``; cancelling the await aborts the row."""

    def __init__(self, loop: EngineLoop) -> None:
        self.loop = loop
        self._ids = itertools.count()

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        event_loop = asyncio.get_running_loop()
        done: asyncio.Future[GenerationResult] = event_loop.create_future()
        result = GenerationResult()
        req_id = f"async-{next(self._ids)}"

        def finish(out: StepOutput) -> None:  # on the event loop
            if done.done():
                return
            if (failure := out.failure) is None:
                result.finish_reason = out.finish_reason or "length"
                done.set_result(result)
            elif failure.kind == "invalid":
                done.set_exception(InvalidInputError(failure.message))
            else:
                done.set_exception(RuntimeError(f"engine step failed: {failure.message}"))

        def on_step(out: StepOutput) -> None:  # on the engine thread
            # NOTE: only the engine thread touches ``result`` until it is handed over
            if out.token_id is not None:
                result.token_ids.append(out.token_id)
                result.log_probs.append(out.log_prob)
            if out.finished:
                event_loop.call_soon_threadsafe(finish, out)

        self.loop.submit(req_id, request, on_step)
        try:
            return await done
        except asyncio.CancelledError:
            self.loop.abort(req_id)
            raise
