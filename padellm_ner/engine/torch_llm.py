"""``TorchLLM``: the in-process ``LLM`` used by extract, evaluate and bench."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from padellm_ner.engine.core import EngineCore
from padellm_ner.llm import GenerationRequest, GenerationResult

__all__ = ["TorchLLM"]


class TorchLLM:
    """Runs a list of requests through one ``EngineCore`` until all finish.

    All requests enter the batch together (up to ``max_batch_size``; the rest join as
    rows retire), so a PaDeLLM phase is one batch: PaDeLLM_Batch mode.
    """

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self._ids = itertools.count()

    @classmethod
    def from_pretrained(cls, name_or_path: str = "default", **kwargs) -> TorchLLM:
        return cls(EngineCore.from_pretrained(name_or_path, **kwargs))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        req_ids = [f"gen-{next(self._ids)}" for _ in requests]
        results: dict[str, GenerationResult] = {rid: GenerationResult() for rid in req_ids}
        added: list[str] = []
        try:
            for rid, request in zip(req_ids, requests):
                self.core.add_request(rid, request)
                added.append(rid)
        except BaseException:
            # NOTE: all or nothing: a refused request must not leave its batch-mates queued
            for rid in added:
                self.core.abort_request(rid)
            raise
        pending = set(req_ids)
        try:
            while pending:
                for out in self.core.step():
                    res = results[out.req_id]
                    if out.token_id is not None:
                        res.token_ids.append(out.token_id)
                        res.log_probs.append(out.log_prob)
                    if out.finished:
                        res.finish_reason = out.finish_reason or "length"
                        pending.discard(out.req_id)
        except BaseException:
            # NOTE: a failed forward may leave the batch half-updated; start clean.
            self.core.fail_all()
            raise
        return [results[rid] for rid in req_ids]
