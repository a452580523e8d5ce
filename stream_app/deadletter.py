"""Dead letters: an envelope with the error, where the event came from, and its masked bytes.

Envelope (JSON, one record per failed event on the dead-letter topic or stream, keyed like the
original event)::

    {"error": "invalid Order: $.amount: Expected `float` >= 0.0", "error_type": "EventValidationError",
     "stage": "decode", "source": "kafka", "topic": "orders", "partition": 3, "offset": 1234,
     "key": "c-17", "payload": "<the original bytes as text, card numbers masked>",
     "payload_b64": "<the same masked bytes, base64>", "masked": false,
     "payload_sha256": "<SHA-256 of the original bytes, base64url, only when nothing was masked>",
     "attempts": 1, "failed_at": "2026-…Z", "schema_version": 1}

``stage`` says what failed: ``decode`` (not JSON / schema violation), ``card_number`` (a card number
in the event: refused, masked here), ``late`` (older than the allowed lateness), ``processing``
(the pipeline raised on this event), ``delivery`` (a webhook refused the action). For Kinesis,
``partition`` is the shard id and ``offset`` the sequence number.

Card numbers are masked (all but the last 4 digits) in ``payload``, ``payload_b64`` and ``key``;
``masked`` says so and ``payload_sha256`` is then left out (a digest of a document holding a card
number is not something to keep). The digest is base64url, not hex: a hex digest often holds a run
of 13+ decimal digits that passes the Luhn check, which card-number scanners would flag.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any, Literal

import msgspec

from contracts.pan import redact_bytes
from stream_app.records import OutRecord, SourceRecord

Stage = Literal["decode", "card_number", "late", "processing", "delivery"]
DEAD_LETTER_SCHEMA_VERSION = 1


class DeadLetter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One dead-lettered event."""

    error: str
    error_type: str
    stage: Stage
    source: Literal["kafka", "kinesis"] = "kafka"
    topic: str
    partition: int | str | None
    offset: int | str | None
    key: str | None
    payload: str
    payload_b64: str
    masked: bool
    payload_sha256: str | None = None
    attempts: int = 1
    failed_at: dt.datetime
    schema_version: int = DEAD_LETTER_SCHEMA_VERSION

    def original_bytes(self) -> bytes:
        """The (masked) payload bytes, as stored."""
        return base64.b64decode(self.payload_b64)


def payload_digest(raw: bytes) -> str:
    """SHA-256 of ``raw``, base64url without padding (never a long run of digits)."""
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()


def dead_letter(
    exc: BaseException,
    raw: bytes,
    *,
    topic: str,
    partition: int | str | None,
    offset: int | str | None,
    key: bytes | None,
    stage: Stage,
    source: Literal["kafka", "kinesis"] = "kafka",
    attempts: int = 1,
) -> DeadLetter:
    """Build the envelope for one failed event; card numbers are masked before anything is kept."""
    safe = redact_bytes(raw)
    masked = safe != raw
    error = str(exc)
    return DeadLetter(
        error=redact_bytes(error.encode("utf-8", "replace")).decode("utf-8", "replace")[:2000],
        error_type=type(exc).__name__,
        stage=stage,
        source=source,
        topic=topic,
        partition=partition,
        offset=offset,
        key=redact_bytes(key).decode("utf-8", "replace") if key else None,
        payload=safe.decode("utf-8", "replace"),
        payload_b64=base64.b64encode(safe).decode(),
        masked=masked,
        payload_sha256=None if masked else payload_digest(raw),
        attempts=attempts,
        failed_at=dt.datetime.now(dt.UTC),
    )


def for_record(
    exc: BaseException, rec: SourceRecord, stage: Stage, *, source: Literal["kafka", "kinesis"] = "kafka",
    attempts: int = 1,
) -> DeadLetter:
    """The envelope of a failed :class:`SourceRecord` (``attempts``: how many times it was tried)."""
    return dead_letter(
        exc, rec.value, topic=rec.stream, partition=rec.partition, offset=rec.position, key=rec.key,
        stage=stage, source=source, attempts=attempts,
    )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)


def encode_dead_letter(dl: DeadLetter) -> bytes:
    return _encoder.encode(dl)


def to_out_record(dl: DeadLetter) -> OutRecord:
    """The dead letter as a record to publish, keyed like the original event."""
    key = (dl.key or f"{dl.topic}/{dl.partition}/{dl.offset}").encode()
    return OutRecord(key=key, value=encode_dead_letter(dl), headers=(("fraudscore-stage", dl.stage.encode()),))


def decode_dead_letter(raw: bytes) -> DeadLetter:
    """Parse an envelope (raises ``msgspec.DecodeError`` / ``ValidationError`` on a foreign record)."""
    return _decoder.decode(raw)


def as_dict(dl: DeadLetter) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(dl)
    return out
