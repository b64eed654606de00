"""Fill ``${name}`` placeholders of a config.pbtxt template, strictly.

Like tensorrtllm_backend's ``tools/fill_template.py`` (``key:value,key:value``), but:
- a key that is not a placeholder of the template is an error (a typo must not pass);
- a placeholder left unfilled is an error unless the template marks it optional in a
  first-lines comment ``# optional: name1, name2``; an unfilled optional placeholder's
  whole ``parameters { ... }`` block is removed (the model then uses its default).

    python -m padellm_build.fill_template -i model_repository/llm/config.pbtxt model:smollm2-135m
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["TemplateError", "placeholders", "optional_names", "fill", "parse_substitutions", "main"]

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_OPTIONAL = re.compile(r"^\s*#\s*optional:\s*(.*)$", re.MULTILINE)
# a parameters block with one nested level: parameters { key: "k" value: { string_value: "..." } }
# (NVIDIA's templates write ``parameters: {``, which protobuf text format allows too)
# (a ``${name}`` inside counts as text, not as braces)
_TEXT = r"(?:[^{}$]|\$\{\w+\}|\$(?!\{))"
_BLOCK = re.compile(
    rf"^[ \t]*parameters\s*:?\s*\{{(?:{_TEXT}|\{{{_TEXT}*\}})*\}}[ \t]*\n?", re.MULTILINE
)


class TemplateError(ValueError):
    """Unknown keys, or required placeholders left unfilled."""


def placeholders(template: str) -> set[str]:
    return set(_PLACEHOLDER.findall(template))


def optional_names(template: str) -> set[str]:
    names: set[str] = set()
    for line in _OPTIONAL.findall(template):
        names.update(n.strip() for n in line.split(",") if n.strip())
    return names


def fill(template: str, values: Mapping[str, object]) -> str:
    """The filled template.

    Args:
        values: placeholder -> value (``None`` counts as unset).

    Raises:
        TemplateError: a key that is no placeholder, or a required placeholder unset.
    """
    names = placeholders(template)
    unknown = sorted(set(values) - names)
    if unknown:
        raise TemplateError(f"unknown keys {unknown}; the template's placeholders are {sorted(names)}")
    given = {k: str(v) for k, v in values.items() if v is not None}
    optional = optional_names(template)
    missing = sorted(names - set(given) - optional)
    if missing:
        raise TemplateError(f"placeholders left unfilled: {missing} (not marked '# optional:')")
    unset = names - set(given)

    def drop_block(match: re.Match) -> str:
        return "" if set(_PLACEHOLDER.findall(match.group(0))) & unset else match.group(0)

    text = _BLOCK.sub(drop_block, template)
    leftover = placeholders(text) & unset
    if leftover:
        raise TemplateError(f"optional placeholders {sorted(leftover)} are outside a parameters block")
    return _PLACEHOLDER.sub(lambda m: given[m.group(1)], text)


def parse_substitutions(spec: str) -> dict[str, str]:
    """``key:value,key:value``; ``\\,`` is a literal comma in a value."""
    values: dict[str, str] = {}
    for item in re.split(r"(?<!\\),", spec):
        if not item.strip():
            continue
        key, sep, value = item.partition(":")
        if not sep:
            raise TemplateError(f"expected key:value, got {item!r}")
        values[key.strip()] = value.replace("\\,", ",")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file_path", help="the config.pbtxt template")
    parser.add_argument("substitutions", help="key:value,key:value (\\, for a comma in a value)")
    parser.add_argument("-i", "--in_place", action="store_true", help="rewrite the file instead of printing")
    args = parser.parse_args(argv)
    path = Path(args.file_path)
    try:
        text = fill(path.read_text(), parse_substitutions(args.substitutions))
    except TemplateError as exc:
        print(f"fill_template: {path}: {exc}", file=sys.stderr)
        return 2
    if args.in_place:
        path.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
