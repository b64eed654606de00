"""``padellm-ner serve``: assemble the model repository and run tritonserver until stopped."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from padellm_ner.errors import InvalidInputError
from padellm_ner.labels import check_labels
from padellm_ner.serving.loopback_tls import LoopbackTLS, check_loopback, loopback_tls
from padellm_ner.serving.shm_sweep import sweep_stale_shm_regions
from padellm_ner.serving.temp_repo import make_temp_repo, remove_temp_repo, sweep_stale_repos
from padellm_ner.serving.triton_server import (
    TritonServer,
    TritonServerError,
    check_ports_free,
    find_tritonserver,
    loopback_host,
)

__all__ = ["run_serve"]

logger = logging.getLogger(__name__)

#: the served orchestrator (model_repository/padellm): drained first on stop
ORCHESTRATOR_MODEL = "padellm"


class _Terminated(Exception):
    """SIGTERM arrived."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


def _drain(server: TritonServer | None, timeout: float) -> None:
    """Let the requests in flight finish before the server stops (up to ``timeout`` s).

    Why: on a plain SIGTERM tritonserver unloads every model at once; the ``llm`` model,
    idle between a sentence's count and mention phases, went first, and every extraction
    in flight failed. The orchestrator is unloaded first, so it refuses new requests and
    answers the ones it has while ``llm`` still serves them. A second Ctrl-C cuts it short.
    """
    if server is None or not server.running or timeout <= 0:
        return
    print(f"padellm-ner: finishing the requests in flight (up to {timeout:g} s; Ctrl-C again to cut)", flush=True)
    try:
        result = server.drain([ORCHESTRATOR_MODEL], timeout)
        left, held = result.busy, result.held
    except (KeyboardInterrupt, _Terminated):
        left, held = ["(cut short)"], []
    except (OSError, TritonServerError) as exc:  # NOTE: best effort; stop() still stops it
        left, held = [f"({exc})"], []
    if held:
        print(f"padellm-ner: nothing left in flight; tritonserver still holds {', '.join(held)} "
              "(a gRPC stream a client cancelled); stopping", flush=True)  # fmt: skip
    if left:
        print(f"padellm-ner: still busy after the drain: {', '.join(left)}; stopping anyway", flush=True)


def _check_tensorrtllm(engine_dir: str | None) -> None:
    """``--llm-backend tensorrtllm`` needs an engine and a server that has the backend;
    the tritonserver bundled with nvidia-pytriton has only the Python backend."""
    if not engine_dir:
        raise InvalidInputError("--llm-backend tensorrtllm needs --engine-dir (the TensorRT-LLM engine folder)")
    if not Path(engine_dir).is_dir():
        raise InvalidInputError(f"--engine-dir {engine_dir} is not a folder")
    try:
        backends = find_tritonserver().backend_dir
    except TritonServerError as exc:
        raise InvalidInputError(str(exc)) from exc
    if not (backends / "tensorrtllm").is_dir():
        raise InvalidInputError(
            f"this tritonserver ({backends.parent}) has no tensorrtllm backend; assemble the "
            "repository with `python -m padellm_build.assemble --llm-backend tensorrtllm "
            "--engine-dir DIR` and run it in NVIDIA's TensorRT-LLM Triton container "
            "(build/trtllm/README.md)"
        )


def _require_files(options: dict[str, str | None]) -> None:
    """Each given ``--option PATH`` names a file (checked before the model loads)."""
    for option, path in options.items():
        if path is not None and not Path(path).is_file():
            raise InvalidInputError(f"{option} {path} is not a file")


def _tls_args(args: argparse.Namespace) -> list[str]:
    """tritonserver's gRPC TLS flags from ``--grpc-server-cert/-key`` (and
    ``--grpc-root-cert``: mutual TLS), checked up front; [] without TLS."""
    cert, key, root = (getattr(args, name, None) for name in ("grpc_server_cert", "grpc_server_key", "grpc_root_cert"))
    if not (cert or key or root):
        return []
    if not (cert and key):
        raise InvalidInputError("TLS needs both --grpc-server-cert and --grpc-server-key")
    _require_files({"--grpc-server-cert": cert, "--grpc-server-key": key, "--grpc-root-cert": root})
    flags = ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(cert).resolve()}",
             f"--grpc-server-key={Path(key).resolve()}"]  # fmt: skip
    if root:
        flags += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={Path(root).resolve()}"]
    return flags


def _loopback(args: argparse.Namespace, host: str) -> LoopbackTLS:
    """The orchestrator's TLS to its own server (``--grpc-loopback-*``, checked up front)."""
    ca, cert, key = (getattr(args, name, None) for name in ("grpc_loopback_ca", "grpc_loopback_cert", "grpc_loopback_key"))
    if (cert or key) and not args.grpc_root_cert:
        raise InvalidInputError("--grpc-loopback-cert/-key are for mutual TLS; give --grpc-root-cert too")
    if bool(cert) != bool(key):
        raise InvalidInputError("--grpc-loopback-cert and --grpc-loopback-key go together")
    _require_files({"--grpc-loopback-ca": ca, "--grpc-loopback-cert": cert, "--grpc-loopback-key": key})
    return loopback_tls(host, args.grpc_server_cert, args.grpc_server_key, args.grpc_root_cert, ca, cert, key)


def _check_loopback(server: TritonServer, tls: LoopbackTLS) -> None:
    """Refuse to serve when the orchestrator could not reach its own TLS port."""
    reason = check_loopback(server.loopback_grpc_url, tls)
    if reason is not None:
        hint = ("give --grpc-loopback-cert/--grpc-loopback-key, a client certificate --grpc-root-cert signed, "
                "or " if tls.client_cert else "give ")  # fmt: skip
        raise InvalidInputError(
            f"the orchestrator cannot reach this server's TLS gRPC port {server.loopback_grpc_url}: {reason}\n"
            f"{hint}--grpc-loopback-ca, the CA that signed --grpc-server-cert (or --llm-transport bls)"
        )


def run_serve(args: argparse.Namespace) -> int:
    """Assemble (a temp dir unless ``--repository``), start tritonserver, wait for Ctrl-C/SIGTERM."""
    from padellm_build.assemble import assemble_repository

    try:
        check_ports_free(
            args.host,
            {"--grpc-port": args.grpc_port, "--http-port": args.http_port, "--metrics-port": args.metrics_port},
        )
    except TritonServerError as exc:
        raise InvalidInputError(str(exc)) from exc
    if args.labels is not None:
        # NOTE: the served default labels follow the rules a request's LABELS do
        args.labels = check_labels(args.labels, "--labels")
    if args.llm_backend == "python":
        from padellm_ner.models import pick_device

        if getattr(args, "engine_dir", None):
            raise InvalidInputError("--engine-dir goes with --llm-backend tensorrtllm")
        pick_device(args.device)  # NOTE: the llm model would fail to load, seconds later
    else:
        _check_tensorrtllm(getattr(args, "engine_dir", None))
    tls = _tls_args(args)
    transport = getattr(args, "llm_transport", None) or "grpc"
    loopback_given = [f"--grpc-loopback-{n}" for n in ("ca", "cert", "key") if getattr(args, f"grpc_loopback_{n}", None)]
    if loopback_given and not (tls and transport == "grpc"):
        raise InvalidInputError(
            f"{', '.join(loopback_given)}: the loopback's TLS, for a TLS server (--grpc-server-cert) "
            "with the gRPC transport"
        )
    llm_tls = _loopback(args, loopback_host(args.host)) if tls and transport == "grpc" else None
    temp = args.repository is None
    if not temp and Path(args.repository).exists() and not Path(args.repository).is_dir():
        raise InvalidInputError(f"--repository {args.repository} is a file; give a folder")
    if temp:
        sweep_stale_repos()  # NOTE: what SIGKILLed serves left behind
    sweep_stale_shm_regions()  # NOTE: and what stubs that ended without an unload left
    repo = make_temp_repo() if temp else Path(args.repository)
    ours = (repo / "padellm" / "config.pbtxt").exists()
    if not temp and repo.exists() and any(repo.iterdir()) and not ours:
        raise InvalidInputError(f"--repository {repo} is not empty and not a padellm-ner repository")
    server = None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        assemble_repository(
            repo,
            args.model,
            args.labels,
            llm_backend=args.llm_backend,
            llm_transport=transport,
            llm_tls=llm_tls,
            batch_window_us=args.batch_window_us,
            count_hedge=getattr(args, "count_hedge", None),
            device=args.device,
            dtype=args.dtype,
            max_batch_size=args.max_batch_size,
            engine_dir=getattr(args, "engine_dir", None),
            overwrite=ours,
        )
        server = TritonServer(
            repo,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            log_path=repo.parent / f"{repo.name}-tritonserver.log" if temp else repo / "tritonserver.log",
            # NOTE: loopback by default; --host 0.0.0.0 serves the network
            host=args.host,
            startup_timeout=900,
            extra_args=tls,
            drainable=True,
        )
        print(f"padellm-ner: starting tritonserver (model {args.model}); log {server.log_path}", flush=True)
        server.start()
        if llm_tls is not None:
            _check_loopback(server, llm_tls)
        print(
            f"padellm-ner: serving model 'padellm' on gRPC{' (TLS)' if tls else ''} :{server.grpc_port}, "
            f"HTTP :{server.http_port}, metrics :{server.metrics_port} (Ctrl-C to stop)",
            flush=True,
        )
        code = server.wait()
        raise TritonServerError(f"tritonserver exited with status {code}; log {server.log_path}:\n{server.log_tail()}")
    except (KeyboardInterrupt, _Terminated):
        print("padellm-ner: stopping", flush=True)
        _drain(server, float(getattr(args, "drain_timeout", 25.0)))
        return 0
    except (TritonServerError, FileExistsError, FileNotFoundError) as exc:
        raise InvalidInputError(str(exc)) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            server.stop()
        if temp:
            remove_temp_repo(repo)
