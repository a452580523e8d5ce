"""Reason codes: the features that pushed a score up, as sentences a human can read."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from contracts.events import Reason

_WINDOW = re.compile(r"_(\d+)([smhd])$")
_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


@lru_cache(maxsize=4096)
def _window_words(name: str) -> tuple[str, str]:
    m = _WINDOW.search(name)
    if not m:
        return name, ""
    n, unit = int(m.group(1)), _UNITS[m.group(2)]
    span = f"the last {unit}" if n == 1 else f"the last {n} {unit}s"
    return name[: m.start()], span


def _number(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


@lru_cache(maxsize=4096)
def _sentence(feature: str) -> Callable[[float], str]:
    """How one feature's values read, worked out once per feature (the per-value part is a format)."""
    base, span = _window_words(feature)
    words = base.split("_")
    who = " ".join(words[:-2])
    if words[-2:] == ["order", "count"]:
        return lambda value: f"{who} placed {_number(value)} orders in {span}".strip()
    if words[-2:] == ["amount", "sum"]:
        return lambda value: f"{who} spent {_number(value)} in {span}".strip()
    if words[-2:] == ["amount", "mean"]:
        return lambda value: f"{who} average order {_number(value)} over {span}".strip()
    if words[-2:] == ["customer", "count"]:
        return lambda value: f"{who} used by {_number(value)} customers in {span}".strip()
    if base.endswith("mismatch"):
        what = " ".join(words[:-1])
        return lambda value: f"{what} countries differ" if value else f"{what} countries match"
    if feature == "amount_to_customer_mean_30d":
        return lambda value: f"amount is {_number(value)}× the customer's 30-day average"
    if feature == "amount":
        return lambda value: f"order amount {_number(value)}"
    if feature == "account_age_days":
        return lambda value: f"account is {_number(value)} days old"
    if feature == "hour_of_day":
        return lambda value: f"ordered at {int(value):02d}:00"
    name = " ".join(words)
    suffix = f" over {span}" if span else ""
    return lambda value: f"{name} = {_number(value)}{suffix}"


@lru_cache(maxsize=65536)  # counts and flags repeat a lot: most answers format nothing
def describe(feature: str, value: float | None) -> str:
    """A sentence for one feature value, e.g. ``card used 9 times in the last hour``."""
    if value is None or value != value:  # None or NaN
        return f"{feature.replace('_', ' ')} unknown"
    return _sentence(feature)(value)


def top_reasons(
    names: tuple[str, ...], values: np.ndarray, contributions: np.ndarray, k: int
) -> list[Reason]:
    """The ``k`` features with the largest positive contributions (bias excluded)."""
    if k <= 0:
        return []
    contrib = contributions[: len(names)]
    order = np.argsort(-contrib, kind="stable")[:k]
    out = []
    for i in order:
        c = float(contrib[i])
        if c <= 0:
            break
        raw = float(values[i])
        value = None if np.isnan(raw) else raw
        out.append(Reason(feature=names[i], value=value, contribution=round(c, 6), text=describe(names[i], value)))
    return out


def top_reasons_batch(
    names: tuple[str, ...], values: np.ndarray, contributions: np.ndarray, k: int
) -> list[list[Reason]]:
    """:func:`top_reasons` for every row of a batch: one vectorised selection, then ``k`` objects per row."""
    rows = values.shape[0]
    if k <= 0 or rows == 0:
        return [[] for _ in range(rows)]
    f = len(names)
    k = min(k, f)
    contrib = np.array(contributions[:, :f], dtype=np.float64)  # a copy: picked entries are knocked out
    # k rounds of argmax: the largest, ties to the lowest feature index — the order of a stable
    # descending sort (as top_reasons), at a fraction of sorting every row
    at = np.arange(rows)
    idx = np.empty((rows, k), dtype=np.intp)
    top_c = np.empty((rows, k), dtype=np.float64)
    for j in range(k):
        best = contrib.argmax(axis=1)
        idx[:, j] = best
        top_c[:, j] = contrib[at, best]
        contrib[at, best] = -np.inf
    top_v = np.take_along_axis(values, idx, axis=1).astype(np.float64)
    out: list[list[Reason]] = []
    append = out.append
    for r_idx, r_c, r_v in zip(idx.tolist(), top_c.tolist(), top_v.tolist(), strict=True):
        row = []
        for i, c, raw in zip(r_idx, r_c, r_v, strict=True):
            if c <= 0:
                break
            name = names[i]
            value = None if raw != raw else raw
            row.append(Reason(feature=name, value=value, contribution=round(c, 6), text=describe(name, value)))
        append(row)
    return out
