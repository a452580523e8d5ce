"""Random order/label streams and a naive oracle for the feature_state tests (no fixtures here)."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence

from contracts.events import Label, Order, Payment
from feature_state.definitions import FeatureSet, parse_feature_set
from feature_state.layout import SCALE, US, field_value, to_fixed, to_us
from feature_state.windows import Features, derive

T0 = dt.datetime(2026, 3, 6, 22, 30, tzinfo=dt.UTC)  # a Friday night: crosses midnight and a weekend
_ZONES = [dt.UTC, dt.UTC, dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=-5, minutes=-30))]

#: Every aggregation, every resolution, label features with a delay, seconds since previous.
TEST_DEFS = {
    "version": 1,
    "entities": {"customer": "customer_id", "card": "payment.card_fingerprint", "merchant": "merchant_id",
                 "device": "device_id"},
    "features": [
        {"name": "c_cnt_5m", "entity": "customer", "aggregation": "count", "window": "5m"},
        {"name": "c_sum_1h", "entity": "customer", "aggregation": "sum", "field": "amount", "window": "1h"},
        {"name": "c_mean_3h", "entity": "customer", "aggregation": "mean", "field": "amount", "window": "3h"},
        {"name": "c_max_2d", "entity": "customer", "aggregation": "max", "field": "amount", "window": "2d"},
        {"name": "c_min_3d", "entity": "customer", "aggregation": "min", "field": "amount", "window": "3d"},
        {"name": "c_cards_1d", "entity": "customer", "aggregation": "distinct_count",
         "field": "payment.card_fingerprint", "window": "1d"},
        {"name": "k_cnt_1h", "entity": "card", "aggregation": "count", "window": "1h"},
        {"name": "k_merchants_2h", "entity": "card", "aggregation": "distinct_count", "field": "merchant_id",
         "window": "2h"},
        {"name": "m_cnt_10m", "entity": "merchant", "aggregation": "count", "window": "10m"},
        {"name": "m_sum_2d", "entity": "merchant", "aggregation": "sum", "field": "amount", "window": "2d",
         "resolution": "1d"},
        {"name": "m_fraud_1d", "entity": "merchant", "source": "labels", "aggregation": "count", "window": "1d",
         "delay": "30m"},
        {"name": "m_fraud_rate_6h", "entity": "merchant", "source": "labels", "aggregation": "rate",
         "window": "6h", "delay": "5m"},
        {"name": "c_fraud_2d", "entity": "customer", "source": "labels", "aggregation": "count", "window": "2d",
         "resolution": "1d"},
        {"name": "d_customers_1h", "entity": "device", "aggregation": "distinct_count", "field": "customer_id",
         "window": "1h"},
    ],
    "derived": [
        {"name": "amount", "kind": "field", "field": "amount"},
        {"name": "amount_to_c_mean", "kind": "ratio", "numerator": "amount", "denominator": "c_mean_3h"},
        {"name": "c_since_prev", "kind": "seconds_since_previous", "entity": "customer", "window": "1d"},
        {"name": "k_since_prev", "kind": "seconds_since_previous", "entity": "card", "window": "1h"},
        {"name": "night", "kind": "is_night"},
        {"name": "weekend", "kind": "is_weekend"},
        {"name": "age", "kind": "account_age_days"},
        {"name": "mm", "kind": "mismatch", "fields": ["billing_country", "shipping_country"]},
    ],
}


def stream_features() -> FeatureSet:
    return parse_feature_set(TEST_DEFS, "<tests>")


def make_orders(rng: random.Random, n: int, span_s: int = 3 * 86400, burst: float = 0.5) -> list[Order]:
    """``n`` orders over ``span_s`` seconds; about ``burst`` of them packed into a few busy minutes."""
    centres = [rng.uniform(0, span_s) for _ in range(3)]
    orders = []
    for i in range(n):
        if rng.random() < burst:
            t = rng.choice(centres) + rng.uniform(0, 90)
        else:
            t = rng.uniform(0, span_s)
        us = int(t * 1e6) if rng.random() < 0.8 else int(t) * 1_000_000  # some exact-second ties
        when = T0 + dt.timedelta(microseconds=us)
        when = when.astimezone(rng.choice(_ZONES))  # the same instant in the sender's offset
        orders.append(Order(
            order_id=f"o{i:05d}{rng.choice('abc')}",
            event_time=when,
            customer_id=f"c{rng.randrange(4)}",
            amount=round(rng.uniform(0, 500), rng.choice((0, 2))),
            currency="EUR",
            merchant_id=rng.choice(["m0", "m1", "m2", None]),
            device_id=rng.choice([f"d{rng.randrange(3)}", None]),
            payment=Payment(card_fingerprint=rng.choice(["k0", "k1", "k2", "k3", None])),
            billing_country=rng.choice(["FR", "DE", None]),
            shipping_country=rng.choice(["FR", "DE"]),
            account_created_at=rng.choice([None, T0 - dt.timedelta(days=rng.randrange(1, 900), seconds=7)]),
        ))
    return orders


def make_labels(rng: random.Random, orders: Sequence[Order], share: float = 0.3) -> list[Label]:
    labels = []
    for o in orders:
        if rng.random() >= share:
            continue
        when = o.event_time + dt.timedelta(seconds=rng.uniform(0, 6 * 3600))
        labels.append(Label(order_id=o.order_id, label=rng.choice(["fraud", "fraud", "legit"]), source="review",
                            label_time=when, merchant_id=o.merchant_id if rng.random() < 0.9 else None,
                            customer_id=o.customer_id))
    return labels


def arrival_order(
    rng: random.Random, orders: Sequence[Order], labels: Sequence[Label], lateness_s: float, dup_share: float = 0.2
) -> list[Order | Label]:
    """Orders and labels shuffled within the lateness (each arrives less than ``lateness_s`` after its
    time, in event-time terms, so none is late), some of them sent twice (also within the lateness)."""
    def t(e: Order | Label) -> int:
        return to_us(e.event_time if isinstance(e, Order) else e.label_time)

    items: list[Order | Label] = [*orders, *labels]
    keyed = [(t(e) + int(rng.uniform(0, lateness_s * 0.9) * US), rng.random(), e) for e in items]
    for e in items:
        if rng.random() < dup_share:
            keyed.append((t(e) + int(rng.uniform(0, lateness_s * 0.9) * US), rng.random(), e))
    keyed.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in keyed]


def batches(rng: random.Random, items: Sequence[Order], max_size: int = 40) -> list[list[Order]]:
    out, i = [], 0
    while i < len(items):
        k = rng.randint(1, max_size)
        out.append(list(items[i : i + k]))
        i += k
    return out


def oracle(fs: FeatureSet, orders: Sequence[Order], labels: Sequence[Label], o: Order) -> Features:
    """The documented semantics, recomputed naively from the event list (no tiles, no state)."""
    uniq: dict[str, Order] = {}
    for e in orders:
        uniq.setdefault(e.order_id, e)
    events = list(uniq.values())
    t = to_us(o)
    okey = (t, o.order_id)
    values: Features = {}
    for f in fs.aggregates:
        v = field_value(o, f.entity_path)
        if v is None or v == "":
            values[f.name] = None
            continue
        r = f.resolution_s * US
        lo_tile = t // r - f.tiles + 1
        mine = [e for e in events if field_value(e, f.entity_path) == v
                and to_us(e) // r >= lo_tile and (to_us(e), e.order_id) <= okey]
        if o.order_id not in {e.order_id for e in mine}:
            mine.append(o)
        if f.source == "labels":
            first: dict[str, int] = {}
            for lb in labels:
                if lb.label != "fraud" or getattr(lb, f.entity_path) != v:
                    continue
                avail = to_us(lb.label_time) + f.delay_s * US
                first[lb.order_id] = min(first.get(lb.order_id, avail), avail)
            frauds = float(sum(1 for a in first.values() if a // r >= lo_tile and a <= t))
            values[f.name] = frauds if f.aggregation == "count" else frauds / float(len(mine))
            continue
        if f.aggregation == "count":
            values[f.name] = float(len(mine))
        elif f.aggregation == "distinct_count":
            vals = {str(x) for e in mine if (x := field_value(e, f.field)) not in (None, "")}
            values[f.name] = float(len(vals))
        else:
            nums = [x for e in mine if (x := to_fixed(field_value(e, f.field))) is not None]
            if f.aggregation == "sum":
                values[f.name] = float(sum(nums)) / float(SCALE)
            elif not nums:
                values[f.name] = None
            elif f.aggregation == "mean":
                values[f.name] = float(sum(nums)) / float(len(nums) * SCALE)
            elif f.aggregation == "min":
                values[f.name] = float(min(nums)) / float(SCALE)
            else:
                values[f.name] = float(max(nums)) / float(SCALE)
    for d in fs.derived:
        if d.kind != "seconds_since_previous":
            continue
        v = field_value(o, d.params["entity_path"])
        prev = [to_us(e) for e in events if v is not None and field_value(e, d.params["entity_path"]) == v
                and (to_us(e), e.order_id) < okey and to_us(e) >= t - d.params["window_s"] * US]
        values[d.name] = float(t - max(prev)) / float(US) if prev else None
    out: Features = {f.name: values[f.name] for f in fs.aggregates}
    out.update(derive(fs, o, values))
    return out


def interleave(orders: Sequence[Order], labels: Sequence[Label]) -> list[Order | Label]:
    """Orders and labels in the order a live system sees them: orders at their event time, labels at
    their label time (labels first on ties)."""
    keyed: list[tuple[int, int, str, Order | Label]] = [(to_us(o), 1, o.order_id, o) for o in orders]
    keyed += [(to_us(lb.label_time), 0, lb.order_id, lb) for lb in labels]
    keyed.sort(key=lambda x: x[:3])
    return [x[3] for x in keyed]


def probes(rng: random.Random, orders: Sequence[Order], start_us: int, end_us: int, n: int) -> list[Order]:
    """New orders (never applied) at random times in [start, end) reusing the streams' entities."""
    out = []
    for j in range(n):
        base = rng.choice(list(orders))
        us = rng.randrange(start_us, end_us)
        when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)
        out.append(msgspec_replace(base, order_id=f"probe{j}", event_time=when))
    return out


def msgspec_replace(o: Order, **changes: object) -> Order:
    import msgspec

    return msgspec.structs.replace(o, **changes)


def split_runs(
    rng: random.Random, items: Sequence[Order | Label], max_batch: int = 40
) -> list[list[Order] | list[Label]]:
    """Random batches that keep the arrival order and hold one kind of event each."""
    out: list[list[Order] | list[Label]] = []
    cur: list[Order | Label] = []
    limit = rng.randint(1, max_batch)
    for x in items:
        if cur and (type(x) is not type(cur[0]) or len(cur) >= limit):
            out.append(cur)  # type: ignore[arg-type]
            cur, limit = [], rng.randint(1, max_batch)
        cur.append(x)
    if cur:
        out.append(cur)  # type: ignore[arg-type]
    return out
