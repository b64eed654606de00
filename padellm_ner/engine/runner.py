"""The model runner: owns the batch's KV cache and runs the forwards.

Rows of the batch are left-padded to a shared right edge: every row's newest token sits
in the last cache column, older columns are masked per row. A row that finishes is
dropped (``index_select``) before the next forward, so finished rows cost nothing; new
rows are prefilled in one forward of their own and merged in by left-padding the
shorter of the two caches.

New rows whose prompts share a long prefix (PaDeLLM: every count and mention prompt of a
sentence starts with the instruction and the sentence) prefill it once, in the same
forward as their own tails: the prefix is the trunk of a tree whose branches are the
tails (a tail never attends to a sibling), as the trainer packs a sentence's sequences.
Each request then gets its own contiguous KV row. Shared prefixes are kept (LRU) so that
a later prompt extending one, grouped or alone, prefills only the rest, like TensorRT-LLM's
KV-cache block reuse: PaDeLLM's mention prompts extend the count prompts' prefix.
Trees shorter than the widest are packed side by side into one forward row, each blind
to the others, so a batch of sentences of different lengths pads little.
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

__all__ = ["EngineStats", "ModelRunner", "pack_trees", "tree_prefill_mask"]

logger = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Counters that make batching observable (exported as Triton metrics too: their
    names are ``padellm_ner.engine_metrics.ENGINE_METRICS``)."""

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
    num_prefill_slots: int = 0  # prefill columns run through a forward, pads included
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
        min_shared_prefix: shortest common prompt prefix worth sharing (0: off).
        prefix_cache_size: shared prefixes whose KV is kept for later requests (LRU).
        """
        impl = getattr(model.config, "_attn_implementation", None) or "sdpa"
        if impl != "sdpa":
            # NOTE: prefill passes a 4-D boolean tree mask: eager attention would add it as
            # 0/1, flash attention cannot express it; both decode silently wrong.
            raise ValueError(f"the engine needs attn_implementation='sdpa' (the model has {impl!r})")
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
        # NOTE: only each prompt's last position is sampled; skipping the LM head on the
        # rest of the prompt saves most of a prefill's FLOPs with a 49k vocabulary
        # (``_forward`` hooks the head; logits_to_keep=0 lets its input through whole).
        self._takes_logits_to_keep = "logits_to_keep" in params
        self._lm_head = model.get_output_embeddings()
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
        """Prefill new rows in one forward: a shared prefix once, as the trunk of a tree.

        Each group of prompts sharing a prefix (``prefix_groups``) is one tree laid out as
        the training packer lays out a sentence: ``[cached head][trunk][tail 1]...[tail m]``,
        where a tail sees the head, the trunk and itself, never a sibling. A prompt sharing
        nothing is a tree of its own. Trees are packed side by side into forward rows
        (``pack_trees``), so short trees fill a row instead of padding to the longest; a
        tree never sees another tree of its row. One forward serves them all, so a shared
        prefix is computed once and costs no forward of its own; then each request's KV is
        gathered out whole (``[pad][its prompt]``, the prefix copied into every row), and a
        group's prefix is kept in the prefix cache for prompts that extend it later. A
        group whose prefix is all cached has nothing to compute once: its prompts become
        one tree each on the cached head, keeping trees narrow.
        Returns the rows' cache, mask, next positions and first sampled tokens.
        """
        prompts = [tuple(r.prompt_ids) for r in reqs]
        trees = self._plan_trees(prompts)
        places, width_p, width_n = pack_trees(trees)
        num_rows = 1 + max(p.row for p in places)
        ids = torch.full((num_rows, width_n), self.pad_id, dtype=torch.long)
        positions = torch.zeros((num_rows, width_n), dtype=torch.long)
        segment = torch.full((num_rows, width_n), -1, dtype=torch.long)  # -1 pad, 0 trunk
        block = torch.full((num_rows, width_n), -1, dtype=torch.long)  # -1 pad, else tree
        new_head = torch.full((num_rows, width_n), -1, dtype=torch.long)  # its tree's head
        past_head = torch.full((num_rows, width_p), -1, dtype=torch.long)  # -1 pad, else head
        head_ids: dict[tuple[int, int], int] = {}  # (row, head_at) -> head id
        # per request: its tree and its tail's last column
        where: list[tuple[int, int]] = [(0, 0)] * len(reqs)
        for t, (tree, place) in enumerate(zip(trees, places)):
            col, pos = place.new_at, len(tree.head)
            if tree.head:
                # NOTE: trees of a row on the same head share its columns (pack_trees)
                head = head_ids.setdefault((place.row, place.head_at), len(head_ids))
                past_head[place.row, place.head_at : place.head_at + len(tree.head)] = head
                new_head[place.row, col : col + tree.num_new] = head
            for seg, toks in enumerate((tree.trunk, *tree.tails)):
                ids[place.row, col : col + len(toks)] = torch.tensor(toks, dtype=torch.long)
                positions[place.row, col : col + len(toks)] = torch.arange(pos, pos + len(toks))
                segment[place.row, col : col + len(toks)] = seg
                block[place.row, col : col + len(toks)] = t
                if seg:
                    where[tree.requests[seg - 1]] = (t, col + len(toks) - 1)
                else:
                    pos += len(toks)
                col += len(toks)
        cache = DynamicCache()
        if width_p:
            self._load_heads(cache, trees, places, num_rows, width_p)
        mask = tree_prefill_mask(
            *(x.to(self.device) for x in (segment, block, new_head, past_head))
        )
        order = [places[t].row for t, _last in where]
        rows_t = torch.tensor(order, device=self.device)
        cols_t = torch.tensor([last for _t, last in where], device=self.device)
        logits = self._forward(
            ids.to(self.device), mask, positions.to(self.device), cache, rows_t, cols_t
        )  # [requests, vocab]
        first_tok = self._sample(logits, reqs)
        self.stats.num_prompt_tokens_computed += sum(t.num_new for t in trees)
        self.stats.num_prefill_slots += num_rows * width_n
        if num_rows == len(reqs) and all(
            not t.head and not t.trunk and len(t.tails) == 1 for t in trees
        ):
            # NOTE: nothing shared or packed: each row already is [pad][its prompt]; only
            # a reorder would be left to do
            if order != sorted(order):
                cache.batch_select_indices(rows_t)
            new_cache, new_mask = cache, (segment >= 0).long().to(self.device)[rows_t]
        else:
            new_cache, new_mask = self._gather_rows(cache, trees, places, where, width_p, prompts)
            self._store_prefixes(cache, trees, places, width_p)
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        return new_cache, new_mask, lengths, first_tok

    def _plan_trees(self, prompts: list[tuple[int, ...]]) -> list[_Tree]:
        """Prefill trees for ``prompts``: one per prefix group (one per prompt when the
        group's prefix is all cached), one per prompt sharing nothing."""
        trees: list[_Tree] = []
        for members, length in prefix_groups(prompts, self.min_shared_prefix):
            if length:
                prefix = prompts[members[0]][:length]
                head = self._cached_head(prefix, length)
                if head:
                    self._count_hit(head)
                self.stats.num_prompt_tokens_shared += length * len(members)
                tails = [prompts[i][length:] for i in members]
                if head == prefix:
                    # NOTE: nothing to compute once: side by side, each on the cached head
                    trees += [_Tree([i], head, (), [tail], None) for i, tail in zip(members, tails)]
                else:
                    trees.append(_Tree(members, head, prefix[len(head) :], tails, prefix))
                continue
            for i in members:
                # NOTE: a prompt without a partner this step may still extend a cached
                # prefix (PaDeLLM: a sentence's only mention request after its counts)
                hit = self._cached_head(prompts[i], longest=len(prompts[i]) - 1)
                if self.min_shared_prefix <= 0 or len(hit) < self.min_shared_prefix:
                    hit = ()
                else:
                    self._count_hit(hit)
                    self.stats.num_prompt_tokens_shared += len(hit)
                trees.append(_Tree([i], hit, (), [prompts[i][len(hit) :]], None))
        return trees

    def _load_heads(
        self, cache: DynamicCache, trees: list[_Tree], places: list[_Place], num_rows: int, width: int
    ) -> None:
        """Put each row's cached heads, side by side and left-padded to ``width``, into
        ``cache`` as its past (``_Place.head_at`` says where each tree's head sits; trees of
        a row on the same head share it)."""
        by_row: list[dict[int, tuple[int, ...]]] = [{} for _ in range(num_rows)]
        for tree, place in zip(trees, places):
            if tree.head:
                by_row[place.row][place.head_at] = tree.head
        rows = [[row[at] for at in sorted(row)] for row in by_row]
        used = [sum(len(head) for head in row) for row in rows]
        like = self._prefixes[next(t.head for t in trees if t.head)]
        for layer in range(len(like)):
            kv = []
            for kind in (0, 1):  # keys, values
                first = like[layer][kind]
                kv.append(torch.cat([
                    torch.cat(
                        [first.new_zeros((1, first.shape[1], width - used[r], first.shape[3]))]
                        + [self._prefixes[head][layer][kind] for head in row],
                        dim=2,
                    )
                    for r, row in enumerate(rows)
                ]))  # fmt: skip
            cache.update(kv[0], kv[1], layer)

    def _gather_rows(
        self,
        cache: DynamicCache,
        trees: list[_Tree],
        places: list[_Place],
        where: list[tuple[int, int]],
        width_p: int,
        prompts: list[tuple[int, ...]],
    ) -> tuple[DynamicCache, torch.Tensor]:
        """Each request's KV out of its forward row: its tree's head and trunk, its own
        tail, left-padded."""
        longest = max(len(p) for p in prompts)
        rows = torch.zeros((len(prompts), longest), dtype=torch.long)
        cols = torch.zeros((len(prompts), longest), dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        tail_of = {i: tail for tree in trees for i, tail in zip(tree.requests, tree.tails)}
        for i, (t, last) in enumerate(where):
            tree, place = trees[t], places[t]
            head = torch.arange(place.head_at, place.head_at + len(tree.head))
            trunk = width_p + torch.arange(place.new_at, place.new_at + len(tree.trunk))
            tail = tail_of[i]
            own = width_p + torch.arange(last + 1 - len(tail), last + 1)
            index = torch.cat([head, trunk, own])
            cols[i, longest - len(index) :] = index
            rows[i] = place.row
            mask[i, longest - len(index) :] = 1
        # NOTE: the runner's DynamicCache() has only full layers, so a column number is a
        # position in every layer; a sliding-window layer (DynamicCache(config=...)) would
        # drop old columns and break this gather, the merge and the left crop.
        heads = cache.layers[0].keys.shape[1]
        rows = rows[:, None, :].to(self.device)  # [n, 1, len]
        cols = cols[:, None, :].to(self.device)
        head_ix = torch.arange(heads, device=self.device)[None, :, None]  # [1, heads, 1]
        out = DynamicCache()
        for layer, kv in enumerate(cache.layers):
            out.update(kv.keys[rows, head_ix, cols], kv.values[rows, head_ix, cols], layer)  # [n, heads, len, dim]
        return out, mask.to(self.device)

    def _store_prefixes(
        self, cache: DynamicCache, trees: list[_Tree], places: list[_Place], width_p: int
    ) -> None:
        """Keep each group's prefix KV (head + trunk) for prompts that extend it later."""
        for tree, place in zip(trees, places):
            if tree.prefix is None or not tree.trunk:
                continue  # NOTE: no trunk: the whole prefix was a cache hit, kept already
            index = torch.cat([
                torch.arange(place.head_at, place.head_at + len(tree.head)),
                width_p + torch.arange(place.new_at, place.new_at + len(tree.trunk)),
            ]).to(self.device)  # fmt: skip
            row = place.row
            self._prefixes[tree.prefix] = [
                (layer.keys[row : row + 1].index_select(2, index),
                 layer.values[row : row + 1].index_select(2, index))
                for layer in cache.layers
            ]  # fmt: skip
            while len(self._prefixes) > self.prefix_cache_size:
                self._prefixes.popitem(last=False)

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
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:
        """One prefill forward; the logits at ``(rows[i], cols[i])``, one per request.

        The LM head sees only those positions (a pre-hook picks them from its input), so
        a tree row of many tails costs one head row per request, not one per column, and
        the model's own head logic (scaling, soft-capping) still applies.
        """
        def pick(_module: torch.nn.Module, args: tuple) -> tuple:
            return (args[0][rows, cols][None], *args[1:])

        hook = self._lm_head.register_forward_pre_hook(pick) if self._lm_head is not None else None
        try:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_kwarg: cache},
                **({"logits_to_keep": 0} if self._takes_logits_to_keep else {}),
            )
        finally:
            if hook is not None:
                hook.remove()
        self.stats.num_forwards += 1
        self.stats.num_prefill_forwards += 1
        if hook is None:
            return out.logits[rows, cols]
        return out.logits[0]


@dataclass
class _Tree:
    """Prompts prefilled as one tree: ``head`` (cached KV), ``trunk``, one tail per request.

    ``requests`` are the requests' indices, in tail order; ``prefix`` (head + trunk) is the
    key the trunk's KV is cached under, None for a prompt that shares nothing. Trees are
    packed into forward rows by ``pack_trees``.
    """

    requests: list[int]
    head: tuple[int, ...]
    trunk: tuple[int, ...]
    tails: list[tuple[int, ...]]
    prefix: tuple[int, ...] | None

    @property
    def num_new(self) -> int:
        return len(self.trunk) + sum(len(t) for t in self.tails)


@dataclass(frozen=True)
class _Place:
    """Where a tree sits in a prefill forward: its row, its head's first past column and
    its trunk's first new column."""

    row: int
    head_at: int
    new_at: int


def pack_trees(trees: list[_Tree]) -> tuple[list[_Place], int, int]:
    """Pack trees side by side into forward rows no wider than the widest tree.

    First fit, longest first, over the new columns (trunks and tails): a row's new columns
    stay within the widest tree's, so packing only removes padding where the forward's
    work is. A row's past columns hold the cached heads of its trees, each head once (a
    tree goes to a row already holding its head when one has room), so a row may hold
    more past columns than the longest head: past columns cost only attention, a new
    column (pad or not) costs the whole model, and on a CPU a forward costs about in
    proportion to its new columns. Served, a sentence's count prompts (one wide tree)
    arrive beside other sentences' mention prompts (narrow trees on cached heads): those
    fill the wide tree's row width instead of a row each. Each row is right-aligned (pads
    on the left), as decode rows are. Returns each tree's place, the past width and the
    new width.
    """
    cap_n = max(t.num_new for t in trees)
    rows: list[list[int]] = []  # tree indices per row, in column order
    used: list[int] = []  # new columns taken per row
    heads: list[dict[tuple[int, ...], None]] = []  # distinct heads per row, in column order
    for t in sorted(range(len(trees)), key=lambda t: (-trees[t].num_new, -len(trees[t].head), t)):
        need, head = trees[t].num_new, trees[t].head
        fits = [r for r, n in enumerate(used) if n + need <= cap_n]
        r = next((r for r in fits if head and head in heads[r]), fits[0] if fits else None)
        if r is None:
            r = len(rows)
            rows.append([])
            used.append(0)
            heads.append({})
        rows[r].append(t)
        used[r] += need
        if head:
            heads[r][head] = None
    past = [sum(len(h) for h in row) for row in heads]
    width_p, width_n = max(past), max(used)
    # NOTE: rows in the order of their first tree, so that unpacked trees keep arrival
    # order and the prefill's no-gather path needs no reorder copy of the cache
    placed = sorted(range(len(rows)), key=lambda r: min(rows[r]))
    places: list[_Place | None] = [None] * len(trees)
    for out_row, r in enumerate(placed):
        head_at, at = {}, width_p - past[r]
        for head in heads[r]:
            head_at[head] = at
            at += len(head)
        new_at = width_n - used[r]
        for t in rows[r]:
            places[t] = _Place(out_row, head_at.get(trees[t].head, width_p), new_at)
            new_at += trees[t].num_new
    return places, width_p, width_n  # type: ignore[return-value]


def tree_prefill_mask(
    segment: torch.Tensor, block: torch.Tensor, new_head: torch.Tensor, past_head: torch.Tensor
) -> torch.Tensor:
    """The 4-D boolean mask of a tree prefill ([rows, 1, new, past + new]).

    ``segment`` ([rows, new]) tags each new column -1 (pad), 0 (trunk) or j (tail j) of
    its tree; ``block`` ([rows, new]) says which tree a new column belongs to and
    ``new_head`` ([rows, new]) which cached head that tree sits on (-1: none);
    ``past_head`` ([rows, past]) says which head a past column belongs to (-1: pad).
    A column sees its own tree's head, trunk and its own tail up to itself: a tail never
    sees a sibling, a tree never sees another tree packed in its row (only the head two
    trees share), and nothing sees padding. A query that would see no key at all (a pad)
    sees every key instead: a
    fused attention kernel may answer such a row with NaN (cuDNN's on Hopper in bf16 is
    reported to), and the cache would carry it on; its output is never used.
    """
    new = segment.shape[1]
    device = segment.device
    head = (past_head[:, None, :] >= 0) & (past_head[:, None, :] == new_head[:, :, None])
    seg_q, seg_k = segment[:, :, None], segment[:, None, :]
    causal = torch.ones((new, new), dtype=torch.bool, device=device).tril()
    same = block[:, :, None] == block[:, None, :]
    tree = causal & same & (seg_k >= 0) & ((seg_k == 0) | (seg_k == seg_q))  # [rows, q, k]
    full = torch.cat([head, tree], dim=-1)[:, None]
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
