"""The model runner: owns the batch's KV cache and runs the forwards.

Rows of the batch are left-aligned to a shared right edge: every row's newest token
sits in the last cache column, older columns are masked per row. A row that finishes is
dropped (``index_select``) before the next forward, so finished rows cost nothing; new
rows are prefilled in one forward of their own and merged in by left-padding the
shorter of the two caches.

New rows whose prompts share a long prefix (PaDeLLM: every count and mention prompt of a
sentence starts with the instruction and the sentence) prefill that prefix once and only
their own tails per row, like TensorRT-LLM's KV-cache block reuse within one batch. The
tails are left-padded after the prefix, so a row may hold masked columns in the middle.
Shared prefixes are kept (LRU) so that a later prompt extending one, grouped or alone,
prefills only the rest: PaDeLLM's mention prompts extend the count prompts' prefix.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import OrderedDict
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
    num_prefill_steps: int = 0  # engine steps that admitted new rows
    num_prompt_tokens: int = 0  # prompt tokens of admitted rows
    num_prompt_tokens_shared: int = 0  # of those, served by a prefix's KV (once per group, or cached)
    num_prompt_tokens_cached: int = 0  # prefix tokens found in the prefix cache (no forward)
    num_prompt_tokens_computed: int = 0  # prompt tokens run through a forward (pads excluded)
    num_prefix_cache_hits: int = 0
    sum_batch_size: int = 0  # rows per decode forward, summed
    max_batch_size: int = 0

    def snapshot(self) -> EngineStats:
        return EngineStats(**vars(self))


class ModelRunner:
    """Holds tensors; the scheduler decides, the engine connects the two."""

    def __init__(
        self,
        model: torch.nn.Module,
        pad_id: int = 0,
        min_shared_prefix: int = 16,
        prefix_cache_size: int = 16,
    ) -> None:
        """Args:
        min_shared_prefix: shortest common prompt prefix worth its own forward (0: off).
        prefix_cache_size: shared prefixes whose KV is kept for later requests (LRU).
        """
        self.model = model
        self.min_shared_prefix = min_shared_prefix
        self.prefix_cache_size = prefix_cache_size
        self._prefixes: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = (
            OrderedDict()
        )
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

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (benchmarks: each timed run starts cold)."""
        self._prefixes.clear()

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
        picked = best_lp.tolist()
        if not all(math.isfinite(lp) for lp in picked):
            # NOTE: a NaN row decodes token 0 forever without a word; say so instead.
            raise RuntimeError(f"non-finite logits in a decode step (log-probs {picked})")
        for req, tok, lp in zip(reqs, best.tolist(), picked):
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
        self.stats.num_prefill_steps += 1
        self.stats.num_prompt_tokens += sum(len(r.prompt_ids) for r in reqs)
        cache, mask, next_pos, first = self._prefill(reqs)
        self.stats.num_tokens_prefilled += len(reqs)
        new_ids = [r.req_id for r in reqs]
        if self._cache is None:
            self._row_ids, self._cache, self._mask = new_ids, cache, mask
            self._next_pos, self._last_token = next_pos, first
            return
        self._mask = _merge_caches(self._cache, self._mask, cache, mask)
        self._row_ids += new_ids
        self._next_pos = torch.cat([self._next_pos, next_pos])
        self._last_token = torch.cat([self._last_token, first])

    def _prefill(
        self, reqs: list[Request]
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefill new rows: each shared prefix once, then every row's own tail in one forward.

        Row r's cache is ``[pad][prefix of its group][pad][its tail]`` (pads masked), so the
        rows of all groups, and rows sharing nothing (empty prefix), decode together.
        Returns the rows' cache, mask, next positions and first sampled tokens.
        """
        n = len(reqs)
        shared = [0] * n
        prefix_kv: list[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = []
        for rows, length in prefix_groups([r.prompt_ids for r in reqs], self.min_shared_prefix):
            if length:
                prefix_kv.append((rows, self._prefix_kv(tuple(reqs[rows[0]].prompt_ids[:length]))))
                for i in rows:
                    shared[i] = length
                self.stats.num_prompt_tokens_shared += length * len(rows)
                continue
            # NOTE: a prompt without a partner this step may still extend a cached prefix
            # (PaDeLLM: a sentence's only mention request after its count requests)
            for i in rows:
                prompt = tuple(reqs[i].prompt_ids)
                hit = self._cached_head(prompt, longest=len(prompt) - 1)
                if self.min_shared_prefix > 0 and len(hit) >= self.min_shared_prefix:
                    prefix_kv.append(([i], self._prefixes[hit]))
                    shared[i] = len(hit)
                    self._count_hit(hit)
                    self.stats.num_prompt_tokens_shared += len(hit)
        width_p = max(shared)
        cache = DynamicCache()
        if width_p:
            alone = [i for i in range(n) if not shared[i]]
            # NOTE: rows are stacked group by group, then the alone ones; index puts them
            # back in arrival order (the scheduler's row order)
            stacked_rows = [i for rows, _ in prefix_kv for i in rows] + alone
            stacked = {row: k for k, row in enumerate(stacked_rows)}
            index = torch.tensor([stacked[i] for i in range(n)], device=self.device)
            for layer, kvs in enumerate(zip(*(kv for _, kv in prefix_kv))):
                keys, values = [], []
                for (rows, _), (k, v) in zip(prefix_kv, kvs):
                    keys.append(_pad_left(k, width_p).expand(len(rows), -1, -1, -1))
                    values.append(_pad_left(v, width_p).expand(len(rows), -1, -1, -1))
                if alone:
                    keys.append(keys[0].new_zeros((len(alone), *keys[0].shape[1:])))
                    values.append(values[0].new_zeros((len(alone), *values[0].shape[1:])))
                # NOTE: index_select copies: rows diverge from here; arrival order kept
                cache.update(
                    torch.cat(keys).index_select(0, index),
                    torch.cat(values).index_select(0, index),
                    layer,
                )
        prefix_mask = torch.zeros((n, width_p), dtype=torch.long)
        tails = [r.prompt_ids[p:] for r, p in zip(reqs, shared)]
        width_t = max(len(t) for t in tails)
        ids = torch.full((n, width_t), self.pad_id, dtype=torch.long)
        tail_mask = torch.zeros((n, width_t), dtype=torch.long)
        for row, (tail, p) in enumerate(zip(tails, shared)):
            if p:
                prefix_mask[row, width_p - p :] = 1
            ids[row, width_t - len(tail) :] = torch.tensor(tail)
            tail_mask[row, width_t - len(tail) :] = 1
        ids, tail_mask = ids.to(self.device), tail_mask.to(self.device)
        start = torch.tensor(shared, device=self.device)[:, None]
        positions = start + (tail_mask.cumsum(dim=1) - 1).clamp(min=0)
        mask = torch.cat([prefix_mask.to(self.device), tail_mask], dim=1)
        self.stats.num_prompt_tokens_computed += sum(len(t) for t in tails)
        first = self._sample(self._forward(ids, mask, positions, cache), reqs)
        return cache, mask, start[:, 0] + tail_mask.sum(dim=1), first

    def _prefix_kv(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values) of ``prefix`` (one row), reusing a cached head of it.

        PaDeLLM's mention prompts repeat the count prompts' instruction and sentence, so the
        mention phase finds that prefix here instead of prefilling it again.
        """
        hit = self._cached_head(prefix, len(prefix))  # the whole prefix, when cached
        if hit:
            self._count_hit(hit)
        if hit == prefix:
            return self._prefixes[hit]
        cache = DynamicCache()
        for i, (k, v) in enumerate(self._prefixes.get(hit, ())):
            cache.update(k, v, i)
        rest = torch.tensor([prefix[len(hit) :]], device=self.device)
        self.stats.num_prompt_tokens_computed += len(prefix) - len(hit)
        mask = torch.ones((1, len(prefix)), dtype=torch.long, device=self.device)
        positions = torch.arange(len(hit), len(prefix), device=self.device)[None]
        self._forward(rest, mask, positions, cache)
        # NOTE: later updates concatenate into new tensors; the stored ones stay intact.
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        self._prefixes[prefix] = kv
        while len(self._prefixes) > self.prefix_cache_size:
            self._prefixes.popitem(last=False)
        return kv

    def _cached_head(self, prompt: tuple[int, ...], longest: int) -> tuple[int, ...]:
        """The longest cached prefix of ``prompt`` no longer than ``longest`` (or ())."""
        return max(
            (p for p in self._prefixes if len(p) <= longest and prompt[: len(p)] == p),
            key=len,
            default=(),
        )

    def _count_hit(self, hit: tuple[int, ...]) -> None:
        self._prefixes.move_to_end(hit)
        self.stats.num_prefix_cache_hits += 1
        self.stats.num_prompt_tokens_cached += len(hit)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """One prefill forward; the last position's logits."""
        out = self.model(
            input_ids=ids,
            attention_mask=prefill_mask(mask, ids.shape[1]),
            position_ids=positions,
            use_cache=True,
            **{self._cache_kwarg: cache},
            **self._last_logits,
        )
        self.stats.num_forwards += 1
        self.stats.num_prefill_forwards += 1
        return out.logits[:, -1, :]


def prefill_mask(mask: torch.Tensor, num_new: int) -> torch.Tensor:
    """The 4-D boolean mask of a prefill of ``num_new`` tokens over ``mask`` ([n, kv]).

    Causal over the new tokens, blind to padding, and with every query row seeing at
    least one key: a left-padded position sees none, and a fused attention kernel may
    answer such a row with NaN (cuDNN's on Hopper in bf16 is reported to), which its
    cached value then spreads to the real tokens of that row. Such a row attends to
    everything instead; its output is never used.
    """
    kv = mask.shape[1]
    past = kv - num_new
    keys = torch.arange(kv, device=mask.device)
    causal = keys[None, :] <= past + torch.arange(num_new, device=mask.device)[:, None]  # [q, kv]
    full = mask.bool()[:, None, None, :] & causal[None, None]  # [n, 1, q, kv]
    return full | ~full.any(dim=-1, keepdim=True)


def prefix_groups(prompts: list[tuple[int, ...]], min_shared: int) -> list[tuple[list[int], int]]:
    """Partition prompts into groups that share at least ``min_shared`` leading tokens.

    Returns ``(indices, shared)`` per group; ``shared`` leaves every prompt at least one
    token of its own (its logits give the first sampled token), and is 0 for a group of one
    or when sharing is off; all such prompts form one last group.
    """
    if min_shared <= 0 or len(prompts) < 2:
        return [(list(range(len(prompts))), 0)]
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    groups: list[tuple[list[int], int]] = []
    for i in order:
        if groups:
            rows, shared = groups[-1]
            common = min(shared, _common_prefix(prompts[rows[-1]], prompts[i]))
            if common >= min_shared:
                groups[-1] = (rows + [i], common)
                continue
        groups.append(([i], len(prompts[i])))
    out, alone = [], []
    for rows, shared in groups:
        shared = min(shared, min(len(prompts[i]) for i in rows) - 1)
        if len(rows) > 1 and shared >= min_shared:
            out.append((rows, shared))
        else:
            alone += rows
    # NOTE: prompts without a partner share one plain forward
    return out + ([(sorted(alone), 0)] if alone else [])


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _merge_caches(
    cache: DynamicCache, mask: torch.Tensor, more: DynamicCache, more_mask: torch.Tensor
) -> torch.Tensor:
    """Append ``more``'s rows below ``cache``'s in place, left-padding the shorter; new mask."""
    length = max(mask.shape[1], more_mask.shape[1])
    for old, new in zip(cache.layers, more.layers):
        old.keys = torch.cat([_pad_left(old.keys, length), _pad_left(new.keys, length)])
        old.values = torch.cat([_pad_left(old.values, length), _pad_left(new.values, length)])
    return torch.cat([_pad_left(mask, length), _pad_left(more_mask, length)])


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the sequence axis (dim 2 of KV, dim 1 of masks) on the left to ``length``."""
    axis = 2 if t.dim() == 4 else 1
    missing = length - t.shape[axis]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)
