"""Exec a command that gets SIGTERM when the process that started it dies.

Why: ``serve`` runs tritonserver as a child in its own session (so Ctrl-C reaches us and we
stop it cleanly). If ``serve`` itself is SIGKILLed (an OOM kill, ``kill -9``, a CI timeout)
nothing stops the child, which keeps the ports and the model memory. Linux's
``PR_SET_PDEATHSIG`` fixes that, and it survives ``execve``; but setting it from
``Popen(preexec_fn=...)`` is unsafe in a process that runs threads. So the child starts as
this tiny stdlib-only script, sets the signal on itself, and execs the real command.

Usage: ``python die_with_parent.py PARENT_PID -- COMMAND [ARG...]``. PARENT_PID guards the
race where the parent died before the signal was armed: the script then exits at once.

Note: the kernel sends the signal when the parent *thread* that forked us exits, so callers
start us from a long-lived thread (``TritonServer`` only does so from the main thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def arm(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; False if not Linux."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    return True


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: die_with_parent.py PARENT_PID -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[2:]
    arm()
    if os.getppid() != parent:  # the parent died before the signal was armed
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"die_with_parent.py: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127
    return 0  # unreachable: execvp does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
