"""Pure window arithmetic: fold orders into per-entity state, read aggregates as of a time.

This is the one implementation used online (every store), in replay and in tests. It is exact:
a window of length W at time t covers events with ``t - W < event_time <= t``. An entity's state
is the set of its events keyed by order id, so applying an order twice changes nothing and the
order in which events arrive does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contracts.events import Order
from feature_state.definitions import AggregateFeature, FeatureSet

Features = dict[str, float | None]


def field_value(order: Order, path: str) -> Any:
    """Value at a dotted field path of an order (``payment.card_fingerprint``), or None."""
    obj: Any = order
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def epoch(order: Order) -> float:
    return order.event_time.timestamp()


@dataclass
class EntityState:
    """The events of one entity still inside its longest window: order id → (time, fields)."""

    events: dict[str, tuple[float, tuple[Any, ...]]] = field(default_factory=dict)
    watermark: float = -math.inf

    def add(self, event_id: str, ts: float, values: tuple[Any, ...]) -> bool:
        if event_id in self.events:
            return False
        self.events[event_id] = (ts, values)
        if ts > self.watermark:
            self.watermark = ts
        return True

    def prune(self, horizon_s: float) -> None:
        cutoff = self.watermark - horizon_s
        stale = [k for k, (ts, _) in self.events.items() if ts <= cutoff]
        for k in stale:
            del self.events[k]


class EntityLayout:
    """Which order fields each entity keeps, and where each aggregate finds its field."""

    def __init__(self, features: FeatureSet) -> None:
        self.features = features
        self.by_entity: dict[str, list[AggregateFeature]] = {}
        for f in features.aggregates:
            self.by_entity.setdefault(f.entity, []).append(f)
        self.fields: dict[str, tuple[str, ...]] = {
            ent: tuple(sorted({f.field for f in fs if f.field})) for ent, fs in self.by_entity.items()
        }

    def key(self, entity: str, order: Order) -> str | None:
        value = field_value(order, self.features.entities[entity])
        return None if value is None or value == "" else f"{entity}:{value}"

    def values(self, entity: str, order: Order) -> tuple[Any, ...]:
        return tuple(field_value(order, p) for p in self.fields[entity])


def aggregate(
    feature: AggregateFeature, field_index: int | None, events: Iterable[tuple[float, tuple[Any, ...]]], t: float
) -> float | None:
    """One aggregate over the events inside ``(t - window, t]``."""
    lo = t - feature.window_s
    agg = feature.aggregation
    if agg == "count":
        return float(sum(1 for ts, _ in events if lo < ts <= t))
    assert field_index is not None
    vals = [v[field_index] for ts, v in events if lo < ts <= t and v[field_index] is not None]
    if agg == "distinct_count":
        return float(len(set(vals)))
    nums = [float(v) for v in vals]
    if agg == "sum":
        return float(math.fsum(nums))
    if not nums:
        return None
    if agg == "mean":
        return math.fsum(nums) / len(nums)
    if agg == "min":
        return min(nums)
    return max(nums)


def read_entity(
    layout: EntityLayout, entity: str, state: EntityState | None, order: Order, include_self: bool = True
) -> Features:
    """The aggregates of one entity as of ``order``'s event time, counting ``order`` once."""
    t = epoch(order)
    events: list[tuple[float, tuple[Any, ...]]] = list(state.events.values()) if state else []
    if include_self and (state is None or order.order_id not in state.events):
        events.append((t, layout.values(entity, order)))
    out: Features = {}
    fields = layout.fields[entity]
    for f in layout.by_entity[entity]:
        idx = fields.index(f.field) if f.field else None
        out[f.name] = aggregate(f, idx, events, t)
    return out


def derive(features: FeatureSet, order: Order, values: Mapping[str, float | None]) -> Features:
    """Derived features of ``order`` given its aggregates (pure)."""
    out: Features = {}
    merged: dict[str, float | None] = dict(values)
    for d in features.derived:
        p = d.params
        v: float | None
        if d.kind == "field":
            raw = field_value(order, p["field"])
            v = float(raw) if isinstance(raw, (int, float)) else None
        elif d.kind == "ratio":
            num, den = merged.get(p["numerator"]), merged.get(p["denominator"])
            v = None if num is None or not den else num / den
        elif d.kind == "account_age_days":
            created = order.account_created_at
            v = None if created is None else (order.event_time - created).total_seconds() / 86400.0
        elif d.kind == "hour_of_day":
            v = float(order.event_time.hour)
        elif d.kind == "mismatch":
            a, b = (field_value(order, f) for f in p["fields"])
            v = None if a is None or b is None else float(a != b)
        else:  # pragma: no cover - validated at load
            raise ValueError(d.kind)
        out[d.name] = v
        merged[d.name] = v
    return out
