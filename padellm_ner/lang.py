"""Which prompt language a text needs: one rule for a sentence and for a file's head.

Why one rule: the data readers choose a dataset's prompts from its file, and an untrained
base chooses them per sentence (``extract`` and the served orchestrator). Two rules used to
disagree on quoted or mixed Chinese (``“你好”，他说``, ``我买了iPhone 15手机壳``).
Torch-free: the readers and the CLI import it before any model loads.
"""

from __future__ import annotations

__all__ = ["LANGS", "is_cjk", "detect_lang"]

LANGS = ("en", "zh")

# NOTE: CJK Unified Ideographs with Extension A, the compatibility block and the
# supplementary planes (Extensions B-H): rare names (𠮷) live there.
_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x323AF))

# NOTE: the share of letters that must be Chinese characters. Low, because one Chinese
# character carries a word's meaning and Latin brand names (iPhone) are common in Chinese
# text, yet high enough that a Chinese name inside an English sentence stays English.
_ZH_SHARE = 0.1


def is_cjk(ch: str) -> bool:
    """Whether ``ch`` is a Chinese (CJK ideograph) character."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def detect_lang(text: str) -> str:
    """``"zh"`` when Chinese characters are more than a tenth of the letters, else ``"en"``.

    Letters only: punctuation, digits and spaces say nothing about the language, so
    full-width quotes and numbers neither help nor hurt.
    """
    letters = cjk = 0
    for ch in text:
        if ch.isalpha():
            letters += 1
            cjk += is_cjk(ch)
    return "zh" if letters and cjk > _ZH_SHARE * letters else "en"
