"""The PaDeLLM-NER text formats, exactly as in the paper (see docs/METHOD.md).

One training sequence per (label, mention index):
``text:\\n{text}\\nentity type:\\n{label}\\n\\n<num>`` -> ``{m}\\n<mention {k}>{mention}<eos>``,
or ``0<eos>`` when the label has no mention. ``<num>`` and ``<mention k>`` are plain text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "PromptTemplate",
    "ENGLISH",
    "CHINESE",
    "template_for",
    "parse_count",
    "CountParse",
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
        count = parse_count(target).count
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
