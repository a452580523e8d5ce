"""Columnar order rows: one numpy array per column, all of one length.

The generator draws a day of orders as rows (legit traffic, each fraud scenario), concatenates
them, sorts them by event time and only then turns each row into an :class:`contracts.events.Order`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

Arr = NDArray[Any]
Rows = dict[str, Arr]

#: Column name → dtype. Object columns hold ``str`` or ``None``.
COLUMNS: dict[str, type[Any]] = {
    "t": np.int64,  # event time, epoch ms
    "customer_id": object,
    "acct_ms": np.int64,  # account creation, epoch ms
    "amount": np.float64,  # in ``currency``
    "currency": object,
    "merchant_id": object,
    "terminal_id": object,
    "channel": object,
    "card": object,  # card token
    "card_bin": object,
    "card_country": object,
    "ip": object,
    "ip_country": object,
    "device_id": object,
    "email": object,
    "billing": object,
    "shipping": object,
    "category": object,
    "fraud": np.bool_,
    "scenario": object,
    "scenario_id": object,
    "victim": object,  # customer whose card / account was abused
    "amount_usd": np.float64,
    "typical_usd": np.float64,  # the customer's typical amount (NaN: no history)
    # basket (filled by decorate())
    "n_items": np.int64,
    "sku0": np.int64,
    "sku1": np.int64,
    "sku2": np.int64,
    "qty0": np.int64,
    "qty1": np.int64,
    "qty2": np.int64,
    "price0": np.float64,
    "price1": np.float64,
    "price2": np.float64,
    # labels (filled by decorate())
    "review": np.bool_,
    "review_delay": np.int64,
    "review_fraud": np.bool_,
    "fraud_source": object,
    "fraud_delay": np.int64,
}


def _default(dtype: type[Any]) -> Any:
    if dtype is object:
        return None
    if dtype is np.float64:
        return np.nan
    if dtype is np.bool_:
        return False
    return 0


def or_none(mask: NDArray[Any], values: Any) -> Arr:
    """An object array: ``values`` where ``mask`` is true, ``None`` elsewhere."""
    out: Arr = np.empty(len(mask), dtype=object)
    if isinstance(values, np.ndarray):
        out[mask] = values[mask]
    else:
        out[mask] = values
    return out


def make_rows(n: int, **cols: Any) -> Rows:
    """Rows of length ``n``; each given column is an array of length ``n`` or a scalar to broadcast.

    Columns not given get their default (``None``, ``NaN``, ``0`` or ``False``).
    """
    unknown = set(cols) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown row columns: {sorted(unknown)}")
    out: Rows = {}
    for name, dtype in COLUMNS.items():
        value = cols.get(name, _default(dtype))
        if isinstance(value, np.ndarray):
            if len(value) != n:
                raise ValueError(f"column {name}: length {len(value)} != {n}")
            out[name] = value.astype(dtype, copy=False)
        else:
            arr = np.empty(n, dtype=dtype)
            arr[...] = value
            out[name] = arr
    return out


def empty_rows() -> Rows:
    """Zero rows."""
    return make_rows(0)


def n_rows(rows: Rows) -> int:
    """Number of rows."""
    return len(rows["t"])


def concat_rows(parts: list[Rows]) -> Rows:
    """Rows of every part, in order."""
    parts = [p for p in parts if n_rows(p)]
    if not parts:
        return empty_rows()
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in COLUMNS}


def take_rows(rows: Rows, index: NDArray[Any]) -> Rows:
    """Rows selected by an index array or a boolean mask."""
    return {name: col[index] for name, col in rows.items()}
