"""``NERClient`` and ``AsyncNERClient``: the padellm server over Triton gRPC streaming.

The orchestrator model ``padellm`` is decoupled, so every call is a gRPC stream (a unary
``infer`` would get UNIMPLEMENTED). One call = one stream = one request; the per-call
``timeout`` is the stream deadline, so an expired call raises ``DeadlineExceededError``.

As in httpx, ``_BaseClient`` holds the configuration and the two clients differ only in
``def`` vs ``async def``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import queue
import sys
import threading
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferResult
from tritonclient.utils import InferenceServerException

from ._constants import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MODEL_NAME,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    NOT_GIVEN,
    NotGiven,
)
from ._exceptions import (
    APIConnectionError,
    APITimeoutError,
    NotFoundError,
    UnavailableError,
    map_exception,
    map_exceptions,
)
from ._types import Entity, LabelResult
from ._wire import (
    build_inputs,
    decode_entities,
    decode_label_result,
    is_empty_response,
    is_final_response,
)

__all__ = ["AsyncNERClient", "ClientState", "NERClient"]

# Extra seconds the sync client waits for the stream's own DEADLINE_EXCEEDED before giving up.
_LOCAL_GRACE_S = 5.0
#: how long ``close()`` waits for a call left early to end on its own, when the call has no
#: deadline (one with a deadline is waited for until it, plus ``_LOCAL_GRACE_S``)
_RETIRE_WAIT_S = 30.0
# How often a running ``extract_many`` stream checks whether another text failed.
_ABORT_POLL_S = 0.05

# tritonclient's gRPC message limits (INT32_MAX), kept when we pass channel options.
_MAX_MESSAGE = 2**31 - 1

# What ``is_ready`` answers with False instead of raising.
_NOT_READY_ERRORS = (APIConnectionError, NotFoundError, UnavailableError)

_C = TypeVar("_C", bound="NERClient")
_A = TypeVar("_A", bound="AsyncNERClient")


class ClientState(enum.Enum):
    UNOPENED = 1  # created, usable, not yet entered as a context manager
    OPENED = 2  # entered as a context manager
    CLOSED = 3  # closed: every further call raises RuntimeError


_MAX_TIMEOUT_S = 10_000_000.0  # ~116 days; larger deadlines overflow and fail at once


#: gRPC's own target forms (``dns:///host:port``, ``unix:/path``): passed to gRPC as they are
_GRPC_TARGETS = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")


def _check_port(url: str) -> None:
    """``host:port`` must name its port (gRPC would quietly use 443) and a real one
    (``:99999`` was taken modulo 65536); gRPC target forms (``unix:``, ``dns:``) pass."""
    if url.startswith(_GRPC_TARGETS):
        return
    host, sep, port = url.rpartition(":")
    if not sep or not host or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        raise ValueError(f"url must be 'host:port' ('[::1]:8001' for IPv6), got {url!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"url {url!r}: the port must be a number from 1 to 65535")


class _Aborted(Exception):
    """Another text of the same ``extract_many`` failed; this one's call was left."""


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not 0 < timeout <= _MAX_TIMEOUT_S:  # NOTE: also nan; inf overflows gRPC's deadline
        raise ValueError(
            f"timeout must be > 0 and at most {_MAX_TIMEOUT_S:.0f} seconds, or None for no "
            f"timeout; got {timeout!r}"
        )
    return float(timeout)


def _check_concurrency(concurrency: int) -> int:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    return concurrency


def _check_texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a list of str, not a single string (use extract())")
    return list(texts)


class _BaseClient:
    """Configuration shared by the sync and async clients."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        timeout: float | None = DEFAULT_TIMEOUT,
        ssl: bool = False,
        root_certificates: str | os.PathLike[str] | None = None,
        private_key: str | os.PathLike[str] | None = None,
        certificate_chain: str | os.PathLike[str] | None = None,
        tls_server_name: str | None = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a non-empty 'host:port' string, got {url!r}")
        if "://" in url and not url.startswith(_GRPC_TARGETS):
            raise ValueError(f"url is 'host:port' without a scheme (use ssl=True for TLS): {url!r}")
        _check_port(url)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        tls_files = {
            "root_certificates": root_certificates,
            "private_key": private_key,
            "certificate_chain": certificate_chain,
        }
        given = [name for name, path in tls_files.items() if path is not None]
        if tls_server_name is not None:
            if not isinstance(tls_server_name, str) or not tls_server_name:
                raise ValueError(f"tls_server_name must be a non-empty host name, got {tls_server_name!r}")
            given.append("tls_server_name")
        if given and not ssl:
            raise ValueError(f"{', '.join(given)} given but ssl=False; pass ssl=True to use TLS")
        for name, path in tls_files.items():
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"TLS {name} file not found: {os.fspath(path)!r}")
        self._url = url
        self._model_name = model_name
        self._timeout = _check_timeout(timeout)
        self._triton_kwargs: dict[str, Any] = {
            "url": url,
            "verbose": bool(verbose),
            "ssl": bool(ssl),
            "root_certificates": None
            if root_certificates is None
            else os.fspath(root_certificates),
            "private_key": None if private_key is None else os.fspath(private_key),
            "certificate_chain": None
            if certificate_chain is None
            else os.fspath(certificate_chain),
        }
        if tls_server_name is not None:
            # NOTE: channel_args replaces tritonclient's own options; keep its message limits
            self._triton_kwargs["channel_args"] = [
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.ssl_target_name_override", tls_server_name),
            ]
        self._state = ClientState.UNOPENED
        self._init_transport()

    def _init_transport(self) -> None:
        """The client's own setup, run at the end of ``__init__`` (the settings are checked)."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        return self._url

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def timeout(self) -> float | None:
        """Default seconds per call (``None``: no deadline)."""
        return self._timeout

    @property
    def is_closed(self) -> bool:
        return self._state is ClientState.CLOSED

    def _resolve_timeout(self, timeout: float | None | NotGiven) -> float | None:
        """``NOT_GIVEN`` -> the client's timeout; ``None`` -> no deadline; else seconds."""
        if isinstance(timeout, NotGiven):
            return self._timeout
        return _check_timeout(timeout)

    def _check_open(self) -> None:
        if self._state is ClientState.CLOSED:
            raise RuntimeError("Cannot send a request, as the client has been closed.")

    def _enter(self) -> None:
        if self._state is ClientState.CLOSED:
            raise RuntimeError("Cannot reopen a client instance, once it has been closed.")
        if self._state is ClientState.OPENED:
            raise RuntimeError("Cannot open a client instance more than once.")
        self._state = ClientState.OPENED

    def _prepare(
        self,
        text: str,
        *,
        labels: Sequence[str] | None,
        max_mentions: int | None,
        dedup: str | None,
        timeout: float | None | NotGiven,
        stream: bool = False,
    ) -> tuple[list[InferInput], float | None]:
        """Check one call: the request's inputs and its timeout in seconds."""
        self._check_open()
        inputs = build_inputs(
            text, labels=labels, max_mentions=max_mentions, dedup=dedup, stream=stream
        )
        return inputs, self._resolve_timeout(timeout)

    def _prepare_many(
        self,
        texts: Iterable[str],
        *,
        concurrency: int,
        labels: Sequence[str] | None,
        max_mentions: int | None,
        dedup: str | None,
        timeout: float | None | NotGiven,
    ) -> tuple[list[list[InferInput]], int, float | None]:
        """Check an ``extract_many`` call: the requests, the concurrency and the timeout."""
        self._check_open()
        texts = _check_texts(texts)
        concurrency = _check_concurrency(concurrency)
        seconds = self._resolve_timeout(timeout)
        requests = [
            build_inputs(t, labels=labels, max_mentions=max_mentions, dedup=dedup) for t in texts
        ]
        return requests, concurrency, seconds

    @staticmethod
    def _request_id() -> str:
        return uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._url!r}, model_name={self._model_name!r})"


def _stop_stream(client: triton_grpc.InferenceServerClient) -> None:
    """Half-close the client's stream and wait until the server ends it (never a cancel:
    see ``NERClient._retire``)."""
    with contextlib.suppress(Exception):
        client.stop_stream(cancel_requests=False)


def _wait_bound(deadlines: Iterable[float | None], now: float) -> float:
    """Seconds ``close()`` waits for the calls left early with these deadlines to end."""
    return max(
        _RETIRE_WAIT_S if deadline is None else max(0.0, deadline - now) + _LOCAL_GRACE_S
        for deadline in deadlines
    )


@dataclass
class _Lease:
    """A pooled connection lent to one call; ``retire``: its stream is still running;
    ``deadline``: when the call's own timeout ends it (``time.monotonic()``)."""

    client: triton_grpc.InferenceServerClient
    retire: bool = False
    deadline: float | None = None


class NERClient(_BaseClient):
    """Blocking client. Thread-safe: each concurrent call gets its own gRPC stream.

    A tritonclient ``InferenceServerClient`` holds one stream at a time, so the client keeps
    a small pool of them (one per call in flight; ``extract_many`` uses up to ``concurrency``).
    """

    def _init_transport(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[triton_grpc.InferenceServerClient] = []
        self._idle.append(self._new_triton_client())  # bad settings fail here, not later
        # the streams a caller may still hold, and the calls left early still ending
        self._streams: weakref.WeakSet[Generator[InferResult, None, None]] = weakref.WeakSet()
        self._retiring: dict[threading.Thread, float | None] = {}

    def _new_triton_client(self) -> triton_grpc.InferenceServerClient:
        with map_exceptions():
            return triton_grpc.InferenceServerClient(**self._triton_kwargs)

    @contextlib.contextmanager
    def _acquire(self) -> Iterator[_Lease]:
        """A connection of the pool for one call; back to the pool after, or once its
        stream has ended when the call set ``lease.retire`` (``_retire``)."""
        with self._lock:
            self._check_open()
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self._new_triton_client()
        lease = _Lease(client)
        try:
            yield lease
        finally:
            if lease.retire:
                self._retire(client, lease.deadline)
            else:
                self._release(client)

    def _release(self, client: triton_grpc.InferenceServerClient) -> None:
        with self._lock:
            keep = self._state is not ClientState.CLOSED
            if keep:
                self._idle.append(client)
        if not keep:
            with contextlib.suppress(Exception):
                client.close()

    def _retire(self, client: triton_grpc.InferenceServerClient, deadline: float | None) -> None:
        """End the stream of a call left before its final response, without cancelling it.

        Why: cancelling a gRPC stream trips tritonserver 2.51. The model that served it can
        then never unload (a drain or a stop waits out its timeout; ~28 KB of server memory
        each), and a client that keeps leaving ``stream()`` early deadlocked the server's
        stream handler (every extraction hung while /ready said 200). So the call is
        half-closed and the server finishes the request, within the call's deadline, in a
        background thread; its responses are dropped and the connection goes back to the
        pool after. ``close()`` waits for that thread, until ``deadline``.
        """
        if sys.is_finalizing():
            # NOTE: a stream still held at interpreter exit: no thread can start now
            # (Python 3.11 hangs in Thread.start), so the stream goes with the process
            return

        def run() -> None:
            try:
                _stop_stream(client)
                self._release(client)
            finally:
                with self._lock:
                    self._retiring.pop(thread, None)

        thread = threading.Thread(target=run, name="padellm-client-retire", daemon=True)
        with self._lock:
            self._retiring[thread] = deadline
        thread.start()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self: _C) -> _C:
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections. Calls after this raise ``RuntimeError``.

        A ``stream()`` still held is left (as a ``break`` leaves it), and calls left early
        get until their deadline to end (``_retire``): a stream cut by the process's exit
        would be a cancel too.
        """
        with self._lock:
            self._state = ClientState.CLOSED
        for stream in list(self._streams):
            with contextlib.suppress(ValueError):  # running in another thread: it goes on
                stream.close()
        with self._lock:
            retiring = dict(self._retiring)
        if retiring:
            now = time.monotonic()
            until = now + _wait_bound(retiring.values(), now)
            for thread in retiring:
                thread.join(max(0.0, until - time.monotonic()))
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            with contextlib.suppress(Exception):
                client.close()

    # -- calls -----------------------------------------------------------------------------

    def is_ready(self, *, timeout: float | None | NotGiven = NOT_GIVEN) -> bool:
        """True when the server is live and the model is loaded and ready."""
        seconds = self._resolve_timeout(timeout)
        with self._acquire() as lease:
            client = lease.client
            try:
                with map_exceptions():
                    return bool(client.is_server_live(client_timeout=seconds)) and bool(
                        client.is_model_ready(self._model_name, client_timeout=seconds)
                    )
            except _NOT_READY_ERRORS:
                return False

    def extract(
        self,
        text: str,
        *,
        labels: Sequence[str] | None = None,
        max_mentions: int | None = None,
        dedup: str | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> list[Entity]:
        """The entities of ``text`` (all labels, or only ``labels``)."""
        inputs, seconds = self._prepare(
            text, labels=labels, max_mentions=max_mentions, dedup=dedup, timeout=timeout
        )
        return self._collect(inputs, seconds)

    def extract_many(
        self,
        texts: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        labels: Sequence[str] | None = None,
        max_mentions: int | None = None,
        dedup: str | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> list[list[Entity]]:
        """``extract`` for each text, at most ``concurrency`` at a time; results in input order.

        ``timeout`` applies to each text. The first error is raised at once; the texts in
        flight are left (the server finishes them, their results are dropped) and the
        ones not sent yet are not sent.
        """
        requests, concurrency, seconds = self._prepare_many(
            texts,
            concurrency=concurrency,
            labels=labels,
            max_mentions=max_mentions,
            dedup=dedup,
            timeout=timeout,
        )
        if not requests:
            return []
        workers = min(concurrency, len(requests))
        abort = threading.Event()  # NOTE: set on the first error: running calls are left
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="padellm-client") as pool:
            futures = [pool.submit(self._collect, inputs, seconds, abort) for inputs in requests]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in futures if f in done and f.exception() is not None]
                if failed:
                    raise failed[0].exception()
                return [future.result() for future in futures]
            except BaseException:
                abort.set()
                for future in futures:
                    future.cancel()
                raise

    def stream(
        self,
        text: str,
        *,
        labels: Sequence[str] | None = None,
        max_mentions: int | None = None,
        dedup: str | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> Iterator[LabelResult]:
        """Yield one :class:`LabelResult` per label as the server finishes it.

        Arguments are checked now; the request is sent when iteration starts. Leaving the
        loop early stops reading: the server finishes the request and the rest of its
        responses are dropped (a cancelled stream trips tritonserver 2.51: ``_retire``).
        """
        inputs, seconds = self._prepare(
            text,
            labels=labels,
            max_mentions=max_mentions,
            dedup=dedup,
            timeout=timeout,
            stream=True,
        )
        return self._label_results(inputs, seconds)

    # -- the stream ------------------------------------------------------------------------

    def _collect(
        self, inputs: list[InferInput], timeout: float | None, abort: threading.Event | None = None
    ) -> list[Entity]:
        entities: list[Entity] = []
        for result in self._responses(inputs, timeout, abort):
            entities.extend(decode_entities(result))
        return entities

    def _label_results(
        self, inputs: list[InferInput], timeout: float | None
    ) -> Iterator[LabelResult]:
        responses = self._responses(inputs, timeout)
        self._streams.add(responses)
        with contextlib.closing(responses):
            for result in responses:
                yield decode_label_result(result)

    def _responses(
        self, inputs: list[InferInput], timeout: float | None, abort: threading.Event | None = None
    ) -> Iterator[InferResult]:
        """Send one request on a new stream; yield its non-empty responses until the final
        one. ``abort`` (set by another thread) leaves the call (``_retire``)."""
        with self._acquire() as lease:
            client = lease.client
            lease.deadline = None if timeout is None else time.monotonic() + timeout
            results: queue.SimpleQueue[tuple[InferResult | None, Exception | None]]
            results = queue.SimpleQueue()

            def callback(result: InferResult | None, error: Exception | None) -> None:
                results.put((result, error))

            done = False
            try:
                with map_exceptions():
                    client.start_stream(callback, stream_timeout=timeout)
                try:
                    client.async_stream_infer(
                        self._model_name,
                        inputs,
                        request_id=self._request_id(),
                        enable_empty_final_response=True,
                    )
                except InferenceServerException as exc:
                    # The stream can fail (e.g. connection refused) before the request is
                    # queued; the real cause then arrives through the callback.
                    try:
                        _, error = results.get(timeout=1.0)
                    except queue.Empty:
                        error = None
                    cause = error if error is not None else exc
                    raise map_exception(cause) from cause
                deadline = None if timeout is None else time.monotonic() + timeout + _LOCAL_GRACE_S
                while True:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    if abort is not None:
                        left = _ABORT_POLL_S if left is None else min(left, _ABORT_POLL_S)
                    try:
                        result, error = results.get(timeout=left)
                    except queue.Empty:
                        if abort is not None and abort.is_set():
                            raise _Aborted from None
                        if deadline is not None and time.monotonic() >= deadline:
                            raise APITimeoutError(f"no response within {timeout} s") from None
                        continue
                    if error is not None:
                        # NOTE: an error answers the request: close the stream gracefully.
                        # Cancelling it after an error Triton itself raised (an input the
                        # model does not take) keeps that model from unloading, for good.
                        done = True
                        raise map_exception(error) from error
                    assert result is not None
                    final = is_final_response(result)
                    if not is_empty_response(result):
                        yield result
                    if final:
                        done = True
                        return
            finally:
                if done:
                    _stop_stream(client)
                else:
                    lease.retire = True


class AsyncNERClient(_BaseClient):
    """Asyncio client (``tritonclient.grpc.aio``); each call is its own gRPC stream."""

    def _init_transport(self) -> None:
        # Created on first use, inside the running event loop that grpc.aio binds it to.
        self._client: triton_aio.InferenceServerClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # the streams a caller may still hold (and their loop), and the calls left early
        # still ending (and their deadline, in loop time)
        self._streams: weakref.WeakKeyDictionary[
            AsyncGenerator[InferResult, None], asyncio.AbstractEventLoop
        ] = weakref.WeakKeyDictionary()
        self._retiring: dict[asyncio.Task[None], float | None] = {}

    def _retire(self, responses: Any, deadline: float | None) -> None:
        """Let a call left before its final response end without a cancel: the request
        iterator has half-closed the stream, so the server finishes the request (within
        the call's deadline) while a task drops its responses. Why not cancel: see
        ``NERClient._retire``. ``close()`` waits for that task, until ``deadline``."""

        async def drain() -> None:
            with contextlib.suppress(Exception):
                async for _ in responses:
                    pass

        try:
            task = asyncio.get_running_loop().create_task(drain())
        except RuntimeError:  # NOTE: no loop left (interpreter exit): nothing to wait in
            with contextlib.suppress(Exception):
                responses.cancel()
            return
        self._retiring[task] = deadline
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    def _get_client(self) -> triton_aio.InferenceServerClient:
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is not loop:
            # NOTE: a grpc.aio channel is bound to the loop that made it; that loop is gone
            # (a second asyncio.run()), so its channel cannot even be closed: start anew.
            self._client = None
        if self._client is None:
            with map_exceptions():
                self._client = triton_aio.InferenceServerClient(**self._triton_kwargs)
            self._loop = loop
        return self._client

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self: _A) -> _A:
        self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection. Calls after this raise ``RuntimeError``.

        A ``stream()`` still held is left (as a ``break`` leaves it: asyncio closes a
        generator left by ``break`` only later, so it is still held here), and calls left
        early get until their deadline to end (``_retire``): closing the channel would
        cancel them.
        """
        self._state = ClientState.CLOSED
        loop = asyncio.get_running_loop()
        for stream, stream_loop in list(self._streams.items()):
            if stream_loop is loop:
                with contextlib.suppress(RuntimeError):  # running: a call in another task
                    await stream.aclose()
        retiring = {
            task: deadline
            for task, deadline in self._retiring.items()
            if task.get_loop() is loop and not task.done()
        }
        if retiring:
            await asyncio.wait(retiring, timeout=_wait_bound(retiring.values(), loop.time()))
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    # -- calls -----------------------------------------------------------------------------

    async def is_ready(self, *, timeout: float | None | NotGiven = NOT_GIVEN) -> bool:
        """True when the server is live and the model is loaded and ready."""
        seconds = self._resolve_timeout(timeout)
        client = self._get_client()
        try:
            with map_exceptions():
                return bool(await client.is_server_live(client_timeout=seconds)) and bool(
                    await client.is_model_ready(self._model_name, client_timeout=seconds)
                )
        except _NOT_READY_ERRORS:
            return False

    async def extract(
        self,
        text: str,
        *,
        labels: Sequence[str] | None = None,
        max_mentions: int | None = None,
        dedup: str | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> list[Entity]:
        """The entities of ``text`` (all labels, or only ``labels``)."""
        inputs, seconds = self._prepare(
            text, labels=labels, max_mentions=max_mentions, dedup=dedup, timeout=timeout
        )
        return await self._collect(inputs, seconds)

    async def extract_many(
        self,
        texts: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        labels: Sequence[str] | None = None,
        max_mentions: int | None = None,
        dedup: str | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> list[list[Entity]]:
        """``extract`` for each text, at most ``concurrency`` at a time; results in input order.

        ``timeout`` applies to each text. The first error is raised at once; the texts in
        flight are left (the server finishes them, their results are dropped) and the
        ones not started are not sent.
        """
        requests, concurrency, seconds = self._prepare_many(
            texts,
            concurrency=concurrency,
            labels=labels,
            max_mentions=max_mentions,
            dedup=dedup,
            timeout=timeout,
        )
        semaphore = asyncio.Semaphore(concurrency)

        async def one(inputs: list[InferInput]) -> list[Entity]:
            async with semaphore:
                return await self._collect(inputs, seconds)

        tasks = [asyncio.ensure_future(one(inputs)) for inputs in requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def stream(
        self,
        text: str,
        *,
        labels: Sequence[str] | None = None,
        max_mentions: int | None = None,
        dedup: str | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> AsyncIterator[LabelResult]:
        """Yield one :class:`LabelResult` per label as the server finishes it (``async for``).

        Arguments are checked now; the request is sent when iteration starts. Leaving the
        loop early stops reading: the server finishes the request and the rest of its
        responses are dropped (a cancelled stream trips tritonserver 2.51: ``_retire``).
        """
        inputs, seconds = self._prepare(
            text,
            labels=labels,
            max_mentions=max_mentions,
            dedup=dedup,
            timeout=timeout,
            stream=True,
        )
        return self._label_results(inputs, seconds)

    # -- the stream ------------------------------------------------------------------------

    async def _collect(self, inputs: list[InferInput], timeout: float | None) -> list[Entity]:
        entities: list[Entity] = []
        async for result in self._open(inputs, timeout):
            entities.extend(decode_entities(result))
        return entities

    async def _label_results(
        self, inputs: list[InferInput], timeout: float | None
    ) -> AsyncIterator[LabelResult]:
        responses = self._open(inputs, timeout)
        try:
            async for result in responses:
                yield decode_label_result(result)
        finally:
            await responses.aclose()

    def _open(
        self, inputs: list[InferInput], timeout: float | None
    ) -> AsyncGenerator[InferResult, None]:
        """``_responses``, known to ``close()`` while it is held."""
        responses = self._responses(inputs, timeout)
        self._streams[responses] = asyncio.get_running_loop()
        return responses

    async def _responses(
        self, inputs: list[InferInput], timeout: float | None
    ) -> AsyncIterator[InferResult]:
        """Send one request on a new stream; yield its non-empty responses until the final one.

        The request iterator ends after the one request (half-close), so the server also
        ends the stream once the request is complete.
        """
        client = self._get_client()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        request = {
            "model_name": self._model_name,
            "inputs": inputs,
            "request_id": self._request_id(),
        }

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request

        with map_exceptions():
            responses = client.stream_infer(requests(), stream_timeout=timeout)
        done = False
        try:
            try:
                async for result, error in responses:
                    if error is not None:
                        raise map_exception(error) from error
                    final = is_final_response(result)
                    if not is_empty_response(result):
                        yield result
                    if final:
                        break
                done = True
            except grpc.RpcError as exc:
                raise map_exception(exc) from exc
            except asyncio.CancelledError:
                task = asyncio.current_task()
                cancelling = task.cancelling() if task is not None and hasattr(task, "cancelling") else 0
                if self._state is ClientState.CLOSED and not cancelling:
                    # NOTE: close() under a running call cancels grpc's side of it; the caller
                    # cancelled nothing and must not get a bare CancelledError (a TaskGroup
                    # would swallow the lost result)
                    raise APIConnectionError(
                        "the client was closed while this request was in flight"
                    ) from None
                raise
        finally:
            if not done:
                self._retire(responses, deadline)
