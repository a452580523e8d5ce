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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.events import Label, Order
from feature_state.definitions import AggregateFeature, FeatureSet
from feature_state.layout import SCALE, US, field_value, to_fixed, to_us
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


def _codes(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Dense int codes of values (None → -1) and a validity mask, via Arrow's hash table."""
    arr = pa.array([None if v is None or v == "" else str(v) for v in values], type=pa.string())
    enc = pc.dictionary_encode(arr)
    idx = enc.indices.to_numpy(zero_copy_only=False)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
    codes = np.where(valid, np.nan_to_num(idx, nan=-1), -1).astype(np.int64)
    return codes, valid


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
    return (a - lo - (nulls[1:] - nulls[lo])).astype(np.float64)


def replay(
    features: FeatureSet, orders: Sequence[Order], labels: Sequence[Label] = (), *, fill_label_entities: bool = False
) -> ReplayResult:
    """Each order's features as of its own event time (point in time), like the online stores.

    ``fill_label_entities`` fills a fraud label's missing entity (e.g. ``merchant_id``) from its order
    when that order is in ``orders``; off by default because the online store cannot (labels must
    carry their entity there), and a training set should hold what the model sees online.
    """
    n_in = len(orders)
    ids_all = [o.order_id for o in orders]
    id_codes, _ = _codes(ids_all)
    _, first = np.unique(id_codes, return_index=True)
    keep = np.sort(first)
    uniq = [orders[i] for i in keep.tolist()]
    n = len(uniq)
    ids = [o.order_id for o in uniq]
    ts = np.fromiter((to_us(o) for o in uniq), dtype=np.int64, count=n)
    rank = _id_rank(ids)
    rows = np.arange(n, dtype=np.int64)
    cols: dict[str, np.ndarray] = {}
    groups: dict[str, _Group] = {}
    entity_codes: dict[str, tuple[list[Any], np.ndarray]] = {}

    def values_of(path: str) -> list[Any]:
        return [field_value(o, path) for o in uniq]

    def group_for(entity: str) -> _Group:
        if entity not in groups:
            path = features.entities[entity]
            vals = values_of(path)
            codes, _ = _codes(vals)
            entity_codes[entity] = (vals, codes)
            groups[entity] = _Group(rows, codes, ts, rank)
        return groups[entity]

    numeric_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def numeric(path: str) -> tuple[np.ndarray, np.ndarray]:
        if path not in numeric_cache:
            fx = [to_fixed(v) for v in values_of(path)]
            valid = np.fromiter((v is not None for v in fx), dtype=bool, count=n)
            arr = np.fromiter((0 if v is None else v for v in fx), dtype=np.int64, count=n)
            numeric_cache[path] = (arr, valid)
        return numeric_cache[path]

    distinct_cache: dict[str, np.ndarray] = {}

    def distinct_codes(path: str) -> np.ndarray:
        if path not in distinct_cache:
            distinct_cache[path] = _codes(values_of(path))[0]
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
        cols[d.name] = _derived(d, features, uniq, ts, cols, group_for, numeric)
    return ReplayResult(ids, features.names, cols, keep)


def _order_aggregate(
    f: AggregateFeature, g: _Group, lo: np.ndarray, hi: np.ndarray, numeric: Any, distinct_codes: Any
) -> np.ndarray:
    if f.aggregation == "count":
        return (hi - lo + 1).astype(np.float64)
    if f.aggregation == "distinct_count":
        return _distinct(distinct_codes(f.field)[g.rows], g.code, lo)
    arr, valid = numeric(f.field)
    vals, ok = arr[g.rows], valid[g.rows]
    s = _prefix(np.where(ok, vals, 0))
    c = _prefix(ok.astype(np.int64))
    sums = s[hi + 1] - s[lo]
    cnts = c[hi + 1] - c[lo]
    if f.aggregation == "sum":
        return sums.astype(np.float64) / float(SCALE)
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


def _label_counts(f: AggregateFeature, g: _Group, events: dict[str, dict[str, int]], values: list[Any]) -> np.ndarray:
    """Fraud labels known at each order (``label_time + delay <= t``) inside its window."""
    per = events.get(f.entity_path, {})
    n_orders = len(g.rows)
    if not per:
        return np.zeros(n_orders)
    lab_vals = [k.split("\x00", 1)[0] for k in per]
    lab_ts = np.fromiter(per.values(), dtype=np.int64, count=len(per)) + f.delay_s * US
    # code label entity values in the same code space as the orders' entity values
    order_vals = [str(values[r]) for r in g.rows.tolist()]
    codes, _ = _codes(order_vals + lab_vals)
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
    return (cum[p + 1] - cum[lo]).astype(np.float64)


def _derived(
    d: Any, features: FeatureSet, orders: Sequence[Order], ts: np.ndarray, cols: dict[str, np.ndarray],
    group_for: Any, numeric: Any,
) -> np.ndarray:
    n = len(orders)
    p = d.params
    if d.kind == "field":
        return np.array([float(v) if isinstance(v := field_value(o, p["field"]), (int, float))
                         and not isinstance(v, bool) else np.nan for o in orders], dtype=np.float64)
    if d.kind == "ratio":
        num, den = cols[p["numerator"]], cols[p["denominator"]]
        out = np.full(n, np.nan)
        ok = ~np.isnan(num) & ~np.isnan(den) & (den != 0)
        out[ok] = num[ok] / den[ok]
        out[~np.isfinite(out)] = np.nan
        return out
    if d.kind == "account_age_days":
        created = [o.account_created_at for o in orders]
        has = np.fromiter((c is not None for c in created), dtype=bool, count=n)
        cus = np.fromiter((0 if c is None else to_us(c) for c in created), dtype=np.int64, count=n)
        out = np.full(n, np.nan)
        out[has] = (ts[has] - cus[has]).astype(np.float64) / 1e6 / 86400.0
        return out
    if d.kind in ("hour_of_day", "day_of_week", "is_night", "is_weekend"):
        hours = np.fromiter((o.event_time.hour for o in orders), dtype=np.int64, count=n)
        wday = np.fromiter((o.event_time.weekday() for o in orders), dtype=np.int64, count=n)
        if d.kind == "hour_of_day":
            return hours.astype(np.float64)
        if d.kind == "day_of_week":
            return wday.astype(np.float64)
        if d.kind == "is_weekend":
            return (wday >= 5).astype(np.float64)
        start, end = int(p["start_hour"]), int(p["end_hour"])
        night = (hours >= start) & (hours < end) if start <= end else (hours >= start) | (hours < end)
        return night.astype(np.float64)
    if d.kind == "mismatch":
        a, b = p["fields"]
        return np.array([np.nan if (x := field_value(o, a)) is None or (y := field_value(o, b)) is None
                         else float(x != y) for o in orders], dtype=np.float64)
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
