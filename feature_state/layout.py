"""How a feature set maps onto per-entity state: namespaces, tile levels, retention, event extraction.

A *namespace* is one kind of entity state: the orders of an entity (``o.customer``) or the fraud
labels of an entity with a given delay (``l.merchant.172800``). Every entity value gets one state per
namespace, under the key ``<namespace>:<value>`` (e.g. ``o.card:tok_9f2``).

Each namespace keeps tiles at a chain of *levels* (tile sizes, ascending, each dividing the next):
the resolutions its windows use, completed downwards with ``1m`` (and ``1h`` under ``1d``) so the
current tile of a coarse level can be split exactly when events arrive out of order. A level's tiles
are kept for ``max(longest window at that level, next level's tile size) + lateness + tile size``.
The exact event log (ids, for exactly-once, and values, for out-of-order reads) is kept for
``lateness + 1 minute`` of event time. Label namespaces keep ``delay`` more of both: a label becomes
known ``delay`` after its ``label_time``, so reads happen that far behind the label watermark.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from contracts.events import Label, Order
from feature_state.definitions import RESOLUTIONS, AggregateFeature, FeatureSet

US = 1_000_000
#: Fixed-point scale for numeric fields: values are kept as integers of 1/10,000 (exact sums).
SCALE = 10_000
#: Greater than every event id: a read key ``(ts, MAX_ID)`` includes every event at ``ts``.
MAX_ID = "\U0010ffff"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def field_value(obj: Any, path: str) -> Any:
    """Value at a dotted field path of an order (``payment.card_fingerprint``), or None."""
    return getter(path)(obj)


_GETTERS: dict[str, Callable[[Any], Any]] = {}


def getter(path: str) -> Callable[[Any], Any]:
    """A compiled accessor for a dotted path (None when any step is missing)."""
    fn = _GETTERS.get(path)
    if fn is None:
        parts = tuple(path.split("."))
        if len(parts) == 1:
            name = parts[0]

            def fn(obj: Any) -> Any:
                return getattr(obj, name, None)
        else:
            def fn(obj: Any) -> Any:
                for part in parts:
                    obj = getattr(obj, part, None)
                    if obj is None:
                        return None
                return obj
        _GETTERS[path] = fn
    return fn


def to_us(order_or_time: Any) -> int:
    """Event time as integer microseconds since the epoch (exact, order-independent)."""
    t: dt.datetime = getattr(order_or_time, "event_time", order_or_time)
    delta = t - _EPOCH
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


#: |value × SCALE| must stay below this to be kept (int64 arithmetic everywhere, with headroom for sums)
FIXED_LIMIT = 2.0**62


def to_fixed(value: Any) -> int | None:
    """A numeric field as fixed-point integer (round half to even, like ``numpy.rint``).

    None for a missing value, and for one outside the fixed-point range (infinite — the contract's
    decoder lets an overflowing JSON number through as infinity —, NaN, or ``|value| ≥ 4.6e14``):
    such a value counts as missing everywhere (online, kernel, replay) instead of failing the batch.
    """
    if value is None or isinstance(value, bool):
        return None
    scaled = float(value) * float(SCALE)
    if not abs(scaled) < FIXED_LIMIT:  # also NaN
        return None
    return round(scaled)


@dataclass(frozen=True)
class Namespace:
    """One kind of entity state and what it must keep."""

    name: str
    source: str
    entity: str
    path: str
    delay_s: int
    levels: tuple[int, ...]
    retention_s: dict[int, int]
    num_fields: tuple[str, ...]
    distinct_fields: tuple[str, ...]
    log_retention_s: int

    def key(self, value: Any) -> str | None:
        if value is None or value == "":
            return None
        return f"{self.name}:{value}"


class LogEvent(NamedTuple):
    """One applied event of one entity: the exactly-once key and the values tiles need."""

    ts: int
    id: str
    nums: tuple[int | None, ...] = ()
    dvals: tuple[str | None, ...] = ()


@dataclass
class _NsSpec:
    source: str
    entity: str
    path: str
    delay_s: int
    windows: dict[int, int] = field(default_factory=dict)  # resolution → longest window
    num_fields: list[str] = field(default_factory=list)
    distinct_fields: list[str] = field(default_factory=list)
    extra_s: int = 0  # e.g. seconds_since_previous look-back

    def need(self, res: int, window: int) -> None:
        self.windows[res] = max(self.windows.get(res, 0), window)


class Layout:
    """The namespaces of a feature set under a given allowed lateness."""

    def __init__(self, features: FeatureSet, allowed_lateness_s: float) -> None:
        self.features = features
        self.lateness_s = int(allowed_lateness_s)
        self.lateness_us = self.lateness_s * US
        specs: dict[str, _NsSpec] = {}

        def spec(source: str, entity: str, delay: int = 0) -> _NsSpec:
            name = f"o.{entity}" if source == "orders" else f"l.{entity}.{delay}"
            if name not in specs:
                specs[name] = _NsSpec(source, entity, features.entities[entity], delay)
            return specs[name]

        for f in features.aggregates:
            s = spec(f.source, f.entity, f.delay_s)
            s.need(f.resolution_s, f.window_s)
            if f.aggregation == "distinct_count" and f.field and f.field not in s.distinct_fields:
                s.distinct_fields.append(f.field)
            elif f.aggregation in ("sum", "mean", "min", "max") and f.field and f.field not in s.num_fields:
                s.num_fields.append(f.field)
            if f.aggregation == "rate":  # denominator: the entity's orders in the same window
                spec("orders", f.entity).need(f.resolution_s, f.window_s)
        for d in features.derived:
            if d.kind == "seconds_since_previous":
                s = spec("orders", d.params["entity"])
                s.extra_s = max(s.extra_s, int(d.params["window_s"]))
                s.windows.setdefault(RESOLUTIONS[0], 0)
        self.namespaces: dict[str, Namespace] = {}
        for name, s in specs.items():
            top = max(s.windows) if s.windows else RESOLUTIONS[0]
            levels = tuple(r for r in RESOLUTIONS if r <= top)
            retention: dict[int, int] = {}
            for i, r in enumerate(levels):
                nxt = levels[i + 1] if i + 1 < len(levels) else 0
                keep = max(s.windows.get(r, 0), nxt)
                if i == len(levels) - 1:
                    keep = max(keep, s.extra_s)
                retention[r] = keep + self.lateness_s + r + s.delay_s
            self.namespaces[name] = Namespace(
                name=name, source=s.source, entity=s.entity, path=s.path, delay_s=s.delay_s, levels=levels,
                retention_s=retention, num_fields=tuple(s.num_fields), distinct_fields=tuple(s.distinct_fields),
                log_retention_s=self.lateness_s + levels[0] + s.delay_s,
            )
        self.order_namespaces = [n for n in self.namespaces.values() if n.source == "orders"]
        self.label_namespaces = [n for n in self.namespaces.values() if n.source == "labels"]
        #: (feature, its namespace, the entity's orders namespace for a label rate's denominator)
        #: in model column order
        self.plan: list[tuple[AggregateFeature, Namespace, Namespace | None]] = [
            (f, self.namespace_of(f), self.namespaces.get(f"o.{f.entity}") if f.aggregation == "rate" else None)
            for f in features.aggregates
        ]
        self.since_previous = [d for d in features.derived if d.kind == "seconds_since_previous"]
        #: wall-clock TTL of remote state: the longest retention plus a margin
        self.ttl_s = max((max(n.retention_s.values()) for n in self.namespaces.values()), default=0) + 3600

    def namespace_of(self, f: AggregateFeature) -> Namespace:
        name = f"o.{f.entity}" if f.source == "orders" else f"l.{f.entity}.{f.delay_s}"
        return self.namespaces[name]

    def order_events(self, order: Order) -> list[tuple[str, LogEvent]]:
        """The (entity key, event) pairs an order contributes, one per orders namespace it has a value for."""
        ts = to_us(order)
        out: list[tuple[str, LogEvent]] = []
        for ns in self.order_namespaces:
            key = ns.key(getter(ns.path)(order))
            if key is None:
                continue
            nums = tuple(to_fixed(getter(p)(order)) for p in ns.num_fields)
            dvals = tuple(_distinct_value(getter(p)(order)) for p in ns.distinct_fields)
            out.append((key, LogEvent(ts, order.order_id, nums, dvals)))
        return out

    def label_events(self, label: Label, entity_values: dict[str, Any] | None = None) -> list[tuple[str, LogEvent]]:
        """The (entity key, event) pairs of a fraud label; legit labels contribute nothing.

        The entity comes from the label's own field (``merchant_id`` …), else from ``entity_values``
        (path → value, e.g. looked up from the order in a replay). The event id is the order id: an
        order counts once as fraud per entity, whatever the number of fraud labels it gets.
        """
        if label.label != "fraud":
            return []
        base = to_us(label.label_time)
        out: list[tuple[str, LogEvent]] = []
        for ns in self.label_namespaces:
            value = getattr(label, ns.path, None)
            if (value is None or value == "") and entity_values:
                value = entity_values.get(ns.path)
            key = ns.key(value)
            if key is not None:
                out.append((key, LogEvent(base + ns.delay_s * US, label.order_id)))
        return out

    def read_keys(self, order: Order) -> list[str]:
        """Every entity key whose state a read of ``order`` needs."""
        keys = []
        for ns in self.namespaces.values():
            key = ns.key(field_value(order, ns.path))
            if key is not None:
                keys.append(key)
        return keys

    def namespace_of_key(self, key: str) -> Namespace:
        return self.namespaces[key.split(":", 1)[0]]


def _distinct_value(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)

