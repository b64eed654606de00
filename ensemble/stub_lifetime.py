"""A Python-backend stub must not outlive tritonserver: a dead-man switch for both models.

Why: a tritonserver that exits without unloading a model (its exit timeout ran out, e.g.
on a model a cancelled gRPC stream holds) leaves the stub to notice on its own.
python_backend 2.51's stub then deadlocks in its exit when a thread of ours is inside a
call to the server (a metric update), which no longer answers: an orphan that keeps the
model's memory for good (seen here: six of them, 0.5-1.5 GB each). Triton-free and
stdlib-only, so the tests run it in a plain process.
"""

from __future__ import annotations

import faulthandler
import os
import threading
import time
from collections.abc import Callable

__all__ = ["ORPHAN_GRACE_S", "exit_with_server"]

#: how long a stub may outlive its tritonserver (``$PADELLM_STUB_ORPHAN_GRACE_S``)
ORPHAN_GRACE_S = float(os.environ.get("PADELLM_STUB_ORPHAN_GRACE_S", "60"))


def exit_with_server(grace_s: float = ORPHAN_GRACE_S) -> Callable[[], None]:
    """End this process at most ``grace_s`` after its parent is gone; returns the stop.

    ``faulthandler``'s timer runs in a C thread that needs no GIL, so it fires even when
    every Python thread is stuck (it writes their stacks to stderr, then ``_exit(1)``). A
    thread of ours re-arms it every second while the parent lives and stops re-arming
    once the parent is gone. Arm it after a model's load: a load may hold the GIL long.
    """
    parent, stopped = os.getppid(), threading.Event()

    def run() -> None:
        while not stopped.is_set() and os.getppid() == parent:
            faulthandler.dump_traceback_later(grace_s, exit=True)
            time.sleep(1.0)
        if stopped.is_set():
            faulthandler.cancel_dump_traceback_later()

    threading.Thread(target=run, name="padellm-exit-with-server", daemon=True).start()

    def stop() -> None:
        stopped.set()
        faulthandler.cancel_dump_traceback_later()

    return stop
