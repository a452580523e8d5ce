"""Card-number (PAN) detection and masking.

A value "looks like a card number" when it holds 13–19 digits that pass the Luhn check, written
the way card numbers are written:

* one unbroken run of 13–19 digits (not glued to further digits: a 20-digit id is not a card), or
* digit groups joined by single spaces or dashes in a card layout — ``4-4-4-4`` with an optional
  last group of 1–3 (16–19 digits), ``4-4-4-x`` with a last group of 1–4 (13–16), or the
  American Express / Diners layouts ``4-6-5`` and ``4-6-4`` — whose first group does not follow
  a letter and whose last group is not followed by one.

The layout rule is what keeps identifiers from being taken for cards: a random UUID holds a
Luhn-valid 13+-digit dash-separated run about once in 370 (``ed7d4496-5397-4014-8a7f…``), which a
"any digits with separators" rule would refuse; no UUID fits a card layout with clean edges. A
separator may still join other digits to a card number ("ref 1234 4111 1111 1111 1111", a card
followed by an expiry), so every card-layout window of groups inside a run is tried.

Such values are rejected at every edge (events, gRPC requests) and never echoed back or logged: use
:func:`mask_pan` / :func:`redact` before a value reaches a message or a log line.

The scan runs on raw bytes first (a translate and a substring test over the whole payload), so the
common case — no candidate at all — costs about a microsecond.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# A run of digit groups joined by single spaces or dashes, not glued to further digits.
_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ \-][0-9]+)*(?![0-9])")
_GROUP = re.compile(r"[0-9]+")
# Card layouts of separated groups (group lengths; the last entry of an open layout is a range).
_LAYOUTS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((4, 4), (4, 4), (4, 4), (4, 4), (1, 3)),
    ((4, 4), (4, 4), (4, 4), (4, 4)),
    ((4, 4), (4, 4), (4, 4), (1, 4)),
    ((4, 4), (6, 6), (5, 5)),
    ((4, 4), (6, 6), (4, 4)),
)


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


def _is_letter(text: str, i: int) -> bool:
    return 0 <= i < len(text) and text[i].isalpha()


def _pan_matches(text: str) -> Iterator[tuple[int, int, str]]:
    """``(start, end, digits)`` of every card number in ``text``, left to right, not overlapping."""
    for run in _RUN.finditer(text):
        groups = [(g.start() + run.start(), g.end() + run.start()) for g in _GROUP.finditer(run.group(0))]
        if len(groups) == 1:
            a, b = groups[0]
            if 13 <= b - a <= 19 and luhn_ok(text[a:b]):
                yield a, b, text[a:b]
            continue
        i = 0
        while i < len(groups):
            found = _layout_at(text, groups, i)
            if found is None:
                a, b = groups[i]  # an unbroken 13–19 digit group inside a run is a card too
                if 13 <= b - a <= 19 and luhn_ok(text[a:b]):
                    yield a, b, text[a:b]
                i += 1
                continue
            k, digits = found
            yield groups[i][0], groups[i + k - 1][1], digits
            i += k


def _layout_at(text: str, groups: list[tuple[int, int]], i: int) -> tuple[int, str] | None:
    """(number of groups, digits) of the longest Luhn-valid card layout starting at group ``i``."""
    if _is_letter(text, groups[i][0] - 1):
        return None
    for layout in _LAYOUTS:
        k = len(layout)
        if i + k > len(groups):
            continue
        window = groups[i : i + k]
        if all(lo <= b - a <= hi for (a, b), (lo, hi) in zip(window, layout, strict=True)) \
                and not _is_letter(text, window[-1][1]):
            digits = "".join(text[a:b] for a, b in window)
            if luhn_ok(digits):
                return k, digits
    return None


def find_pan(text: str) -> tuple[int, int] | None:
    """Return the (start, end) span of the first card number in ``text``, or None."""
    for start, end, _ in _pan_matches(text):
        return start, end
    return None


def contains_pan(text: str) -> bool:
    """True when ``text`` holds something that looks like a card number."""
    return find_pan(text) is not None


def mask_pan(value: str) -> str:
    """Mask every card number in ``value``, keeping only its last 4 digits."""
    out: list[str] = []
    last = 0
    for start, end, digits in _pan_matches(value):
        out.append(value[last:start])
        out.append("*" * (len(digits) - 4) + digits[-4:])
        last = end
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
