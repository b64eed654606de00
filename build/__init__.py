"""Build tools: a strict config-template filler and model-repository assembly."""

__all__ = ["fill_template", "assemble"]
