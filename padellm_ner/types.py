"""The data shapes every part of padellm-ner agrees on.

Offsets follow spaCy/GLiNER: ``start``/``end`` are character offsets into the
original text, end-exclusive, so ``text == source[start:end]`` whenever both are set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Entity", "Example"]


@dataclass(frozen=True)
class Entity:
    """One entity mention.

    Attributes:
        label: the entity type as the model was asked for it (e.g. ``"LOC"``).
        text: the surface string.
        start: first character of the mention in the source text, or ``None`` when the
            predicted string does not occur in the text (then ``grounded`` is False).
        end: the first character after the mention (end-exclusive), or ``None``.
        score: probability of the mention (product of its token probabilities); 1.0 for gold.
    """

    label: str
    text: str
    start: int | None = None
    end: int | None = None
    score: float = 1.0

    @property
    def grounded(self) -> bool:
        return self.start is not None and self.end is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entity:
        return cls(
            label=str(data["label"]),
            text=str(data["text"]),
            start=data.get("start"),
            end=data.get("end"),
            score=float(data.get("score", 1.0)),
        )


@dataclass
class Example:
    """A sentence and its gold entities, the one in-memory form every reader produces.

    Attributes:
        text: English tokens joined by one space; Chinese characters concatenated.
        entities: gold mentions in order of appearance (by start, then end).
        lang: ``"en"`` or ``"zh"``; picks the prompt language.
        id: a stable identifier (``"<split>:<index>"``) for resumable jobs.
    """

    text: str
    entities: list[Entity] = field(default_factory=list)
    lang: str = "en"
    id: str = ""

    def mentions_of(self, label: str) -> list[str]:
        """Mention strings of one label in order of appearance (the PaDeLLM targets)."""
        return [e.text for e in self.entities if e.label == label]
