"""Malformed events for stream tests (``bad_rate``): each is built from a real order as a template.

Kinds (:data:`training.simulator.records.DEFECTS`):

* ``invalid_json``: the order's JSON cut off part-way (never valid JSON);
* ``missing_fields``: ``customer_id`` and ``currency`` removed;
* ``negative_amount``: ``amount`` below zero;
* ``naive_timestamp``: ``event_time`` without a UTC offset;
* ``pan_in_field``: a Luhn-valid 16-digit card number in ``payment.card_fingerprint`` or
  ``device_id`` (plain, or grouped by spaces or dashes) — the mistake the edge must refuse.

Every bad event carries the id ``bad_<run>_<n>`` in ``order_id`` (for ``invalid_json`` the cut
may fall after it).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from contracts.events import Order, to_builtins
from training.simulator.records import DEFECTS

_encode = msgspec.json.Encoder().encode


def luhn_complete(partial: str) -> str:
    """``partial`` digits plus the check digit that makes the whole pass the Luhn test."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = ord(ch) - 48
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return partial + str((10 - total % 10) % 10)


def fake_pan(digits: list[int], style: int) -> str:
    """A Luhn-valid 16-digit Visa-like number from 14 random digits; ``style`` 0 plain, 1 spaces, 2 dashes."""
    pan = luhn_complete("4" + "".join(str(d) for d in digits[:14]))
    if style == 0:
        return pan
    sep = " " if style == 1 else "-"
    return sep.join(pan[i : i + 4] for i in range(0, 16, 4))


def bad_event(
    template: Order, bad_id: str, defect: int, cut: float, digits: list[int], style: int
) -> tuple[bytes, str, str]:
    """(raw bytes, defect name, offending field) of one malformed event derived from ``template``."""
    doc: dict[str, Any] = to_builtins(template)
    doc["order_id"] = bad_id
    name = DEFECTS[defect]
    if name == "invalid_json":
        raw = _encode(doc)
        # keep at least the opening of the object and the id; never the closing brace
        keep = max(len(b'{"order_id":"",') + len(bad_id), int(len(raw) * cut))
        return raw[: min(keep, len(raw) - 1)], name, "$"
    if name == "missing_fields":
        doc.pop("customer_id", None)
        doc.pop("currency", None)
        return _encode(doc), name, "customer_id,currency"
    if name == "negative_amount":
        doc["amount"] = -max(round(float(doc["amount"]), 2), 0.01)
        return _encode(doc), name, "amount"
    if name == "naive_timestamp":
        doc["event_time"] = template.event_time.replace(tzinfo=None).isoformat(timespec="seconds")
        return _encode(doc), name, "event_time"
    pan = fake_pan(digits, style)
    if style != 2 and doc.get("payment"):
        doc["payment"] = {**doc["payment"], "card_fingerprint": pan}
        return _encode(doc), name, "payment.card_fingerprint"
    doc["device_id"] = pan
    return _encode(doc), name, "device_id"


def sha256_hex(raw: bytes) -> str:
    """Hex SHA-256 of the emitted bytes (how the truth file identifies a bad event)."""
    return hashlib.sha256(raw).hexdigest()
