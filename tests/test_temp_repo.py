"""``serve``'s temporary repositories: the ones a SIGKILLed serve left are removed, no others.

Real processes: an owner is a Python process that is SIGKILLed, as the OOM killer would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from padellm_ner.serving.temp_repo import (
    PREFIX,
    make_temp_repo,
    remove_temp_repo,
    sweep_stale_repos,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")


def _repo_of_a_killed_process(root: Path) -> Path:
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from padellm_ner.serving.temp_repo import make_temp_repo
            repo = make_temp_repo({str(root)!r})
            (repo / "padellm").mkdir()
            print(repo, flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        repo = Path(owner.stdout.readline().strip())
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert (repo / "padellm").is_dir()
    return repo


def test_the_repository_of_a_killed_serve_is_removed_and_no_other(tmp_path: Path) -> None:
    stale = _repo_of_a_killed_process(tmp_path)
    ours = make_temp_repo(tmp_path)  # this process is alive: kept
    unowned = tmp_path / f"{PREFIX}unowned"  # no owner file (being made, or not ours): kept
    unowned.mkdir()
    reused = make_temp_repo(tmp_path)  # a live pid, but another process's start time: removed
    owner_file = reused.with_name(reused.name + ".owner")
    owner_file.write_text(json.dumps({"pid": os.getpid(), "start": "1"}))
    broken = make_temp_repo(tmp_path)  # an unreadable owner file: kept
    broken.with_name(broken.name + ".owner").write_text("{not json")
    elsewhere = tmp_path / "data"
    elsewhere.mkdir()
    (tmp_path / f"{PREFIX}link").symlink_to(elsewhere)  # a link is never followed
    log = tmp_path / f"{stale.name}-tritonserver.log"
    log.write_text("kept, as on a clean stop")

    removed = sweep_stale_repos(tmp_path)

    assert sorted(removed) == sorted([stale, reused])
    assert not stale.exists() and not stale.with_name(stale.name + ".owner").exists()
    assert not reused.exists() and not owner_file.exists()
    assert ours.is_dir() and unowned.is_dir() and broken.is_dir() and elsewhere.is_dir() and log.exists()
    assert sweep_stale_repos(tmp_path) == []
    remove_temp_repo(ours)
    assert not ours.exists() and not ours.with_name(ours.name + ".owner").exists()


def test_a_new_repository_is_empty_for_the_assembler(tmp_path: Path) -> None:
    """The owner file sits beside the folder: the repository must hold models only."""
    repo = make_temp_repo(tmp_path)
    assert list(repo.iterdir()) == []
    assert json.loads(repo.with_name(repo.name + ".owner").read_text())["pid"] == os.getpid()


def test_stale_stub_shared_memory_is_swept_and_live_regions_are_kept(tmp_path) -> None:
    """python_backend regions nobody maps or holds open are removed; one mapped by a live
    process, one held open, a fresh one (its server may be starting) and other files stay."""
    import mmap
    import time

    from padellm_ner.serving.shm_sweep import SHM_PREFIX, sweep_stale_shm_regions

    old = time.time() - 3600

    def region(name: str, age: float = old) -> Path:
        path = tmp_path / f"{SHM_PREFIX}{name}"
        path.write_bytes(b"\0" * 4096)
        os.utime(path, (age, age))
        return path

    stale, mapped, held, fresh = region("stale"), region("mapped"), region("held"), region("fresh", time.time())
    other = tmp_path / "not-a-triton-region"
    other.write_bytes(b"x")
    os.utime(other, (old, old))
    with mapped.open("r+b") as f, mmap.mmap(f.fileno(), 4096), held.open("rb"):
        with mapped.open("rb"):
            pass
        assert sweep_stale_shm_regions(tmp_path) == [stale]
    assert not stale.exists() and mapped.exists() and held.exists() and fresh.exists() and other.exists()
