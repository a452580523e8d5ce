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

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.events import Label, Order
from feature_state.definitions import AggregateFeature, FeatureSet
from feature_state.derived import (
    ArrowOrders,
    OrderColumns,
    any_strings,
    derive_columns,
    times_us,
    timestamp_us,
)
from feature_state.layout import FIXED_LIMIT, SCALE, US
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


@dataclass
class OrderTable:
    """Validated orders as Arrow columns (:func:`feature_state.io.read_table`), ready for :func:`replay_table`.

    ``table`` holds the contract's fields (``payment`` flattened into ``payment_*`` columns or a struct);
    event times are timestamps in one fixed UTC offset, ``offset_us`` (0 for UTC).
    """

    table: pa.Table
    offset_us: int = 0

    @property
    def columns(self) -> ArrowOrders:
        return ArrowOrders(self.table, self.offset_us)

    def __len__(self) -> int:
        return int(self.table.num_rows)


@dataclass
class LabelTable:
    """Validated labels as Arrow columns (``order_id``, ``label``, ``label_time``, entity fields)."""

    table: pa.Table

    @property
    def columns(self) -> LabelColumns:
        t = self.table
        n = t.num_rows
        times = timestamp_us(t.column("label_time").combine_chunks()) if n else np.zeros(0, dtype=np.int64)
        kinds = t.column("label").combine_chunks()
        fraud = np.asarray(pc.fill_null(pc.equal(kinds, "fraud"), False).to_numpy(zero_copy_only=False), dtype=bool)
        fields = {p: (t.column(p).combine_chunks() if p in t.column_names else pa.nulls(n, type=pa.string()))
                  for p in ("customer_id", "merchant_id")}
        return LabelColumns(t.column("order_id").combine_chunks(), times, fraud, fields)

    def __len__(self) -> int:
        return int(self.table.num_rows)


def _encode(arr: pa.Array) -> np.ndarray:
    """Dense int codes (null → -1), via Arrow's hash table."""
    enc = pc.dictionary_encode(arr)
    idx = pc.fill_null(enc.indices, -1)
    return np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)


def _id_rank(ids: pa.Array) -> np.ndarray:
    """Rank of each id in code-point order (Python's str ordering), via Arrow's sort (UTF-8 bytes)."""
    order = pc.sort_indices(ids).to_numpy()
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
    return _run(features, OrderColumns(orders), LabelColumns.of(labels), fill_label_entities)


def replay_table(
    features: FeatureSet,
    orders: OrderTable,
    labels: LabelTable | Sequence[Label] | None = None,
    *,
    fill_label_entities: bool = False,
) -> ReplayResult:
    """:func:`replay` over Arrow columns (e.g. validated Parquet, :func:`feature_state.io.read_table`).

    No Python object per event: the columns go straight into the vectorised arithmetic. The values
    are the same as :func:`replay` over the decoded orders, bit for bit (tested). ``source_index``
    indexes the table's rows.
    """
    lab = labels.columns if isinstance(labels, LabelTable) else LabelColumns.of(labels or ())
    return _run(features, orders.columns, lab, fill_label_entities)


def _run(features: FeatureSet, src: Any, labels: LabelColumns, fill: bool) -> ReplayResult:
    # The work allocates many short-lived lists over a large heap of events; the cyclic GC would
    # rescan that heap again and again (3× slower). Nothing here creates reference cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _replay(features, src, labels, fill)
    finally:
        if was_enabled:
            gc.enable()


def _replay(features: FeatureSet, src: Any, labels: LabelColumns, fill_label_entities: bool) -> ReplayResult:
    id_codes = _encode(src.strings("order_id"))
    _, first = np.unique(id_codes, return_index=True)
    keep = np.sort(first)
    if len(keep) != src.n:
        src = src.take(keep)
    n = src.n
    id_arr = src.strings("order_id")
    ids: list[str] = id_arr.to_pylist()
    ts = src.ts
    rank = _id_rank(id_arr)
    rows = np.arange(n, dtype=np.int64)
    cols: dict[str, np.ndarray] = {}
    groups: dict[str, _Group] = {}
    entity_codes: dict[str, tuple[pa.Array, np.ndarray]] = {}
    null_arrays: dict[str, pa.Array] = {}
    code_arrays: dict[str, np.ndarray] = {}

    def strings(path: str) -> pa.Array:
        """The column as Arrow strings with "" as null (entity values, distinct values)."""
        if path not in null_arrays:
            arr = src.strings(path)
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
            flt = src.numbers(path)
            with np.errstate(invalid="ignore", over="ignore"):
                valid = np.abs(flt * float(SCALE)) < FIXED_LIMIT  # as to_fixed: out of range counts as missing
            # round half to even of value × SCALE, exactly like feature_state.layout.to_fixed
            arr = np.rint(np.where(valid, flt, 0.0) * float(SCALE)).astype(np.int64)
            numeric_cache[path] = (arr, valid)
        return numeric_cache[path]

    label_frauds = _label_events(features, src, id_arr, labels, fill_label_entities)
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
            out[g.rows] = _order_aggregate(f, g, lo, hi, numeric, codes_of)
        cols[f.name] = out
    values = dict(cols)
    for d in features.derived:
        if d.kind == "seconds_since_previous":
            values[d.name] = _since_previous(d, group_for(d.params["entity"]), n)
    cols.update(derive_columns(features, src, values))
    return ReplayResult(ids, features.names, cols, keep)


def _since_previous(d: Any, g: _Group, n: int) -> np.ndarray:
    """Seconds since the entity's previous order within the window (NaN when none)."""
    out = np.full(n, np.nan)
    if len(g.rows) > 1:
        same = g.code[1:] == g.code[:-1]
        gap = g.ts[1:] - g.ts[:-1]
        ok = same & (g.ts[:-1] >= g.ts[1:] - int(d.params["window_s"]) * US)
        vals = np.full(len(g.rows), np.nan)
        vals[1:][ok] = gap[ok].astype(np.float64) / float(US)
        out[g.rows] = vals
    return out


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


class LabelColumns:
    """Fraud labels as columns: order id, label time (µs), and the label's entity fields."""

    def __init__(self, order_ids: pa.Array, times: np.ndarray, fraud: np.ndarray, fields: dict[str, pa.Array]) -> None:
        self.order_ids, self.times, self.fraud, self.fields = order_ids, times, fraud, fields

    @staticmethod
    def of(labels: Sequence[Label]) -> LabelColumns:
        return LabelColumns(
            pa.array([lb.order_id for lb in labels], type=pa.string()),
            times_us([lb.label_time for lb in labels]) if labels else np.zeros(0, dtype=np.int64),
            np.array([lb.label == "fraud" for lb in labels], dtype=bool),
            {p: any_strings([getattr(lb, p, None) for lb in labels]) for p in ("customer_id", "merchant_id")},
        )


def _label_events(
    features: FeatureSet, orders: Any, order_ids: pa.Array, labels: LabelColumns, fill: bool
) -> dict[str, tuple[pa.Array, np.ndarray]]:
    """entity path → (entity values, earliest label_time µs) per (entity value, order id) of fraud labels."""
    paths = {f.entity_path for f in features.aggregates if f.source == "labels"}
    empty = (pa.array([], type=pa.string()), np.zeros(0, dtype=np.int64))
    out: dict[str, tuple[pa.Array, np.ndarray]] = {p: empty for p in paths}
    if not paths or not len(labels.times):
        return out
    fraud = pa.array(labels.fraud)
    at_order = pc.index_in(labels.order_ids, value_set=order_ids) if fill else None
    for p in paths:
        values = labels.fields.get(p)
        if values is None:
            values = pa.nulls(len(labels.times), type=pa.string())
        if fill:
            missing = pc.or_kleene(pc.is_null(values), pc.equal(values, ""))
            from_order = orders.strings(p).take(at_order)
            values = pc.if_else(pc.fill_null(missing, True), from_order, values)
        ok = pc.and_(fraud, pc.fill_null(pc.not_equal(values, ""), False))
        t = pa.table({"v": values, "o": labels.order_ids, "t": pa.array(labels.times)}).filter(ok)
        if t.num_rows == 0:
            continue
        agg = t.group_by(["v", "o"]).aggregate([("t", "min")])
        out[p] = (agg.column("v").combine_chunks(),
                  np.asarray(agg.column("t_min").to_numpy(), dtype=np.int64))
    return out


def _label_counts(f: AggregateFeature, g: _Group, events: dict[str, tuple[pa.Array, np.ndarray]],
                  values: pa.Array) -> np.ndarray:
    """Fraud labels known at each order (``label_time + delay <= t``) inside its window."""
    lab_vals, lab_t = events.get(f.entity_path, (None, None))
    n_orders = len(g.rows)
    if lab_vals is None or lab_t is None or not len(lab_t):
        return np.zeros(n_orders)
    lab_ts = lab_t + f.delay_s * US
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
