"""``fraudscore features check | replay | read`` end to end, in-process, on files."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fs_streams import make_labels, make_orders

from contracts.events import encode, to_builtins
from feature_state.definitions import load_feature_set
from feature_state.layout import to_us
from feature_state.stores.memory import MemoryStore
from fraudscore.cli import main

FS = load_feature_set()


def _files(tmp_path: Path, n: int = 120) -> tuple[Path, Path, list[Any], list[Any]]:
    rng = random.Random(5)
    orders = make_orders(rng, n, span_s=86400)
    labels = make_labels(rng, orders)
    op, lp = tmp_path / "orders.jsonl", tmp_path / "labels.jsonl"
    op.write_bytes(b"\n".join(encode(o) for o in orders) + b"\n")
    lp.write_bytes(b"\n".join(encode(lb) for lb in labels) + b"\n")
    return op, lp, orders, labels


def _online(orders: list[Any], labels: list[Any]) -> dict[str, dict[str, float | None]]:
    """What the embedded store computes for the same stream, in event-time order."""
    store = MemoryStore(FS, 3600)
    events = sorted([(to_us(o), 1, o) for o in orders] + [(to_us(lb.label_time), 0, lb) for lb in labels],
                    key=lambda x: (x[0], x[1], getattr(x[2], "order_id", "")))
    out: dict[str, dict[str, float | None]] = {}
    for _, kind, ev in events:
        if kind:
            out[ev.order_id] = asyncio.run(store.apply_batch([ev])).features[0]
        else:
            asyncio.run(store.apply_labels([ev]))
    return out


def test_check_lists_features_and_state(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", "check"]) == 0
    out = capsys.readouterr().out
    assert "merchant_fraud_rate_30d" in out and "tiles" in out and "event log" in out
    assert main(["features", "check", "--json"]) == 0
    assert "o.customer" in json.loads(capsys.readouterr().out)["namespaces"]


def test_check_reports_file_line_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "f.yaml"
    bad.write_text("version: 1\nentities: {customer: customer_id}\nfeatures:\n"
                   "  - {name: x, entity: customer, aggregation: cout, window: 1h}\n")
    assert main(["features", "check", str(bad)]) == 1
    assert f"{bad}:4: x: aggregation 'cout'" in capsys.readouterr().err


@pytest.mark.parametrize("out_name", ["features.parquet", "features.jsonl"])
def test_replay_files_equal_the_online_store(tmp_path: Path, out_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    op, lp, orders, labels = _files(tmp_path)
    out = tmp_path / out_name
    assert main(["features", "replay", "--orders", str(op), "--labels", str(lp), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["orders"] == len(orders) and summary["invalid"] == 0
    if out.suffix == ".parquet":
        rows = pq.read_table(out).to_pylist()
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    online = _online(orders, labels)
    assert len(rows) == len(orders)
    for row in rows:
        expected = online[row["order_id"]]
        assert {k: row[k] for k in FS.names} == expected, row["order_id"]


def test_replay_refuses_invalid_lines_unless_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    op, lp, orders, _ = _files(tmp_path, 20)
    lines = op.read_bytes().splitlines()
    lines.insert(3, b'{"order_id": "x", "amount": -1}')
    lines.insert(7, b'{"order_id": "y", "event_time": "2026-01-01T00:00:00Z", "customer_id": "4111111111111111",'
                    b' "amount": 1, "currency": "EUR"}')
    op.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "f.parquet"
    assert main(["features", "replay", "--orders", str(op), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{op}:4: invalid order" in err and "$.amount" in err and "$.event_time: required field is missing" in err
    assert f"{op}:8: invalid order" in err and "card number" in err and "4111111111111111" not in err
    assert not out.exists()
    assert main(["features", "replay", "--orders", str(op), "--out", str(out), "--skip-invalid"]) == 0
    assert pq.read_table(out).num_rows == len(orders)


def test_replay_reads_parquet_with_flattened_payment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    op, lp, orders, labels = _files(tmp_path, 60)
    rows = []
    for o in orders:
        b = to_builtins(o)
        pay = b.pop("payment", None) or {}
        for k, v in pay.items():
            b[f"payment_{k}"] = v
        rows.append(b)
    columns = sorted({k for r in rows for k in r})
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows]), tmp_path / "orders.parquet")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["features", "replay", "--orders", str(op), "--labels", str(lp), "--out", str(a)]) == 0
    assert main(["features", "replay", "--orders", str(tmp_path / "orders.parquet"), "--labels", str(lp),
                 "--out", str(b)]) == 0
    capsys.readouterr()
    assert a.read_text() == b.read_text()


def test_read_prints_features_from_the_configured_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    order = '{"order_id":"o1","event_time":"2026-01-01T12:00:00Z","customer_id":"c1","amount":20,"currency":"EUR"}'
    assert main(["--data-dir", str(tmp_path), "features", "read", order]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["customer_order_count_1h"] == 1.0 and got["amount"] == 20.0
    assert main(["--data-dir", str(tmp_path), "features", "read", '{"order_id": 1}']) == 1
