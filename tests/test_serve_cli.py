"""``padellm-ner serve`` then ``padellm-ner extract --server``, as the README says."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from padellm_ner.engine_metrics import REQUESTS_IN_FLIGHT
from padellm_ner.prom_text import metric_sum, read_samples
from padellm_ner.serving.triton_server import free_ports

CLI = [sys.executable, "-m", "padellm_ner.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TLS_READY = "serving model 'padellm' on gRPC (TLS)"


@contextlib.contextmanager
def _serving(tmp_path: Path, *args: str, marker: str = "serving model 'padellm'") -> Iterator[int]:
    """``padellm-ner serve --model smollm2-135m ARGS`` on free ports until its ready line;
    yields the gRPC port; then SIGTERM, and the exit status must be 0 (a clean stop)."""
    grpc_port, http_port, metrics_port = free_ports(3)
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        serve = subprocess.Popen(
            [*CLI, "serve", "--model", "smollm2-135m", "--grpc-port", str(grpc_port),
             "--http-port", str(http_port), "--metrics-port", str(metrics_port), *args],
            stdout=log, stderr=subprocess.STDOUT, env=ENV,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while marker not in log_path.read_text():
                assert serve.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "serve did not become ready"
                time.sleep(1)
            yield grpc_port
        finally:
            serve.send_signal(signal.SIGTERM)
            code = serve.wait(timeout=120)
    assert code == 0, log_path.read_text()
    assert "stopping" in log_path.read_text()


@pytest.mark.slow
def test_serve_then_extract_through_the_server(tmp_path) -> None:
    text = "Japan beat Korea in Tokyo ."
    with _serving(tmp_path, "--repository", str(tmp_path / "repo")) as port:
        server = ["--server", f"127.0.0.1:{port}"]
        proc = subprocess.run([*CLI, "extract", text, *server, "--json"],
                              capture_output=True, text=True, timeout=300, env=ENV)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        for e in json.loads(proc.stdout):
            assert e["start"] is None or text[e["start"] : e["end"]] == e["text"]
        bad = subprocess.run([*CLI, "extract", "x" * 5000, *server],
                             capture_output=True, text=True, timeout=300, env=ENV)  # fmt: skip
        assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr, bad.stderr
        # a JSONL job through the server: lines in flight together, an over-long one
        # refused on its own line (its batch is redone line by line)
        src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        src.write_text("\n".join(json.dumps(t) for t in [text, "x" * 5000, "EU rejects German call ."]) + "\n")
        job = subprocess.run(
            [*CLI, "extract", "--input", str(src), "--output", str(out), *server, "--batch-sentences", "3"],
            capture_output=True, text=True, timeout=300, env=ENV,
        )  # fmt: skip
        assert job.returncode == 1, job.stderr  # NOTE: 1: some lines have errors
        records = [json.loads(x) for x in out.read_text().splitlines()]
        assert [("error" in r) for r in records] == [False, True, False]
        assert "INVALID_ARGUMENT" in records[1]["error"] and records[2]["text"] == "EU rejects German call ."


@pytest.mark.slow
def test_sigterm_lets_the_requests_in_flight_finish(tmp_path) -> None:
    """On SIGTERM ``serve`` unloads the orchestrator first: new requests are refused, the
    ones in flight are answered (``llm`` went first and failed them all), then it exits 0."""
    import threading

    from padellm_client import NERClient, NotFoundError

    grpc_port, http_port, metrics_port = free_ports(3)
    log_path = tmp_path / "serve.log"
    text = " ".join(["Angela Merkel met Barack Obama in Berlin and Paris ."] * 6)
    # its temporary repository goes under TMPDIR, where a SIGKILLed serve left one
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stale = tmp / "padellm-repo-stale"
    (stale / "padellm").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale.with_name(stale.name + ".owner").write_text(json.dumps({"pid": dead.pid, "start": "0"}))
    with log_path.open("w") as log:
        serve = subprocess.Popen(
            [*CLI, "serve", "--model", "smollm2-135m", "--grpc-port", str(grpc_port),
             "--http-port", str(http_port), "--metrics-port", str(metrics_port)],
            stdout=log, stderr=subprocess.STDOUT, env={**ENV, "TMPDIR": str(tmp)},
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while "serving model 'padellm'" not in log_path.read_text():
                assert serve.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "serve did not become ready"
                time.sleep(1)
            assert not stale.exists()
            (repo,) = (p for p in tmp.glob("padellm-repo-*") if p.is_dir())
            assert (repo / "padellm" / "config.pbtxt").is_file()
            url = f"127.0.0.1:{grpc_port}"
            metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            with NERClient(url, timeout=300) as client:
                expected = client.extract(text)
                assert metric_sum(read_samples(metrics), REQUESTS_IN_FLIGHT, model="padellm") == 0
                results: list = []

                def one() -> None:
                    try:
                        results.append(client.extract(text))
                    except Exception as exc:  # noqa: BLE001 - the test reports it
                        results.append(exc)

                threads = [threading.Thread(target=one) for _ in range(8)]
                for t in threads:
                    t.start()
                # NOTE: SIGTERM once all eight are in flight, by the gauge the drain reads
                # (alone, one such request is over in under a second here: a fixed sleep
                # let them finish before the signal and the test prove nothing)
                while metric_sum(read_samples(metrics), REQUESTS_IN_FLIGHT, model="padellm") < len(threads):
                    assert all(t.is_alive() for t in threads), results
                    time.sleep(0.02)
                serve.send_signal(signal.SIGTERM)
                while "finishing the requests in flight" not in log_path.read_text():
                    assert serve.poll() is None, log_path.read_text()
                    time.sleep(0.1)
                with pytest.raises(NotFoundError):
                    client.extract("Japan .")  # refused while the others finish
                for t in threads:
                    t.join(timeout=300)
            assert results == [expected] * len(threads), results
            assert serve.wait(timeout=120) == 0, log_path.read_text()
            assert "still busy" not in log_path.read_text() and "still holds" not in log_path.read_text()
            assert not repo.exists() and not repo.with_name(repo.name + ".owner").exists()
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)


#: a client that sends a request Triton refuses (TEXT as INT32) on a stream, sees the
#: error, then dies without closing the stream
_DROPPER = """
import sys, time
import numpy as np
import tritonclient.grpc as g
client = g.InferenceServerClient(sys.argv[1])
client.start_stream(callback=lambda result, error: print("refused" if error else "answered", flush=True))
text = g.InferInput("TEXT", [1], "INT32")
text.set_data_from_numpy(np.array([1], dtype=np.int32))
client.async_stream_infer("padellm", [text])
time.sleep(600)
"""


@pytest.mark.slow
def test_a_stream_dropped_after_an_error_does_not_hold_the_drain(tmp_path) -> None:
    """Such a stream keeps tritonserver from unloading ``padellm`` for good, with nothing
    in flight (the model stays UNLOADING): the drain waited its whole --drain-timeout.
    It now sees the orchestrator idle (its in-flight gauge and Triton's pending count at
    0) and stops."""
    with _serving(tmp_path, "--drain-timeout", "110") as port:
        dropper = subprocess.Popen([sys.executable, "-c", _DROPPER, f"127.0.0.1:{port}"],
                                   stdout=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
        try:
            assert dropper.stdout.readline().strip() == "refused"
        finally:
            dropper.kill()
            dropper.wait()
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    log = (tmp_path / "serve.log").read_text()
    assert "tritonserver still holds padellm" in log and "still busy" not in log, log
    assert took < 60, f"serve took {took:.0f} s to stop"


@pytest.mark.slow
def test_sdk_calls_that_fail_or_are_left_early_leave_every_model_free_to_unload(tmp_path) -> None:
    """The SDK cancelled a call's gRPC stream after any error and when left early (a break
    out of ``stream()``, the other texts of a failed ``extract_many``). tritonserver 2.51
    then keeps that model loaded for good, about one time in two (always after an error
    Triton raised itself): serve's drain reported it held, tritonserver's stop ran out its
    exit timeout, and repeated breaks deadlocked the server. The SDK now half-closes and
    lets the server finish; nothing may be held after these."""
    import asyncio

    from padellm_client import AsyncNERClient, InvalidArgumentError, NERClient

    text = "Angela Merkel met Barack Obama in Berlin and Paris ."
    with _serving(tmp_path) as port:
        url = f"127.0.0.1:{port}"
        with NERClient(url, model_name="llm", timeout=60) as wrong, pytest.raises(InvalidArgumentError):
            wrong.extract("Japan .")
        with NERClient(url, timeout=60) as client:
            for _ in range(8):
                for _result in client.stream(text):
                    break
            with pytest.raises(InvalidArgumentError):
                client.extract_many([text, text, "", text], concurrency=4)

        async def extract_async() -> None:
            async with AsyncNERClient(url, timeout=60) as client:
                for _ in range(8):
                    async for _result in client.stream(text):
                        break
            async with AsyncNERClient(url, model_name="llm", timeout=60) as wrong:
                await wrong.extract("Japan .")

        with pytest.raises(InvalidArgumentError):
            asyncio.run(extract_async())
        with NERClient(url, timeout=60) as client:
            assert isinstance(client.extract(text), list)  # still serving
    serve_log = (tmp_path / "serve.log").read_text()
    assert "still holds" not in serve_log and "still busy" not in serve_log, serve_log
    server_log = Path(re.search(r"log (\S+-tritonserver\.log)", serve_log).group(1)).read_text()
    assert "Exit timeout expired" not in server_log, server_log[-2000:]
    assert "successfully unloaded 'llm'" in server_log


def test_serve_refuses_a_taken_or_repeated_port_before_the_model_loads(tmp_path, capsys) -> None:
    import socket

    from padellm_ner.cli import main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "padellm_ner.cli", "serve", "--grpc-port", str(taken),
             "--repository", str(tmp_path / "repo")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"--grpc-port {taken} on 127.0.0.1 is not free" in proc.stderr, proc.stderr
    # NOTE: refused before anything was assembled (no repository), so no model loaded
    assert "Traceback" not in proc.stderr and not (tmp_path / "repo").exists()
    free = free_ports(1)[0]
    assert main(["serve", "--grpc-port", str(free), "--http-port", str(free)]) == 2
    assert f"--http-port and --grpc-port are both {free}" in capsys.readouterr().err


def test_serve_options_that_cannot_work_are_refused_before_the_model_loads(tmp_path, capsys) -> None:
    """Each of these used to start (or crash) and fail later, or be ignored in silence."""
    from padellm_ner.cli import main

    a_file = tmp_path / "afile"
    a_file.write_text("x")
    cases = [
        (["--repository", str(a_file)], "is a file; give a folder"),
        (["--labels", "LOC", ""], "--labels[1] is empty"),
        (["--labels", "X\nY"], "--labels[0] contains the control character"),
        (["--host", "::"], "serve listens on IPv4"),
        (["--host", "[::1]"], "serve listens on IPv4"),
        (["--host", "nosuch.invalid"], "--host nosuch.invalid cannot be resolved"),
        (["--host", "192.0.2.77"], "is not an address of this machine"),
        (["--batch-window-us", "100000000000000000"], "must be between 0 and 10000000"),
        (["--engine-dir", str(tmp_path)], "--engine-dir goes with --llm-backend tensorrtllm"),
        (["--grpc-loopback-ca", str(a_file)], "--grpc-loopback-ca: the loopback's TLS, for a TLS server"),
    ]
    for extra, message in cases:
        try:
            code = main(["serve", *extra])
        except SystemExit as exc:  # NOTE: argparse's own usage errors
            code = exc.code
        assert code == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)


def _self_signed(folder) -> tuple:
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign",
             "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


def _signed(folder: Path, ca: tuple[Path, Path], name: str, san: str) -> tuple[Path, Path]:
    """A certificate (and key) ``ca`` signed for ``name`` with subjectAltName ``san``."""
    cert, key, csr, ext = (folder / f"{name}.{kind}" for kind in ("pem", "key", "csr", "ext"))
    ext.write_text(f"subjectAltName={san}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "1", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return cert, key


@pytest.mark.slow
def test_serve_over_tls_with_the_client_sdk(tmp_path) -> None:
    """A real tritonserver with gRPC TLS (``serve --grpc-server-cert/--grpc-server-key``);
    the orchestrator reaches the llm model over its gRPC loopback in TLS too (the default
    transport; a failed loopback would fail every extraction): the SDK with ``ssl=True``
    and the CA extracts, so does ``extract --root-cert``; a plaintext client cannot connect."""
    from padellm_client import APIConnectionError, NERClient

    cert, key = _self_signed(tmp_path)
    text = "Japan beat Korea in Tokyo ."
    tls = ("--grpc-server-cert", str(cert), "--grpc-server-key", str(key))
    with _serving(tmp_path, *tls, marker=TLS_READY) as port:
        with NERClient(f"127.0.0.1:{port}", ssl=True, root_certificates=cert, timeout=120) as client:
            assert client.is_ready()
            for e in client.extract(text, labels=["LOC"]):
                assert e.start is None or text[e.start : e.end] == e.text
        with NERClient(f"127.0.0.1:{port}", timeout=20) as plain, pytest.raises(APIConnectionError):
            plain.extract(text, labels=["LOC"])
        cli = subprocess.run(
            [*CLI, "extract", text, "--labels", "LOC", "--json", "--server", f"127.0.0.1:{port}",
             "--root-cert", str(cert)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert cli.returncode == 0 and isinstance(json.loads(cli.stdout), list), cli.stderr


@pytest.mark.slow
def test_serve_over_mutual_tls(tmp_path) -> None:
    """``--grpc-root-cert``: a client must present a certificate the CA signed (here the
    self-signed one, as its own CA); one without is refused. The orchestrator's loopback
    presents the server's own certificate, which that CA signed."""
    from padellm_client import APIConnectionError, NERClient

    cert, key = _self_signed(tmp_path)
    tls = ("--grpc-server-cert", str(cert), "--grpc-server-key", str(key), "--grpc-root-cert", str(cert))
    with _serving(tmp_path, *tls, marker=TLS_READY) as port:
        url = f"127.0.0.1:{port}"
        with NERClient(url, ssl=True, root_certificates=cert, private_key=key, certificate_chain=cert,
                       timeout=120) as client:  # fmt: skip
            assert isinstance(client.extract("Japan beat Korea .", labels=["LOC"]), list)
        with NERClient(url, ssl=True, root_certificates=cert, timeout=20) as anonymous, pytest.raises(
            APIConnectionError
        ):
            anonymous.extract("Japan beat Korea .", labels=["LOC"])
        cli = subprocess.run(
            [*CLI, "extract", "Japan beat Korea .", "--labels", "LOC", "--json", "--server", url,
             "--root-cert", str(cert), "--client-cert", str(cert), "--client-key", str(key)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert cli.returncode == 0 and isinstance(json.loads(cli.stdout), list), cli.stderr


def test_serve_tls_options_are_checked_up_front(tmp_path, capsys) -> None:
    from padellm_ner.cli import main

    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    assert main(["serve", "--grpc-server-cert", str(cert)]) == 2
    assert "needs both --grpc-server-cert and --grpc-server-key" in capsys.readouterr().err
    assert main(["serve", "--grpc-server-cert", str(cert), "--grpc-server-key", str(tmp_path / "no.pem")]) == 2
    assert "--grpc-server-key" in capsys.readouterr().err
    tls = ["serve", "--grpc-server-cert", str(cert), "--grpc-server-key", str(cert)]
    assert main([*tls, "--grpc-loopback-cert", str(cert), "--grpc-loopback-key", str(cert)]) == 2
    assert "are for mutual TLS; give --grpc-root-cert too" in capsys.readouterr().err
    assert main([*tls, "--grpc-root-cert", str(cert), "--grpc-loopback-cert", str(cert)]) == 2
    assert "--grpc-loopback-cert and --grpc-loopback-key go together" in capsys.readouterr().err
    assert main([*tls, "--grpc-loopback-ca", str(tmp_path / "no-ca.pem")]) == 2
    assert "--grpc-loopback-ca" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_mutual_tls_with_separate_server_and_client_cas(tmp_path) -> None:
    """One CA signs the server's certificate, for ``svc.internal`` only (not 127.0.0.1,
    where the orchestrator dials); another signs the clients'. The orchestrator's loopback
    verifies the name (``grpc.ssl_target_name_override``), but its default client
    certificate, the server's own, is not one the clients' CA signed: serve refuses to
    start and says what to give (exit 2). With ``--grpc-loopback-cert/-key`` it serves, and
    the SDK dials the address and names the host with ``tls_server_name``."""
    from padellm_client import APIConnectionError, NERClient

    _self_signed(tmp_path)  # NOTE: skips without openssl
    server_ca, client_ca = _ca(tmp_path, "server-ca"), _ca(tmp_path, "client-ca")
    cert, key = _signed(tmp_path, server_ca, "svc.internal", "DNS:svc.internal")
    client_cert, client_key = _signed(tmp_path, client_ca, "orchestrator", "DNS:orchestrator")
    tls = ("--grpc-server-cert", str(cert), "--grpc-server-key", str(key), "--grpc-root-cert", str(client_ca[0]),
           "--grpc-loopback-ca", str(server_ca[0]))  # fmt: skip
    grpc_port, http_port, metrics_port = free_ports(3)
    refused = subprocess.Popen(
        [*CLI, "serve", "--model", "smollm2-135m", "--grpc-port", str(grpc_port), "--http-port", str(http_port),
         "--metrics-port", str(metrics_port), *tls],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = refused.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):  # NOTE: a serve that did start, and its tritonserver
            os.killpg(refused.pid, signal.SIGKILL)
    assert refused.returncode == 2, out + err
    assert "the orchestrator cannot reach this server's TLS gRPC port" in err and "--grpc-loopback-cert" in err
    loopback = ("--grpc-loopback-cert", str(client_cert), "--grpc-loopback-key", str(client_key))
    with _serving(tmp_path, *tls, *loopback, marker=TLS_READY) as port:
        url = f"127.0.0.1:{port}"
        sdk = {"ssl": True, "root_certificates": server_ca[0], "private_key": client_key,
               "certificate_chain": client_cert}  # fmt: skip
        with NERClient(url, tls_server_name="svc.internal", timeout=120, **sdk) as client:
            assert isinstance(client.extract("Japan beat Korea in Tokyo .", labels=["LOC"]), list)
        with NERClient(url, timeout=20, **sdk) as unnamed, pytest.raises(APIConnectionError):
            unnamed.extract("Japan beat Korea .", labels=["LOC"])
        cli = subprocess.run(
            [*CLI, "extract", "Japan beat Korea .", "--labels", "LOC", "--json", "--server", url,
             "--root-cert", str(server_ca[0]), "--client-cert", str(client_cert), "--client-key", str(client_key),
             "--tls-server-name", "svc.internal"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert cli.returncode == 0 and isinstance(json.loads(cli.stdout), list), cli.stderr
