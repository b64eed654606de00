"""Training pairs -> token ids with a loss mask, and length-grouped batches by token budget.

Tokenization matches inference (see ``codec.py``): the prompt and every target piece are
encoded apart with ``PromptCodec.encode`` (no special tokens), concatenated, and the end
id is appended. The loss covers the target ids and the end id only.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from padellm_ner.codec import PromptCodec
from padellm_ner.prompts.base import TrainingPair

__all__ = [
    "IGNORE_INDEX",
    "TokenizedPair",
    "PackedUnit",
    "Step",
    "pack_unit",
    "collate_packed",
    "encode_pair",
    "encode_pairs",
    "is_zero_count",
    "keep_zero_count",
    "plan_epoch",
    "collate",
    "num_steps",
    "steps_per_epoch_estimate",
]

logger = logging.getLogger(__name__)

#: label id that the loss skips (the prompt and the padding)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedPair:
    """One training sequence as ids.

    Attributes:
        input_ids: prompt ids + target ids + end id.
        num_prompt_tokens: how many leading ids are prompt (no loss).
    """

    input_ids: tuple[int, ...]
    num_prompt_tokens: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def labels(self) -> list[int]:
        """``input_ids`` with the prompt masked by ``IGNORE_INDEX`` (unshifted, HF style)."""
        n = self.num_prompt_tokens
        return [IGNORE_INDEX] * n + list(self.input_ids[n:])

    @property
    def num_target_tokens(self) -> int:
        return len(self.input_ids) - self.num_prompt_tokens


def encode_pair(
    pair: TrainingPair, codec: PromptCodec, cache: dict[str, list[int]] | None = None
) -> TokenizedPair:
    """Ids of one pair: ``encode_prompt(prompt) + sum(encode(piece)) + [end_id]``.

    Args:
        pair: the rendered pair.
        codec: the model's codec (its ``end_id`` ends every target).
        cache: optional prompt -> ids memo (PaDeLLM repeats a prompt for every mention).
    """
    if cache is None:
        cache = {}
    prompt_ids = cache.get(pair.prompt)
    if prompt_ids is None:
        prompt_ids = cache[pair.prompt] = codec.encode_prompt(pair.prompt)
    target_ids: list[int] = []
    for piece in pair.target_pieces:
        target_ids.extend(codec.encode(piece))
    target_ids.append(codec.end_id)
    return TokenizedPair(tuple(prompt_ids) + tuple(target_ids), len(prompt_ids))


def encode_pairs(
    pairs: Iterable[TrainingPair], codec: PromptCodec, max_len: int | None = None
) -> list[TokenizedPair]:
    """Encode many pairs; sequences longer than ``max_len`` are dropped (logged, never cut)."""
    cache: dict[str, list[int]] = {}
    out: list[TokenizedPair] = []
    num_dropped = 0
    for pair in pairs:
        seq = encode_pair(pair, codec, cache)
        if max_len is not None and len(seq) > max_len:
            num_dropped += 1
            continue
        out.append(seq)
    if num_dropped:
        logger.warning("dropped %d sequences longer than %d tokens", num_dropped, max_len)
    return out


def is_zero_count(pair: TrainingPair) -> bool:
    """A PaDeLLM pair whose label has no mention (target ``0``)."""
    return pair.target_pieces == ("0",)


def keep_zero_count(pair: TrainingPair, fraction: float, seed: int) -> bool:
    """Deterministic subsampling of zero-count pairs (same choice on every run and resume)."""
    if fraction >= 1.0 or not is_zero_count(pair):
        return True
    # NOTE: a seeded hash of the prompt, not Python's salted hash(), so resume is stable.
    rng = random.Random(f"{seed}:{pair.prompt}")
    return rng.random() < fraction


@dataclass(frozen=True)
class PackedUnit:
    """Sequences merged into one token trie: shared prefixes are computed once.

    All pairs of one sentence share ``text:\\n{text}\\nentity type:\\n``, and the pairs of
    one label share the whole prompt and the count; in the trie each shared token is one
    node. A node attends to its ancestors and itself and sits at position ``depth``, so
    every sequence's hidden states, hence its loss and gradient, are those of training it
    alone (up to float rounding), at a fraction of the tokens.

    Attributes:
        input_ids: one token per node; a parent always comes before its children.
        parents: parent node of each node, ``-1`` for a root.
        positions: position id (depth) of each node.
        loss_items: ``(node, target_id, weight)``: the node's logits must predict
            ``target_id`` in ``weight`` of the sequences (the prompt is never a target).
        num_sequences: how many pairs were merged.
        num_raw_tokens: their total length unmerged.
    """

    input_ids: tuple[int, ...]
    parents: tuple[int, ...]
    positions: tuple[int, ...]
    loss_items: tuple[tuple[int, int, int], ...]
    num_sequences: int
    num_raw_tokens: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_target_tokens(self) -> int:
        """Target tokens over the merged sequences (a shared one counts once per sequence)."""
        return sum(w for _, _, w in self.loss_items)


def pack_unit(seqs: Sequence[TokenizedPair]) -> PackedUnit:
    """Merge sequences into one trie (see ``PackedUnit``); one sequence gives a plain chain."""
    input_ids: list[int] = []
    parents: list[int] = []
    positions: list[int] = []
    children: dict[tuple[int, int], int] = {}
    weights: dict[tuple[int, int], int] = {}
    for seq in seqs:
        if seq.num_prompt_tokens < 1:
            raise ValueError("a sequence needs at least one prompt token to predict its target")
        node = -1
        for pos, tok in enumerate(seq.input_ids):
            if pos >= seq.num_prompt_tokens:
                weights[(node, tok)] = weights.get((node, tok), 0) + 1
            child = children.get((node, tok))
            if child is None:
                child = children[(node, tok)] = len(input_ids)
                input_ids.append(tok)
                parents.append(node)
                positions.append(pos)
            node = child
    items = tuple((node, tok, w) for (node, tok), w in weights.items())
    return PackedUnit(
        tuple(input_ids),
        tuple(parents),
        tuple(positions),
        items,
        num_sequences=len(seqs),
        num_raw_tokens=sum(len(s) for s in seqs),
    )


@dataclass(frozen=True)
class Step:
    """One optimizer step: micro-batches (forward passes) of rows of unit indices.

    ``micro_batches[b][r]`` lists the units packed side by side in row ``r`` of pass ``b``.
    """

    micro_batches: tuple[tuple[tuple[int, ...], ...], ...]


def _micro_batches(
    order: Sequence[int], lengths: Sequence[int], micro_tokens: int
) -> list[list[int]]:
    """Cut an ordering into batches whose padded size (n * max_len) stays within budget."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for idx in order:
        longest_if = max(longest, lengths[idx])
        if current and longest_if * (len(current) + 1) > micro_tokens:
            batches.append(current)
            current, longest_if = [], lengths[idx]
        current.append(idx)
        longest = longest_if
    if current:
        batches.append(current)
    return batches


def _pack_rows(units: Sequence[int], lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """First-fit decreasing: units side by side in rows of at most ``row_tokens`` tokens."""
    rows: list[list[int]] = []
    free: list[int] = []
    for idx in sorted(units, key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[idx] <= room:
                rows[r].append(idx)
                free[r] -= lengths[idx]
                break
        else:
            rows.append([idx])
            free.append(row_tokens - lengths[idx])
    return rows


def plan_epoch(
    lengths: Sequence[int],
    batch_tokens: int,
    micro_tokens: int,
    seed: int,
    epoch: int,
    row_tokens: int | None = None,
) -> list[Step]:
    """The steps of one epoch, length-grouped, deterministic in ``(seed, epoch)``.

    Units are shuffled and cut into chunks of about 64 steps. Inside a chunk they are
    packed into rows of at most ``row_tokens`` tokens (``None``: one unit per row), rows are
    sorted by length (little padding, still mixed across the epoch), cut into forward
    passes of at most ``micro_tokens`` padded tokens, grouped into steps of about
    ``batch_tokens`` padded tokens, and the steps are shuffled.

    Args:
        lengths: token length of every unit.
        batch_tokens: padded tokens per optimizer step.
        micro_tokens: padded tokens per forward pass (memory bound); at most ``batch_tokens``.
        seed: the run's seed.
        epoch: the epoch number (each epoch has its own order).
        row_tokens: packing row size, or ``None`` for no packing.
    """
    micro_tokens = max(1, min(micro_tokens, batch_tokens))
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mean_len = (sum(lengths) / len(lengths)) if lengths else 1.0
    chunk = max(1, int(64 * batch_tokens / max(mean_len, 1.0)))
    micro: list[list[tuple[int, ...]]] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        if row_tokens:
            rows = [tuple(r) for r in _pack_rows(part, lengths, row_tokens)]
        else:
            rows = [(i,) for i in part]
        row_len = [sum(lengths[i] for i in r) for r in rows]
        by_len = sorted(range(len(rows)), key=lambda r: row_len[r])
        for batch in _micro_batches(by_len, row_len, micro_tokens):
            micro.append([rows[r] for r in batch])
    steps: list[Step] = []
    current: list[tuple[tuple[int, ...], ...]] = []
    padded = 0
    for batch in micro:
        size = len(batch) * max(sum(lengths[i] for i in r) for r in batch)
        if current and padded + size > batch_tokens:
            steps.append(Step(tuple(current)))
            current, padded = [], 0
        current.append(tuple(batch))
        padded += size
    if current:
        steps.append(Step(tuple(current)))
    rng.shuffle(steps)
    return steps


def steps_per_epoch_estimate(
    lengths: Sequence[int],
    batch_tokens: int,
    micro_tokens: int,
    seed: int,
    row_tokens: int | None = None,
) -> int:
    """Steps of epoch 0 (later epochs differ by a step or two)."""
    return len(plan_epoch(lengths, batch_tokens, micro_tokens, seed, 0, row_tokens))


def collate_packed(rows: Sequence[Sequence[PackedUnit]], pad_id: int):  # -> dict[str, torch.Tensor]
    """Rows of units side by side -> model inputs with a tree attention mask, and loss indices.

    Returns:
        ``input_ids`` / ``position_ids`` ``[n, L]``; ``attention_mask`` ``[n, 1, L, L]`` bool
        (True = may attend: the node's ancestors and itself; a pad attends only to itself);
        ``loss_index`` ``[num_items]`` into the flattened ``[n * L]`` positions, with
        ``loss_targets`` and ``loss_weights`` ``[num_items]``.
    """
    import torch

    row_len = [sum(len(u) for u in row) for row in rows]
    n, max_len = len(rows), max(row_len)
    input_ids = torch.full((n, max_len), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, max_len), dtype=torch.long)
    mask = torch.zeros((n, max_len, max_len), dtype=torch.bool)
    loss_index: list[int] = []
    loss_targets: list[int] = []
    loss_weights: list[int] = []
    for r, row in enumerate(rows):
        offset = 0
        for unit in row:
            size = len(unit)
            sl = slice(offset, offset + size)
            input_ids[r, sl] = torch.tensor(unit.input_ids)
            position_ids[r, sl] = torch.tensor(unit.positions)
            block = torch.zeros((size, size), dtype=torch.bool)
            for i, parent in enumerate(unit.parents):
                if parent >= 0:
                    block[i] = block[parent]
                block[i, i] = True
            mask[r, sl, sl] = block
            for node, tok, w in unit.loss_items:
                loss_index.append(r * max_len + offset + node)
                loss_targets.append(tok)
                loss_weights.append(w)
            offset += size
        for i in range(offset, max_len):
            mask[r, i, i] = True
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": mask[:, None],
        "loss_index": torch.tensor(loss_index, dtype=torch.long),
        "loss_targets": torch.tensor(loss_targets, dtype=torch.long),
        "loss_weights": torch.tensor(loss_weights, dtype=torch.float32),
    }


def collate(seqs: Sequence[TokenizedPair], pad_id: int):  # -> dict[str, torch.Tensor]
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` off target).

    Returns:
        ``{"input_ids": [n, max_len], "attention_mask": [n, max_len], "labels": [n, max_len]}``
    """
    import torch

    max_len = max(len(s) for s in seqs)
    n = len(seqs)
    input_ids = torch.full((n, max_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, max_len), dtype=torch.long)
    labels = torch.full((n, max_len), IGNORE_INDEX, dtype=torch.long)
    for row, seq in enumerate(seqs):
        length = len(seq)
        input_ids[row, :length] = torch.tensor(seq.input_ids)
        attention_mask[row, :length] = 1
        labels[row, seq.num_prompt_tokens : length] = torch.tensor(
            seq.input_ids[seq.num_prompt_tokens :]
        )
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def num_steps(epochs: float, steps_per_epoch: int, max_steps: int | None) -> int:
    """Total optimizer steps of a run."""
    total = max(1, math.ceil(epochs * steps_per_epoch))
    return min(total, max_steps) if max_steps else total
