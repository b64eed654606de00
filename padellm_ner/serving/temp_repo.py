"""The model repository ``serve`` writes when no ``--repository`` is given.

Why: a ``serve`` that is SIGKILLed (OOM killer, ``kill -9``, a CI timeout) cannot remove
its temporary repository, and each one holds a copy of the configs and the adapter. Each
folder has an owner file beside it (``<folder>.owner``, outside the repository, which must
hold models only) naming the process that owns it; the next ``serve`` removes the folders
whose owner is gone. Only our own folders are touched: the name prefix, the owner file, the
user id, and an owner that no longer runs (a reused pid is told apart by its start time).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["PREFIX", "make_temp_repo", "remove_temp_repo", "sweep_stale_repos"]

logger = logging.getLogger(__name__)

PREFIX = "padellm-repo-"
OWNER_SUFFIX = ".owner"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc``), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # NOTE: a zombie no longer runs
        return None
    return fields[19]  # field 22 of proc(5); fields here start at field 3


def _alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if not Path("/proc").is_dir():  # NOTE: no /proc: ask the kernel, without a start time
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    started = _start_time(pid)
    return started is not None and started == owner.get("start")


def make_temp_repo(root: str | os.PathLike[str] | None = None) -> Path:
    """A new empty repository folder under ``root`` (the temp dir), owned by this process."""
    repo = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    owner = {"pid": os.getpid(), "start": _start_time(os.getpid())}
    _owner_file(repo).write_text(json.dumps(owner) + "\n")
    return repo


def remove_temp_repo(repo: Path) -> None:
    """Remove a folder made by :func:`make_temp_repo`, and its owner file."""
    shutil.rmtree(repo, ignore_errors=True)
    with contextlib.suppress(OSError):
        _owner_file(repo).unlink()


def _owner_file(repo: Path) -> Path:
    return repo.with_name(repo.name + OWNER_SUFFIX)


def sweep_stale_repos(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the temporary repositories whose ``serve`` is gone; return what was removed.

    A folder without a readable owner file is left alone: it may be one being created, or
    not ours at all. Server logs (``<repo>-tritonserver.log``) are kept, as on a clean stop.
    """
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        candidates = sorted(p for p in base.glob(PREFIX + "*") if p.is_dir() and not p.is_symlink())
        for repo in candidates:
            try:
                if repo.stat().st_uid != os.getuid():
                    continue
                owner = json.loads(_owner_file(repo).read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(owner, dict) or _alive(owner):
                continue
            remove_temp_repo(repo)
            if not repo.exists():
                logger.info("removed %s, left by a serve that is gone (pid %s)", repo, owner.get("pid"))
                removed.append(repo)
    return removed
