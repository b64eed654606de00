"""One language rule (``padellm_ner.lang``) for a file's head, an extracted sentence and a
served request to an untrained base."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from padellm_ner.lang import detect_lang, is_cjk

ZH_QUOTED = "“你好”，他说：“再见！”"
ZH_WITH_BRAND = "我买了iPhone 15 Pro Max手机壳"


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        (ZH_QUOTED, "zh"),  # full-width punctuation is half the characters
        (ZH_WITH_BRAND, "zh"),  # Latin letters and digits outnumber the Chinese ones
        ("王小明在北京大学读书。", "zh"),
        ("𠮷野家在东京", "zh"),  # an Extension B character
        ("Yao Ming (姚明) played for the Houston Rockets in 2002 .", "en"),
        ("EU rejects German call to boycott British lamb .", "en"),
        ("1996-08-22 , 3:1 !", "en"),  # no letters at all
        ("。！？“”", "en"),
    ],
)
def test_detect_lang_counts_letters_not_punctuation_or_digits(text, lang):
    assert detect_lang(text) == lang


def test_is_cjk_covers_the_extension_blocks_but_not_kana_or_fullwidth_latin():
    assert all(map(is_cjk, "中\u3400\U00020bb7\uf900"))
    assert not any(map(is_cjk, "あアＡ，1a"))


@pytest.mark.parametrize("text", [ZH_QUOTED, ZH_WITH_BRAND, "EU rejects German call ."])
def test_a_file_and_its_sentence_get_one_language(tmp_path, text):
    """The readers' file rule is the sentence rule applied to the file's tokens."""
    from padellm_ner.data.readers import detect_lang as file_lang

    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"text": text, "entities": []}) + "\n", encoding="utf-8")
    assert file_lang(path) == detect_lang(text)


class _PromptRecorder:
    """Scripted stand-in for the LLM (fake of the LLM protocol): it records the prompts it
    is given, decoded by the real tokenizer, and answers "no mention" to each."""

    def __init__(self, codec):
        self.codec, self.prompts = codec, []

    def _answer(self, request):
        from padellm_ner.llm import GenerationResult

        self.prompts.append(self.codec.decode(list(request.prompt_ids)))
        ids = [*self.codec.encode("0"), self.codec.end_id]
        return GenerationResult(ids, [-0.01] * len(ids), "stop")

    def generate(self, requests):
        return [self._answer(r) for r in requests]

    async def agenerate(self, request):
        await asyncio.sleep(0)
        return self._answer(request)


@pytest.fixture(scope="module")
def codec():
    from padellm_ner.codec import PromptCodec
    from padellm_ner.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    return PromptCodec(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"))


@pytest.mark.parametrize(("text", "head"), [(ZH_QUOTED, "文本:\n"), (ZH_WITH_BRAND, "文本:\n"),
                                            ("EU rejects German call .", "text:\n")])  # fmt: skip
def test_an_untrained_base_prompts_in_the_text_language_served_and_in_process(codec, text, head):
    """The served orchestrator used to prompt an untrained base in English whatever the text."""
    from padellm_ensemble.orchestrator import Orchestrator, OrchestratorConfig
    from padellm_ner.extraction import Extractor, ModelInfo

    served = _PromptRecorder(codec)
    orch = Orchestrator(OrchestratorConfig(labels=("PER",)), codec, served)
    sent = []

    class _Sink:
        def send(self, outputs, *, error=None, final=False):
            sent.append((outputs, error, final))

        def is_cancelled(self):
            return False

    asyncio.run(orch.handle({"TEXT": np.array([text.encode()], dtype=object)}.get, _Sink()))
    assert [(e, f) for _, e, f in sent] == [(None, True)]
    local = _PromptRecorder(codec)
    Extractor(local, codec, ModelInfo(tags=["PER"])).extract(text, ["PER"])
    assert served.prompts and served.prompts == local.prompts
    assert all(p.startswith(head) for p in served.prompts)


def _model_folder(tmp_path, record=None):
    from padellm_ner.models import resolve_model_dir

    base = resolve_model_dir("smollm2-135m")
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, folder / name)
    if record is not None:
        (folder / "padellm.json").write_text(json.dumps(record))
    return str(folder)


@pytest.mark.parametrize(
    ("record", "param", "lang"),
    [
        (None, "", ""),  # an untrained base: detect each request's
        (None, "zh", "zh"),  # the config says
        ({"format": "padellm", "tags": ["PER.NAM"], "labels": ["人名"], "lang": "zh"}, "", "zh"),
        ({"format": "padellm", "tags": ["PER"], "lang": "en"}, "", "en"),
    ],
)
def test_the_served_language_is_the_config_s_else_the_model_s_else_detected(tmp_path, record, param, lang):
    from padellm_ensemble.orchestrator import build_orchestrator

    orch = build_orchestrator({"model": _model_folder(tmp_path, record), "lang": param}, None)
    assert orch.config.lang == lang


def test_a_served_language_we_have_no_prompts_for_is_refused(tmp_path):
    from padellm_ensemble.orchestrator import build_orchestrator

    with pytest.raises(ValueError, match="lang must be one of"):
        build_orchestrator({"model": _model_folder(tmp_path), "lang": "fr"}, None)
