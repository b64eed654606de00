"""What a trained model folder says about itself (``padellm.json``): method, tags, words.

Kept free of torch so the Triton orchestrator (which may front a TensorRT-LLM engine) can
read it without the inference stack.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from padellm_ner.errors import InvalidInputError
from padellm_ner.types import Entity

__all__ = ["META_FILE", "FALLBACK_LABELS", "ModelInfo", "read_model_info", "retag", "words_for"]

#: the record ``train`` writes into a model folder
META_FILE = "padellm.json"

#: Labels asked for when neither the caller nor the model says (CoNLL-2003's).
FALLBACK_LABELS = ("LOC", "PER", "ORG", "MISC")


@dataclass
class ModelInfo:
    """What a trained model folder records about itself (``padellm.json``)."""

    format: str = "padellm"
    tags: list[str] = field(default_factory=lambda: list(FALLBACK_LABELS))
    label_words: dict[str, str] = field(default_factory=dict)
    lang: str = "en"
    trained: bool = False
    # NOTE: a decoding default that belongs to these weights, as generation_config.json
    # does in HF: the count_hedge threshold chosen on dev for this model (None: off).
    count_hedge: float | None = None

    def words_for(self, tags: Sequence[str]) -> dict[str, str]:
        return words_for(self.label_words, tags)


def words_for(label_words: Mapping[str, str], tags: Sequence[str]) -> dict[str, str]:
    """``{tag: prompt word}`` for the tags asked for (an unknown tag is its own word)."""
    return {tag: label_words.get(tag, tag) for tag in tags}


def retag(entities: Sequence[Entity], tag_of: dict[str, str]) -> list[Entity]:
    """Entities found under prompt words, named by their tags again (``tag_of``: word -> tag)."""
    return [Entity(tag_of.get(e.label, e.label), e.text, e.start, e.end, e.score) for e in entities]


def read_model_info(path: Path | None) -> ModelInfo:
    """``padellm.json`` of a model folder, or defaults for an untrained base."""
    meta = path / META_FILE if path else None
    if meta is None or not meta.exists():
        return ModelInfo()
    try:
        data = json.loads(meta.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        tags = [str(t) for t in data.get("tags") or data.get("labels") or FALLBACK_LABELS]
        words = [str(w) for w in data.get("labels") or tags]
        return ModelInfo(
            format=data.get("format", "padellm"),
            tags=tags,
            label_words=dict(zip(tags, words)),
            lang=data.get("lang", "en"),
            trained=True,
            count_hedge=None if data.get("count_hedge") is None else float(data["count_hedge"]),
        )
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"{meta} is not a padellm.json record ({exc})") from exc
