"""The paper's baselines as ``OutputFormat``s (see docs/METHOD.md, "Baselines").

- ``ar_aug`` (AutoReg_Aug): the sentence rewritten with ``[mention | LABEL]`` brackets.
- ``ar_struct`` (AutoReg_Struct): ``((LOC: Japan), (MISC: World Cup))``, ``()`` if empty.
- ``onestep`` (OneStep): one sequence per label, a JSON list of its mentions.

Labels are dataset tags; ``label_words`` maps a tag to the word written in prompts and
outputs, and parsers map words back to tags. Parsers never raise: malformed items are
skipped, so a half-trained model's garbage costs recall, not a crash.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

from padellm_ner.prompts.base import Completion, OutputFormat, TrainingPair
from padellm_ner.types import Entity, Example

__all__ = ["AutoRegAugFormat", "AutoRegStructFormat", "OneStepFormat"]

logger = logging.getLogger(__name__)

_HEAD = {"en": "text:\n{text}\nentity types:\n{labels}\n\n", "zh": "文本:\n{text}\n指定NER标签:\n{labels}\n\n"}
_ONE_HEAD = {"en": "text:\n{text}\nentity type:\n{label}\n\n", "zh": "文本:\n{text}\n指定NER标签:\n{label}\n\n"}


class _WordsFormat(OutputFormat):
    """Shared tag <-> prompt-word handling."""

    # the marker that ends every prompt of the format, per language
    markers: ClassVar[dict[str, str]] = {}

    def __init__(self, lang: str = "en", label_words: Mapping[str, str] | None = None) -> None:
        super().__init__(lang)
        if lang not in ("en", "zh"):
            raise ValueError(f"unsupported prompt language {lang!r}; use 'en' or 'zh'")
        self.label_words = dict(label_words or {})
        self._tags = {word: tag for tag, word in self.label_words.items()}

    def word(self, tag: str) -> str:
        return self.label_words.get(tag, tag)

    def tag(self, word: str) -> str:
        return self._tags.get(word, word)

    def _sentence_prompt(self, text: str, labels: Sequence[str]) -> str:
        joined = ", ".join(self.word(tag) for tag in labels)
        return _HEAD[self.lang].format(text=text, labels=joined) + self.markers[self.lang]


def _in_order(example: Example) -> list[Entity]:
    return sorted(example.entities, key=lambda e: (e.start or 0, e.end or 0))


class AutoRegAugFormat(_WordsFormat):
    """AutoReg_Aug: ``[Japan | LOC], co-hosts of the [World Cup | MISC] in 2002 ...``."""

    name = "ar_aug"
    markers: ClassVar[dict[str, str]] = {"en": "<annotated text>", "zh": "<标注文本>"}
    # NOTE: the label cannot hold brackets or '|', so the LAST " | " before "]" splits.
    _END = re.compile(r" \| ([^\[\]|\n]+?)\]")

    def prompts(self, text: str, labels: Sequence[str]) -> list[tuple[str | None, str]]:
        return [(None, self._sentence_prompt(text, labels))]

    def annotate(self, example: Example, labels: Sequence[str]) -> str:
        """The gold sentence with brackets; overlapping (nested) entities keep the first."""
        wanted = set(labels)
        pieces: list[str] = []
        cursor = 0
        for entity in _in_order(example):
            if entity.label not in wanted or entity.start is None or entity.end is None:
                continue
            if entity.start < cursor:
                logger.debug("ar_aug cannot nest %r; dropped", entity.text)
                continue
            pieces.append(example.text[cursor : entity.start])
            pieces.append(f"[{entity.text} | {self.word(entity.label)}]")
            cursor = entity.end
        pieces.append(example.text[cursor:])
        return "".join(pieces)

    def render(self, example: Example, labels: Sequence[str]) -> list[TrainingPair]:
        target = self.annotate(example, labels)
        return [TrainingPair(self._sentence_prompt(example.text, labels), (target,), None)]

    def parse(self, text: str, completions: Sequence[Completion]) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        for completion in completions:
            pairs.extend(self._parse_one(text, completion.text))
        return pairs

    def _parse_one(self, text: str, output: str) -> list[tuple[str, str]]:
        pairs = []
        floor = 0  # where the previous annotation ended
        for match in self._END.finditer(output):
            start = self._opening(text, output, floor, match.start())
            if start is None:
                continue
            mention = output[start + 1 : match.start()].strip()
            floor = match.end()
            label = match.group(1).strip()
            if mention and label:
                pairs.append((self.tag(label), mention))
        return pairs

    @staticmethod
    def _opening(text: str, output: str, floor: int, end: int) -> int | None:
        """The ``[`` that opens the annotation ending at ``end``.

        Mentions can hold brackets ("PDGF[B]", "[3H]calcitriol"), so prefer a mention that
        occurs in the text, then a balanced one, then the rightmost.
        """
        best: tuple[bool, bool, int] | None = None
        for i in range(floor, end):
            if output[i] != "[":
                continue
            mention = output[i + 1 : end].strip()
            rank = (not text or mention in text, mention.count("[") == mention.count("]"), i)
            best = rank if best is None or rank > best else best
        return None if best is None else best[2]


class AutoRegStructFormat(_WordsFormat):
    """AutoReg_Struct: ``((LOC: Japan), (LOC: Korea), (MISC: World Cup))``, ``()`` if none."""

    name = "ar_struct"
    markers: ClassVar[dict[str, str]] = {"en": "<entities>", "zh": "<实体>"}
    # NOTE: the label ends at the first ':'; the mention runs lazily to a ')' that is
    # followed by the next item or the closing ')', so mentions may hold ')', ',' and ':'.
    _ITEM = re.compile(r"\((?P<label>[^():,\[\]\n]+?): (?P<mention>.*?)\)(?=, \(|\)\s*$)")

    def prompts(self, text: str, labels: Sequence[str]) -> list[tuple[str | None, str]]:
        return [(None, self._sentence_prompt(text, labels))]

    def structure(self, example: Example, labels: Sequence[str]) -> str:
        wanted = set(labels)
        items = [
            f"({self.word(e.label)}: {e.text})" for e in _in_order(example) if e.label in wanted
        ]
        return "(" + ", ".join(items) + ")"

    def render(self, example: Example, labels: Sequence[str]) -> list[TrainingPair]:
        target = self.structure(example, labels)
        return [TrainingPair(self._sentence_prompt(example.text, labels), (target,), None)]

    def parse(self, text: str, completions: Sequence[Completion]) -> list[tuple[str, str]]:
        pairs = []
        for completion in completions:
            for match in self._ITEM.finditer(completion.text.strip()):
                mention = match.group("mention").strip()
                label = match.group("label").strip()
                if mention and label:
                    pairs.append((self.tag(label), mention))
        return pairs


class OneStepFormat(_WordsFormat):
    """OneStep: one sequence per label, ``["Jacques Moret", "Moret"]`` or ``[]``."""

    name = "onestep"
    markers: ClassVar[dict[str, str]] = {"en": "<mentions>", "zh": "<文段>"}
    _STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')

    def prompt(self, text: str, label: str) -> str:
        return _ONE_HEAD[self.lang].format(text=text, label=self.word(label)) + self.markers[
            self.lang
        ]

    def prompts(self, text: str, labels: Sequence[str]) -> list[tuple[str | None, str]]:
        return [(label, self.prompt(text, label)) for label in labels]

    def render(self, example: Example, labels: Sequence[str]) -> list[TrainingPair]:
        return [
            TrainingPair(
                self.prompt(example.text, label),
                (json.dumps(example.mentions_of(label), ensure_ascii=False),),
                label,
            )
            for label in labels
        ]

    def parse(self, text: str, completions: Sequence[Completion]) -> list[tuple[str, str]]:
        pairs = []
        for completion in completions:
            if completion.label is None:
                continue
            pairs.extend((completion.label, m) for m in self._mentions(completion.text))
        return pairs

    def _mentions(self, output: str) -> list[str]:
        try:
            value = json.loads(output)
            items = value if isinstance(value, list) else []
        except ValueError:
            # NOTE: a truncated or sloppy list keeps its complete quoted strings.
            items = []
            for raw in self._STRING.findall(output):
                try:
                    items.append(json.loads(raw))
                except ValueError:
                    continue
        return [item.strip() for item in items if isinstance(item, str) and item.strip()]
