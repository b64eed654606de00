"""padellm_client against the real tritonserver of ``tests/conftest.py`` (SmolLM2 on CPU)."""

from __future__ import annotations

import asyncio

import pytest

from padellm_client import (
    AsyncNERClient,
    DeadlineExceededError,
    Entity,
    InvalidArgumentError,
    LabelResult,
    NERClient,
    NotFoundError,
)

pytestmark = pytest.mark.slow

TEXT = "Japan beat Syria in Doha."
TEXTS = ["Alice lives in Paris.", "Japan beat Syria in Doha.", "Bob met Carol at IBM."]
LABELS = ["LOC", "PER"]


def _key(entity: Entity) -> tuple:
    return (entity.label, entity.text, entity.start, entity.end)


def _same(a: list[Entity], b: list[Entity]) -> bool:
    """Equal as multisets of (label, text, start, end); scores within float noise."""
    if sorted(map(_key, a)) != sorted(map(_key, b)):
        return False
    sa = sorted(a, key=_key)
    sb = sorted(b, key=_key)
    return all(x.score == pytest.approx(y.score, abs=1e-3) for x, y in zip(sa, sb))


@pytest.fixture(scope="module")
def client(triton_server):
    with NERClient(triton_server.grpc_url, timeout=300) as c:
        yield c


def test_ready(client, triton_server):
    assert client.is_ready()
    with NERClient(triton_server.grpc_url, model_name="no_such_model") as other:
        assert other.is_ready() is False
        with pytest.raises(NotFoundError):
            other.extract(TEXT)


def test_a_request_the_model_config_refuses_is_invalid_argument(triton_server):
    """Triton checks a request against the model's inputs before the model sees it; over
    the stream that error came back with no code (UNKNOWN). A client pointed at the
    ``llm`` model sends inputs it does not declare: the caller's mistake."""
    with NERClient(triton_server.grpc_url, model_name="llm", timeout=60) as wrong, pytest.raises(
        InvalidArgumentError
    ) as info:
        wrong.extract(TEXT)
    assert info.value.status == "INVALID_ARGUMENT" and "missing required input" in info.value.message


def test_sync_async_stream_agree(client, triton_server):
    entities = client.extract(TEXT, labels=LABELS)
    assert all(isinstance(e, Entity) for e in entities)
    for e in entities:
        if e.grounded:
            assert TEXT[e.start : e.end] == e.text
        assert e.label in LABELS

    async def run_async():
        async with AsyncNERClient(triton_server.grpc_url, timeout=300) as ac:
            extracted = await ac.extract(TEXT, labels=LABELS)
            streamed = [r async for r in ac.stream(TEXT, labels=LABELS)]
            return extracted, streamed

    async_entities, async_streamed = asyncio.run(run_async())
    assert _same(async_entities, entities)

    streamed = list(client.stream(TEXT, labels=LABELS))
    assert all(isinstance(r, LabelResult) for r in streamed)
    assert sorted(r.label for r in streamed) == sorted(LABELS)
    for results in (streamed, async_streamed):
        union = [e for r in results for e in r.entities]
        assert all(e.label == r.label for r in results for e in r.entities)
        assert _same(union, entities)


def test_extract_many_keeps_order(client):
    singles = [client.extract(t, labels=LABELS) for t in TEXTS]
    many = client.extract_many(TEXTS, labels=LABELS, concurrency=3)
    assert len(many) == len(TEXTS)
    for got, want in zip(many, singles):
        assert _same(got, want)


def test_timeout_is_deadline_exceeded(client):
    with pytest.raises(DeadlineExceededError):
        client.extract(TEXT, labels=LABELS, timeout=0.01)
    # The client is still usable afterwards.
    assert client.is_ready()


def test_empty_text_is_invalid_argument(client, triton_server):
    with pytest.raises(InvalidArgumentError) as info:
        client.extract("")
    assert info.value.status == "INVALID_ARGUMENT"

    async def run_async():
        async with AsyncNERClient(triton_server.grpc_url, timeout=60) as ac:
            await ac.extract("")

    with pytest.raises(InvalidArgumentError):
        asyncio.run(run_async())


def test_closing_the_async_client_fails_its_calls_in_flight_with_a_sdk_error(client, triton_server):
    """close() under running calls used to make them raise a bare CancelledError, which
    nobody had asked for (inside a TaskGroup the lost results went unnoticed)."""
    from padellm_client import APIConnectionError

    async def run():
        ac = AsyncNERClient(triton_server.grpc_url, timeout=300)
        tasks = [asyncio.ensure_future(ac.extract(f"John Smith visited Paris {i} .")) for i in range(3)]
        await asyncio.sleep(0.3)
        await ac.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # a task the caller does cancel still ends cancelled
        other = AsyncNERClient(triton_server.grpc_url, timeout=300)
        task = asyncio.ensure_future(other.extract(TEXT))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await other.close()
        return results

    results = asyncio.run(run())
    assert all(isinstance(r, (list, APIConnectionError)) for r in results), results
    assert any(isinstance(r, APIConnectionError) for r in results), results
    assert client.is_ready()


def test_a_lone_surrogate_is_a_value_error_before_sending(client):
    with pytest.raises(ValueError, match="text is not valid Unicode at character 6"):
        client.extract("Paris \ud800 x")
    with pytest.raises(ValueError, match="labels is not valid Unicode"):
        client.extract("Paris", labels=["LOC\udcff"])
