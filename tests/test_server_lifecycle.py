"""A tritonserver started by us must not outlive us, even when we are SIGKILLed.

Real processes throughout: die_with_parent.py in front of ``sleep``, then a real
tritonserver (empty model repository) whose parent is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from padellm_ner.serving import die_with_parent
from padellm_ner.serving.triton_server import TritonServer, check_ports_free

LAUNCHER = Path(die_with_parent.__file__)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux"
)


def _gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def _spawn_parent(code: str) -> tuple[subprocess.Popen, int]:
    """A parent process running ``code``; it prints its child's pid on its first line."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = parent.stdout.readline()
    assert line.strip().isdigit(), f"parent printed {line!r}"
    return parent, int(line)


def _kill_all(parent: subprocess.Popen, child: int) -> None:
    """The parent, and the child with its process group (a tritonserver's Python stubs)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(parent.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child, signal.SIGKILL)  # NOTE: TritonServer starts it in its own session
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signal.SIGKILL)
    parent.wait()


def test_the_child_gets_sigterm_when_its_parent_is_killed() -> None:
    parent, child = _spawn_parent(f"""
        import os, subprocess, sys, time
        p = subprocess.Popen([sys.executable, {str(LAUNCHER)!r}, str(os.getpid()), "--", "sleep", "120"])
        print(p.pid, flush=True)
        time.sleep(120)
    """)
    try:
        time.sleep(0.5)  # the launcher has exec'd sleep by now
        assert not _gone(child, 0), "the child died on its own"
        assert "sleep" in Path(f"/proc/{child}/cmdline").read_text()  # same pid after exec
        os.kill(parent.pid, signal.SIGKILL)
        assert _gone(child, 10), "the child outlived its SIGKILLed parent"
    finally:
        _kill_all(parent, child)


def test_the_launcher_refuses_when_its_parent_is_already_gone_or_the_call_is_wrong() -> None:
    run = [sys.executable, str(LAUNCHER)]
    # A parent pid that is not ours: the parent "died" before the signal was armed.
    late = subprocess.run(
        [*run, "1", "--", "echo", "ran"], capture_output=True, text=True, timeout=30
    )
    assert late.returncode == 1 and "ran" not in late.stdout
    usage = subprocess.run([*run, "echo"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage" in usage.stderr
    missing = subprocess.run([*run, str(os.getpid()), "--", "/nonexistent/x"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert missing.returncode == 127 and "cannot run" in missing.stderr


def test_a_server_started_from_a_worker_thread_is_not_tied_to_that_thread(tmp_path) -> None:
    """The kernel signals when the forking *thread* exits; a worker thread must not arm it."""
    server = TritonServer(tmp_path, die_with_parent=True)
    cmd = ["tritonserver", "--x"]
    assert server._guarded(cmd)[:3] == [sys.executable, "-I", "-S"]
    result: list[list[str]] = []
    worker = threading.Thread(target=lambda: result.append(server._guarded(cmd)))
    worker.start()
    worker.join()
    assert result == [cmd]
    assert TritonServer(tmp_path, die_with_parent=False)._guarded(cmd) == cmd


@pytest.mark.slow
def test_tritonserver_stops_when_the_process_that_started_it_is_sigkilled(tmp_path) -> None:
    """The point of it all: the ports a SIGKILLed parent's server held can be taken again."""
    repo = tmp_path / "repo"
    repo.mkdir()
    parent, server_pid = _spawn_parent(f"""
        import time
        from padellm_ner.serving.triton_server import TritonServer
        s = TritonServer({str(repo)!r}, startup_timeout=120, log_path={str(tmp_path / "server.log")!r}).start()
        print(s._proc.pid, flush=True)
        print(s.grpc_port, s.http_port, s.metrics_port, flush=True)
        time.sleep(600)
    """)
    try:
        grpc, http, metrics = (int(p) for p in parent.stdout.readline().split())
        assert "tritonserver" in Path(f"/proc/{server_pid}/cmdline").read_text()
        os.kill(parent.pid, signal.SIGKILL)
        assert _gone(server_pid, 30), "tritonserver outlived the process that started it"
        check_ports_free("127.0.0.1", {"grpc": grpc, "http": http, "metrics": metrics})
    finally:
        _kill_all(parent, server_pid)


@pytest.mark.slow
def test_stop_removes_the_stub_regions_left_while_the_server_ran(tmp_path) -> None:
    """A stub that tritonserver's exit timeout cut off (its model held by a cancelled
    stream) leaves its 1 MB /dev/shm region; the CI's session server left one per run.
    ``stop`` removes the regions that appeared while it ran and that nobody uses: not one
    that was there before it started, nor one a process still holds open."""
    import uuid

    from padellm_ner.serving.shm_sweep import SHM_PREFIX

    def region() -> Path:
        path = Path("/dev/shm") / f"{SHM_PREFIX}{uuid.uuid4()}"
        path.write_bytes(b"\0" * 4096)
        return path

    repo = tmp_path / "repo"
    repo.mkdir()
    before = region()
    server = TritonServer(repo, startup_timeout=120, log_path=tmp_path / "server.log").start()
    try:
        left, held = region(), region()
        time.sleep(1.1)  # NOTE: a region under a second old may be another server's, unmapped
        with held.open("rb"):
            server.stop()
            assert not left.exists()
            assert before.exists() and held.exists()
    finally:
        server.stop()
        for path in (before, left, held):
            path.unlink(missing_ok=True)


#: a stub stand-in: the switch armed, then once its parent is gone every Python thread
#: stuck (a C call that keeps the GIL, as a metric call to a server that has gone did)
_WEDGED_STUB = """
import ctypes, os, time
from padellm_ensemble.stub_lifetime import exit_with_server
exit_with_server(grace_s=2.0)
parent = os.getppid()
while os.getppid() == parent:
    time.sleep(0.05)  # GIL free: the switch keeps re-arming
ctypes.PyDLL(None).sleep(600)  # NOTE: PyDLL keeps the GIL: no Python thread runs again
"""


def test_a_stub_wedged_in_its_exit_still_ends_once_tritonserver_is_gone() -> None:
    """``stub_lifetime.exit_with_server``, as the model shims arm it: a process whose
    Python threads are all stuck ends within its grace once its parent is gone (python_
    backend's stub deadlocked in its own exit there), and not while the parent lives."""
    parent, child = _spawn_parent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {_WEDGED_STUB!r}])
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    try:
        assert not _gone(child, 4.0), "ended while its parent lived (grace 2 s)"
        os.kill(parent.pid, signal.SIGKILL)
        assert _gone(child, 10.0), "a wedged process outlived its parent"
    finally:
        _kill_all(parent, child)
