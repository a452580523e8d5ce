"""Derived features of many orders at once, as float64 columns (NaN where :func:`windows.derive` gives None).

Column-wise twin of :func:`feature_state.windows.derive` for the batch path and the replay; the
property tests check that both give the same values bit for bit. Inputs are plain columns, so the
same code serves decoded ``Order`` objects and Arrow/Parquet columns (see :class:`OrderColumns`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
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


def any_strings(values: Sequence[Any]) -> pa.Array:
    """Values as an Arrow string array ("" kept, None null; other types through ``str``)."""
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


class OrderColumns:
    """Column access over decoded :class:`~contracts.events.Order` objects (cached per path).

    The replay, the batch path and :func:`derive_columns` read orders through this interface;
    :class:`ArrowOrders` offers the same over an Arrow table (no Python object per order).
    """

    def __init__(self, orders: Sequence[Any], ts: np.ndarray | None = None) -> None:
        self.orders = orders
        self.n = len(orders)
        self._cols: dict[str, list[Any]] = {}
        self._ts = ts
        self._offsets: np.ndarray | None = None
        self._strings: dict[str, pa.Array] = {}
        self._all_str: dict[str, bool] = {}

    def take(self, idx: np.ndarray) -> OrderColumns:
        return OrderColumns([self.orders[i] for i in idx.tolist()])

    def values(self, path: str) -> list[Any]:
        if path not in self._cols:
            self._cols[path] = column(self.orders, path)
        return self._cols[path]

    def strings(self, path: str) -> pa.Array:
        """The column as Arrow strings ("" kept)."""
        if path not in self._strings:
            self.string_array(path)
            if path not in self._strings:
                self._strings[path] = any_strings(self.values(path))
        return self._strings[path]

    def string_array(self, path: str) -> pa.Array | None:
        """The column as Arrow strings when every value is a str or None (else None)."""
        if path in self._strings:
            return self._strings[path] if self._all_str.get(path) else None
        try:
            arr = pa.array(self.values(path), type=pa.string())  # refuses anything but str and None
        except (UnicodeError, pa.ArrowException):
            return None
        self._strings[path] = arr
        self._all_str[path] = True
        return arr

    def numbers(self, path: str) -> np.ndarray:
        """float64, NaN where the value is not a number (None, bool, …), as ``windows.derive`` reads it."""
        return _numbers(self.values(path))

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


def _column_name(table: pa.Table, path: str) -> pa.ChunkedArray | None:
    """A dotted path of a table: a column, a flattened ``payment_x`` column or a struct field."""
    if path in table.column_names:
        return table.column(path)
    flat = path.replace(".", "_")
    if flat in table.column_names:
        return table.column(flat)
    head, _, rest = path.partition(".")
    if rest and head in table.column_names and pa.types.is_struct(table.column(head).type):
        return pc.struct_field(table.column(head), rest)
    return None


def timestamp_us(arr: pa.Array) -> np.ndarray:
    """A timestamp array as int64 µs since the epoch (0 where null)."""
    unit = arr.type.unit
    raw = np.asarray(pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    if unit == "s":
        return raw * US
    if unit == "ms":
        return raw * 1000
    if unit == "us":
        return raw
    raise ValueError(f"timestamps in {unit} are not supported here")


class ArrowOrders:
    """Column access over an Arrow table of orders (the layout ``fraudscore simulate`` writes:
    ``payment_*`` flattened or a ``payment`` struct, timestamps with a fixed-offset time zone)."""

    def __init__(self, table: pa.Table, offset_us: int) -> None:
        self.table = table
        self.n = table.num_rows
        self.offset_us = offset_us
        self._arrays: dict[str, pa.Array | None] = {}
        self._ts: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> ArrowOrders:
        return ArrowOrders(self.table.take(pa.array(idx, type=pa.int64())), self.offset_us)

    def array(self, path: str) -> pa.Array | None:
        if path not in self._arrays:
            col = _column_name(self.table, path)
            self._arrays[path] = None if col is None else (
                col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
        return self._arrays[path]

    def values(self, path: str) -> list[Any]:
        arr = self.array(path)
        return [None] * self.n if arr is None else arr.to_pylist()

    def strings(self, path: str) -> pa.Array:
        arr = self.array(path)
        if arr is None:
            return pa.nulls(self.n, type=pa.string())
        return arr if pa.types.is_string(arr.type) else any_strings(arr.to_pylist())

    def string_array(self, path: str) -> pa.Array | None:
        arr = self.array(path)
        if arr is None:
            return pa.nulls(self.n, type=pa.string())
        return arr if pa.types.is_string(arr.type) else None

    def numbers(self, path: str) -> np.ndarray:
        arr = self.array(path)
        if arr is None:
            return np.full(self.n, np.nan)
        if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type):
            return np.asarray(pc.fill_null(arr.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False),
                              dtype=np.float64)
        return _numbers(arr.to_pylist())

    @property
    def ts(self) -> np.ndarray:
        if self._ts is None:
            arr = self.array("event_time")
            assert arr is not None
            self._ts = timestamp_us(arr)
        return self._ts

    def offsets(self) -> np.ndarray:
        return np.full(self.n, self.offset_us, dtype=np.int64)

    def times_us(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        arr = self.array(path)
        if arr is None:
            return np.zeros(self.n, dtype=np.int64), np.zeros(self.n, dtype=bool)
        return timestamp_us(arr), np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


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
    (raw values), ``numbers(path)``, ``string_array(path)`` and ``times_us(path)``;
    :class:`OrderColumns` and :class:`ArrowOrders` are two.
    """
    n = cols.n
    merged = dict(values)
    out: dict[str, np.ndarray] = {}
    local: np.ndarray | None = None
    for d in features.derived:
        p = d.params
        v: np.ndarray
        if d.kind == "field":
            v = cols.numbers(p["field"])
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
            sa, sb = (cols.string_array(f) for f in p["fields"])
            if sa is not None and sb is not None:  # both string columns: compared by Arrow
                neq = pc.not_equal(sa, sb)  # null when either is missing
                v = np.asarray(pc.cast(neq, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
            else:
                v = _mismatch(*(cols.values(f) for f in p["fields"]))
        elif d.kind == "seconds_since_previous":
            v = values.get(d.name, np.full(n, np.nan))
        else:  # pragma: no cover - validated at load
            raise ValueError(d.kind)
        v = np.where(np.isfinite(v), v, np.nan)
        out[d.name] = v
        merged[d.name] = v
    return out


class FeatureRows(list):  # type: ignore[type-arg]
    """One features dict per order, as every store returns them, plus the same values as a matrix.

    ``matrix`` is orders × ``names`` (NaN = missing): a consumer that needs a matrix anyway (the model)
    takes its columns from here instead of rebuilding it from the dicts. Treat both as read-only.
    """

    __slots__ = ("matrix", "names")

    def __init__(self, dicts: Iterable[Features], names: tuple[str, ...], matrix: np.ndarray) -> None:
        super().__init__(dicts)
        self.names = names
        self.matrix = matrix


def rows(names: Sequence[str], matrix: np.ndarray) -> FeatureRows:
    """One dict per row (None where NaN), in ``names`` order."""
    obj = matrix.astype(object)
    obj[np.isnan(matrix)] = None
    vals = obj.tolist()
    return FeatureRows(map(dict, map(zip, [list(names)] * len(vals), vals)), tuple(names), matrix)
