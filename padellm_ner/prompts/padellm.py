"""The PaDeLLM-NER text formats, exactly as in the paper (see docs/METHOD.md).

One training sequence per (label, mention index):
``text:\\n{text}\\nentity type:\\n{label}\\n\\n<num>`` -> ``{m}\\n<mention {k}>{mention}<eos>``,
or ``0<eos>`` when the label has no mention. ``<num>`` and ``<mention k>`` are plain text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from padellm_ner.prompts.base import Completion, OutputFormat, TrainingPair
from padellm_ner.types import Example

__all__ = [
    "PromptTemplate",
    "ENGLISH",
    "CHINESE",
    "template_for",
    "parse_count",
    "CountParse",
    "PaDeLLMFormat",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptTemplate:
    """The prompt and target pieces of one language."""

    lang: str
    prompt: str  # format string with {text} and {label}
    mention_marker: str  # format string with {k}

    def count_prompt(self, text: str, label: str) -> str:
        """The prompt that ends where the model writes the mention count."""
        return self.prompt.format(text=text, label=label)

    def mention_prefix(self, count: int, k: int) -> str:
        """Text APPENDED (not generated) before decoding mention ``k`` of ``count``."""
        return f"{count}\n{self.mention_marker.format(k=k)}"

    def targets(self, mentions: Sequence[str]) -> list[tuple[str, str]]:
        """Training targets for one label as ``(forced_prefix, mention)`` pairs.

        The target text is ``prefix + mention`` followed by the end token. A label with
        no mention has the single target ``("0", "")``.
        """
        if not mentions:
            return [("0", "")]
        m = len(mentions)
        return [(self.mention_prefix(m, k), mention) for k, mention in enumerate(mentions, 1)]

    def parse_target(self, target: str) -> tuple[int, int, str] | None:
        """Inverse of ``targets``: ``"2\\n<mention 1>EU"`` -> ``(2, 1, "EU")``.

        Returns ``(0, 0, "")`` for a zero-count target and ``None`` when unparsable.
        """
        count = parse_count(target, max_count=10**9).count
        if count == 0:
            return (0, 0, "")
        marker = re.escape(self.mention_marker).replace(r"\{k\}", r"(\d+)")
        match = re.match(r"\s*\d+\n" + marker, target)
        if match is None:
            return None
        return (count, int(match.group(1)), target[match.end() :])


ENGLISH = PromptTemplate(
    lang="en",
    prompt="text:\n{text}\nentity type:\n{label}\n\n<num>",
    mention_marker="<mention {k}>",
)
CHINESE = PromptTemplate(
    lang="zh",
    prompt="文本:\n{text}\n指定NER标签:\n{label}\n\n<数量>",
    mention_marker="<第{k}文段>",
)


def template_for(lang: str) -> PromptTemplate:
    """The template of a language code (``en`` or ``zh``)."""
    if lang == "zh":
        return CHINESE
    if lang == "en":
        return ENGLISH
    raise ValueError(f"unsupported prompt language {lang!r}; use 'en' or 'zh'")


@dataclass(frozen=True)
class CountParse:
    """A parsed count: the bounded integer and whether the raw text was usable."""

    count: int
    ok: bool
    raw: str


_COUNT_RE = re.compile(r"\s*(\d+)")


def parse_count(generated: str, max_count: int = 32) -> CountParse:
    """Parse the model's count output (text before the first newline).

    Garbage becomes 0 with a warning (a label with no entity is the safe default);
    numbers above ``max_count`` are clamped, so a runaway model cannot fan out without bound.
    """
    head = generated.split("\n", 1)[0]
    match = _COUNT_RE.match(head)
    if match is None or head[match.end() :].strip():
        logger.warning("unparsable count output %r; treating as 0", generated[:40])
        return CountParse(0, False, generated)
    value = int(match.group(1))
    if value > max_count:
        logger.warning("count %d above max_count=%d; clamped", value, max_count)
        return CountParse(max_count, False, generated)
    return CountParse(value, True, generated)


class PaDeLLMFormat(OutputFormat):
    """PaDeLLM as an ``OutputFormat``: one pair per (label, mention index), ``0`` if none.

    Labels are the dataset's tags; ``label_words`` maps a tag to the word written in the
    prompt (e.g. MSRA ``PER`` -> ``名称``); unmapped tags are written as they are.
    """

    name = "padellm"

    def __init__(self, lang: str = "en", label_words: Mapping[str, str] | None = None) -> None:
        super().__init__(lang)
        self.template = template_for(lang)
        self.label_words = dict(label_words or {})

    def prompt(self, text: str, label: str) -> str:
        """The count prompt of one tag (the prompt of every training pair of that tag)."""
        return self.template.count_prompt(text, self.label_words.get(label, label))

    def prompts(self, text: str, labels: Sequence[str]) -> list[tuple[str | None, str]]:
        return [(label, self.prompt(text, label)) for label in labels]

    def render(self, example: Example, labels: Sequence[str]) -> list[TrainingPair]:
        pairs = []
        for label in labels:
            prompt = self.prompt(example.text, label)
            mentions = example.mentions_of(label)
            if not mentions:
                pairs.append(TrainingPair(prompt, ("0",), label))
                continue
            for prefix, mention in self.template.targets(mentions):
                pairs.append(TrainingPair(prompt, (prefix, mention), label))
        return pairs

    def parse(self, text: str, completions: Sequence[Completion]) -> list[tuple[str, str]]:
        """Mentions of full targets (``"2\\n<mention 1>EU"``); counts and garbage give none."""
        found: dict[str, list[tuple[int, str]]] = {}
        for completion in completions:
            if completion.label is None:
                continue
            parsed = self.template.parse_target(completion.text)
            if parsed is None or parsed[0] == 0:
                continue
            mention = parsed[2].strip()
            if mention:
                found.setdefault(completion.label, []).append((parsed[1], mention))
        return [
            (label, mention)
            for label, items in found.items()
            for _k, mention in sorted(items, key=lambda item: item[0])
        ]
