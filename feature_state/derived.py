"""Derived features of many orders at once, as float64 columns (NaN where :func:`windows.derive` gives None).

Column-wise twin of :func:`feature_state.windows.derive` for the batch path and the replay; the
property tests check that both give the same values bit for bit. Inputs are plain columns, so the
same code serves decoded ``Order`` objects and Arrow/Parquet columns (see :class:`OrderColumns`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_state.definitions import FeatureSet
from feature_state.layout import US, to_us

Features = dict[str, float | None]


def column(orders: Sequence[Any], path: str) -> list[Any]:
    """Values at a dotted path for every order (None when a parent is missing), without per-item calls."""
    parts = path.split(".")
    if len(parts) == 1:
        return list(map(attrgetter(parts[0]), orders))
    head, rest = parts[0], ".".join(parts[1:])
    parents = list(map(attrgetter(head), orders))
    get = attrgetter(rest)
    return [None if p is None else get(p) for p in parents]


def offsets_us(orders: Sequence[Any]) -> np.ndarray:
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
    out: np.ndarray = per[inverse.reshape(-1)]
    if varying:
        for i in np.nonzero(np.isin(inverse, varying))[0].tolist():
            off = orders[i].event_time.utcoffset()
            out[i] = 0 if off is None else (off.days * 86400 + off.seconds) * US + off.microseconds
    return out


class OrderColumns:
    """Column access over decoded :class:`~contracts.events.Order` objects (cached per path)."""

    def __init__(self, orders: Sequence[Any], ts: np.ndarray | None = None) -> None:
        self.orders = orders
        self.n = len(orders)
        self._cols: dict[str, list[Any]] = {}
        self._ts = ts
        self._offsets: np.ndarray | None = None

    def values(self, path: str) -> list[Any]:
        if path not in self._cols:
            self._cols[path] = column(self.orders, path)
        return self._cols[path]

    @property
    def ts(self) -> np.ndarray:
        if self._ts is None:
            self._ts = times_us(self.values("event_time"))
        return self._ts

    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._offsets = offsets_us(self.orders)
        return self._offsets

    def times_us(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return times_us_nullable(self.values(path))


def times_us(values: Sequence[Any]) -> np.ndarray:
    """Aware datetimes as exact µs since the epoch (Arrow converts to UTC; equal to ``layout.to_us``)."""
    try:
        arr = pa.array(values, type=pa.timestamp("us", tz="UTC"))
        if arr.null_count == 0:
            return np.asarray(arr.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    except (pa.ArrowException, TypeError, ValueError):
        pass
    return np.fromiter((to_us(v) for v in values), dtype=np.int64, count=len(values))


def times_us_nullable(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`times_us` where values may be None: (µs, valid)."""
    try:
        arr = pa.array(values, type=pa.timestamp("us", tz="UTC"))
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        us = np.asarray(pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        return us, valid
    except (pa.ArrowException, TypeError, ValueError):
        us = np.fromiter((0 if v is None else to_us(v) for v in values), dtype=np.int64, count=len(values))
        return us, np.fromiter((v is not None for v in values), dtype=bool, count=len(values))


def _numbers(raw: Sequence[Any]) -> np.ndarray:
    if all(type(v) is float for v in raw):
        return np.array(raw, dtype=np.float64)
    return np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan for v in raw],
                    dtype=np.float64)


def _mismatch(a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
    """``float(a != b)``, NaN when either is None — column-wise through Arrow when both are strings."""
    if all(v is None or type(v) is str for v in a) and all(v is None or type(v) is str for v in b):
        try:
            neq = pc.not_equal(pa.array(a, type=pa.string()), pa.array(b, type=pa.string()))
            return np.asarray(pc.cast(neq, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except (UnicodeError, pa.ArrowException):
            pass
    return np.array([np.nan if x is None or y is None else float(x != y) for x, y in zip(a, b, strict=True)],
                    dtype=np.float64)


def derive_columns(
    features: FeatureSet, cols: Any, values: dict[str, np.ndarray], local_time: Callable[[], np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Every derived feature as a column; ``values`` holds the aggregates (and seconds_since_previous).

    ``cols`` offers ``n``, ``ts`` (event time µs), ``offsets()`` (UTC offset µs), ``values(path)``
    (raw values) and ``times_us(path)``; :class:`OrderColumns` is one.
    """
    n = cols.n
    merged = dict(values)
    out: dict[str, np.ndarray] = {}
    local: np.ndarray | None = None
    for d in features.derived:
        p = d.params
        v: np.ndarray
        if d.kind == "field":
            v = _numbers(cols.values(p["field"]))
        elif d.kind == "ratio":
            num, den = merged[p["numerator"]], merged[p["denominator"]]
            v = np.full(n, np.nan)
            ok = ~np.isnan(num) & ~np.isnan(den) & (den != 0)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                v[ok] = num[ok] / den[ok]
        elif d.kind == "account_age_days":
            cus, has = cols.times_us("account_created_at")
            v = np.full(n, np.nan)
            v[has] = (cols.ts[has] - cus[has]).astype(np.float64) / 1e6 / 86400.0
        elif d.kind in ("hour_of_day", "day_of_week", "is_night", "is_weekend"):
            if local is None:
                local = cols.ts + cols.offsets()  # wall-clock time in each order's own offset
            hours = (local // (3600 * US)) % 24
            wday = (local // (86400 * US) + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
            if d.kind == "hour_of_day":
                v = hours.astype(np.float64)
            elif d.kind == "day_of_week":
                v = wday.astype(np.float64)
            elif d.kind == "is_weekend":
                v = (wday >= 5).astype(np.float64)
            else:
                start, end = int(p["start_hour"]), int(p["end_hour"])
                night = (hours >= start) & (hours < end) if start <= end else (hours >= start) | (hours < end)
                v = night.astype(np.float64)
        elif d.kind == "mismatch":
            a, b = (cols.values(f) for f in p["fields"])
            v = _mismatch(a, b)
        elif d.kind == "seconds_since_previous":
            v = values.get(d.name, np.full(n, np.nan))
        else:  # pragma: no cover - validated at load
            raise ValueError(d.kind)
        v = np.where(np.isfinite(v), v, np.nan)
        out[d.name] = v
        merged[d.name] = v
    return out


def rows(names: Sequence[str], matrix: np.ndarray) -> list[Features]:
    """One dict per row (None where NaN), in ``names`` order."""
    obj = matrix.astype(object)
    obj[np.isnan(matrix)] = None
    vals = obj.tolist()
    return list(map(dict, map(zip, [list(names)] * len(vals), vals)))
