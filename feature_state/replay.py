"""Point-in-time replay: every order's features as of its event time, vectorised with numpy.

The same window semantics as the online fold (:mod:`feature_state.windows`), computed over whole
columns: events of an entity sorted by ``(event time µs, order id)``, a window's lower edge found with
``searchsorted`` on ``(entity, tile)``, counts and fixed-point sums by prefix sums, min/max by a
sparse table, distinct counts by the "previous occurrence" trick (an event is new in a window iff
the previous event of its entity with the same value lies before the window; since window starts
only move forward, each event's contribution is a suffix and a ``bincount`` + ``cumsum`` counts
them). Label features count fraud labels whose ``label_time + delay`` is at or before the order's
time. The property tests check that this equals the online stores bit for bit.

Orders are de-duplicated by ``order_id`` (first occurrence wins) and never late (a replay sees the
whole history). A fraud label counts once per (entity, order id), at its earliest availability.
"""

from __future__ import annotations

import datetime as dt
import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.events import Label, Order
from feature_state.definitions import AggregateFeature, FeatureSet
from feature_state.layout import SCALE, US, field_value, to_us
from feature_state.windows import Features

_BIG = np.int64(1) << np.int64(32)
_INT_MAX = np.iinfo(np.int64).max
_INT_MIN = np.iinfo(np.int64).min


@dataclass
class ReplayResult:
    """Features of the replayed orders (first occurrence of each order id, in input order)."""

    order_ids: list[str]
    names: list[str]
    columns: dict[str, np.ndarray]  #: name → float64 values, NaN where the online value is None
    #: index into the input orders of each row
    source_index: np.ndarray

    def __len__(self) -> int:
        return len(self.order_ids)

    def matrix(self, dtype: Any = np.float32) -> np.ndarray:
        """Rows × features in :attr:`names` order (the model's column order), NaN for missing."""
        if not self.names:
            return np.zeros((len(self), 0), dtype=dtype)
        return np.column_stack([self.columns[n] for n in self.names]).astype(dtype, copy=False)

    def rows(self) -> list[Features]:
        """One dict per order, None where missing (the shape the stores return)."""
        cols = [(n, self.columns[n].tolist()) for n in self.names]
        return [{n: (None if math.isnan(v[i]) else v[i]) for n, v in cols} for i in range(len(self))]


def column(orders: Sequence[Any], path: str) -> list[Any]:
    """Values at a dotted path for every order (None when a parent is missing), without per-item calls."""
    parts = path.split(".")
    if len(parts) == 1:
        return list(map(attrgetter(parts[0]), orders))
    head, rest = parts[0], ".".join(parts[1:])
    parents = list(map(attrgetter(head), orders))
    get = attrgetter(rest)
    return [None if p is None else get(p) for p in parents]


def _strings(values: Sequence[Any]) -> pa.Array:
    """Values as an Arrow string array, empty strings as nulls."""
    try:
        arr = pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        arr = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _encode(arr: pa.Array) -> np.ndarray:
    """Dense int codes (null → -1), via Arrow's hash table."""
    enc = pc.dictionary_encode(arr)
    idx = pc.fill_null(enc.indices, -1)
    return np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)


def _codes(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Dense int codes of values (None and "" → -1) and a validity mask."""
    codes = _encode(_strings(values))
    return codes, codes >= 0


def _times_us(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Aware datetimes as exact µs since the epoch (Arrow converts to UTC), and a validity mask."""
    arr = pa.array(values, type=pa.timestamp("us", tz="UTC"))
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
    us = np.asarray(pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    return us, valid


def _id_rank(ids: Sequence[str]) -> np.ndarray:
    """Rank of each id in code-point order (Python's str ordering), via Arrow's sort."""
    order = pc.sort_indices(pa.array(ids, type=pa.string())).to_numpy()
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids), dtype=np.int64)
    return rank


class _Group:
    """One orders namespace: the orders having a value for its entity, sorted by (entity, ts, id)."""

    def __init__(self, rows: np.ndarray, codes: np.ndarray, ts: np.ndarray, rank: np.ndarray) -> None:
        sel = rows[codes[rows] >= 0]
        order = np.lexsort((rank[sel], ts[sel], codes[sel]))
        self.rows = sel[order]  #: input row of each sorted position
        self.code = codes[self.rows]
        self.ts = ts[self.rows]
        self._lo: dict[tuple[int, int], np.ndarray] = {}

    def lo(self, res_s: int, n: int) -> np.ndarray:
        """First sorted position inside the window of each position."""
        key = (res_s, n)
        if key not in self._lo:
            tile = self.ts // (res_s * US)
            comp = self.code * _BIG + tile
            self._lo[key] = np.searchsorted(comp, self.code * _BIG + (tile - n + 1), side="left")
        return self._lo[key]


def _prefix(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x) + 1, dtype=np.int64)
    np.cumsum(x, out=out[1:])
    return out


def _range_extreme(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, fn: Any) -> np.ndarray:
    """fn-reduce (np.minimum / np.maximum) over values[lo..hi] inclusive, via a sparse table."""
    if len(values) == 0:
        return values.copy()
    length = hi - lo + 1
    levels = [values]
    top = int(length.max()).bit_length() - 1
    for j in range(1, top + 1):
        prev = levels[-1]
        step = 1 << (j - 1)
        nxt = prev.copy()
        nxt[: len(prev) - step] = fn(prev[: len(prev) - step], prev[step:])
        levels.append(nxt)
    k = np.floor(np.log2(length)).astype(np.int64)
    k = np.where((np.int64(1) << (k + 1)) <= length, k + 1, k)  # guard float log2 rounding
    k = np.where((np.int64(1) << k) > length, k - 1, k)
    out = np.empty(len(lo), dtype=values.dtype)
    for j in np.unique(k):
        m = k == j
        table = levels[int(j)]
        out[m] = fn(table[lo[m]], table[hi[m] - (1 << int(j)) + 1])
    return out


def _distinct(codes: np.ndarray, code: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Distinct non-null values in [lo[p], p] per position, for sorted entity groups."""
    n = len(codes)
    pos = np.arange(n, dtype=np.int64)
    prev = np.full(n, -1, dtype=np.int64)
    valid = codes >= 0
    vi = pos[valid]
    if len(vi):
        key = code[vi] * (np.int64(codes.max()) + 1) + codes[vi]
        o = np.argsort(key, kind="stable")
        ks, ps = key[o], vi[o]
        same = np.concatenate(([False], ks[1:] == ks[:-1]))
        prev_sorted = np.where(same, np.concatenate(([-1], ps[:-1])), -1)
        prev[ps] = prev_sorted
    # first query position whose window start lies beyond prev[i] (window starts never decrease)
    start = np.searchsorted(lo, prev, side="right")
    t = np.maximum(pos, start)
    counted = _prefix(np.bincount(t, minlength=n + 1)[:n])
    nulls = _prefix((~valid).astype(np.int64))
    a = counted[1:]
    out: np.ndarray = (a - lo - (nulls[1:] - nulls[lo])).astype(np.float64)
    return out


def replay(
    features: FeatureSet, orders: Sequence[Order], labels: Sequence[Label] = (), *, fill_label_entities: bool = False
) -> ReplayResult:
    """Each order's features as of its own event time (point in time), like the online stores.

    ``fill_label_entities`` fills a fraud label's missing entity (e.g. ``merchant_id``) from its order
    when that order is in ``orders``; off by default because the online store cannot (labels must
    carry their entity there), and a training set should hold what the model sees online.
    """
    # The work allocates many short-lived lists over a large heap of events; the cyclic GC would
    # rescan that heap again and again (3× slower). Nothing here creates reference cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _replay(features, orders, labels, fill_label_entities)
    finally:
        if was_enabled:
            gc.enable()


def _replay(
    features: FeatureSet, orders: Sequence[Order], labels: Sequence[Label], fill_label_entities: bool
) -> ReplayResult:
    """Each order's features as of its own event time (point in time), like the online stores.

    ``fill_label_entities`` fills a fraud label's missing entity (e.g. ``merchant_id``) from its order
    when that order is in ``orders``; off by default because the online store cannot (labels must
    carry their entity there), and a training set should hold what the model sees online.
    """
    ids_all = [o.order_id for o in orders]
    id_codes, _ = _codes(ids_all)
    _, first = np.unique(id_codes, return_index=True)
    keep = np.sort(first)
    uniq = [orders[i] for i in keep.tolist()]
    n = len(uniq)
    ids = [o.order_id for o in uniq]
    ts, _ = _times_us([o.event_time for o in uniq])
    rank = _id_rank(ids)
    rows = np.arange(n, dtype=np.int64)
    cols: dict[str, np.ndarray] = {}
    groups: dict[str, _Group] = {}
    entity_codes: dict[str, tuple[pa.Array, np.ndarray]] = {}

    columns_cache: dict[str, list[Any]] = {}

    def values_of(path: str) -> list[Any]:
        if path not in columns_cache:
            columns_cache[path] = column(uniq, path)
        return columns_cache[path]

    raw_arrays: dict[str, pa.Array] = {}
    null_arrays: dict[str, pa.Array] = {}
    code_arrays: dict[str, np.ndarray] = {}

    def raw_strings(path: str) -> pa.Array:
        """The column as Arrow strings ("" kept), converted once per path."""
        if path not in raw_arrays:
            raw_arrays[path] = _any_strings(values_of(path))
        return raw_arrays[path]

    def strings(path: str) -> pa.Array:
        """The column as Arrow strings with "" as null (entity values, distinct values)."""
        if path not in null_arrays:
            arr = raw_strings(path)
            null_arrays[path] = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
        return null_arrays[path]

    def codes_of(path: str) -> np.ndarray:
        if path not in code_arrays:
            code_arrays[path] = _encode(strings(path))
        return code_arrays[path]

    def group_for(entity: str) -> _Group:
        if entity not in groups:
            path = features.entities[entity]
            arr, codes = strings(path), codes_of(path)
            entity_codes[entity] = (arr, codes)
            groups[entity] = _Group(rows, codes, ts, rank)
        return groups[entity]

    numeric_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def numeric(path: str) -> tuple[np.ndarray, np.ndarray]:
        if path not in numeric_cache:
            raw = values_of(path)
            try:
                flt = np.array(raw, dtype=np.float64)  # None → nan
            except (TypeError, ValueError):
                flt = np.array([np.nan if v is None or isinstance(v, bool) else float(v) for v in raw])
            valid = ~np.isnan(flt)
            # round half to even of value × SCALE, exactly like feature_state.layout.to_fixed
            arr = np.rint(np.where(valid, flt, 0.0) * float(SCALE)).astype(np.int64)
            numeric_cache[path] = (arr, valid)
        return numeric_cache[path]

    distinct_cache: dict[str, np.ndarray] = {}

    def distinct_codes(path: str) -> np.ndarray:
        if path not in distinct_cache:
            distinct_cache[path] = codes_of(path)
        return distinct_cache[path]

    label_frauds = _label_events(features, uniq, labels, fill_label_entities)
    for f in features.aggregates:
        out = np.full(n, np.nan)
        g = group_for(f.entity)
        if len(g.rows) == 0:
            cols[f.name] = out
            continue
        lo = g.lo(f.resolution_s, f.tiles)
        hi = np.arange(len(g.rows), dtype=np.int64)
        if f.source == "labels":
            frauds = _label_counts(f, g, label_frauds, entity_codes[f.entity][0])
            if f.aggregation == "count":
                out[g.rows] = frauds
            else:
                out[g.rows] = frauds / (hi - lo + 1).astype(np.float64)
        else:
            out[g.rows] = _order_aggregate(f, g, lo, hi, numeric, distinct_codes)
        cols[f.name] = out
    for d in features.derived:
        cols[d.name] = _derived(d, uniq, ts, cols, group_for, values_of, raw_strings)
    cols.pop("__local", None)
    return ReplayResult(ids, features.names, cols, keep)


def _order_aggregate(
    f: AggregateFeature, g: _Group, lo: np.ndarray, hi: np.ndarray, numeric: Any, distinct_codes: Any
) -> np.ndarray:
    if f.aggregation == "count":
        counts: np.ndarray = (hi - lo + 1).astype(np.float64)
        return counts
    if f.aggregation == "distinct_count":
        return _distinct(distinct_codes(f.field)[g.rows], g.code, lo)
    arr, valid = numeric(f.field)
    vals, ok = arr[g.rows], valid[g.rows]
    s = _prefix(np.where(ok, vals, 0))
    c = _prefix(ok.astype(np.int64))
    sums = s[hi + 1] - s[lo]
    cnts = c[hi + 1] - c[lo]
    if f.aggregation == "sum":
        total: np.ndarray = sums.astype(np.float64) / float(SCALE)
        return total
    out = np.full(len(hi), np.nan)
    live = cnts > 0
    if f.aggregation == "mean":
        out[live] = sums[live].astype(np.float64) / (cnts[live] * SCALE).astype(np.float64)
        return out
    if f.aggregation == "min":
        ext = _range_extreme(np.where(ok, vals, _INT_MAX), lo, hi, np.minimum)
    else:
        ext = _range_extreme(np.where(ok, vals, _INT_MIN), lo, hi, np.maximum)
    out[live] = ext[live].astype(np.float64) / float(SCALE)
    return out


def _label_events(
    features: FeatureSet, orders: Sequence[Order], labels: Sequence[Label], fill: bool
) -> dict[str, dict[str, int]]:
    """entity path → {entity value \\x00 order id → earliest label_time (µs)} of fraud labels."""
    paths = {f.entity_path for f in features.aggregates if f.source == "labels"}
    if not paths or not labels:
        return {p: {} for p in paths}
    by_id = {o.order_id: o for o in orders} if fill else {}
    out: dict[str, dict[str, int]] = {p: {} for p in paths}
    for lb in labels:
        if lb.label != "fraud":
            continue
        t = to_us(lb.label_time)
        for p in paths:
            value = getattr(lb, p, None)
            if (value is None or value == "") and fill and lb.order_id in by_id:
                value = field_value(by_id[lb.order_id], p)
            if value is None or value == "":
                continue
            key = f"{value}\x00{lb.order_id}"
            seen = out[p].get(key)
            if seen is None or t < seen:
                out[p][key] = t
    return out


def _label_counts(f: AggregateFeature, g: _Group, events: dict[str, dict[str, int]], values: pa.Array) -> np.ndarray:
    """Fraud labels known at each order (``label_time + delay <= t``) inside its window."""
    per = events.get(f.entity_path, {})
    n_orders = len(g.rows)
    if not per:
        return np.zeros(n_orders)
    lab_vals = pa.array([k.split("\x00", 1)[0] for k in per], type=pa.string())
    lab_ts = np.fromiter(per.values(), dtype=np.int64, count=len(per)) + f.delay_s * US
    # label entity values coded in the same dictionary as the orders' values
    codes = _encode(pa.concat_arrays([values.take(pa.array(g.rows)), lab_vals]))
    o_code, l_code = codes[:n_orders], codes[n_orders:]
    # merge: labels (kind 0) before orders (kind 1) at equal time, so a label known at t counts at t
    code = np.concatenate((o_code, l_code))
    tsx = np.concatenate((g.ts, lab_ts))
    kind = np.concatenate((np.ones(n_orders, dtype=np.int64), np.zeros(len(lab_ts), dtype=np.int64)))
    order = np.lexsort((kind, tsx, code))
    is_label = (kind[order] == 0).astype(np.int64)
    cum = _prefix(is_label)
    tile = tsx[order] // (f.resolution_s * US)
    comp = code[order] * _BIG + tile
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order), dtype=np.int64)
    p = pos[:n_orders]
    lo = np.searchsorted(comp, comp[p] - (f.tiles - 1), side="left")
    known: np.ndarray = (cum[p + 1] - cum[lo]).astype(np.float64)
    return known


def _derived(
    d: Any, orders: Sequence[Order], ts: np.ndarray, cols: dict[str, np.ndarray], group_for: Any, values_of: Any,
    raw_strings: Any,
) -> np.ndarray:
    n = len(orders)
    p = d.params
    if d.kind == "field":
        raw = values_of(p["field"])
        try:
            return np.array(raw, dtype=np.float64)
        except (TypeError, ValueError):
            return np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan
                             for v in raw], dtype=np.float64)
    if d.kind == "ratio":
        num, den = cols[p["numerator"]], cols[p["denominator"]]
        out = np.full(n, np.nan)
        ok = ~np.isnan(num) & ~np.isnan(den) & (den != 0)
        out[ok] = num[ok] / den[ok]
        out[~np.isfinite(out)] = np.nan
        return out
    if d.kind == "account_age_days":
        cus, has = _times_us(values_of("account_created_at"))
        out = np.full(n, np.nan)
        out[has] = (ts[has] - cus[has]).astype(np.float64) / 1e6 / 86400.0
        return out
    if d.kind in ("hour_of_day", "day_of_week", "is_night", "is_weekend"):
        if "__local" not in cols:
            cols["__local"] = ts + _offsets_us(orders)  # wall-clock time in each order's own offset
        local = cols["__local"]
        hours = (local // (3600 * US)) % 24
        if d.kind == "hour_of_day":
            return hours.astype(np.float64)
        wday = (local // (86400 * US) + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
        if d.kind == "day_of_week":
            return wday.astype(np.float64)
        if d.kind == "is_weekend":
            return (wday >= 5).astype(np.float64)
        start, end = int(p["start_hour"]), int(p["end_hour"])
        night = (hours >= start) & (hours < end) if start <= end else (hours >= start) | (hours < end)
        return night.astype(np.float64)
    if d.kind == "mismatch":
        a, b = (raw_strings(f) for f in p["fields"])
        neq = pc.not_equal(a, b)  # null when either side is missing
        return np.asarray(pc.cast(neq, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if d.kind == "seconds_since_previous":
        g = group_for(p["entity"])
        out = np.full(n, np.nan)
        if len(g.rows) > 1:
            same = g.code[1:] == g.code[:-1]
            gap = g.ts[1:] - g.ts[:-1]
            ok = same & (g.ts[:-1] >= g.ts[1:] - int(p["window_s"]) * US)
            vals = np.full(len(g.rows), np.nan)
            vals[1:][ok] = gap[ok].astype(np.float64) / float(US)
            out[g.rows] = vals
        return out
    raise ValueError(f"unknown derived kind {d.kind}")  # pragma: no cover - validated at load


def _any_strings(values: Sequence[Any]) -> pa.Array:
    """Values as strings keeping "" (mismatch compares raw values; only None is missing)."""
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _offsets_us(orders: Sequence[Order]) -> np.ndarray:
    """UTC offset of each order's event time in µs; each distinct fixed-offset tzinfo is asked once."""
    tzs = list(map(attrgetter("event_time.tzinfo"), orders))
    keys = np.fromiter(map(id, tzs), dtype=np.int64, count=len(tzs))
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    per = np.empty(len(uniq), dtype=np.int64)
    varying: list[int] = []
    for j, i in enumerate(first.tolist()):
        tz = tzs[i]
        if isinstance(tz, dt.timezone):
            delta = tz.utcoffset(None)
            per[j] = (delta.days * 86400 + delta.seconds) * US + delta.microseconds
        else:  # a zone with daylight saving: ask per order
            per[j] = 0
            varying.append(j)
    out = per[inverse]
    if varying:
        for i in np.nonzero(np.isin(inverse, varying))[0].tolist():
            off = orders[i].event_time.utcoffset()
            out[i] = 0 if off is None else (off.days * 86400 + off.seconds) * US + off.microseconds
    return out
