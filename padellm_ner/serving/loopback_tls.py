"""TLS for the orchestrator's gRPC loopback.

The orchestrator calls the LLM model through its own tritonserver's gRPC port. When that
port serves TLS (``serve --grpc-server-cert``), and maybe mutual TLS (``--grpc-root-cert``),
the orchestrator is a client like any other: it must trust the server's certificate,
name the host the certificate was issued to, and under mutual TLS present a certificate
of its own. ``LoopbackTLS`` carries those choices from ``serve`` through the orchestrator's
config parameters (``llm_tls_*``) to ``GrpcTransport``; ``check_loopback`` tries them on
the started server, so a choice that cannot work is an error at start-up, not on every
request.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoopbackTLS", "certificate_names", "loopback_tls", "check_loopback"]

#: tritonclient's own message limits, kept when the client gets our channel options.
_MAX_MESSAGE = 2**31 - 1


@dataclass(frozen=True)
class LoopbackTLS:
    """How the orchestrator's gRPC client speaks TLS to its own server.

    Attributes:
        root_certs: PEM files whose certificates are trusted (joined into one bundle).
        client_cert: mutual TLS: the certificate (chain) the orchestrator presents.
        client_key: its private key.
        server_name: the name to verify the server's certificate against
            (``grpc.ssl_target_name_override``) when the address is not one it names.
    """

    root_certs: tuple[str, ...]
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None

    def params(self) -> dict[str, str]:
        """The orchestrator's ``llm_tls_*`` config parameters (paths joined by ``os.pathsep``)."""
        return {
            "llm_tls_root_certs": os.pathsep.join(self.root_certs),
            "llm_tls_client_cert": self.client_cert or "",
            "llm_tls_client_key": self.client_key or "",
            "llm_tls_server_name": self.server_name or "",
        }

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> LoopbackTLS | None:
        """The parameters ``params()`` wrote; ``None`` (plaintext) when no root is set."""
        roots = tuple(p for p in (params.get("llm_tls_root_certs") or "").split(os.pathsep) if p)
        if not roots:
            return None
        return cls(
            roots,
            params.get("llm_tls_client_cert") or None,
            params.get("llm_tls_client_key") or None,
            params.get("llm_tls_server_name") or None,
        )

    def client_kwargs(self) -> dict:
        """Keyword arguments of ``tritonclient.grpc.InferenceServerClient``."""
        import grpc

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        creds = grpc.ssl_channel_credentials(
            root_certificates=b"\n".join(Path(p).read_bytes() for p in self.root_certs),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_cert),
        )
        options = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return {"creds": creds, "channel_args": options}


def certificate_names(cert: str | Path) -> tuple[list[str], list[str]]:
    """The DNS names (SAN, else the subject's CN) and IP addresses a PEM certificate is for.

    ``([], [])`` when the file cannot be decoded: the start-up check then says whether the
    address works without a name.
    """
    try:
        info = ssl._ssl._test_decode_cert(str(cert))  # NOTE: stdlib; no `cryptography` here
    except (ssl.SSLError, OSError, AttributeError):
        return [], []
    sans = info.get("subjectAltName", ())
    dns = [value for kind, value in sans if kind == "DNS"]
    ips = [value.strip() for kind, value in sans if kind == "IP Address"]
    if not sans:  # NOTE: RFC 6125: the CN counts only without a SAN
        dns = [value for rdn in info.get("subject", ()) for key, value in rdn if key == "commonName"]
    return dns, ips


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def loopback_tls(
    host: str,
    server_cert: str | Path,
    server_key: str | Path,
    client_ca: str | Path | None = None,
    loopback_ca: str | Path | None = None,
    loopback_cert: str | Path | None = None,
    loopback_key: str | Path | None = None,
) -> LoopbackTLS:
    """The orchestrator's TLS for a server started with these certificates.

    Trusted: ``loopback_ca`` when given, else the server certificate itself (a
    self-signed one, or a file that holds its chain up to the root) and ``client_ca``
    (one CA often signs the server's and the clients' certificates). Under mutual TLS
    (``client_ca``) the orchestrator presents ``loopback_cert``/``loopback_key``, else
    the server's own pair, which the server accepts when ``client_ca`` signed it.

    Args:
        host: the address the orchestrator dials (``TritonServer.loopback_grpc_url``'s host).
    """
    absolute = lambda p: str(Path(p).resolve())  # noqa: E731
    if loopback_ca:
        roots = (absolute(loopback_ca),)
    else:
        roots = tuple(dict.fromkeys(absolute(p) for p in (server_cert, client_ca) if p))
    cert = key = None
    if client_ca:
        cert, key = absolute(loopback_cert or server_cert), absolute(loopback_key or server_key)
    dns, ips = certificate_names(server_cert)
    named = host in dns or any(_same_ip(host, ip) for ip in ips)
    server_name = None if named or not dns else next((n for n in dns if "*" not in n), dns[0].replace("*", "loopback", 1))
    return LoopbackTLS(roots, cert, key, server_name)


def check_loopback(url: str, tls: LoopbackTLS, timeout: float = 15.0) -> str | None:
    """Connect to ``url`` as the orchestrator will; the reason it fails, or ``None``."""
    import tritonclient.grpc as grpcclient

    try:
        client = grpcclient.InferenceServerClient(url, **tls.client_kwargs())
    except Exception as exc:  # NOTE: an unreadable or malformed PEM
        return str(exc)
    try:
        return None if client.is_server_live(client_timeout=timeout) else "the server is not live"
    except Exception as exc:
        return exc.message() if hasattr(exc, "message") else str(exc)
    finally:
        client.close()
