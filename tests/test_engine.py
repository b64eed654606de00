"""The torch engine on the real SmolLM2 base: batching must not change greedy results."""

from __future__ import annotations

import os

import torch

from padellm_ner.engine import EngineCore, TorchLLM
from padellm_ner.llm import GenerationRequest
from padellm_ner.prompts.padellm import ENGLISH
from tests.model_cache import smollm2_codec, smollm2_core

SENTENCES = [
    "EU rejects German call to boycott British lamb .",
    "Japan, co-hosts of the World Cup in 2002 with Korea and ranked 20th in the world by FIFA, "
    "are favourites to regain their title here.",
    "Peter Blackburn",
    "BRUSSELS 1996-08-22",
]
LABELS = ["LOC", "PER", "ORG", "MISC"]


def _requests(max_new_tokens: int = 10) -> list[GenerationRequest]:
    codec = smollm2_codec()
    reqs = []
    for i, text in enumerate(SENTENCES):
        for label in LABELS:
            prompt = codec.encode(ENGLISH.count_prompt(text, label))
            # NOTE: vary the prompt tails and limits so rows finish at different steps
            prompt += codec.encode(ENGLISH.mention_prefix(1 + i % 2, 1)) if i % 2 else []
            reqs.append(
                GenerationRequest(tuple(prompt), max_new_tokens + i, (codec.end_id, 198))
            )
    return reqs


def _fresh_core(max_batch_size: int = 64, min_shared_prefix: int = 16) -> EngineCore:
    shared = smollm2_core()
    core = EngineCore(
        shared.runner.model,
        max_batch_size,
        pad_id=smollm2_codec().end_id,
        min_shared_prefix=min_shared_prefix,
    )
    core.loaded = shared.loaded
    return core


def test_batched_equals_one_at_a_time_and_hf_generate() -> None:
    reqs = _requests()
    batched = TorchLLM(_fresh_core()).generate(reqs)
    solo_llm = TorchLLM(_fresh_core())
    model = smollm2_core().runner.model
    for req, got in zip(reqs, batched):
        solo = solo_llm.generate([req])[0]
        assert got.token_ids == solo.token_ids
        assert got.finish_reason == solo.finish_reason
        assert torch.allclose(torch.tensor(got.log_probs), torch.tensor(solo.log_probs), atol=1e-4)
        ref = model.generate(
            torch.tensor([req.prompt_ids]),
            max_new_tokens=req.max_new_tokens,
            do_sample=False,
            eos_token_id=list(req.stop_ids),
            pad_token_id=smollm2_codec().end_id,
        )[0, len(req.prompt_ids) :].tolist()
        assert got.token_ids == ref


def test_finished_rows_stop_consuming_steps() -> None:
    core = _fresh_core()
    results = TorchLLM(core).generate(_requests())
    lengths = [len(r.token_ids) for r in results]
    assert len(set(lengths)) > 1, "the test needs rows that finish at different steps"
    stats = core.stats
    # every row-step of every forward produced a token somebody kept: no wasted rows
    assert stats.num_tokens_decoded + stats.num_tokens_prefilled == sum(lengths)
    assert stats.num_decode_steps == max(lengths) - 1
    assert stats.num_prefill_steps == 1


def test_requests_join_a_running_batch() -> None:
    # NOTE: no stop ids, so the first rows are still decoding when the others arrive
    reqs = [GenerationRequest(r.prompt_ids, 8, ()) for r in _requests()]
    expected = TorchLLM(_fresh_core()).generate(reqs[:4] + reqs[-4:])
    core = _fresh_core()
    for i, req in enumerate(reqs[:4]):
        core.add_request(f"a{i}", req)
    outputs = core.step() + core.step() + core.step()  # the first four are decoding
    for i, req in enumerate(reqs[-4:]):
        core.add_request(f"b{i}", req)  # longer prompts join mid-flight
    while core.has_unfinished():
        outputs += core.step()
    got: dict[str, list[int]] = {}
    for out in outputs:
        got.setdefault(out.req_id, []).append(out.token_id)
    ids = [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(4)]
    assert [got[i] for i in ids] == [r.token_ids for r in expected]
    assert core.stats.num_prefill_steps == 2
    assert core.stats.max_batch_size == 8


def test_max_batch_size_queues_the_rest_and_abort_frees_a_row() -> None:
    reqs = _requests(max_new_tokens=6)[:5]
    core = _fresh_core(max_batch_size=2)
    for i, req in enumerate(reqs):
        core.add_request(str(i), req)
    first = core.step()
    assert {o.req_id for o in first} == {"0", "1"}
    assert core.abort_request("0").finish_reason == "aborted"
    assert core.abort_request("0") is None
    seen: dict[str, int] = {}
    while core.has_unfinished():
        for out in core.step():
            seen[out.req_id] = seen.get(out.req_id, 0) + 1
            assert core.runner.num_rows <= 2
    assert "0" not in seen and set(seen) == {"1", "2", "3", "4"}


def test_shared_prompt_prefixes_are_prefilled_once_with_the_same_result() -> None:
    reqs = _requests()
    shared_core, plain_core = _fresh_core(), _fresh_core(min_shared_prefix=0)
    shared = TorchLLM(shared_core).generate(reqs)
    plain = TorchLLM(plain_core).generate(reqs)
    assert [r.token_ids for r in shared] == [r.token_ids for r in plain]
    for a, b in zip(shared, plain):
        assert torch.allclose(torch.tensor(a.log_probs), torch.tensor(b.log_probs), atol=1e-4)
    # one forward for all of it: each sentence's shared prefix is the trunk of a tree
    # whose branches are its rows' own tails
    from padellm_ner.engine.runner import prefix_groups

    groups = prefix_groups([r.prompt_ids for r in reqs], 16)
    assert sum(shared > 0 for _, shared in groups) >= 2
    assert shared_core.stats.num_prefill_forwards == 1
    assert plain_core.stats.num_prefill_forwards == 1
    assert plain_core.stats.num_prompt_tokens_shared == 0
    assert plain_core.stats.num_prompt_tokens_computed == plain_core.stats.num_prompt_tokens
    # the short prompts were packed side by side instead of each padded to the longest
    longest = max(len(r.prompt_ids) for r in reqs)
    assert plain_core.stats.num_prefill_slots < len(reqs) * longest
    assert plain_core.stats.num_prefill_slots >= plain_core.stats.num_prompt_tokens_computed
    # each shared prefix is computed once, not once per row
    saved = sum(shared * (len(rows) - 1) for rows, shared in groups)
    assert shared_core.stats.num_prompt_tokens_computed == plain_core.stats.num_prompt_tokens - saved
    # every prompt of a sentence shares the instruction and the sentence
    assert shared_core.stats.num_prompt_tokens_shared > 0.6 * shared_core.stats.num_prompt_tokens
    # again: the prefixes come from the prefix cache now (no prefix forward), same tokens
    forwards = shared_core.stats.num_prefill_forwards
    again = TorchLLM(shared_core).generate(reqs)
    assert [r.token_ids for r in again] == [r.token_ids for r in plain]
    assert shared_core.stats.num_prefill_forwards == forwards + 1
    assert shared_core.stats.num_prefix_cache_hits >= sum(shared > 0 for _, shared in groups)


def test_tree_prefill_mask_keeps_tails_apart_and_is_never_empty() -> None:
    """Trunk causal, a tail sees the head, the trunk and itself but never a sibling, nothing
    sees padding; a pad query with nothing to see is given every key instead (a fused
    kernel may answer NaN there, which the cache would carry into the real tokens)."""
    from padellm_ner.engine.runner import tree_prefill_mask

    # row 0: a 2-token cached head, trunk of 2, tails of 1 and 2; row 1: no head, one
    # prompt of 3 tokens (a tail without a trunk), left-padded by 2
    segment = torch.tensor([[0, 0, 1, 2, 2], [-1, -1, 1, 1, 1]])
    block = torch.tensor([[0, 0, 0, 0, 0], [-1, -1, 1, 1, 1]])
    new_head = torch.tensor([[0, 0, 0, 0, 0], [-1, -1, -1, -1, -1]])
    past_head = torch.tensor([[0, 0], [-1, -1]])
    mask = tree_prefill_mask(segment, block, new_head, past_head)
    assert mask.shape == (2, 1, 5, 7) and mask.dtype == torch.bool
    t, f = True, False
    assert mask[0, 0].tolist() == [
        [t, t, t, f, f, f, f],  # trunk 1
        [t, t, t, t, f, f, f],  # trunk 2
        [t, t, t, t, t, f, f],  # tail 1
        [t, t, t, t, f, t, f],  # tail 2, first token: not tail 1
        [t, t, t, t, f, t, t],
    ]
    assert mask[1, 0, 2].tolist() == [f, f, f, f, t, f, f]  # no head, no pads
    assert mask[1, 0, 4].tolist() == [f, f, f, f, t, t, t]
    assert mask[1, 0, 0].all() and mask[1, 0, 1].all()  # pads: every key, never none
    # built where its inputs live (a CPU helper tensor beside CUDA ones would raise)
    on_meta = tree_prefill_mask(*(x.to("meta") for x in (segment, block, new_head, past_head)))
    assert on_meta.device.type == "meta"


def test_trees_packed_in_one_row_never_see_each_other() -> None:
    """Two trees side by side in a row, each on its own cached head: a column sees its
    own tree's head, trunk and tail, nothing of the other tree."""
    from padellm_ner.engine.runner import tree_prefill_mask

    # past: [pad][head of tree 0: 1][head of tree 1: 2]; new: [tree 0: trunk 1, tail 1]
    # [tree 1: tail 2] (a tail without a trunk)
    segment = torch.tensor([[0, 1, 1, 1]])
    block = torch.tensor([[0, 0, 1, 1]])
    past_head = torch.tensor([[-1, 0, 1, 1]])
    t, f = True, False
    assert tree_prefill_mask(segment, block, block, past_head)[0, 0].tolist() == [
        [f, t, f, f, t, f, f, f],  # tree 0 trunk: its head, itself
        [f, t, f, f, t, t, f, f],  # tree 0 tail
        [f, f, t, t, f, f, t, f],  # tree 1: its head, never tree 0
        [f, f, t, t, f, f, t, t],
    ]


def test_trees_on_one_head_share_it_and_nothing_else() -> None:
    """Two trees of a row on the same cached head (one sentence's mention prompts) see
    the head's columns, stored once, and never each other."""
    from padellm_ner.engine.runner import tree_prefill_mask

    # past: [pad][head 0: 2]; new: [tree 0: tail 2][tree 1: tail 1], both on head 0
    segment = torch.tensor([[1, 1, 1]])
    block = torch.tensor([[0, 0, 1]])
    new_head = torch.tensor([[0, 0, 0]])
    past_head = torch.tensor([[-1, 0, 0]])
    t, f = True, False
    assert tree_prefill_mask(segment, block, new_head, past_head)[0, 0].tolist() == [
        [f, t, t, t, f, f],
        [f, t, t, t, t, f],
        [f, t, t, f, f, t],  # tree 1: the shared head and itself, not tree 0's tail
    ]


def test_pack_trees_fills_rows_without_widening_them() -> None:
    from padellm_ner.engine.runner import _Tree, pack_trees

    def tree(head: int, new: int) -> _Tree:
        return _Tree([0], tuple(range(head)), (), [tuple(range(new))], None)

    trees = [tree(0, 10), tree(0, 4), tree(0, 6), tree(0, 3), tree(5, 2), tree(5, 8)]
    places, width_p, width_n = pack_trees(trees)
    assert (width_p, width_n) == (5, 10)
    rows: dict[int, list[int]] = {}
    for t, place in enumerate(places):
        rows.setdefault(place.row, []).append(t)
    assert len(rows) < len(trees)
    # rows in the order of their first tree: unpacked trees keep their arrival order
    firsts = [min(rows[r]) for r in sorted(rows)]
    assert firsts == sorted(firsts)
    _assert_packed(trees, places, width_p, width_n)
    # the two trees on the same head share one row and its columns
    assert places[4].row == places[5].row and places[4].head_at == places[5].head_at


def test_pack_trees_puts_narrow_trees_on_cached_heads_beside_a_wide_one() -> None:
    """Served: one sentence's count prompts (a wide tree, no head) arrive with other
    sentences' mention prompts (narrow trees on cached heads). The narrow ones share rows
    up to the wide tree's width, their heads side by side in the past columns, instead of
    a row each padded to the wide tree's width."""
    from padellm_ner.engine.runner import _Tree, pack_trees

    def tree(head: tuple[int, ...], new: int) -> _Tree:
        return _Tree([0], head, (), [tuple(range(new))], None)

    a, b, c = tuple(range(30)), tuple(range(100, 125)), tuple(range(200, 240))
    trees = [tree((), 80), tree(a, 15), tree(a, 14), tree(b, 15), tree(c, 14), tree(c, 16)]
    places, width_p, width_n = pack_trees(trees)
    assert width_n == 80
    assert len({p.row for p in places}) == 2  # the wide tree's row, and one for the rest
    assert width_p == len(a) + len(b) + len(c)  # each head once
    _assert_packed(trees, places, width_p, width_n)


def _assert_packed(trees, places, width_p: int, width_n: int) -> None:
    rows: dict[int, list[int]] = {}
    for t, place in enumerate(places):
        rows.setdefault(place.row, []).append(t)
    for members in rows.values():
        assert sum(trees[t].num_new for t in members) <= width_n
        spans = sorted((places[t].new_at, places[t].new_at + trees[t].num_new) for t in members)
        assert spans[-1][1] == width_n  # right-aligned
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap
        heads = sorted({(places[t].head_at, trees[t].head) for t in members if trees[t].head})
        assert len({h for _at, h in heads}) == len(heads)  # a head once per row
        spans = [(at, at + len(h)) for at, h in heads]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # side by side
        assert not spans or spans[-1][1] == width_p  # right-aligned


def test_prefix_groups() -> None:
    from padellm_ner.engine.runner import prefix_groups

    a, b = (1, 2, 3, 4, 5), (1, 2, 3, 4, 6, 7)
    assert prefix_groups([a, (9, 9), b], 3) == [([0, 2], 4), ([1], 0)]
    assert prefix_groups([a, a], 3) == [([0, 1], 4)]  # each row keeps one token of its own
    assert prefix_groups([a, b], 5) == [([0, 1], 0)]
    assert prefix_groups([a, b], 0) == [([0, 1], 0)]


def test_prefix_reuse_keeps_rows_apart() -> None:
    """PaDeLLM's two phases on one engine: counts, then mentions whose prompts extend the
    cached count prefixes (partial prefix-cache hits, several groups in one step), then a
    second arrival order. Every row decodes exactly as its prompt alone: no row may read
    another row's KV (an earlier version spliced mentions of different labels)."""
    codec = smollm2_codec()
    counts, mentions = [], []
    for text in SENTENCES[:3]:
        for label in LABELS[:3]:
            count = codec.encode(ENGLISH.count_prompt(text, label))
            counts.append(count)
            mentions += [count + codec.encode(ENGLISH.mention_prefix(2, k)) for k in (1, 2)]
    # NOTE: one sentence's prompts in reverse: one group whose sorted order is not arrival order
    phases = [counts, mentions, list(reversed(mentions)), list(reversed(mentions[:6]))]
    core = _fresh_core(max_batch_size=64)
    solo = TorchLLM(_fresh_core(max_batch_size=1, min_shared_prefix=0))
    for n, prompts in enumerate(phases):
        reqs = [GenerationRequest(tuple(p), 4 + i % 3, ()) for i, p in enumerate(prompts)]
        expected = [solo.generate([r])[0].token_ids for r in reqs]
        got = TorchLLM(core).generate(reqs)
        assert [r.token_ids for r in got] == expected, f"phase {n}"
    assert core.stats.num_prefix_cache_hits > 0 and core.stats.num_prompt_tokens_shared > 0


def test_served_mixed_arrivals_pack_onto_cached_heads_and_decode_as_alone() -> None:
    """Served, one step admits a sentence's count prompts (a wide tree) beside earlier
    sentences' mention prompts (narrow trees on their cached heads, two on one). They
    share rows (heads side by side in the past columns, a head once per row) instead of a
    row each padded to the wide tree, and every row decodes as its prompt alone."""
    codec = smollm2_codec()

    def counts_of(text: str) -> list[tuple[int, ...]]:
        return [tuple(codec.encode(ENGLISH.count_prompt(text, label))) for label in LABELS]

    earlier = [counts_of(text) for text in (SENTENCES[0], SENTENCES[2], SENTENCES[3])]
    mention = tuple(codec.encode(ENGLISH.mention_prefix(1, 1)))
    # two labels of one sentence (one head), and one label each of two more sentences
    mentions = [earlier[0][0] + mention, earlier[0][1] + mention]
    mentions += [earlier[1][2] + mention, earlier[2][0] + mention]
    core = _fresh_core(max_batch_size=64)
    llm = TorchLLM(core)
    llm.generate([GenerationRequest(c, 3, ()) for counts in earlier for c in counts])
    mixed = counts_of(SENTENCES[1]) + mentions
    reqs = [GenerationRequest(p, 3 + i % 3, ()) for i, p in enumerate(mixed)]
    before = core.stats.snapshot()
    got = llm.generate(reqs)
    solo = TorchLLM(_fresh_core(max_batch_size=1, min_shared_prefix=0))
    assert [r.token_ids for r in got] == [solo.generate([r])[0].token_ids for r in reqs]
    computed = core.stats.num_prompt_tokens_computed - before.num_prompt_tokens_computed
    slots = core.stats.num_prefill_slots - before.num_prefill_slots
    assert core.stats.num_prefix_cache_hits > before.num_prefix_cache_hits
    # the four narrow trees fit the count tree's width: two rows (a row per head: four)
    assert slots < 1.5 * computed, (slots, computed)


def test_a_prompt_alone_extends_a_cached_prefix() -> None:
    """A sentence's only mention request, admitted alone after its count requests,
    prefills just its own tail on the cached count prefix, and decodes as if alone."""
    codec = smollm2_codec()
    text = SENTENCES[0]
    counts = [tuple(codec.encode(ENGLISH.count_prompt(text, label))) for label in LABELS[:3]]
    mention = counts[1] + tuple(codec.encode(ENGLISH.mention_prefix(1, 1)))
    core = _fresh_core()
    llm = TorchLLM(core)
    llm.generate([GenerationRequest(c, 3, ()) for c in counts])
    before = core.stats.snapshot()
    got = llm.generate([GenerationRequest(mention, 5, ())])[0]
    solo = TorchLLM(_fresh_core(min_shared_prefix=0)).generate([GenerationRequest(mention, 5, ())])[0]
    assert got.token_ids == solo.token_ids
    assert torch.allclose(torch.tensor(got.log_probs), torch.tensor(solo.log_probs), atol=1e-4)
    head = len(os.path.commonprefix([list(c) for c in counts]))
    assert core.stats.num_prefill_forwards - before.num_prefill_forwards == 1  # tail only
    assert core.stats.num_prompt_tokens_cached - before.num_prompt_tokens_cached == head
    assert core.stats.num_prompt_tokens_shared - before.num_prompt_tokens_shared == head
    computed = core.stats.num_prompt_tokens_computed - before.num_prompt_tokens_computed
    assert computed == len(mention) - head


def test_multi_token_stop_words_end_a_row_where_they_complete() -> None:
    """``stop_words_list`` words of several tokens (the tensorrt_llm contract) stop a row."""
    codec = smollm2_codec()
    prompt = tuple(codec.encode("Count to ten: one, two, three,"))
    llm = TorchLLM(_fresh_core())
    free = llm.generate([GenerationRequest(prompt, 12, (codec.end_id,))])[0].token_ids
    assert len(free) >= 6, free
    word = tuple(free[3:5])  # two tokens the model writes anyway
    first = next(i for i in range(len(free) - 1) if tuple(free[i : i + 2]) == word)
    stopped, other = llm.generate([
        GenerationRequest(prompt, 12, (codec.end_id,), stop_words=(word,)),
        GenerationRequest(prompt, 12, (codec.end_id,), stop_words=((free[0], -5),)),  # never completes
    ])  # fmt: skip
    assert stopped.token_ids == free[: first + 2] and stopped.finish_reason == "stop"
    assert other.token_ids == free  # a batch neighbour's stop word does not touch it
    req = GenerationRequest(prompt, 12, (codec.end_id,), stop_words=(word,))
    assert req.stops_at(list(free[: first + 2])) and not req.stops_at(list(free[: first + 1]))


def _served_two(batch_window_s: float) -> tuple[EngineCore, dict[str, list[int]]]:
    """Two requests into an ``EngineLoop``, the second 50 ms after the first."""
    import threading
    import time

    from padellm_ner.engine import EngineLoop

    core = _fresh_core(min_shared_prefix=0)
    loop = EngineLoop(core, batch_window_s=batch_window_s)
    tokens: dict[str, list[int]] = {"a": [], "b": []}
    done = {key: threading.Event() for key in tokens}

    def callback(out) -> None:
        if out.token_id is not None:
            tokens[out.req_id].append(out.token_id)
        if out.finished:
            done[out.req_id].set()

    reqs = _requests(6)
    try:
        loop.submit("a", reqs[0], callback)
        time.sleep(0.05)
        loop.submit("b", reqs[5], callback)
        assert all(event.wait(120) for event in done.values())
    finally:
        loop.shutdown()
    return core, tokens


def test_batch_window_admits_requests_sent_apart_in_one_prefill() -> None:
    """The served ``llm`` model's window: requests a few ms apart share the first step."""
    at_once, tokens_at_once = _served_two(0.0)
    windowed, tokens_windowed = _served_two(0.5)
    assert at_once.stats.num_prefill_forwards == 2  # b joined the running batch later
    assert windowed.stats.num_prefill_forwards == 1  # both admitted by the first step
    assert tokens_windowed == tokens_at_once  # greedy tokens do not depend on batching
    assert tokens_at_once["a"] and tokens_at_once["b"]


def test_the_engine_refuses_attention_that_misreads_its_tree_masks() -> None:
    """Eager attention adds a boolean mask as 0/1 (every pad and sibling visible), flash
    attention cannot express a tree: both would decode silently wrong."""
    import pytest
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="sdpa"):
        EngineCore(LlamaForCausalLM(config))
    config._attn_implementation = "sdpa"
    EngineCore(LlamaForCausalLM(config))


def test_a_sliding_window_bounds_the_request_length() -> None:
    """Full-attention prefill equals a sliding-window model only inside the window, so a
    longer request is refused (Gemma3-270m: 512 tokens); Mistral slides, Qwen2 does not."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    from padellm_ner.engine.core import _usable_length

    assert _usable_length(Gemma3TextConfig(sliding_window=512)) == 512
    assert _usable_length(MistralConfig(sliding_window=4096)) == 4096
    assert _usable_length(Qwen2Config(max_position_embeddings=32768)) == 32768
    assert _usable_length(LlamaConfig(max_position_embeddings=2048)) == 2048


def _tiny_core() -> EngineCore:
    """A 1-layer random Llama: 64 ids, 32 positions (limits a test can reach)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    return EngineCore(LlamaForCausalLM(config).eval())


def test_a_request_too_long_for_the_model_is_refused_without_leaving_the_rest_queued() -> None:
    import pytest

    from padellm_ner.errors import InvalidInputError

    core = _tiny_core()
    llm = TorchLLM(core)
    short, long = GenerationRequest((1, 2, 3), 4, ()), GenerationRequest(tuple(range(1, 31)), 4, ())
    with pytest.raises(InvalidInputError, match="too long.*30 tokens.*4 more.*32 positions"):
        llm.generate([short, long])
    with pytest.raises(InvalidInputError, match="2147483647 new tokens asked for"):
        llm.generate([GenerationRequest((1, 2, 3), 2**31 - 1, ())])  # not "text too long"
    assert not core.has_unfinished()  # the short one did not stay queued
    again = llm.generate([short])
    assert len(again) == 1 and len(again[0].token_ids) == 4


def test_a_token_outside_the_vocabulary_is_refused_on_entry_and_the_batch_goes_on() -> None:
    """An out-of-range id used to reach the embedding and fail every request in the batch."""
    import pytest

    from padellm_ner.errors import InvalidInputError

    core = _tiny_core()
    core.add_request("good", GenerationRequest((1, 2, 3), 4, ()))
    for bad in (64, -1):
        with pytest.raises(InvalidInputError, match=rf"token id {bad} is outside.*\[0, 64\)"):
            core.add_request(f"bad{bad}", GenerationRequest((1, bad, 3), 4, ()))
    outputs = []
    while core.has_unfinished():
        outputs.extend(core.step())
    assert [o.req_id for o in outputs] == ["good"] * 4 and outputs[-1].finished
