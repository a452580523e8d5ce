"""Card-number (PAN) detection and masking.

A value "looks like a card number" when it holds a run of 13–19 digits, optionally
separated by single spaces or dashes, that passes the Luhn check. Such values are
rejected at every edge (events, gRPC requests) and never echoed back or logged: use
:func:`mask_pan` / :func:`redact` before a value reaches a message or a log line.

The scan runs on raw bytes first (one regular expression over the whole payload),
so the common case — no candidate at all — costs about a microsecond.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# 13–19 digits, each optionally preceded by one space or dash; not glued to other digits.
_CANDIDATE = r"(?<![0-9])[0-9](?:[ \-]?[0-9]){12,18}(?![0-9])"
_CANDIDATE_STR = re.compile(_CANDIDATE)
_SEPARATORS = str.maketrans("", "", " -")


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum."""
    total = 0
    parity = len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _pan_matches(text: str) -> Iterator[re.Match[str]]:
    """Every run in ``text`` that is a Luhn-valid card number.

    A run glued to other digits is never a candidate (so a 20-digit id is not a card
    number), but a separator may join a number to a card number ("1234 4111…"), so the
    search restarts after each candidate's first character.
    """
    pos = 0
    while True:
        m = _CANDIDATE_STR.search(text, pos)
        if m is None:
            return
        if luhn_ok(m.group(0).translate(_SEPARATORS)):
            yield m
            pos = m.end()
        else:
            pos = m.start() + 1


def find_pan(text: str) -> tuple[int, int] | None:
    """Return the (start, end) span of the first card number in ``text``, or None."""
    for m in _pan_matches(text):
        return m.start(), m.end()
    return None


def contains_pan(text: str) -> bool:
    """True when ``text`` holds something that looks like a card number."""
    return find_pan(text) is not None


def mask_pan(value: str) -> str:
    """Mask every card number in ``value``, keeping only its last 4 digits."""
    out: list[str] = []
    last = 0
    for m in _pan_matches(value):
        digits = m.group(0).translate(_SEPARATORS)
        out.append(value[last : m.start()])
        out.append("*" * (len(digits) - 4) + digits[-4:])
        last = m.end()
    if not out:
        return value
    out.append(value[last:])
    return "".join(out)


# Pre-filter tables: drop separators, fold every digit to "0"; 13 zeros in a row is then a
# necessary condition for a candidate. Two C-level passes instead of a regex scan.
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0000000000")
_THIRTEEN = b"0" * 13


def bytes_may_contain_pan(raw: bytes) -> bool:
    """Cheap pre-filter over a raw payload: False means "certainly no card number"."""
    return _THIRTEEN in raw.translate(_DIGITS_TO_ZERO, b" -")


def redact(value: Any) -> Any:
    """Deep copy of a decoded JSON value with every card number masked."""
    if isinstance(value, str):
        return mask_pan(value)
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def redact_bytes(raw: bytes) -> bytes:
    """Mask card numbers inside a raw payload (any encoding; digits are ASCII)."""
    if not bytes_may_contain_pan(raw):
        return raw
    text = raw.decode("utf-8", errors="replace")
    return mask_pan(text).encode("utf-8")


def pan_paths(value: Any, path: str = "$") -> list[str]:
    """JSON paths of every string (key or value) in ``value`` that holds a card number."""
    found: list[str] = []
    if isinstance(value, str):
        if contains_pan(value):
            found.append(path)
    elif isinstance(value, dict):
        for k, v in value.items():
            key = str(k)
            if contains_pan(key):
                found.append(f"{path}.<key>")
            found.extend(pan_paths(v, f"{path}.{key}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.extend(pan_paths(v, f"{path}[{i}]"))
    return found
