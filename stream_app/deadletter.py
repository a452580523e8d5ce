"""Dead letters: an envelope holding the error, where the event came from, and its (masked) bytes.

Envelope (JSON, one per record on the dead-letter topic)::

    {"error": "invalid Order: $.amount: Expected `float` >= 0.0", "error_type": "EventValidationError",
     "topic": "orders", "partition": 3, "offset": 1234, "key": "c-17",
     "payload": "<the original bytes as text, card numbers masked>",
     "payload_b64": "<the same bytes, base64>", "masked": false, "failed_at": "2026-…Z"}

Card numbers are masked (all but the last 4 digits) in both payload fields; ``masked`` says so.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import msgspec

from contracts.pan import redact_bytes


class DeadLetter(msgspec.Struct, kw_only=True):
    error: str
    error_type: str
    topic: str
    partition: int | None
    offset: int | None
    key: str | None
    payload: str
    payload_b64: str
    masked: bool
    failed_at: dt.datetime


def dead_letter(
    exc: BaseException, raw: bytes, *, topic: str, partition: int | None, offset: int | None, key: bytes | None
) -> DeadLetter:
    safe = redact_bytes(raw)
    return DeadLetter(
        error=str(exc)[:2000],
        error_type=type(exc).__name__,
        topic=topic,
        partition=partition,
        offset=offset,
        key=redact_bytes(key).decode("utf-8", "replace") if key else None,
        payload=safe.decode("utf-8", "replace"),
        payload_b64=base64.b64encode(safe).decode(),
        masked=safe != raw,
        failed_at=dt.datetime.now(dt.UTC),
    )


def encode_dead_letter(dl: DeadLetter) -> bytes:
    return msgspec.json.encode(dl)


def decode_dead_letter(raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.json.decode(raw)
    return out
