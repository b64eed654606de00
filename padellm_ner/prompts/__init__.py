"""Output formats: PaDeLLM and the baselines, each an ``OutputFormat``, looked up by name."""

from __future__ import annotations

from collections.abc import Mapping

from padellm_ner.errors import InvalidInputError
from padellm_ner.prompts.base import Completion, OutputFormat, TrainingPair
from padellm_ner.prompts.baselines import AutoRegAugFormat, AutoRegStructFormat, OneStepFormat
from padellm_ner.prompts.padellm import PaDeLLMFormat

__all__ = [
    "Completion",
    "OutputFormat",
    "TrainingPair",
    "PaDeLLMFormat",
    "AutoRegAugFormat",
    "AutoRegStructFormat",
    "OneStepFormat",
    "FORMATS",
    "get_format",
]

FORMATS: dict[str, type[OutputFormat]] = {
    "padellm": PaDeLLMFormat,
    "ar_aug": AutoRegAugFormat,
    "ar_struct": AutoRegStructFormat,
    "onestep": OneStepFormat,
}


def get_format(
    name: str, lang: str = "en", label_words: Mapping[str, str] | None = None
) -> OutputFormat:
    """The format called ``name`` for a language.

    Args:
        name: one of ``FORMATS`` (``padellm``, ``ar_aug``, ``ar_struct``, ``onestep``).
        lang: ``"en"`` or ``"zh"``; picks the prompt.
        label_words: tag -> word written in prompts (default: the tag itself).
    """
    try:
        cls = FORMATS[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown output format {name!r}; use one of {', '.join(FORMATS)}"
        ) from None
    if lang not in ("en", "zh"):
        raise InvalidInputError(f"unsupported language {lang!r}; use 'en' or 'zh'")
    return cls(lang, label_words=label_words)  # type: ignore[call-arg]
