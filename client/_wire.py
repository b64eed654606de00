"""The Triton wire contract of the ``padellm`` model (docs/CONTRACTS.md), client side.

Inputs: ``TEXT`` BYTES [1]; optional ``LABELS`` BYTES [-1], ``MAX_MENTIONS`` INT32 [1],
``DEDUP`` BYTES [1], ``STREAM`` BOOL [1]. Outputs: ``LABEL`` BYTES [1] (``""`` for a whole
result), ``ENTITY_LABELS`` / ``ENTITY_TEXTS`` BYTES [-1], ``ENTITY_STARTS`` / ``ENTITY_ENDS``
INT32 [-1] (-1 = not found in the text), ``ENTITY_SCORES`` FP32 [-1].

Only types are checked here; values (empty text, unknown dedup mode, ...) are the server's
to judge so that its ``INVALID_ARGUMENT`` reaches the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import InferInput, InferResult

from ._types import Entity, LabelResult

__all__ = [
    "FINAL_RESPONSE_PARAM",
    "build_inputs",
    "decode_entities",
    "decode_label_result",
    "is_empty_response",
    "is_final_response",
]

FINAL_RESPONSE_PARAM = "triton_final_response"


def _utf8(name: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:  # NOTE: a lone surrogate, e.g. from bytes not UTF-8
        raise ValueError(
            f"{name.lower()} is not valid Unicode at character {exc.start} (a lone surrogate); "
            "pass text decoded from UTF-8"
        ) from None


def _bytes_input(name: str, values: Sequence[str]) -> InferInput:
    array = np.array([_utf8(name, v) for v in values], dtype=np.object_)
    tensor = InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


_INT32 = np.iinfo(np.int32)


def build_inputs(
    text: str,
    *,
    labels: Sequence[str] | None = None,
    max_mentions: int | None = None,
    dedup: str | None = None,
    stream: bool = False,
) -> list[InferInput]:
    """The request tensors for one text. Optional inputs are sent only when given."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    inputs = [_bytes_input("TEXT", [text])]
    if labels is not None:
        if isinstance(labels, (str, bytes)):
            raise TypeError("labels must be a list of str, not a single string")
        labels = list(labels)
        if not all(isinstance(label, str) for label in labels):
            raise TypeError("labels must be a list of str")
        inputs.append(_bytes_input("LABELS", labels))
    if max_mentions is not None:
        if isinstance(max_mentions, bool) or not isinstance(max_mentions, (int, np.integer)):
            raise TypeError(f"max_mentions must be an int, got {type(max_mentions).__name__}")
        if not _INT32.min <= max_mentions <= _INT32.max:  # NOTE: would wrap silently
            raise ValueError(f"max_mentions is {max_mentions}; the server takes 1 to 16")
        tensor = InferInput("MAX_MENTIONS", [1], "INT32")
        tensor.set_data_from_numpy(np.array([max_mentions], dtype=np.int32))
        inputs.append(tensor)
    if dedup is not None:
        if not isinstance(dedup, str):
            raise TypeError(f"dedup must be a str, got {type(dedup).__name__}")
        inputs.append(_bytes_input("DEDUP", [dedup]))
    if stream:
        tensor = InferInput("STREAM", [1], "BOOL")
        tensor.set_data_from_numpy(np.array([True], dtype=np.bool_))
        inputs.append(tensor)
    return inputs


def _parameters(result: InferResult) -> Any:
    return result.get_response().parameters


def is_final_response(result: InferResult) -> bool:
    """True on the response Triton flags as the request's last (decoupled streaming)."""
    params = _parameters(result)
    return FINAL_RESPONSE_PARAM in params and bool(params[FINAL_RESPONSE_PARAM].bool_param)


def is_empty_response(result: InferResult) -> bool:
    """True for a flags-only response (no output tensors), e.g. the empty final one."""
    return len(result.get_response().outputs) == 0


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _column(result: InferResult, name: str) -> np.ndarray:
    array = result.as_numpy(name)
    if array is None:
        return np.empty(0, dtype=np.object_)
    return array.reshape(-1)


def decode_entities(result: InferResult) -> tuple[Entity, ...]:
    """The ``ENTITY_*`` tensors of one response as entities (offset -1 becomes ``None``)."""
    labels = _column(result, "ENTITY_LABELS")
    texts = _column(result, "ENTITY_TEXTS")
    starts = _column(result, "ENTITY_STARTS")
    ends = _column(result, "ENTITY_ENDS")
    scores = _column(result, "ENTITY_SCORES")
    n = len(texts)
    if not (len(labels) == n and len(starts) == n and len(ends) == n):
        raise ValueError(
            "malformed response: ENTITY_LABELS/TEXTS/STARTS/ENDS lengths differ "
            f"({len(labels)}, {n}, {len(starts)}, {len(ends)})"
        )
    entities = []
    for i in range(n):
        start, end = int(starts[i]), int(ends[i])
        grounded = start >= 0 and end >= 0
        entities.append(
            Entity(
                label=_text(labels[i]),
                text=_text(texts[i]),
                start=start if grounded else None,
                end=end if grounded else None,
                score=float(scores[i]) if i < len(scores) else 1.0,
            )
        )
    return tuple(entities)


def decode_label_result(result: InferResult) -> LabelResult:
    """One response as a :class:`LabelResult` (``label`` is ``""`` for a whole result)."""
    label = result.as_numpy("LABEL")
    name = _text(label.reshape(-1)[0]) if label is not None and label.size else ""
    return LabelResult(label=name, entities=decode_entities(result))
