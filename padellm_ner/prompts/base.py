"""The interface every output format (PaDeLLM and the three baselines) implements.

A format renders gold examples to training pairs and parses model completions back to
(label, mention) pairs; ``round-trip(render -> parse)`` must give the gold entity set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from padellm_ner.types import Example

__all__ = ["TrainingPair", "Completion", "OutputFormat"]


@dataclass(frozen=True)
class TrainingPair:
    """One training sequence.

    Attributes:
        prompt: the model input text (no loss on it).
        target_pieces: the target text, split where pieces must be tokenized apart
            (PaDeLLM: the forced ``{m}\\n<mention k>`` prefix and the mention); the
            trainer encodes each piece separately, concatenates, then appends the end id.
        label: the label this sequence is about, or ``None`` for whole-sentence formats.
    """

    prompt: str
    target_pieces: tuple[str, ...]
    label: str | None = None

    @property
    def target(self) -> str:
        return "".join(self.target_pieces)


@dataclass(frozen=True)
class Completion:
    """A model completion for one inference prompt.

    Attributes:
        label: the prompt's label (``None`` for whole-sentence formats).
        text: what follows the prompt, without the end token (for PaDeLLM the full
            target text, forced prefix included: ``"2\\n<mention 1>EU"``).
    """

    label: str | None
    text: str


class OutputFormat(ABC):
    """Render training pairs and parse completions for one output format."""

    name: ClassVar[str]

    def __init__(self, lang: str = "en") -> None:
        self.lang = lang

    @abstractmethod
    def prompts(self, text: str, labels: Sequence[str]) -> list[tuple[str | None, str]]:
        """Inference prompts as ``(label or None, prompt)``; one per label or one per text."""

    @abstractmethod
    def render(self, example: Example, labels: Sequence[str]) -> list[TrainingPair]:
        """Training pairs of one gold example over ``labels`` (every label, even absent)."""

    @abstractmethod
    def parse(self, text: str, completions: Sequence[Completion]) -> list[tuple[str, str]]:
        """``(label, mention)`` pairs, in order of appearance per label; garbage is skipped."""
