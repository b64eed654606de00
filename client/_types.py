"""Typed results of the padellm client.

Offsets are character offsets into the text sent, end-exclusive, so
``text[entity.start:entity.end] == entity.text`` whenever both are set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Entity", "LabelResult", "entities_to_dicts"]


@dataclass(frozen=True)
class Entity:
    """One entity mention returned by the server.

    Attributes:
        label: the entity type (e.g. ``"LOC"``).
        text: the mention as the model wrote it.
        start: first character of the mention in the text, or ``None`` when the
            model's string does not occur in the text.
        end: first character after the mention (end-exclusive), or ``None``.
        score: the mention's probability.
    """

    label: str
    text: str
    start: int | None = None
    end: int | None = None
    score: float = 1.0

    @property
    def grounded(self) -> bool:
        """True when the mention was found in the text (offsets are set)."""
        return self.start is not None and self.end is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelResult:
    """The entities of one label, as one streamed response carries them.

    ``label`` is ``""`` when a response holds a whole result rather than one label.
    """

    label: str
    entities: tuple[Entity, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "entities": [e.to_dict() for e in self.entities]}


def entities_to_dicts(entities: list[Entity] | tuple[Entity, ...]) -> list[dict[str, Any]]:
    """JSON-ready form of a list of entities."""
    return [e.to_dict() for e in entities]
