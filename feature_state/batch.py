"""Orders of a micro-batch as the compiled kernel's input columns, and its output as features.

Python work here is O(1) per order and per (order, entity): attribute reads, one key string per
entity, dictionary lookups. Everything per tile happens in the kernel (:mod:`feature_state.kernel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.events import Order
from feature_state.definitions import FeatureSet
from feature_state.derived import OrderColumns, derive_columns, rows
from feature_state.kernel import KernelError, KernelLayout, Strings
from feature_state.layout import FIXED_LIMIT, SCALE, LogEvent, _distinct_value, getter, to_fixed, to_us
from feature_state.windows import Features, derive


class Columns:
    """One batch of (unique) orders as kernel inputs.

    Entity keys (``<namespace>:<value>``) are built by Arrow, one array for the batch; the Python
    list and index of them are made only when a store needs them (Redis key names, late events).
    """

    def __init__(self, n: int, ids: list[str], ts: np.ndarray, key_arr: pa.Array | list[str], ent_ns: np.ndarray,
                 o_ent: np.ndarray, num: np.ndarray, ok: np.ndarray, dv: np.ndarray, dist: list[tuple[np.ndarray,
                 pa.Array]], strings: Strings, cols: OrderColumns) -> None:
        self.n, self.ids, self.ts, self.key_arr, self.ent_ns, self.o_ent = n, ids, ts, key_arr, ent_ns, o_ent
        self.num, self.ok, self.dv, self.dist, self.strings, self.cols = num, ok, dv, dist, strings, cols
        self._keys: list[str] | None = None
        self._key_index: dict[str, int] | None = None
        self._dvals: list[list[str | None]] | None = None
        self._packed: tuple[bytes, np.ndarray] | None = None

    @property
    def keys(self) -> list[str]:
        """Unique entity keys of the batch (entity index → key)."""
        if self._keys is None:
            self._keys = self.key_arr if isinstance(self.key_arr, list) else self.key_arr.to_pylist()
        return self._keys

    @property
    def key_index(self) -> dict[str, int]:
        if self._key_index is None:
            self._key_index = {k: e for e, k in enumerate(self.keys)}
        return self._key_index

    def key(self, e: int) -> str:
        if self._keys is not None or isinstance(self.key_arr, list):
            return self.keys[e]
        return str(self.key_arr[e].as_py())

    @property
    def packed_keys(self) -> tuple[bytes, np.ndarray]:
        if self._packed is None:
            s = Strings()
            s.extend(self.key_arr)
            self._packed = s.pack()
        return self._packed

    @property
    def dvals(self) -> list[list[str | None]]:
        """Per distinct path: each order's value (None when missing)."""
        if self._dvals is None and self.dist and isinstance(self.dist[0], list):
            self._dvals = self.dist  # the small path keeps the values
        if self._dvals is None:
            out = []
            for codes, uniq in self.dist:
                lookup: list[str | None] = [*uniq.to_pylist(), None]
                out.append([lookup[x] for x in codes.tolist()])
            self._dvals = out
        return self._dvals


def _strings(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _dictionary(values: Sequence[Any]) -> tuple[np.ndarray, pa.Array]:
    """Codes (-1 for None and "") and the distinct values in first-appearance order (Arrow's hash table)."""
    enc = pc.dictionary_encode(_strings(values))
    uniq = enc.dictionary
    codes = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    empty = pc.index(uniq, "").as_py()
    if empty >= 0:
        codes[codes == empty] = -1
    return codes, uniq


#: batches up to this size are turned into columns with plain Python (Arrow and numpy calls have a
#: fixed cost of several µs each that only pays off over many orders: the gRPC path reads one order)
SMALL = 16


def columns(kl: KernelLayout, orders: Sequence[Order]) -> Columns:
    try:
        return _small_columns(kl, orders) if len(orders) <= SMALL else _columns(kl, orders)
    except (UnicodeError, pa.ArrowException) as exc:
        raise KernelError(f"batch not representable as columns: {exc}") from None


def _small_columns(kl: KernelLayout, orders: Sequence[Order]) -> Columns:
    """:func:`columns` for a few orders, with plain Python (same values, no Arrow)."""
    n = len(orders)
    cols = OrderColumns(orders)
    ids = [o.order_id for o in orders]
    ts = np.fromiter((to_us(o) for o in orders), dtype=np.int64, count=n)
    strings = Strings()
    strings.extend(ids)
    nns = len(kl.ns_list)
    o_ent = np.full((n, nns), -1, dtype=np.int64)
    key_index: dict[str, int] = {}
    keys: list[str] = []
    ent_ns: list[int] = []
    for j, ns in enumerate(kl.ns_list):
        get = getter(ns.path)
        for i, o in enumerate(orders):
            k = ns.key(get(o))
            if k is None:
                continue
            e = key_index.get(k)
            if e is None:
                e = key_index[k] = len(keys)
                keys.append(k)
                ent_ns.append(j)
            o_ent[i, j] = e
    nf, df = len(kl.num_paths), len(kl.dist_paths)
    num = np.zeros((n, max(nf, 1)), dtype=np.int64)
    ok = np.zeros((n, max(nf, 1)), dtype=np.uint8)
    for q, path in enumerate(kl.num_paths):
        get = getter(path)
        for i, o in enumerate(orders):
            fixed = to_fixed(get(o))
            if fixed is not None:
                num[i, q] = fixed
                ok[i, q] = 1
    dv = np.full((n, max(df, 1)), -1, dtype=np.int64)
    dvals: list[list[str | None]] = []
    for q, path in enumerate(kl.dist_paths):
        get = getter(path)
        vals = [_distinct_value(get(o)) for o in orders]
        dvals.append(vals)
        for i, v in enumerate(vals):
            if v is not None:
                dv[i, q] = strings.add(v)
    c = Columns(n, ids, ts, keys, np.array(ent_ns, dtype=np.int64), o_ent, num, ok, dv, dvals,  # type: ignore[arg-type]
                strings, cols)
    c._key_index = key_index
    return c


def _columns(kl: KernelLayout, orders: Sequence[Order]) -> Columns:
    n = len(orders)
    cols = OrderColumns(orders)
    ids = cols.values("order_id")
    ts = cols.ts
    strings = Strings()
    strings.extend(ids)
    nns = len(kl.ns_list)
    o_ent = np.full((n, nns), -1, dtype=np.int64)
    by_path: dict[str, tuple[np.ndarray, pa.Array]] = {}
    key_arrays: list[pa.Array] = []
    ent_ns_parts: list[np.ndarray] = []
    base = 0
    for j, ns in enumerate(kl.ns_list):
        hit = by_path.get(ns.path)
        if hit is None:
            hit = by_path[ns.path] = _dictionary(cols.values(ns.path))
        codes, uniq = hit
        key_arrays.append(pc.binary_join_element_wise(ns.name + ":", uniq, ""))
        ent_ns_parts.append(np.full(len(uniq), j, dtype=np.int64))
        o_ent[:, j] = np.where(codes >= 0, codes + base, -1)
        base += len(uniq)
    key_arr = pa.concat_arrays(key_arrays) if key_arrays else pa.array([], type=pa.string())
    ent_ns = np.concatenate(ent_ns_parts) if ent_ns_parts else np.zeros(0, dtype=np.int64)
    nf, df = len(kl.num_paths), len(kl.dist_paths)
    num = np.zeros((n, max(nf, 1)), dtype=np.int64)
    ok = np.zeros((n, max(nf, 1)), dtype=np.uint8)
    for q, path in enumerate(kl.num_paths):
        raw = cols.values(path)
        try:
            flt = np.array(raw, dtype=np.float64)  # None → nan
            if flt.shape != (n,) or any(isinstance(v, bool) for v in raw):
                raise TypeError(path)
        except (TypeError, ValueError):
            flt = np.array([np.nan if v is None or isinstance(v, bool) else float(v) for v in raw], dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            valid = np.abs(flt * float(SCALE)) < FIXED_LIMIT  # NaN, ±inf and huge values: missing (to_fixed)
        # round half to even of value × SCALE, exactly like feature_state.layout.to_fixed
        num[valid, q] = np.rint(flt[valid] * float(SCALE)).astype(np.int64)
        ok[:, q] = valid
    dv = np.full((n, max(df, 1)), -1, dtype=np.int64)
    dist: list[tuple[np.ndarray, pa.Array]] = []
    for q, path in enumerate(kl.dist_paths):
        codes, uniq = by_path.get(path) or _dictionary(cols.values(path))
        start = strings.extend(uniq)
        dv[:, q] = np.where(codes >= 0, codes + start, -1)
        dist.append((codes, uniq))
    return Columns(n, ids, ts, key_arr, ent_ns, o_ent, num, ok, dv, dist, strings, cols)


def asked_ids(kl: KernelLayout, c: Columns) -> dict[str, list[str]]:
    """Entity key → the ids of the batch's events for it (what the store checks against its log)."""
    per: list[list[str]] = [[] for _ in c.keys]
    ids = c.ids
    for j in np.nonzero(kl.is_orders)[0].tolist():
        for e, oid in zip(c.o_ent[:, j].tolist(), ids, strict=True):
            if e >= 0:
                per[e].append(oid)
    keys = c.keys
    return {keys[e]: lst for e, lst in enumerate(per) if lst}


def known_flags(c: Columns, known: dict[str, set[str]]) -> np.ndarray:
    """Orders × namespaces: 1 where that entity's log already holds the order."""
    flags = np.zeros(c.o_ent.shape, dtype=np.uint8)
    for k, hit in known.items():
        e = c.key_index[k]
        j = int(c.ent_ns[e])
        for i in np.nonzero(c.o_ent[:, j] == e)[0].tolist():
            if c.ids[i] in hit:
                flags[i, j] = 1
    return flags


def applied_events(kl: KernelLayout, c: Columns, flags: np.ndarray) -> dict[str, list[LogEvent]]:
    """Entity key → the events the kernel applied to it (flag 1), as log entries."""
    out: dict[str, list[LogEvent]] = {}
    keys = c.keys
    for j in np.nonzero(kl.is_orders)[0].tolist():
        rows = np.nonzero(flags[:, j] == 1)[0]
        if not len(rows):
            continue
        rl = rows.tolist()
        ts = c.ts[rows].tolist()
        ids = [c.ids[i] for i in rl]
        numq = kl.ns_num[j]
        if numq:
            parts = []
            for q in numq:
                vals = c.num[rows, q].tolist()
                oks = c.ok[rows, q].tolist()
                parts.append([v if o else None for v, o in zip(vals, oks, strict=True)])
            nums = list(zip(*parts, strict=True))
        else:
            nums = [()] * len(rl)
        distq = kl.ns_dist[j]
        if distq:
            dvals = list(zip(*([c.dvals[q][i] for i in rl] for q in distq), strict=True))
        else:
            dvals = [()] * len(rl)
        evs = list(map(LogEvent, ts, ids, nums, dvals))
        for e, ev in zip(c.o_ent[rows, j].tolist(), evs, strict=True):
            k = keys[e]
            lst = out.get(k)
            if lst is None:
                out[k] = [ev]
            else:
                lst.append(ev)
    return out


def matrix_of(features: FeatureSet, kl: KernelLayout, c: Columns, out: np.ndarray) -> np.ndarray:
    """Aggregates (kernel output) + derived features as an orders × features matrix (NaN = missing)."""
    n_agg = len(features.aggregates)
    values: dict[str, Any] = {f.name: out[:, q] for q, f in enumerate(features.aggregates)}
    for s, d in enumerate(kl.layout.since_previous):
        values[d.name] = out[:, n_agg + s]
    derived = derive_columns(features, c.cols, values)
    matrix = np.empty((c.n, len(features.names)), dtype=np.float64)
    matrix[:, :n_agg] = out[:, :n_agg]
    for q, d in enumerate(features.derived):
        matrix[:, n_agg + q] = derived[d.name]
    return matrix


def features_of(features: FeatureSet, kl: KernelLayout, c: Columns, out: np.ndarray) -> list[Features]:
    """The same as :func:`matrix_of`, one dict per order (None where missing)."""
    if c.n <= SMALL:  # per order with windows.derive (the reference): cheaper than numpy for a few orders
        names = [f.name for f in features.aggregates] + [d.name for d in kl.layout.since_previous]
        result = []
        for o, row in zip(c.cols.orders, out.tolist(), strict=True):
            values: Features = {k: (None if v != v else v) for k, v in zip(names, row, strict=True)}
            f: Features = {a.name: values[a.name] for a in features.aggregates}
            f.update(derive(features, o, values))
            result.append(f)
        return result
    return rows(features.names, matrix_of(features, kl, c, out))
