"""Replay from columns (Parquet → validated Arrow → replay_table) equals the object path.

* Validation: a Parquet file mixing valid rows with every kind of broken one (missing, empty or long
  ids, bad country / currency / BIN, negative or NaN amounts, unknown channels, card numbers in known
  and unknown columns and inside items, null item quantities, naive-looking edge values that the
  contract accepts such as ``"FR\\n"`` or an infinite amount) gives exactly the problems and the valid
  rows that decoding every row with the contract gives.
* Values: for random streams (hypothesis), ``replay_table`` over the Parquet file equals ``replay``
  over the decoded orders bit for bit, and both equal the naive oracle.
* Schemas the column checks do not cover are read with the object path, and say so.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fs_streams import T0, make_labels, make_orders, oracle, stream_features
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from contracts.events import Label, Order
from feature_state.io import LoadedTable, read_events, read_table
from feature_state.layout import to_us
from feature_state.replay import replay, replay_table

FS = stream_features()
PAN = "4111 1111 1111 1111"  # a Luhn-valid test card number
NOT_PAN = "1234567890123456"  # 16 digits, fails the Luhn check: flagged by the column scan, valid

_ITEM = pa.struct([("sku", pa.string()), ("category", pa.string()), ("quantity", pa.int32()),
                   ("unit_price", pa.float64()), ("note", pa.string())])
_TS = pa.timestamp("ms", tz="UTC")
_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("order_id", pa.string()), ("event_time", _TS), ("customer_id", pa.string()), ("amount", pa.float64()),
    ("currency", pa.string()), ("account_created_at", _TS), ("merchant_id", pa.string()),
    ("terminal_id", pa.string()), ("channel", pa.string()), ("payment_method", pa.string()),
    ("payment_card_fingerprint", pa.string()), ("payment_card_bin", pa.string()),
    ("payment_card_country", pa.string()), ("ip_address", pa.string()), ("ip_country", pa.string()),
    ("device_id", pa.string()), ("email_domain", pa.string()), ("billing_country", pa.string()),
    ("shipping_country", pa.string()), ("items", pa.list_(_ITEM)), ("schema_version", pa.int16()),
    ("note", pa.string()), ("score", pa.float64()),  # unknown to the contract: ignored, scanned
]


def _row(i: int, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "order_id": f"o{i}", "event_time": T0 + dt.timedelta(seconds=37 * i), "customer_id": f"c{i % 5}",
        "amount": 10.0 + i, "currency": "EUR", "account_created_at": T0 - dt.timedelta(days=30),
        "merchant_id": f"m{i % 3}", "terminal_id": None, "channel": "web", "payment_method": "card",
        "payment_card_fingerprint": f"k{i % 4}", "payment_card_bin": "411111", "payment_card_country": "FR",
        "ip_address": "10.0.0.1", "ip_country": "FR", "device_id": f"d{i % 2}", "email_domain": "ex.com",
        "billing_country": "FR", "shipping_country": "DE",
        "items": [{"sku": "s1", "category": "c", "quantity": 1, "unit_price": 2.5, "note": None}],
        "schema_version": 1, "note": None, "score": 0.5,
    }
    base.update(kw)
    return base


BROKEN: list[dict[str, Any]] = [
    {"order_id": None}, {"order_id": ""}, {"order_id": "x" * 257}, {"customer_id": None},
    {"merchant_id": "m" * 257}, {"billing_country": "fr"}, {"billing_country": "FRA"},
    {"currency": "EU"}, {"currency": None}, {"amount": -1.0}, {"amount": float("nan")}, {"amount": None},
    {"channel": "fax"}, {"payment_card_bin": "41a111"}, {"event_time": None}, {"schema_version": 0},
    {"ip_address": PAN}, {"note": f"card {PAN}"}, {"payment_card_fingerprint": PAN.replace(" ", "")},
    {"items": [{"sku": PAN, "category": None, "quantity": 1, "unit_price": None, "note": None}]},
    {"items": [{"sku": "s", "category": None, "quantity": None, "unit_price": 1.0, "note": None}]},
    {"items": [{"sku": "s", "category": None, "quantity": -2, "unit_price": 1.0, "note": None}]},
    {"items": [{"sku": "s", "category": None, "quantity": 1, "unit_price": -1.0, "note": None}]},
    {"items": [{"sku": "s" * 300, "category": None, "quantity": 1, "unit_price": 1.0, "note": None}]},
    {"items": [{"sku": "s", "category": None, "quantity": 1, "unit_price": 1.0, "note": f"x {PAN}"}]},
]
#: flagged by the column checks (or near them), yet valid for the contract: must be kept
EDGY_BUT_VALID: list[dict[str, Any]] = [
    {"billing_country": "FR\n"}, {"amount": float("inf")}, {"note": NOT_PAN}, {"ip_address": NOT_PAN},
    {"terminal_id": ""}, {"channel": None}, {"schema_version": None}, {"items": None}, {"items": []},
    {"items": [{"sku": None, "category": None, "quantity": 0, "unit_price": None, "note": None}]},
    {"account_created_at": None}, {"payment_method": None, "payment_card_fingerprint": None,
                                   "payment_card_bin": None, "payment_card_country": None},
]


def _write(path: Path, rows: list[dict[str, Any]], columns: list[tuple[str, pa.DataType]] = _COLUMNS) -> Path:
    schema = pa.schema(columns)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_column_checks_give_the_contracts_verdict_row_for_row(tmp_path: Path) -> None:
    rng = random.Random(4)
    rows = [_row(i) for i in range(40)]
    for k, change in enumerate(BROKEN + EDGY_BUT_VALID):
        rows.insert(rng.randrange(len(rows) + 1), _row(100 + k, **change))
    path = _write(tmp_path / "orders.parquet", rows)
    by_objects = read_events(Order, path)
    by_columns = read_table(Order, path)
    assert isinstance(by_columns, LoadedTable)
    assert by_columns.problems == by_objects.problems
    assert len(by_objects.problems) == len(BROKEN)
    assert any("card number" in p for p in by_columns.problems)
    kept = by_columns.table.table.column("order_id").to_pylist()
    assert kept == [o.order_id for o in by_objects.events]
    assert 0 < by_columns.checked < len(rows)  # only the suspects were decoded one by one
    a = replay(FS, by_objects.events)
    b = replay_table(FS, by_columns.table)
    assert a.order_ids == b.order_ids
    for name in a.names:
        assert np.array_equal(a.columns[name], b.columns[name], equal_nan=True), name


def test_a_missing_required_column_makes_every_row_invalid(tmp_path: Path) -> None:
    cols = [(n, t) for n, t in _COLUMNS if n != "currency"]
    rows = [{k: v for k, v in _row(i).items() if k != "currency"} for i in range(3)]
    path = _write(tmp_path / "o.parquet", rows, cols)
    by_columns = read_table(Order, path)
    assert isinstance(by_columns, LoadedTable)
    assert by_columns.problems == read_events(Order, path).problems
    assert len(by_columns.problems) == 3 and len(by_columns.table) == 0


@pytest.mark.parametrize("columns, why", [
    ([*[(n, t) for n, t in _COLUMNS if n != "event_time"], ("event_time", pa.string())], "event_time"),
    ([*[(n, t) for n, t in _COLUMNS if n != "event_time"], ("event_time", pa.timestamp("ms", tz="Europe/Paris"))],
     "fixed offset"),
    ([*[(n, t) for n, t in _COLUMNS if n != "amount"], ("amount", pa.string())], "amount"),
    ([*_COLUMNS, ("extra", pa.list_(pa.string()))], "nested"),
])
def test_schemas_outside_the_column_checks_use_the_object_path(tmp_path: Path, columns: Any, why: str) -> None:
    rows = [_row(i) for i in range(3)]
    for r in rows:
        if dict(columns)["event_time"] == pa.string():
            r["event_time"] = r["event_time"].isoformat()
        if dict(columns).get("amount") == pa.string():
            r["amount"] = str(r["amount"])
        r["extra"] = ["a"]
    path = _write(tmp_path / "o.parquet", rows, columns)
    reason = read_table(Order, path)
    assert isinstance(reason, str) and why in reason


def test_labels_columns_equal_the_object_path(tmp_path: Path) -> None:
    ts = pa.timestamp("ms", tz="UTC")
    schema = pa.schema([("order_id", pa.string()), ("label", pa.string()), ("source", pa.string()),
                        ("label_time", ts), ("customer_id", pa.string()), ("merchant_id", pa.string()),
                        ("schema_version", pa.int16())])
    good = {"label": "fraud", "source": "review", "label_time": T0, "customer_id": "c1", "merchant_id": "m1",
            "schema_version": 1}
    rows = [{"order_id": f"o{i}", **good} for i in range(6)]
    rows += [{"order_id": "b1", **good, "label": "maybe"}, {"order_id": "b2", **good, "source": None},
             {"order_id": "", **good}, {"order_id": "b4", **good, "merchant_id": PAN}]
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    by_columns = read_table(Label, path)
    by_objects = read_events(Label, path)
    assert isinstance(by_columns, LoadedTable)
    assert by_columns.problems == by_objects.problems and len(by_objects.problems) == 4
    assert by_columns.table.table.column("order_id").to_pylist() == [lb.order_id for lb in by_objects.events]


streams = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "span_s": st.sampled_from([1800, 6 * 3600, 3 * 86400]),
    "burst": st.floats(0.0, 0.9),
    "fill": st.booleans(),
})


@settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(p=streams)
def test_replay_from_parquet_columns_equals_replay_and_the_oracle(tmp_path: Path, p: dict[str, Any]) -> None:
    rng = random.Random(p["seed"])
    orders = make_orders(rng, 100, span_s=p["span_s"], burst=p["burst"])
    labels = make_labels(rng, orders)
    orders = orders + orders[:7]  # duplicates: first occurrence wins on both paths
    rows = [{**json.loads(_json(o)), "event_time": o.event_time, "account_created_at": o.account_created_at}
            for o in orders]
    for r in rows:
        pay = r.pop("payment", None) or {}
        for k in ("method", "card_fingerprint", "card_bin", "card_country"):
            r[f"payment_{k}"] = pay.get(k)
        r.setdefault("items", None)
    opath = _write(tmp_path / f"o{p['seed']}.parquet", rows, _COLUMNS[:-2])
    lpath = tmp_path / f"l{p['seed']}.parquet"
    lschema = pa.schema([("order_id", pa.string()), ("label", pa.string()), ("source", pa.string()),
                         ("label_time", pa.timestamp("us", tz="UTC")), ("customer_id", pa.string()),
                         ("merchant_id", pa.string())])
    pq.write_table(pa.Table.from_pylist([{"order_id": lb.order_id, "label": lb.label, "source": lb.source,
                                          "label_time": lb.label_time, "customer_id": lb.customer_id,
                                          "merchant_id": lb.merchant_id} for lb in labels], schema=lschema), lpath)
    otab, ltab = read_table(Order, opath), read_table(Label, lpath)
    assert isinstance(otab, LoadedTable) and isinstance(ltab, LoadedTable)
    objs, labs = read_events(Order, opath).events, read_events(Label, lpath).events
    a = replay(FS, objs, labs, fill_label_entities=p["fill"])
    b = replay_table(FS, otab.table, ltab.table, fill_label_entities=p["fill"])
    assert a.order_ids == b.order_ids and a.source_index.tolist() == b.source_index.tolist()
    for name in a.names:
        assert np.array_equal(a.columns[name], b.columns[name], equal_nan=True), name
    if not p["fill"]:  # the oracle reads labels as the online stores do (no filling)
        rows_b = b.rows()
        uniq = {o.order_id: o for o in reversed(objs)}
        for oid, got in zip(b.order_ids[:25], rows_b[:25], strict=True):
            assert got == oracle(FS, objs, labs, uniq[oid]), oid
    assert to_us(objs[0]) == int(otab.table.columns.ts[0])


def _json(o: Order) -> bytes:
    import msgspec

    return msgspec.json.encode(o)
