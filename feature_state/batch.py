"""Orders of a micro-batch as the compiled kernel's input columns, and its output as features.

Python work here is O(1) per order and per (order, entity): attribute reads, one key string per
entity, dictionary lookups. Everything per tile happens in the kernel (:mod:`feature_state.kernel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.events import Order
from feature_state.definitions import FeatureSet
from feature_state.derived import OrderColumns, derive_columns, rows
from feature_state.kernel import KernelError, KernelLayout, Strings
from feature_state.layout import SCALE, LogEvent
from feature_state.windows import Features


@dataclass
class Columns:
    """One batch of (unique) orders as kernel inputs."""

    n: int
    ids: list[str]
    ts: np.ndarray
    keys: list[str]  #: unique entity keys of the batch
    ent_ns: np.ndarray  #: per key: its namespace index
    o_ent: np.ndarray  #: orders × namespaces: entity index or -1
    num: np.ndarray  #: orders × numeric paths: fixed-point values
    ok: np.ndarray  #: orders × numeric paths: value present
    dv: np.ndarray  #: orders × distinct paths: string index or -1
    dvals: list[list[str | None]]  #: per distinct path: the values (LogEvent construction)
    strings: Strings
    cols: OrderColumns
    key_index: dict[str, int] = field(default_factory=dict)


def _strings(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _dictionary(values: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """Codes (-1 for None and "") and the distinct values in first-appearance order (Arrow's hash table)."""
    enc = pc.dictionary_encode(_strings(values))
    uniq: list[str] = enc.dictionary.to_pylist()
    codes = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    if "" in uniq:
        codes[codes == uniq.index("")] = -1
    return codes, uniq


def columns(kl: KernelLayout, orders: Sequence[Order]) -> Columns:
    n = len(orders)
    cols = OrderColumns(orders)
    ts = cols.ts
    ids = cols.values("order_id")
    strings = Strings()
    strings.extend(ids)
    nns = len(kl.ns_list)
    o_ent = np.full((n, nns), -1, dtype=np.int64)
    key_index: dict[str, int] = {}
    ent_ns: list[int] = []
    by_path: dict[str, tuple[np.ndarray, list[str]]] = {}
    for j, ns in enumerate(kl.ns_list):
        hit = by_path.get(ns.path)
        if hit is None:
            hit = by_path[ns.path] = _dictionary(cols.values(ns.path))
        codes, uniq = hit
        prefix = ns.name + ":"
        ent_of = np.empty(len(uniq) + 1, dtype=np.int64)
        ent_of[-1] = -1  # code -1 → no entity
        for q, u in enumerate(uniq):
            k = prefix + u
            e = key_index.get(k)
            if e is None:
                e = key_index[k] = len(ent_ns)
                ent_ns.append(j)
            ent_of[q] = e
        o_ent[:, j] = ent_of[codes]
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
        valid = ~np.isnan(flt)
        scaled = flt[valid] * float(SCALE)
        if not np.all(np.abs(scaled) < 2.0**62):
            raise KernelError(f"{path}: a value out of the fixed-point range")
        # round half to even of value × SCALE, exactly like feature_state.layout.to_fixed
        num[valid, q] = np.rint(scaled).astype(np.int64)
        ok[:, q] = valid
    dv = np.full((n, max(df, 1)), -1, dtype=np.int64)
    dvals: list[list[str | None]] = []
    for q, path in enumerate(kl.dist_paths):
        codes, uniq = by_path.get(path) or _dictionary(cols.values(path))
        base = strings.extend(uniq)
        dv[:, q] = np.where(codes >= 0, codes + base, -1)
        lookup: list[str | None] = [*uniq, None]
        dvals.append([lookup[x] for x in codes.tolist()])
    return Columns(n, ids, ts, list(key_index), np.array(ent_ns, dtype=np.int64), o_ent, num, ok, dv, dvals,
                   strings, cols, key_index)


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
    return rows(features.names, matrix_of(features, kl, c, out))
