"""The model runner: owns the batch's KV cache and runs the forwards.

Rows of the batch are left-aligned to a shared right edge: every row's newest token
sits in the last cache column, older columns are masked per row. A row that finishes is
dropped (``index_select``) before the next forward, so finished rows cost nothing; new
rows are prefilled in one forward of their own and merged in by left-padding the
shorter of the two caches.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from padellm_ner.engine.request import Request
from padellm_ner.engine.scheduler import SchedulerOutput

__all__ = ["EngineStats", "ModelRunner"]

logger = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Counters that make batching observable (exported as Triton metrics too)."""

    num_forwards: int = 0
    num_prefill_forwards: int = 0
    num_decode_steps: int = 0  # decode forwards (one per step with running rows)
    num_tokens_decoded: int = 0  # rows x decode forwards: every decode row-step
    num_tokens_prefilled: int = 0  # first tokens, sampled from prefill logits
    sum_batch_size: int = 0  # rows per decode forward, summed
    max_batch_size: int = 0

    def snapshot(self) -> EngineStats:
        return EngineStats(**vars(self))


class ModelRunner:
    """Holds tensors; the scheduler decides, the engine connects the two."""

    def __init__(self, model: torch.nn.Module, pad_id: int = 0) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        self.stats = EngineStats()
        # NOTE: transformers 5.2x renamed `past_key_values` to `cache`; accept both.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # NOTE: only the last position's logits are sampled; skipping the LM head on the
        # rest of the prompt saves most of a prefill's FLOPs with a 49k vocabulary.
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._row_ids: list[str] = []  # req_id of each batch row, in row order
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [num_rows, cache_len] 1 = real token
        self._next_pos: torch.Tensor | None = None  # [num_rows] position of the next input
        self._last_token: torch.Tensor | None = None  # [num_rows] token to feed next

    @property
    def num_rows(self) -> int:
        return len(self._row_ids)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> None:
        """Run one step: drop finished rows, decode running rows, prefill and merge new ones.

        Appends exactly one token to every request in ``decode_reqs`` and ``new_reqs``.
        """
        if sched.finished_req_ids:
            self._drop_rows(sched.finished_req_ids)
        if sched.decode_reqs:
            self._decode(sched.decode_reqs)
        if sched.new_reqs:
            self._prefill_and_merge(sched.new_reqs)

    # -- internals -------------------------------------------------------------------
    def _drop_rows(self, req_ids: set[str]) -> None:
        keep = [i for i, rid in enumerate(self._row_ids) if rid not in req_ids]
        if len(keep) == len(self._row_ids):
            return
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep, device=self.device)
        self._row_ids = [self._row_ids[i] for i in keep]
        self._cache.batch_select_indices(index)
        self._mask = self._mask.index_select(0, index)
        self._next_pos = self._next_pos.index_select(0, index)
        self._last_token = self._last_token.index_select(0, index)
        # NOTE: columns masked for every remaining row are dead weight; trim them.
        live = self._mask.any(dim=0).nonzero()
        first = int(live[0]) if len(live) else 0
        if first > 0:
            self._crop_left(first)

    def _reset(self) -> None:
        self._row_ids, self._cache = [], None
        self._mask = self._next_pos = self._last_token = None

    def _crop_left(self, num_cols: int) -> None:
        for layer in self._cache.layers:
            layer.keys = layer.keys[:, :, num_cols:, :]
            layer.values = layer.values[:, :, num_cols:, :]
        self._mask = self._mask[:, num_cols:]

    def _sample(self, logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        """Greedy pick with its log-probability; appends to each request."""
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # [num_rows, vocab]
        best = log_probs.argmax(dim=-1)  # [num_rows]
        best_lp = log_probs.gather(1, best[:, None])[:, 0]
        for req, tok, lp in zip(reqs, best.tolist(), best_lp.tolist()):
            req.append_token(tok, lp)
        return best

    def _decode(self, reqs: list[Request]) -> None:
        assert [r.req_id for r in reqs] == self._row_ids, "batch rows out of sync"
        ones = torch.ones((self.num_rows, 1), dtype=self._mask.dtype, device=self.device)
        mask = torch.cat([self._mask, ones], dim=1)
        out = self.model(
            input_ids=self._last_token[:, None],
            attention_mask=mask,
            position_ids=self._next_pos[:, None],
            use_cache=True,
            **{self._cache_kwarg: self._cache},
        )
        self._mask = mask
        self._next_pos = self._next_pos + 1
        self._last_token = self._sample(out.logits[:, -1, :], reqs)
        self.stats.num_forwards += 1
        self.stats.num_decode_steps += 1
        self.stats.num_tokens_decoded += len(reqs)
        self.stats.sum_batch_size += len(reqs)
        self.stats.max_batch_size = max(self.stats.max_batch_size, len(reqs))

    def _prefill_and_merge(self, reqs: list[Request]) -> None:
        max_len = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), max_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), max_len), dtype=torch.long)
        for row, req in enumerate(reqs):
            n = len(req.prompt_ids)
            ids[row, max_len - n :] = torch.tensor(req.prompt_ids)
            mask[row, max_len - n :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kwarg: cache},
            **self._last_logits,
        )
        first = self._sample(out.logits[:, -1, :], reqs)
        self.stats.num_forwards += 1
        self.stats.num_prefill_forwards += 1
        self.stats.num_tokens_prefilled += len(reqs)
        next_pos = mask.sum(dim=1)
        new_ids = [r.req_id for r in reqs]
        if self._cache is None:
            self._row_ids, self._cache, self._mask = new_ids, cache, mask
            self._next_pos, self._last_token = next_pos, first
            return
        self._merge(cache, mask)
        self._row_ids += new_ids
        self._next_pos = torch.cat([self._next_pos, next_pos])
        self._last_token = torch.cat([self._last_token, first])

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append the new rows' cache below the batch's, left-padding the shorter one."""
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        length = max(old_len, new_len)
        for old, new in zip(self._cache.layers, cache.layers):
            old.keys = torch.cat([_pad_left(old.keys, length), _pad_left(new.keys, length)])
            old.values = torch.cat(
                [_pad_left(old.values, length), _pad_left(new.values, length)]
            )
        self._mask = torch.cat([_pad_left(self._mask, length), _pad_left(mask, length)])


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the sequence axis (dim 2 of KV, dim 1 of masks) on the left to ``length``."""
    axis = 2 if t.dim() == 4 else 1
    missing = length - t.shape[axis]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)
