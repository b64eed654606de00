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
from padellm_ner.types import Example

__all__ = ["pick_sentences", "perf_input", "main"]

_MIN_WORDS = 6  # NOTE: skips headlines and "-DOCSTART-"-like fragments (e.g. "LONDON 1996-08-30")


def pick_sentences(examples: Sequence[Example], num: int) -> list[str]:
    """``num`` sentences spread evenly over the split (deterministic).

    Only sentences of at least ``_MIN_WORDS`` words with at least one gold entity are
    taken, so every request exercises the mention fan-out.
    """
    pool = [ex.text for ex in examples if len(ex.text.split()) >= _MIN_WORDS and ex.entities]
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
    args.out.write_text('{"data": [\n' + entries + "\n]}\n")  # NOTE: one request per line
    print(f"{len(texts)} requests written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
