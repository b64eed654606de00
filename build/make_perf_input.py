"""Write perf_analyzer's ``--input-data`` JSON for the ``padellm`` orchestrator.

Each entry is one request: ``TEXT`` (BYTES, dims ``[1]``) holding one real sentence.
The sentences come from a local dataset split and are not committed (dataset licence):
generate the file where you run perf_analyzer.

Usage::

    python -m padellm_build.make_perf_input --dataset conll2003 --split test \\
        --num 20 --out runs/perf_input.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from padellm_ner.data import load_split
from padellm_ner.lang import is_cjk
from padellm_ner.types import Example

__all__ = ["pick_sentences", "perf_input", "main"]

# NOTE: skips datelines, score lines and fragments ("AL-AIN , United Arab Emirates 1996-12-06",
# "Alba Berlin ( Germany ) 9 5 4 14")
_MIN_WORDS = 8
_MAX_UPPER = 0.5  # NOTE: skips all-caps headlines ("SOCCER - JAPAN GET LUCKY WIN , ...")


def _num_words(text: str) -> int:
    """Space-separated tokens with a letter (numbers and punctuation are not words), each
    Chinese character counted as one (Chinese has no spaces)."""
    return sum(
        sum(map(is_cjk, token)) or any(c.isalpha() for c in token) for token in text.split()
    )


def _is_headline(text: str) -> bool:
    """Most cased letters are capitals (a script without case never is)."""
    cased = [c for c in text if c.isupper() or c.islower()]
    return bool(cased) and sum(c.isupper() for c in cased) > _MAX_UPPER * len(cased)


def pick_sentences(examples: Sequence[Example], num: int) -> list[str]:
    """``num`` sentences spread evenly over the split (deterministic).

    Only running text is taken: at least ``_MIN_WORDS`` words (a Chinese character is a
    word), not an all-caps headline, and at least one gold entity, so every request
    exercises the mention fan-out.
    """
    pool = [
        ex.text
        for ex in examples
        if _num_words(ex.text) >= _MIN_WORDS and ex.entities and not _is_headline(ex.text)
    ]
    if num <= 0 or not pool:
        return []
    step = max(1, len(pool) // num)
    return pool[::step][:num]


def perf_input(texts: Sequence[str]) -> dict[str, list[dict[str, list[str]]]]:
    """perf_analyzer's real-data layout: one ``{"TEXT": [text]}`` object per request.

    NOTE: BYTES content is a list of strings; ``TEXT`` has fixed dims ``[1]`` so no
    ``"shape"`` is needed (``{"content": [...], "shape": [1]}`` is the long form).
    """
    return {"data": [{"TEXT": [text]} for text in texts]}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="conll2003", help="name or folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=20, help="number of requests")
    parser.add_argument("--out", type=Path, default=Path("runs/perf_input.json"))
    args = parser.parse_args(argv)

    texts = pick_sentences(load_split(args.dataset, args.split), args.num)
    if not texts:
        print(f"error: no usable sentence in {args.dataset}/{args.split}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    entries = ",\n".join(json.dumps(e, ensure_ascii=False) for e in perf_input(texts)["data"])
    # NOTE: one request per line; UTF-8 whatever the locale (perf_analyzer reads UTF-8)
    args.out.write_text('{"data": [\n' + entries + "\n]}\n", encoding="utf-8")
    print(f"{len(texts)} requests written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
