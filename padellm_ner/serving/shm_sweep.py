"""Remove the shared-memory regions that Python-backend stubs left behind.

Why: each stub of python_backend talks to tritonserver through a region
``/dev/shm/triton_python_backend_shm_region_<uuid>`` (1 MB here). A stub that ends
without a clean unload (its tritonserver ran out its exit timeout, or was killed) leaves
its region: 52 were found on one machine after a day of tests and probes. Docker gives a
container 64 MB of /dev/shm by default, so a server restarted often enough could no
longer start its stubs. ``serve`` sweeps them at start, and ``TritonServer.stop`` the ones
that appeared while its server ran.

Only regions that are ours (our user id), older than a minute (a server starting now may
not have mapped its own yet) and that no process maps or holds open are removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Collection
from pathlib import Path

__all__ = ["SHM_PREFIX", "shm_region_names", "sweep_stale_shm_regions"]

logger = logging.getLogger(__name__)

SHM_PREFIX = "triton_python_backend_shm_region_"
_MIN_AGE_S = 60.0


def _in_use(names: set[str]) -> set[str]:
    """Those of ``names`` (file names) that some process we can see maps or holds open."""
    used: set[str] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            maps = (proc / "maps").read_text()
            used.update(name for name in names if name in maps)
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    name = os.path.basename(os.readlink(fd))
                    if name in names:
                        used.add(name)
    return used


def shm_region_names(shm_dir: str | os.PathLike[str] = "/dev/shm") -> set[str]:
    """The file names of python_backend's regions there now."""
    with contextlib.suppress(OSError):
        return {path.name for path in Path(shm_dir).glob(SHM_PREFIX + "*")}
    return set()


def sweep_stale_shm_regions(
    shm_dir: str | os.PathLike[str] = "/dev/shm",
    *,
    names: Collection[str] | None = None,
    min_age_s: float = _MIN_AGE_S,
) -> list[Path]:
    """Remove python_backend's regions that nobody uses any more (of ``names`` only, when
    given) and that are at least ``min_age_s`` old; return what was removed."""
    base, now = Path(shm_dir), time.time()
    candidates: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for path in base.glob(SHM_PREFIX + "*"):
            if names is not None and path.name not in names:
                continue
            with contextlib.suppress(OSError):
                info = path.lstat()
                if path.is_file() and info.st_uid == os.getuid() and now - info.st_mtime >= min_age_s:
                    candidates[path.name] = path
    if not candidates or not Path("/proc").is_dir():
        return []
    used = _in_use(set(candidates))
    removed = []
    for name, path in sorted(candidates.items()):
        if name not in used:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    if removed:
        logger.info("removed %d shared-memory region(s) left by Python-backend stubs", len(removed))
    return removed
