"""`fraudscore score`: batch inference through the pipeline with point-in-time features."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import Order, encode
from fraudscore.cli import main


def _write(path: Path, orders: list[Order], extra: list[bytes] = ()) -> None:  # type: ignore[assignment]
    path.write_bytes(b"".join(encode(o) + b"\n" for o in orders) + b"".join(e + b"\n" for e in extra))


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _score(data_dir: Path, *args: str) -> int:
    return main(["--data-dir", str(data_dir), "score", "--no-progress", *args])


def test_scores_every_order_and_rejects_bad_ones_with_file_line(registry: tuple[Path, str], tmp_path: Path,
                                                                sample_orders: list[Order],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    models, version = registry
    src = tmp_path / "orders.jsonl"
    head = b'"event_time":"2026-03-02T10:00:00Z","currency":"EUR"'
    bad_amount = b'{"order_id":"bad1",' + head + b',"customer_id":"c","amount":-1}'
    pan = b'{"order_id":"bad2",' + head + b',"customer_id":"4111111111111111","amount":1}'
    _write(src, sample_orders[:200], [bad_amount, pan])
    out = tmp_path / "decisions.jsonl"
    assert _score(models.parent, "--input", str(src), "--output", str(out)) == 1  # problems found: rejects
    decisions = _read(out)
    assert len(decisions) == 200 and {d["model_version"] for d in decisions} == {version}
    assert all(d["source"] == "batch" and d["score"] is not None for d in decisions)
    rejected = _read(tmp_path / "decisions.jsonl.rejected.jsonl")
    assert [r["line"] for r in rejected] == [201, 202]
    assert "amount" in rejected[0]["error"] and "card number" in rejected[1]["error"]
    assert "4111111111111111" not in (tmp_path / "decisions.jsonl.rejected.jsonl").read_text()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["scored"] == 200 and summary["rejected"] == 2


def test_point_in_time_features_do_not_depend_on_file_order_or_see_the_future(
    registry: tuple[Path, str], tmp_path: Path, sample_orders: list[Order]
) -> None:
    models, _ = registry
    orders = sample_orders[:150]
    fwd, rev = tmp_path / "fwd.jsonl", tmp_path / "rev.jsonl"
    _write(fwd, orders)
    _write(rev, list(reversed(orders)))
    assert _score(models.parent, "--input", str(fwd), "--output", str(tmp_path / "a.jsonl")) == 0
    assert _score(models.parent, "--input", str(rev), "--output", str(tmp_path / "b.jsonl")) == 0
    a = {d["order_id"]: d for d in _read(tmp_path / "a.jsonl")}
    b = {d["order_id"]: d for d in _read(tmp_path / "b.jsonl")}
    assert a.keys() == b.keys()
    for oid in a:
        assert a[oid]["features"] == b[oid]["features"] and a[oid]["score"] == b[oid]["score"]
    # history warms the state: scoring the second half after the first equals scoring everything at once
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    _write(first, orders[:75])
    _write(second, orders[75:])
    assert _score(models.parent, "--input", str(second), "--history", str(first),
                  "--output", str(tmp_path / "c.jsonl")) == 0
    for d in _read(tmp_path / "c.jsonl"):
        assert d["features"] == a[d["order_id"]]["features"] and d["score"] == a[d["order_id"]]["score"]


def test_parquet_in_and_out(registry: tuple[Path, str], tmp_path: Path, sample_orders: list[Order]) -> None:
    import pyarrow as pa  # a core dependency
    import pyarrow.parquet as pq

    from contracts.events import to_builtins

    models, _ = registry
    rows = [to_builtins(o) for o in sample_orders[:50]]
    for i, r in enumerate(rows):
        r.pop("items", None)
        if i < 5:  # the first chunk has no account age at all: an all-null column must not fix its type
            r.pop("account_created_at", None)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "orders.parquet")
    out = tmp_path / "decisions.parquet"
    assert _score(models.parent, "--input", str(tmp_path / "orders.parquet"), "--output", str(out), "--chunk", "5") == 0
    table = pq.read_table(out)
    assert table.num_rows == 50
    assert "feature.amount" in table.column_names and "score" in table.column_names
    assert json.loads(table.column("reasons")[0].as_py()) is not None


def test_no_model_is_a_clear_usage_error(tmp_path: Path, sample_orders: list[Order],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "o.jsonl"
    _write(src, sample_orders[:3])
    assert _score(tmp_path / "empty", "--input", str(src), "--output", str(tmp_path / "d.jsonl")) == 2
    assert "no model" in capsys.readouterr().err


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 30), seed=st.integers(0, 2**32 - 1), extra=st.booleans())
def test_model_matrix_from_the_store_matrix_equals_the_per_order_one(n: int, seed: int, extra: bool) -> None:
    """The pipeline takes the model's columns from the store's matrix (FeatureRows) when it has one:
    the same float32 matrix as building it from the dicts, for any column order; a model feature the
    store does not have falls back to the dicts (missing → NaN)."""
    from types import SimpleNamespace

    from feature_state.derived import FeatureRows, rows
    from scoring.pipeline import DecisionPipeline

    rng = np.random.default_rng(seed)
    names = tuple(f"f{i}" for i in range(8))
    values = rng.normal(size=(n, 8)) * 1e3
    values[rng.random(values.shape) < 0.25] = np.nan
    feats = rows(names, values)
    assert isinstance(feats, FeatureRows) and len(feats) == n
    wanted = [names[i] for i in rng.permutation(8)[: rng.integers(1, 9)]] + (["not_in_store"] if extra else [])
    model = SimpleNamespace(feature_names=tuple(wanted))
    fast = DecisionPipeline.matrix(model, feats)  # type: ignore[arg-type]
    slow = DecisionPipeline.matrix(model, [dict(f) for f in feats])  # type: ignore[arg-type]
    assert fast.dtype == slow.dtype == np.float32 and fast.shape == slow.shape == (n, len(wanted))
    np.testing.assert_array_equal(fast, slow)
