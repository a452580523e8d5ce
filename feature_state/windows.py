"""Pure window arithmetic: fold events into per-entity tiles, read aggregates as of an event.

This is the one implementation every store uses (the memory, Redis, Redis Cluster and DynamoDB
stores all fetch an :class:`EntityState`, call these functions, and write it back); the vectorised
replay in :mod:`feature_state.replay` is tested to give the same values bit for bit.

Window semantics (see ``docs/feature_state.md``). Events are totally ordered by ``(event time in
microseconds, event id)``. A window of ``n`` tiles of resolution ``r`` read *as of* event ``o``
covers every applied event ``e`` with

    e <= o   and   floor(ts(e) / r) > floor(ts(o) / r) - n

i.e. from the start of the tile ``n - 1`` tiles before ``o``'s tile up to ``o`` itself, inclusive:
the lower edge is tile-aligned (the window is between ``W - r`` and ``W`` long), the upper edge is
exact. Counts and fixed-point sums are integers, so every result is independent of arrival order.

Reading the head tile when events *after* ``o`` were already applied (out of order) splits it into
the next finer level's tiles, down to the exact event log for the current minute.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence

import msgspec

from contracts.events import Order
from feature_state.definitions import AggregateFeature, FeatureSet
from feature_state.layout import MAX_ID, SCALE, US, Layout, LogEvent, Namespace, field_value, getter

Features = dict[str, float | None]
Key = tuple[int, str]
NO_TS = -(2**62)


class Tile(msgspec.Struct, array_like=True):
    """Aggregates of one entity's events in one tile (fixed-point integers, exact)."""

    n: int = 0  #: events
    t: int = NO_TS  #: latest event time (µs)
    c: list[int] = []  #: non-null values per numeric field
    s: list[int] = []  #: sum per numeric field
    lo: list[int] = []  #: min per numeric field (meaningful when c > 0)
    hi: list[int] = []  #: max per numeric field
    d: list[set[str]] = []  #: distinct values per distinct field
    i: str = ""  #: id of the latest event (finest level only: ``(t, i)`` is the tile's latest key)


class EntityState(msgspec.Struct):
    """The state of one entity key: tiles per level, the watermark and the two latest events."""

    wm: int = NO_TS  #: latest applied event time (µs)
    wm_id: str = ""  #: id of that event (ties broken by id)
    last: list[tuple[int, str]] = []  #: the two latest applied (time, id), newest first
    tiles: dict[int, dict[int, Tile]] = {}  #: level (s) → tile index → tile

    @property
    def watermark(self) -> Key:
        return (self.wm, self.wm_id)


_decoder = msgspec.msgpack.Decoder(EntityState)
_log_encoder = msgspec.msgpack.Encoder()


def encode_state(ns: Namespace, state: EntityState) -> bytes:
    """The packed bytes of a state (:mod:`feature_state.codec`)."""
    from feature_state import codec

    return codec.encode(ns, state)


def decode_state(ns: Namespace, raw: bytes | None) -> EntityState:
    """A state from its packed bytes (or the previous msgpack encoding); empty for None."""
    from feature_state import codec

    state = codec.decode(ns, raw)
    assert isinstance(state, EntityState)
    return state


def decode_legacy(raw: bytes) -> EntityState:
    """A state in the msgpack encoding written before the packed format."""
    return _decoder.decode(raw)


def encode_event(ev: LogEvent) -> bytes:
    return _log_encoder.encode((ev.ts, ev.id, ev.nums, ev.dvals))


def decode_event(raw: bytes) -> LogEvent:
    ts, eid, nums, dvals = msgspec.msgpack.decode(raw)
    return LogEvent(int(ts), str(eid), tuple(nums), tuple(dvals))


def _new_tile(ns: Namespace) -> Tile:
    k = len(ns.num_fields)
    return Tile(0, NO_TS, [0] * k, [0] * k, [0] * k, [0] * k, [set() for _ in ns.distinct_fields])


def _add(tile: Tile, ev: LogEvent, finest: bool = False) -> None:
    tile.n += 1
    if finest:
        if (ev.ts, ev.id) > (tile.t, tile.i):
            tile.t, tile.i = ev.ts, ev.id
    elif ev.ts > tile.t:
        tile.t = ev.ts
    for i, v in enumerate(ev.nums):
        if v is None:
            continue
        if tile.c[i] == 0:
            tile.lo[i] = tile.hi[i] = v
        else:
            if v < tile.lo[i]:
                tile.lo[i] = v
            if v > tile.hi[i]:
                tile.hi[i] = v
        tile.c[i] += 1
        tile.s[i] += v
    for i, dv in enumerate(ev.dvals):
        if dv is not None:
            tile.d[i].add(dv)


def fold(ns: Namespace, state: EntityState, ev: LogEvent) -> None:
    """Add one event (already known to be new and not late) to ``state``, in place."""
    tiles = state.tiles
    finest = ns.levels[0]
    for r in ns.levels:
        level = tiles.get(r)
        if level is None:
            level = tiles[r] = {}
        idx = ev.ts // (r * US)
        tile = level.get(idx)
        if tile is None:
            tile = level[idx] = _new_tile(ns)
        _add(tile, ev, r == finest)
    key = (ev.ts, ev.id)
    if key > (state.wm, state.wm_id):
        state.wm, state.wm_id = key
    last = [(int(k[0]), str(k[1])) for k in state.last if tuple(k) != key]
    last.append(key)
    last.sort(reverse=True)
    state.last = last[:2]


def prune(ns: Namespace, state: EntityState) -> None:
    """Drop tiles that no non-late read can need any more."""
    if state.wm == NO_TS:
        return
    for r, level in state.tiles.items():
        keep_us = ns.retention_s.get(r, 0) * US
        oldest = (state.wm - keep_us) // (r * US)
        stale = [i for i in level if i < oldest]
        for i in stale:
            del level[i]


def is_late(state: EntityState, ts: int, lateness_us: int) -> bool:
    """True when an event at ``ts`` is older than this entity's watermark minus the lateness."""
    return state.wm != NO_TS and ts < state.wm - lateness_us


def log_floor(ns: Namespace, ts: int) -> int:
    """Start of the finest tile holding ``ts``: an out-of-order read needs the log of that tile."""
    r0 = ns.levels[0] * US
    return (ts // r0) * r0


def log_span(ns: Namespace, ts: int) -> tuple[int, int]:
    """``[start, end)`` event times of the log an out-of-order read as of ``ts`` may need."""
    start = log_floor(ns, ts)
    return start, start + ns.levels[0] * US


def needs_log(ns: Namespace, state: EntityState, okey: Key) -> bool:
    """True when a read as of ``okey`` must split its finest head tile with the event log.

    That is when events after ``okey`` were applied (out of order) and the finest tile holding
    ``okey`` has its latest event at or after ``okey``. In-order reads never need it.
    """
    if (state.wm, state.wm_id) <= okey:
        return False
    r0 = ns.levels[0] * US
    tile = state.tiles.get(ns.levels[0], {}).get(okey[0] // r0)
    return tile is not None and (tile.t, tile.i) >= okey


def is_applied(ns: Namespace, state: EntityState, okey: Key, log: Sequence[LogEvent] | None) -> bool:
    """True when the event with key ``okey`` is already folded into ``state``."""
    wm = (state.wm, state.wm_id)
    if wm <= okey:
        return wm == okey
    r0 = ns.levels[0] * US
    tile = state.tiles.get(ns.levels[0], {}).get(okey[0] // r0)
    if tile is None or (tile.t, tile.i) < okey:
        return False
    if (tile.t, tile.i) == okey:
        return True
    if log is None:
        raise NeedLog(okey)
    return any(e.ts == okey[0] and e.id == okey[1] for e in log)


def _event_tile(ns: Namespace, ev: LogEvent) -> Tile:
    tile = _new_tile(ns)
    _add(tile, ev)
    return tile


class NeedLog(Exception):
    """Internal: the read must be given the entity's log (see :func:`needs_log`)."""


def _head(ns: Namespace, state: EntityState, k: int, okey: Key, log: Sequence[LogEvent] | None) -> list[Tile]:
    """Tiles covering exactly ``[start of o's level-k tile, o]`` when later events exist."""
    r = ns.levels[k] * US
    h = okey[0] // r
    tile = state.tiles.get(ns.levels[k], {}).get(h)
    if tile is None:
        return []
    if tile.t < okey[0] or (k == 0 and (tile.t, tile.i) <= okey):
        return [tile]
    if k == 0:
        if log is None:
            raise NeedLog(okey)
        start = h * r
        return [_event_tile(ns, e) for e in log if start <= e.ts < start + r and (e.ts, e.id) <= okey]
    fr = ns.levels[k - 1] * US
    finer = state.tiles.get(ns.levels[k - 1], {})
    parts = [t for i in range(h * r // fr, okey[0] // fr) if (t := finer.get(i)) is not None]
    return parts + _head(ns, state, k - 1, okey, log)


def window_tiles(
    ns: Namespace,
    state: EntityState,
    resolution_s: int,
    n_tiles: int,
    okey: Key,
    log: Sequence[LogEvent] | None = None,
    order: list[int] | None = None,
) -> list[Tile]:
    """Every tile (or exact split of the head tile) inside the window as of ``okey``.

    ``log`` must hold the entity's logged events of :func:`log_span` when :func:`needs_log`.
    ``order`` may pass the level's tile indices, sorted (to share one sort between windows).
    """
    r = resolution_s * US
    h = okey[0] // r
    level = state.tiles.get(resolution_s)
    if not level:
        return []
    idx = order if order is not None else sorted(level)
    a = bisect_left(idx, h - n_tiles + 1)
    b = bisect_left(idx, h, a)
    parts = [level[i] for i in idx[a:b]]
    if (state.wm, state.wm_id) <= okey:
        tile = level.get(h)
        if tile is not None:
            parts.append(tile)
        return parts
    return parts + _head(ns, state, ns.levels.index(resolution_s), okey, log)


def _fval(v: int) -> float:
    return float(v) / float(SCALE)


def aggregate(ns: Namespace, feature: AggregateFeature, tiles: Sequence[Tile]) -> float | None:
    """One aggregate feature from the tiles of its window."""
    agg = feature.aggregation
    if agg == "count":
        total = 0
        for t in tiles:
            total += t.n
        return float(total)
    if agg == "distinct_count":
        j = ns.distinct_fields.index(feature.field or "")
        if len(tiles) == 1:
            return float(len(tiles[0].d[j]))
        seen: set[str] = set()
        for t in tiles:
            seen |= t.d[j]
        return float(len(seen))
    i = ns.num_fields.index(feature.field or "")
    if agg == "sum":
        acc = 0
        for t in tiles:
            acc += t.s[i]
        return _fval(acc)
    live = [t for t in tiles if t.c[i]]
    if not live:
        return None
    if agg == "mean":
        return float(sum(t.s[i] for t in live)) / float(sum(t.c[i] for t in live) * SCALE)
    if agg == "min":
        return _fval(min(t.lo[i] for t in live))
    if agg == "max":
        return _fval(max(t.hi[i] for t in live))
    raise ValueError(f"aggregation {agg} is computed by read_order")  # pragma: no cover


def previous_ts(ns: Namespace, state: EntityState, okey: Key, log: Sequence[LogEvent] | None) -> int | None:
    """Event time of the latest applied event strictly before ``okey`` (within retention), or None."""
    if (state.wm, state.wm_id) <= okey:
        before = [(int(k[0]), str(k[1])) for k in state.last if tuple(k) < okey]
        return max(before)[0] if before else None
    r0 = ns.levels[0] * US
    floor = log_floor(ns, okey[0])
    tile0 = state.tiles.get(ns.levels[0], {}).get(okey[0] // r0)
    if tile0 is not None:
        if (tile0.t, tile0.i) < okey:
            return tile0.t
        if log is None:
            raise NeedLog(okey)
        cands = [e.ts for e in log if floor <= e.ts < floor + r0 and (e.ts, e.id) < okey]
        if cands:
            return max(cands)
    best: int | None = None
    for r, level in state.tiles.items():
        for i, t in level.items():
            if (i + 1) * r * US <= floor and t.n and (best is None or t.t > best):
                best = t.t
    return best


class EntityView(msgspec.Struct):
    """What a read of one entity key needs: its state and, for out-of-order reads, its log."""

    state: EntityState
    log: list[LogEvent] | None = None


def read_order(
    layout: Layout,
    order: Order,
    views: Mapping[str, EntityView],
    self_events: Mapping[str, LogEvent] | None = None,
) -> Features:
    """Features of ``order`` as of itself from the entity views (pure).

    ``self_events`` maps entity key → the order's own event when it is not applied yet (the gRPC
    read): it is counted once, never twice (an already-applied order is recognised in the log).
    """
    from feature_state.layout import to_us

    features = layout.features
    ts = to_us(order)
    okey = (ts, order.order_id)
    values: Features = {}
    order_counts: dict[tuple[str, int, int], float] = {}
    cache: dict[tuple[str, int, int, bool], list[Tile]] = {}
    sorted_levels: dict[tuple[str, int], list[int]] = {}
    self_tiles: dict[str, Tile | None] = {}
    empty = EntityState()

    lkey = (ts, MAX_ID)

    def tiles_for(ns: Namespace, key: str, res: int, n: int, label: bool) -> list[Tile]:
        ck = (key, res, n, label)
        hit = cache.get(ck)
        if hit is not None:
            return hit
        view = views.get(key)
        state = view.state if view is not None else empty
        log = view.log if view is not None else None
        rkey = lkey if label else okey
        level = state.tiles.get(res)
        parts: list[Tile]
        if not level:
            parts = []
        else:
            lk = (key, res)
            idx = sorted_levels.get(lk)
            if idx is None:
                idx = sorted_levels[lk] = sorted(level)
            if (state.wm, state.wm_id) <= rkey:  # in order: every applied event is at or before rkey
                h = ts // (res * US)
                parts = [level[i] for i in idx[bisect_left(idx, h - n + 1) : bisect_right(idx, h)]]
            else:
                parts = window_tiles(ns, state, res, n, rkey, log, idx)
        if not label and self_events is not None and key in self_events:
            if key not in self_tiles:
                self_tiles[key] = None if is_applied(ns, state, okey, log) else _event_tile(ns, self_events[key])
            own = self_tiles[key]
            if own is not None:
                parts.append(own)
        cache[ck] = parts
        return parts

    keys = {name: ns.key(getter(ns.path)(order)) for name, ns in layout.namespaces.items()}
    for f, ns, ons in layout.plan:
        key = keys[ns.name]
        if key is None:
            values[f.name] = None
        elif f.source == "orders":
            values[f.name] = aggregate(ns, f, tiles_for(ns, key, f.resolution_s, f.tiles, False))
        else:
            frauds = 0
            for t in tiles_for(ns, key, f.resolution_s, f.tiles, True):
                frauds += t.n
            if f.aggregation == "count":
                values[f.name] = float(frauds)
                continue
            assert ons is not None  # a rate's denominator namespace always exists
            okey_o = keys[ons.name]
            assert okey_o is not None  # same entity path as the label namespace
            ck2 = (okey_o, f.resolution_s, f.tiles)
            if ck2 not in order_counts:
                order_counts[ck2] = float(sum(t.n for t in tiles_for(ons, okey_o, f.resolution_s, f.tiles, False)))
            orders_n = order_counts[ck2]
            values[f.name] = float(frauds) / orders_n if orders_n else None
    for d in layout.since_previous:
        ns = layout.namespaces[f"o.{d.params['entity']}"]
        key = keys[ns.name]
        view = views.get(key) if key is not None else None
        prev = None if view is None else previous_ts(ns, view.state, okey, view.log)
        window_us = int(d.params["window_s"]) * US
        values[d.name] = None if prev is None or prev < ts - window_us else float(ts - prev) / float(US)
    ordered: Features = {f.name: values[f.name] for f in features.aggregates}
    ordered.update(derive(features, order, values))
    return ordered


def derive(features: FeatureSet, order: Order, values: Mapping[str, float | None]) -> Features:
    """Derived features of ``order`` given its aggregates (pure).

    Kinds that need entity state (``seconds_since_previous``) come from ``values`` when present
    (computed by :func:`read_order`) and are None otherwise (e.g. the feature store is down).
    """
    out: Features = {}
    merged: dict[str, float | None] = dict(values)
    for d in features.derived:
        p = d.params
        v: float | None
        if d.kind == "field":
            raw = field_value(order, p["field"])
            v = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None
        elif d.kind == "ratio":
            num, den = merged.get(p["numerator"]), merged.get(p["denominator"])
            v = None if num is None or not den else num / den
        elif d.kind == "account_age_days":
            created = order.account_created_at
            v = None if created is None else (order.event_time - created).total_seconds() / 86400.0
        elif d.kind == "hour_of_day":
            v = float(order.event_time.hour)
        elif d.kind == "day_of_week":
            v = float(order.event_time.weekday())
        elif d.kind == "is_night":
            start, end, hour = int(p["start_hour"]), int(p["end_hour"]), order.event_time.hour
            v = float(start <= hour < end) if start <= end else float(hour >= start or hour < end)
        elif d.kind == "is_weekend":
            v = float(order.event_time.weekday() >= 5)
        elif d.kind == "mismatch":
            a, b = (field_value(order, f) for f in p["fields"])
            v = None if a is None or b is None else float(a != b)
        elif d.kind == "seconds_since_previous":
            v = values.get(d.name)
        else:  # pragma: no cover - validated at load
            raise ValueError(d.kind)
        if v is not None and not math.isfinite(v):
            v = None
        out[d.name] = v
        merged[d.name] = v
    return out


def empty_features(features: FeatureSet, order: Order) -> Features:
    """The features derivable from the order alone (aggregates missing): the fallback when the store is down."""
    out: Features = {f.name: None for f in features.aggregates}
    out.update(derive(features, order, out))
    return out
