"""padellm-ner: PaDeLLM-NER (parallel decoding LLM NER) as a service."""

from padellm_ner.types import Entity, Example

__all__ = ["Entity", "Example", "__version__"]
__version__ = "0.1.0"
