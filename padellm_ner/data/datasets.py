"""Named datasets and split folders: where they live, their language, labels and prompt words.

``load_split("conll2003", "train")`` reads the shared copy; ``load_split("/some/dir",
"dev")`` reads ``/some/dir/dev.*`` in any supported format (detected from content).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from padellm_ner.data.readers import detect_lang, read_file
from padellm_ner.errors import InvalidInputError
from padellm_ner.types import Example

__all__ = [
    "DatasetInfo",
    "DATASET_NAMES",
    "SPLITS",
    "datasets_root",
    "dataset_dir",
    "split_path",
    "available_splits",
    "load_split",
    "dataset_info",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
_SPLIT_ALIASES = {"train": ("train",), "dev": ("dev", "valid", "validation"), "test": ("test",)}

# NOTE: tags map to the words the prompts use. English tags are their own word; Chinese
# tags get short Chinese words (METHOD.md: MSRA uses 名称/地点/组织).
_LANG = {
    "conll2003": "en",
    "wnut17": "en",
    "genia": "en",
    "weibo": "zh",
    "resume": "zh",
    "ecommerce": "zh",
    "youku": "zh",
    "msra": "zh",
}
_WORDS: dict[str, dict[str, str]] = {
    "weibo": {
        "PER.NAM": "人名",
        "PER.NOM": "人物指代",
        "LOC.NAM": "地名",
        "LOC.NOM": "地点指代",
        "GPE.NAM": "行政区名",
        "GPE.NOM": "行政区指代",
        "ORG.NAM": "机构名",
        "ORG.NOM": "机构指代",
    },
    "msra": {"PER": "名称", "LOC": "地点", "ORG": "组织"},
    "resume": {
        "NAME": "人名",
        "ORG": "组织",
        "TITLE": "职称",
        "EDU": "学历",
        "PRO": "专业",
        "CONT": "国籍",
        "RACE": "民族",
        "LOC": "地址",
    },
    "youku": {"TELEVISION": "影视作品", "PER": "人名", "MISC": "其他"},
    "ecommerce": {"HCCX": "商品", "HPPX": "品牌", "XH": "型号", "MISC": "其他"},
}
DATASET_NAMES = tuple(_LANG)


@dataclass(frozen=True)
class DatasetInfo:
    """What a trainer or evaluator needs to know about a dataset.

    Attributes:
        name: the dataset name (folder name for a path).
        lang: ``"en"`` or ``"zh"``.
        labels: entity tags, by frequency over all split files (most frequent first).
        label_words: tag -> the word used for it in prompts.
        splits: the splits present.
    """

    name: str
    lang: str
    labels: list[str]
    label_words: dict[str, str] = field(default_factory=dict)
    splits: tuple[str, ...] = ()

    def word(self, tag: str) -> str:
        return self.label_words.get(tag, tag)

    def require_labels(self, shown: str | None = None) -> DatasetInfo:
        """Self, or a clear error when no split tags any entity: files that read (two
        columns of plain text) but in no supported format, caught before a model loads."""
        if not self.labels:
            raise InvalidInputError(
                f"dataset {shown or self.name!r} tags no entity in any split: is it in a "
                "supported format (CoNLL columns `token TAG` with BIO tags, or JSON lines)?"
            )
        return self


def datasets_root() -> Path:
    """``$PADELLM_DATASETS``, else ``<repo>/../shared/datasets``, else ``./../shared/datasets``."""
    env = os.environ.get("PADELLM_DATASETS")
    if env:
        return Path(env)
    candidates = [
        Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets",
        Path.cwd() / ".." / "shared" / "datasets",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]


def dataset_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """The folder of a named dataset or an existing folder path."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    named = datasets_root() / str(name_or_path)
    if str(name_or_path) in _LANG and named.is_dir():
        return named
    raise InvalidInputError(
        f"unknown dataset {str(name_or_path)!r}: give one of {', '.join(DATASET_NAMES)} "
        f"(looked in {datasets_root()}; set PADELLM_DATASETS to change) "
        "or a folder holding train/dev/test files"
    )


def _canonical_split(split: str) -> str:
    """``validation`` -> ``dev``, ``Test`` -> ``test``; other names as given."""
    for canonical, aliases in _SPLIT_ALIASES.items():
        if split.lower() in aliases:
            return canonical
    return split


def _find_split(folder: Path, split: str) -> Path | None:
    """The one file of ``split`` (``test.txt``, ``Test.bmes``, ``valid.conll`` for dev).

    Raises:
        InvalidInputError: two files could be the split (``test.txt`` and ``test.bak``):
            reading the first by name would evaluate the wrong one without a word.
    """
    split = _canonical_split(split)
    aliases = _SPLIT_ALIASES.get(split, (split,))
    hits = sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.split(".")[0].lower() in aliases
    )
    if len(hits) > 1:
        raise InvalidInputError(
            f"{folder}: {len(hits)} files could be the {split!r} split "
            f"({', '.join(p.name for p in hits)}); keep one, or move the others out"
        )
    return hits[0] if hits else None


def available_splits(name_or_path: str | os.PathLike[str]) -> tuple[str, ...]:
    folder = dataset_dir(name_or_path)
    return tuple(s for s in SPLITS if _find_split(folder, s) is not None)


def split_path(name_or_path: str | os.PathLike[str], split: str) -> Path:
    """The file of one split; ``InvalidInputError`` naming the splits that do exist."""
    folder = dataset_dir(name_or_path)
    path = _find_split(folder, split)
    if path is None:
        have = ", ".join(available_splits(name_or_path)) or "none"
        raise InvalidInputError(
            f"dataset {str(name_or_path)!r} has no {split!r} split (available: {have})"
        )
    return path


def _builtin_name(name_or_path: str | os.PathLike[str]) -> str | None:
    """The shared dataset this is (by name or by its path), or None for a user's folder.

    Why: a user's ``./resume`` or ``/data/msra`` holding English data is not the shared
    Chinese dataset of that name; its language and prompt words come from its content.
    """
    folder = dataset_dir(name_or_path).resolve()
    name = folder.name
    if name in _LANG and folder == (datasets_root() / name).resolve():
        return name
    return None


def _lang_of(name_or_path: str | os.PathLike[str], path: Path) -> str:
    name = _builtin_name(name_or_path)
    return _LANG[name] if name else detect_lang(path)


def _file_key(path: Path) -> tuple[str, int, int]:
    """A cache key that changes when the file does (a rewritten split is read again)."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=32)
def _read_cached(key: tuple[str, int, int], split: str, lang: str) -> tuple[Example, ...]:
    path = Path(key[0])
    examples = read_file(path, split, lang)
    logger.info("read %d sentences from %s", len(examples), path)
    return tuple(examples)


def _load(name_or_path: str | os.PathLike[str], split: str) -> tuple[Example, ...]:
    # NOTE: keyed by the file, not the name: "resume" is ./resume in one folder and the
    # shared dataset in another
    path = split_path(name_or_path, split)
    return _read_cached(_file_key(path), split, _lang_of(name_or_path, path))


def load_split(name_or_path: str | os.PathLike[str], split: str) -> list[Example]:
    """The examples of one split of a named dataset or a folder path.

    Raises:
        InvalidInputError: unknown dataset, missing split or unreadable file.
    """
    # NOTE: a fresh list of the cached examples; callers must not mutate the Examples.
    return list(_load(name_or_path, split))


@lru_cache(maxsize=32)
def _info_cached(folder: str, files: tuple[tuple[str, tuple[str, int, int]], ...]) -> DatasetInfo:
    splits = tuple(split for split, _ in files)
    if not splits:
        raise InvalidInputError(f"dataset {folder!r} holds no train/dev/test file")
    counts: Counter[str] = Counter()
    lang = "en"
    for split, _ in files:
        examples = _load(folder, split)
        counts.update(e.label for ex in examples for e in ex.entities)
        lang = examples[0].lang if examples else lang
    labels = sorted(counts, key=lambda tag: (-counts[tag], tag))
    builtin = _builtin_name(folder)
    name = builtin or Path(folder).name
    if builtin in _WORDS:
        words = {tag: _WORDS[builtin].get(tag, tag) for tag in labels}
    elif builtin == "genia":
        words = {tag: tag.lower() for tag in labels}
    else:
        words = {tag: tag for tag in labels}
    return DatasetInfo(name=name, lang=lang, labels=labels, label_words=words, splits=splits)


def dataset_info(name_or_path: str | os.PathLike[str]) -> DatasetInfo:
    """Language, tags (most frequent first) and prompt words of a dataset."""
    folder = dataset_dir(name_or_path).resolve()
    files = tuple(
        (split, _file_key(path)) for split in SPLITS if (path := _find_split(folder, split))
    )
    return _info_cached(str(folder), files)
