from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.pan import bytes_may_contain_pan, contains_pan, luhn_ok, mask_pan, redact, redact_bytes

CARDS = ["4111111111111111", "5500005555555559", "378282246310005", "6011111111111117", "4000056655665556"]


def luhn_digit(body: str) -> str:
    for d in "0123456789":
        if luhn_ok(body + d):
            return d
    raise AssertionError


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("sep", ["", " ", "-"])
def test_detects_cards_with_separators(card: str, sep: str) -> None:
    text = sep.join(card[i : i + 4] for i in range(0, len(card), 4))
    assert contains_pan(f"pay with {text} today")
    masked = mask_pan(f"pay with {text} today")
    assert card not in masked and masked.endswith(card[-4:] + " today")


def test_non_cards() -> None:
    assert not contains_pan("4111111111111112")  # fails Luhn
    assert not contains_pan("123456789012")  # too short
    assert not contains_pan("12345678901234567890")  # too long, glued digits
    assert not contains_pan("2026-11-25T16:22:46+00:00")
    assert not contains_pan("192.168.100.200")


@given(st.integers(min_value=12, max_value=18), st.randoms(use_true_random=False))
def test_any_luhn_valid_length_is_caught_and_masked(length: int, rnd) -> None:  # type: ignore[no-untyped-def]
    body = "".join(rnd.choice("0123456789") for _ in range(length))
    card = body + luhn_digit(body)
    assert contains_pan(card)
    assert bytes_may_contain_pan(f'{{"x": "{card}"}}'.encode())
    assert mask_pan(card) == "*" * (len(card) - 4) + card[-4:]


def test_redact_nested_and_bytes() -> None:
    out = redact({"a": ["x 4111111111111111"], "4111111111111111": 1})
    assert "4111111111111111" not in repr(out)
    assert b"4111111111111111" not in redact_bytes(b'{"pan": "4111 1111 1111 1111"}')
    assert redact_bytes(b'{"ok": 1}') == b'{"ok": 1}'


@given(st.uuids())
def test_uuids_are_not_card_numbers(u) -> None:  # type: ignore[no-untyped-def]
    # A dash-separated-digits rule refuses ~1 in 370 random UUIDs (e.g. "ed7d4496-5397-4014-8a7f-…"
    # holds the Luhn-valid 4496539740148); the card-layout rule refuses none.
    assert not contains_pan(str(u))
    assert not contains_pan(str(u).upper())


def test_uuid_that_a_loose_rule_would_refuse() -> None:
    u = "ed7d4496-5397-4014-8a7f-1477e571d8b3"
    assert luhn_ok("4496539740148")
    assert not contains_pan(u)


@pytest.mark.parametrize(("text", "masked"), [
    ("3782 822463 10005", "***********0005"),                       # Amex 4-6-5
    ("3056-930902-5904", "**********5904"),                          # Diners 4-6-4
    ("6759 6498 2643 8453 672", "***************3672"),                # 19 digits, 4-4-4-4-3
    ("4111 1111 1111 1111 12/27", "************1111 12/27"),           # a card, then an expiry
    ("ref 1234 4111 1111 1111 1111", "ref 1234 ************1111"),    # other digits joined by a space
    ("id4111111111111111", "id************1111"),                      # an unbroken run, even glued to letters
])
def test_card_layouts(text: str, masked: str) -> None:
    assert contains_pan(text)
    assert mask_pan(text) == masked


def test_separated_digits_outside_card_layouts_are_not_cards() -> None:
    assert luhn_ok("4111111111111111")
    assert not contains_pan("x4111-1111-1111-1111")      # glued to a letter: part of an identifier
    assert not contains_pan("4111-1111-1111-1111y")
    assert not contains_pan("41-11-11-11-11-11-11-11")   # not a card layout
