"""The event contracts: valid events decode, invalid ones name every offending field."""

from __future__ import annotations

import datetime as dt
import json
import logging

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.events import (
    Action,
    Decision,
    Label,
    Order,
    decode,
    decode_label,
    decode_order,
    encode,
    from_builtins,
)
from contracts.exceptions import CardNumberError, EventValidationError

GOOD = {
    "order_id": "o-1",
    "event_time": "2026-11-25T16:22:46+01:00",
    "customer_id": "c-1",
    "amount": 12.5,
    "currency": "EUR",
    "account_created_at": "2025-01-01T00:00:00Z",
    "merchant_id": "m-1",
    "terminal_id": "t-1",
    "channel": "web",
    "payment": {"method": "card", "card_fingerprint": "tok_abc", "card_bin": "411111", "card_country": "DE"},
    "ip_address": "10.0.0.1",
    "ip_country": "DE",
    "device_id": "d-1",
    "email_domain": "example.com",
    "billing_country": "DE",
    "shipping_country": "FR",
    "items": [{"sku": "sku-1", "category": "books", "quantity": 2, "unit_price": 6.25}],
    "schema_version": 1,
}


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_valid_order_round_trips() -> None:
    order = decode_order(raw(GOOD))
    assert order.event_time == dt.datetime(2026, 11, 25, 15, 22, 46, tzinfo=dt.UTC)
    assert order.payment is not None and order.payment.card_bin == "411111"
    again = decode_order(encode(order))
    assert again == order


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    order = decode_order(raw({**GOOD, "loyalty_tier": "gold"}))
    assert order.order_id == "o-1"


def test_minimal_order() -> None:
    minimal = {k: GOOD[k] for k in ("order_id", "event_time", "customer_id", "amount", "currency")}
    order = decode_order(raw(minimal))
    assert order.payment is None and order.schema_version == 1


@pytest.mark.parametrize(
    ("change", "path", "fragment"),
    [
        ({"order_id": None}, "$.order_id", "str"),
        ({"order_id": ""}, "$.order_id", "length"),
        ({"event_time": "2026-11-25T16:22:46"}, "$.event_time", "timezone"),
        ({"event_time": "yesterday"}, "$.event_time", "datetime"),
        ({"amount": -0.01}, "$.amount", ">= 0"),
        ({"amount": "12"}, "$.amount", "float"),
        ({"currency": "eur"}, "$.currency", "regex"),
        ({"channel": "fax"}, "$.channel", "enum"),
        ({"payment": {"card_bin": "41"}}, "$.payment.card_bin", "regex"),
        ({"payment": "card"}, "$.payment", "object"),
        ({"ip_country": "Germany"}, "$.ip_country", "regex"),
        ({"items": [{"quantity": -1}]}, "$.items[0].quantity", ">= 0"),
        ({"items": [{}, 7]}, "$.items[1]", "object"),
        ({"account_created_at": 5}, "$.account_created_at", "datetime"),
        ({"schema_version": 0}, "$.schema_version", ">= 1"),
    ],
)
def test_each_invalid_field_is_named(change: dict[str, object], path: str, fragment: str) -> None:
    bad = {**GOOD, **change}
    if change.get("order_id", "x") is None:
        del bad["order_id"]
        fragment = "missing"
    with pytest.raises(EventValidationError) as info:
        decode_order(raw(bad))
    errors = {e.path: e.message for e in info.value.errors}
    assert path in errors, errors
    assert fragment in errors[path]
    assert path in str(info.value)


def test_all_offending_fields_are_named_at_once() -> None:
    bad = {**GOOD, "amount": -1, "currency": "euro", "channel": "fax", "payment": {"card_country": "xx"}}
    del bad["customer_id"]
    with pytest.raises(EventValidationError) as info:
        decode_order(raw(bad))
    assert set(info.value.fields) == {
        "$.amount", "$.currency", "$.channel", "$.payment.card_country", "$.customer_id",
    }


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b"null", b'"order"', b"\xff\xfe"])
def test_not_an_object(payload: bytes) -> None:
    with pytest.raises(EventValidationError) as info:
        decode_order(payload)
    assert info.value.errors[0].path == "$"


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("order_id", "4111111111111111"),
        ("customer_id", "cust 4111 1111 1111 1111"),
        ("email_domain", "5500-0055-5555-5559.example"),
        ("device_id", "378282246310005"),
    ],
)
def test_card_numbers_are_refused_without_echo(where: str, value: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CardNumberError) as info:
        decode_order(raw({**GOOD, where: value}))
    digits = "".join(ch for ch in value if ch.isdigit())
    assert f"$.{where}" in info.value.fields
    assert digits not in str(info.value)
    assert digits[-8:] not in str(info.value)
    assert all(digits not in r.getMessage() for r in caplog.records)


def test_card_number_in_nested_and_unknown_fields() -> None:
    bad = {**GOOD, "items": [{"sku": "4111111111111111"}], "note": {"x": ["5500005555555559"]}}
    with pytest.raises(CardNumberError) as info:
        decode_order(raw(bad))
    assert set(info.value.fields) == {"$.items[0].sku", "$.note.x[0]"}


def test_numbers_that_are_not_card_numbers_pass() -> None:
    ok = {**GOOD, "order_id": "4111111111111112", "device_id": "12345678901234567890123"}
    assert decode_order(raw(ok)).order_id == "4111111111111112"


def test_label_contract() -> None:
    lbl = decode_label(raw({"order_id": "o-1", "label": "fraud", "source": "chargeback",
                            "label_time": "2026-12-30T00:00:00Z"}))
    assert lbl.label == "fraud"
    with pytest.raises(EventValidationError) as info:
        decode_label(raw({"order_id": "o-1", "label": "maybe", "source": "rumour", "label_time": "2026-12-30"}))
    assert set(info.value.fields) == {"$.label", "$.source", "$.label_time"}


def test_decision_and_action_round_trip() -> None:
    now = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    d = Decision(order_id="o-1", decision="block", score=0.97, model_version="m1", ruleset_version="r1",
                 features={"a": 1.0, "b": None}, decided_at=now)
    assert decode(Decision, encode(d)) == d
    a = Action(order_id="o-1", action="block", decided_at=now, rule="card_testing_burst")
    assert decode(Action, encode(a)) == a


def test_from_builtins_checks_cards_and_fields() -> None:
    with pytest.raises(CardNumberError):
        from_builtins(Order, {**GOOD, "terminal_id": "4111111111111111"})
    with pytest.raises(EventValidationError) as info:
        from_builtins(Order, {**GOOD, "amount": -3})
    assert info.value.fields == ["$.amount"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_any_json_either_decodes_or_raises_a_contract_error(value: object) -> None:
    payload = msgspec.json.encode(value)
    try:
        decode_order(payload)
    except (EventValidationError, CardNumberError) as exc:
        assert exc.errors, "a contract error always names at least one field"


@given(st.dictionaries(st.sampled_from(sorted(GOOD)), json_values, max_size=6))
def test_mutated_orders_either_decode_or_name_fields(changes: dict[str, object]) -> None:
    payload = msgspec.json.encode({**GOOD, **changes})
    try:
        decode_order(payload)
    except (EventValidationError, CardNumberError) as exc:
        assert all(e.path.startswith("$") for e in exc.errors)
        assert exc.errors


def test_label_struct_is_typed() -> None:
    assert Label.__struct_fields__[:4] == ("order_id", "label", "source", "label_time")
