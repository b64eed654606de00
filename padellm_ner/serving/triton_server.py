"""Run the ``tritonserver`` shipped inside the ``nvidia-pytriton`` wheel, without Docker.

See shared/docs/TRITON-NOTES.md: the Python-backend stub for the running interpreter is
copied next to ``libtriton_python.so``, and the interpreter's own ``libpython`` must come
first on ``LD_LIBRARY_PATH`` (else the stub picks Debian's 3.11.2 and C extensions of the
venv fail to import).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from padellm_ner.engine_metrics import REQUESTS_IN_FLIGHT
from padellm_ner.prom_text import metric_sum, read_samples
from padellm_ner.serving.shm_sweep import shm_region_names, sweep_stale_shm_regions

__all__ = [
    "DrainResult",
    "TritonServer",
    "TritonServerError",
    "TritonInstall",
    "check_ports_free",
    "find_tritonserver",
    "free_ports",
    "loopback_host",
]

logger = logging.getLogger(__name__)


class TritonServerError(RuntimeError):
    """tritonserver is missing, did not become ready, or died."""


#: how long a model must look idle while UNLOADING before the drain stops waiting for it
#: (two metric reads at least: a request Triton has just handed over is counted by then)
IDLE_GRACE_S = 1.0
#: how long ``stop`` waits for the stubs to end before it sweeps their regions
_STUB_EXIT_WAIT_S = 3.0
#: a region younger than this may be another server's, not mapped yet (``shm_sweep``)
_FRESH_REGION_S = 1.0


@dataclass(frozen=True)
class DrainResult:
    """What ``TritonServer.drain`` left: ``busy``, models still answering requests when the
    timeout ran out; ``held``, models with nothing left that tritonserver did not unload."""

    busy: list[str]
    held: list[str]


@dataclass(frozen=True)
class TritonInstall:
    """Where the bundled server lives."""

    binary: Path
    backend_dir: Path
    libs_dir: Path  # site-packages/nvidia_pytriton.libs


def find_tritonserver() -> TritonInstall:
    """Locate tritonserver in the installed ``pytriton`` and make the Python stub usable.

    Raises:
        TritonServerError: pytriton (or its binary, or a stub for this Python) is missing.
    """
    try:
        import pytriton
    except ImportError as exc:  # NOTE: the project installs it; missing is an error
        raise TritonServerError("nvidia-pytriton is not installed: pip install nvidia-pytriton==0.7.0") from exc
    root = Path(pytriton.__file__).parent / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonServerError(f"tritonserver binary not found at {binary}")
    backend_dir = root / "backends"
    stub = backend_dir / "python" / "triton_python_backend_stub"
    if not stub.exists():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        source = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not source.is_file():
            raise TritonServerError(f"no Python-backend stub for Python {version} in {source.parent}")
        tmp = stub.with_suffix(".tmp")
        shutil.copy2(source, tmp)
        os.replace(tmp, stub)  # NOTE: atomic, several servers may start at once
    libs_dir = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    return TritonInstall(binary=binary, backend_dir=backend_dir, libs_dir=libs_dir)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound together so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Refuse ports that are taken or repeated, before the model loads (tritonserver
    would find out seconds later and end with a gRPC stack trace in its log).

    ``ports`` maps an option name (``--grpc-port``) to its port; 0 means "pick one". The
    probe sets SO_REUSEADDR, as gRPC does, so only a listener makes a port taken.
    """
    _check_host(host)
    given = {name: port for name, port in ports.items() if port}
    seen: dict[int, str] = {}
    for name, port in given.items():
        if port in seen:
            raise TritonServerError(f"{name} and {seen[port]} are both {port}; give each its own port")
        seen[port] = name
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise TritonServerError(f"--host {host} is not an address of this machine") from None
                raise TritonServerError(
                    f"{name} {port} on {host} is not free ({exc.strerror}); pick another port "
                    "or stop what listens there"
                ) from None


def _check_host(host: str) -> None:
    """An IPv4 address or a name that resolves to one: tritonserver 2.51 joins its
    ``--grpc-address`` and port with a bare ``:`` (``:::8001`` for ``::``), so an IPv6
    host failed only after the model had loaded."""
    if ":" in host or host.startswith("["):
        raise TritonServerError(
            f"--host {host}: serve listens on IPv4 (tritonserver's --grpc-address takes no IPv6 "
            "here); use 127.0.0.1 (this machine) or 0.0.0.0 (every interface)"
        )
    try:
        socket.getaddrinfo(host, None, socket.AF_INET)
    except socket.gaierror as exc:
        raise TritonServerError(f"--host {host} cannot be resolved ({exc.strerror})") from None


def stub_search_dir() -> str:
    """The working directory tritonserver runs in, so that its Python stubs import from
    this environment.

    NOTE: the stub embeds the base interpreter with an isolated config: PYTHONPATH is
    ignored and sys.path is the base install's (whose numpy 2 crashes the 2.51 stub on
    BYTES tensors, see TRITON-NOTES). Its first sys.path entry is '' (the working
    directory, inherited from the server), so running the server inside this
    environment's site-packages makes numpy/torch/transformers resolve from here. The
    model shims then ``site.addsitedir`` it so .pth files (editable installs) apply too.
    """
    return sysconfig.get_paths()["purelib"]


#: The orchestrator's LLM address (gRPC loopback); set to the started server's own port.
LLM_URL_ENV = "PADELLM_LLM_URL"


def loopback_host(host: str) -> str:
    """The address this host dials to reach a server bound to ``host`` (a wildcard: 127.0.0.1)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its Python stubs need."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [libdir, str(install.libs_dir), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in parts if p)
    return env


class TritonServer:
    """A tritonserver child process on 127.0.0.1; a context manager.

    Args:
        model_repository: the assembled repository.
        grpc_port, http_port, metrics_port: 0 picks free ports.
        log_path: server log file (default: a temp file).
        startup_timeout: seconds to wait for ``/v2/health/ready``.
        host: address to listen on.
        extra_args: more tritonserver flags.
        env: the server's environment (default: ours, plus library paths).
        exit_timeout_s: ``--exit-timeout-secs``, the grace period of a shutdown.
        die_with_parent: on Linux, the server gets SIGTERM if this process dies without
            stopping it (``kill -9``, an OOM kill), so no orphan keeps the ports. Only armed
            when started from the main thread (the kernel ties it to the starting thread).
        drainable: run in explicit model-control mode (every model loaded at start) so
            ``drain()`` can unload models one by one, each after its requests in flight.
            The model-repository API is then restricted to a header only we know, so no
            client can load or unload models.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike,
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        log_path: str | os.PathLike | None = None,
        startup_timeout: float = 300.0,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        exit_timeout_s: int = 5,
        die_with_parent: bool = True,
        drainable: bool = False,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        ports = free_ports(3)
        self.grpc_port = grpc_port or ports[0]
        self.http_port = http_port or ports[1]
        self.metrics_port = metrics_port or ports[2]
        self.host = host
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        self.exit_timeout_s = exit_timeout_s
        self.env = env
        self.die_with_parent = die_with_parent
        self.drainable = drainable
        self._admin = {"padellm-admin": secrets.token_hex(16)} if drainable else {}
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path).resolve()
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._shm_before: set[str] = set()

    # -- addresses -----------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def loopback_grpc_url(self) -> str:
        """The gRPC address as seen from this host."""
        return f"{loopback_host(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    # -- lifecycle -----------------------------------------------------------------
    def command(self, install: TritonInstall) -> list[str]:
        return [
            str(install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={install.backend_dir}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--disable-auto-complete-config",
            "--log-verbose=0",
            # NOTE: after SIGTERM the server waits this long for models to unload; a
            # Python model that keeps a reference alive would otherwise hold it 30 s.
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *self._admin_args(),
            *self.extra_args,
        ]

    def _admin_args(self) -> list[str]:
        if not self.drainable:
            return []
        ((key, value),) = self._admin.items()
        return [
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--http-restricted-api=model-repository:{key}={value}",
            f"--grpc-restricted-protocol=model-repository:{key}={value}",
        ]

    def start(self) -> TritonServer:
        """Start the server and wait until it reports ready."""
        if self._proc is not None:
            raise TritonServerError("server already started")
        install = find_tritonserver()
        cmd = self._guarded(self.command(install))
        logger.info("starting %s (log: %s)", " ".join(cmd), self.log_path)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._shm_before = shm_region_names()
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**server_env(install, self.env), LLM_URL_ENV: self.loopback_grpc_url},
            cwd=stub_search_dir(),
            start_new_session=True,  # NOTE: Ctrl-C goes to us; we stop it cleanly
        )
        try:
            self.wait_ready(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _guarded(self, cmd: list[str]) -> list[str]:
        """``cmd`` behind die_with_parent.py, when that is asked for and can work."""
        if not (self.die_with_parent and sys.platform.startswith("linux")):
            return cmd
        if threading.current_thread() is not threading.main_thread():
            logger.debug("started from a worker thread: not tying tritonserver to it")
            return cmd
        launcher = Path(__file__).with_name("die_with_parent.py")
        # NOTE: -I -S: the launcher is stdlib only; the exec'd server gets our full env.
        return [sys.executable, "-I", "-S", str(launcher), str(os.getpid()), "--", *cmd]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll() if self._proc else None
            if code is not None:
                raise TritonServerError(
                    f"tritonserver exited with status {code} before it was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                raise TritonServerError(
                    f"tritonserver not ready after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def is_ready(self) -> bool:
        """``GET /v2/health/ready`` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def model_states(self) -> dict[str, str]:
        """``{model: state}`` from the repository index (READY, UNLOADING, UNAVAILABLE...)."""
        request = urllib.request.Request(
            f"{self.http_url}/v2/repository/index", data=b"{}", method="POST", headers=self._admin
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            return {m["name"]: m.get("state", "") for m in json.loads(resp.read())}

    def drain(self, models: list[str], timeout: float) -> DrainResult:
        """Unload ``models`` in order, each once its requests in flight are answered.

        New requests to a model are refused (NOT_FOUND) from the moment its unload starts;
        the ones in flight run to the end, and the models they call stay loaded. A model
        that tritonserver keeps UNLOADING with nothing in flight (``_idle`` for
        ``IDLE_GRACE_S``) is not waited for: a gRPC stream a client cancelled can hold it,
        which no wait ends (tritonserver 2.51; cf. triton-inference-server/server#7626).
        ``stop()`` then cuts what is left.
        """
        if not self.drainable:
            raise TritonServerError("drain() needs TritonServer(drainable=True)")
        deadline = time.monotonic() + timeout
        held: list[str] = []
        for i, model in enumerate(models):
            request = urllib.request.Request(
                f"{self.http_url}/v2/repository/models/{model}/unload",
                data=b"{}", method="POST", headers=self._admin,
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=5):
                pass
            idle_since = None
            while (state := self.model_states().get(model)) in ("READY", "UNLOADING"):
                now = time.monotonic()
                if state == "UNLOADING" and self._idle(model):
                    idle_since = now if idle_since is None else idle_since
                    if now - idle_since >= IDLE_GRACE_S:
                        held.append(model)
                        break
                else:
                    idle_since = None
                if now > deadline:
                    return DrainResult(busy=models[i:], held=held)
                time.sleep(0.1)
        return DrainResult(busy=[], held=held)

    def _idle(self, model: str) -> bool:
        """Nothing of ``model``'s left, by the metrics: no request queued by Triton and none
        being answered (the orchestrator's ``padellm_requests_in_flight``). Unknown (no
        metrics, a model without the gauge) is not idle."""
        try:
            samples = read_samples(self.metrics_url, timeout=2)
        except OSError:
            return False
        in_flight = metric_sum(samples, REQUESTS_IN_FLIGHT, model=model)
        pending = metric_sum(samples, "nv_inference_pending_request_count", model=model)
        return in_flight == 0 and pending == 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, num_lines: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-num_lines:])

    def wait(self) -> int:
        """Block until the server exits; its exit status."""
        if self._proc is None:
            raise TritonServerError("server not started")
        return self._proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver ignored SIGTERM for %.0f s; killing it", timeout)
                os.killpg(proc.pid, signal.SIGKILL)  # NOTE: its own session: stubs too
                proc.wait()
        if proc is not None:
            self._sweep_own_shm_regions(proc.pid)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _sweep_own_shm_regions(self, group: int) -> None:
        """Remove the stubs' /dev/shm regions that appeared while this server ran and that
        nobody uses now. Why: a stub that tritonserver's exit timeout cut off (a model held
        by a cancelled stream) ends without unlinking its 1 MB region (``shm_sweep``). Its
        stubs get up to ``_STUB_EXIT_WAIT_S`` to end first."""
        deadline = time.monotonic() + _STUB_EXIT_WAIT_S
        with contextlib.suppress(ProcessLookupError, PermissionError):
            while time.monotonic() < deadline:
                os.killpg(group, 0)  # NOTE: raises once no process of the group is left
                time.sleep(0.1)
        new = shm_region_names() - self._shm_before
        if new:
            sweep_stale_shm_regions(names=new, min_age_s=_FRESH_REGION_S)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
