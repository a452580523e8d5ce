"""Parquet orders and labels as validated Arrow columns, for the replay without per-event objects.

Validation is equivalent to decoding every row with the contract (:func:`contracts.events.from_builtins`,
as :func:`feature_state.io.read_events` does), by construction:

1. The schema must be one whose values reach the contract unchanged (strings as strings, ``amount``
   a number, timestamps with a fixed-offset time zone in s/ms/µs, ``payment`` flattened into
   ``payment_*`` string columns, ``items`` a list of structs of strings and numbers, unknown columns
   of scalar types). Anything else: :func:`read` returns None with the reason, and the caller uses
   the object path for that file.
2. Column-wise checks then flag every row that *might* be invalid: missing or null required fields,
   lengths, patterns (country, currency, BIN), negative or NaN amounts, unknown channels, bad items,
   and any string with 13 or more digits (a possible card number, in any column, known or not).
   The flags are a superset of the invalid rows: each check is the contract's rule or stricter.
3. Only flagged rows are decoded with the contract, one by one, exactly as the object path does;
   their problems are reported with the same ``FILE:LINE`` messages, and the ones that turn out to
   be valid stay in the table.

Rows that are not flagged are valid by (1) and (2), and their Arrow values are the values the
contract would hold (the tests compare both paths, row for row and feature for feature).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.events import Label, Order, from_builtins
from contracts.exceptions import ContractError
from contracts.pan import contains_pan
from feature_state.layout import US

#: order fields by kind (the contract's annotations)
_IDS = ("order_id", "customer_id")
_SHORT = ("merchant_id", "terminal_id", "ip_address", "device_id", "email_domain", "payment_method",
          "payment_card_fingerprint")
_COUNTRIES = ("ip_country", "billing_country", "shipping_country", "payment_card_country")
_TIMES = ("event_time", "account_created_at")
_REQUIRED = ("order_id", "event_time", "customer_id", "amount", "currency")
_CHANNELS = ("web", "app", "pos", "phone")
_PAYMENT = ("payment_method", "payment_card_fingerprint", "payment_card_bin", "payment_card_country")
_ITEM_STRINGS = ("sku", "category")
#: a possible card number has 13+ digits: a necessary condition the exact check then decides
_PAN_DIGITS = 13


@dataclass
class Columnar:
    """A validated table and the problems of its invalid rows (``FILE:LINE: message``)."""

    table: pa.Table
    offset_us: int
    problems: list[str] = field(default_factory=list)
    lines: int = 0
    checked: int = 0  #: rows the column checks flagged and the contract decided one by one


class Unsupported(Exception):
    """The file's schema is outside what the column checks are equivalent for (use the object path)."""


def _is_str(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _offset_us(tz: str | None, name: str) -> int:
    """UTC offset of a fixed-offset time zone name (``UTC``, ``+02:00``); Unsupported otherwise."""
    if tz is None:
        raise Unsupported(f"{name}: timestamps without a time zone")
    if tz in ("UTC", "Z", "Etc/UTC", "+00:00", "-00:00"):
        return 0
    m = re.fullmatch(r"([+-])(\d{2}):(\d{2})", tz)
    if not m:
        raise Unsupported(f"{name}: time zone {tz!r} is not a fixed offset")
    sign = -1 if m.group(1) == "-" else 1
    return sign * (int(m.group(2)) * 3600 + int(m.group(3)) * 60) * US


def _col(table: pa.Table, name: str) -> pa.Array:
    arr = table.column(name).combine_chunks()
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _np(mask: Any) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, True).to_numpy(zero_copy_only=False), dtype=bool)


def _maybe_pan(arr: pa.Array) -> np.ndarray:
    """Rows whose string could hold a card number (13+ digits): the exact check decides.

    Digits are counted on the UTF-8 bytes directly (a prefix sum over the data buffer).
    """
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=bool)
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    _, offsets, data = arr.buffers()
    off = np.frombuffer(offsets, dtype=np.int32, count=arr.offset + n + 1)[arr.offset :].astype(np.int64)
    if data is None or off[-1] == off[0]:
        return np.zeros(n, dtype=bool)
    if int(np.max(off[1:] - off[:-1])) < _PAN_DIGITS:  # no string long enough (codes, countries, …)
        return np.zeros(n, dtype=bool)
    raw = np.frombuffer(data, dtype=np.uint8, count=int(off[-1]))
    # int32 prefix sums (a column's data buffer is < 2 GiB: int32 offsets): half the memory traffic of int64
    digits = np.zeros(len(raw) + 1, dtype=np.int32)
    np.cumsum((raw - np.uint8(0x30)) < 10, dtype=np.int32, out=digits[1:])
    out: np.ndarray = ((digits[off[1:]] - digits[off[:-1]]) >= _PAN_DIGITS) & _np(arr.is_valid())
    return out


def _len(arr: pa.Array) -> pa.Array:
    return pc.utf8_length(arr)


def _pattern(arr: pa.Array, regex: str) -> np.ndarray:
    """Rows (non-null) not fully matching ``regex`` (RE2, anchored: stricter than Python's ``$``)."""
    out: np.ndarray = _np(pc.invert(pc.match_substring_regex(arr, f"^(?:{regex})$"))) & _np(arr.is_valid())
    return out


def _scalar_ok(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                or pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_null(t) or _is_str(t))


def _items_flags(arr: pa.Array, n: int) -> tuple[np.ndarray, list[pa.Array]]:
    """Rows whose ``items`` might be invalid, and the item string arrays (for the card-number scan)."""
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        raise Unsupported("items: not a list of structs")
    flags = np.zeros(n, dtype=bool)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False))
    flags |= lengths > 1000
    flat = pc.list_flatten(arr)
    parents = np.asarray(pc.list_parent_indices(arr).to_numpy(zero_copy_only=False), dtype=np.int64)
    strings: list[pa.Array] = []
    bad = np.zeros(len(flat), dtype=bool)
    if flat.null_count:
        bad |= ~np.asarray(flat.is_valid().to_numpy(zero_copy_only=False), dtype=bool)  # a null item
    st = flat.type
    for i in range(st.num_fields):
        f = st.field(i)
        child = pc.struct_field(flat, [i])
        if f.name in _ITEM_STRINGS:
            if not _is_str(f.type):
                raise Unsupported(f"items.{f.name}: not a string")
            bad |= _np(pc.greater(_len(child), 256)) & _np(child.is_valid())
            strings.append(child)
        elif f.name == "quantity":
            if not pa.types.is_integer(f.type):
                raise Unsupported("items.quantity: not an integer")
            bad |= _np(pc.or_kleene(pc.is_null(child), pc.less(child, 0)))
        elif f.name == "unit_price":
            if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)):
                raise Unsupported("items.unit_price: not a number")
            neg = pc.less(child, 0)
            if pa.types.is_floating(f.type):
                neg = pc.or_kleene(neg, pc.is_nan(child))
            bad |= _np(neg) & _np(child.is_valid())
        elif _is_str(f.type):
            strings.append(child)  # unknown: ignored by the contract, but scanned for card numbers
        elif not _scalar_ok(f.type):
            raise Unsupported(f"items.{f.name}: nested type")
        if contains_pan(f.name):
            bad[:] = True
    for s in strings:
        bad |= _maybe_pan(s)
    if bad.any():
        flags[np.unique(parents[bad])] = True
    return flags, strings


def _orders_flags(table: pa.Table) -> tuple[np.ndarray, int]:
    n = table.num_rows
    names = table.column_names
    if "payment" in names:
        raise Unsupported("payment as a struct column (the object path reads it)")
    flags = np.zeros(n, dtype=bool)
    offset = 0
    for name in _REQUIRED:
        if name not in names:
            flags[:] = True  # every row lacks a required field: the contract names it per row
    for name in names:
        arr = _col(table, name)
        t = arr.type
        if contains_pan(name) or (name.startswith("payment_") and contains_pan(name[len("payment_"):])):
            flags[:] = True
        if name in _REQUIRED:
            flags |= ~np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if name in _IDS or name in _SHORT or name in _COUNTRIES or name in ("currency", "channel", "payment_card_bin"):
            if not _is_str(t):
                raise Unsupported(f"{name}: not a string column")
            flags |= _maybe_pan(arr)
            if name in _IDS:
                flags |= _np(pc.or_kleene(pc.equal(_len(arr), 0), pc.greater(_len(arr), 256))) & _np(arr.is_valid())
            elif name in _SHORT:
                flags |= _np(pc.greater(_len(arr), 256)) & _np(arr.is_valid())
            elif name in _COUNTRIES:
                flags |= _pattern(arr, "[A-Z]{2}")
            elif name == "currency":
                flags |= _pattern(arr, "[A-Z]{3}")
            elif name == "payment_card_bin":
                flags |= _pattern(arr, "[0-9]{6,8}")
            else:  # channel
                flags |= _np(pc.invert(pc.is_in(arr, value_set=pa.array(_CHANNELS)))) & _np(arr.is_valid())
        elif name == "amount":
            if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
                raise Unsupported("amount: not a number column")
            bad = pc.less(arr, 0)
            if pa.types.is_floating(t):
                bad = pc.or_kleene(bad, pc.is_nan(arr))
            flags |= _np(bad) & _np(arr.is_valid())
        elif name in _TIMES:
            if not pa.types.is_timestamp(t) or t.unit == "ns":
                raise Unsupported(f"{name}: not a timestamp column in s, ms or µs")
            off = _offset_us(t.tz, name)
            if name == "event_time":
                offset = off
        elif name == "schema_version":
            if not pa.types.is_integer(t):
                raise Unsupported("schema_version: not an integer column")
            flags |= _np(pc.less(arr, 1)) & _np(arr.is_valid())
        elif name == "items":
            item_flags, _ = _items_flags(arr, n)
            flags |= item_flags
        elif name.startswith("payment_") or _is_str(t):  # unknown: ignored, but scanned for card numbers
            if not _is_str(t):
                raise Unsupported(f"{name}: an unknown payment field that is not a string")
            flags |= _maybe_pan(arr)
        elif not _scalar_ok(t):
            raise Unsupported(f"{name}: unknown column of a nested type")
    return flags, offset


def _labels_flags(table: pa.Table) -> tuple[np.ndarray, int]:
    n = table.num_rows
    names = table.column_names
    flags = np.zeros(n, dtype=bool)
    for name in ("order_id", "label", "source", "label_time"):
        if name not in names:
            flags[:] = True
    for name in names:
        arr = _col(table, name)
        t = arr.type
        if contains_pan(name):
            flags[:] = True
        if name in ("order_id", "label", "source", "label_time"):
            flags |= ~np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if name in ("order_id", "label", "source", "customer_id", "merchant_id"):
            if not _is_str(t):
                raise Unsupported(f"{name}: not a string column")
            flags |= _maybe_pan(arr)
            if name == "order_id":
                flags |= _np(pc.or_kleene(pc.equal(_len(arr), 0), pc.greater(_len(arr), 256))) & _np(arr.is_valid())
            elif name in ("customer_id", "merchant_id"):
                flags |= _np(pc.greater(_len(arr), 256)) & _np(arr.is_valid())
            else:
                allowed = ("fraud", "legit") if name == "label" else ("chargeback", "review", "customer_report")
                flags |= _np(pc.invert(pc.is_in(arr, value_set=pa.array(allowed)))) & _np(arr.is_valid())
        elif name == "label_time":
            if not pa.types.is_timestamp(t) or t.unit == "ns":
                raise Unsupported("label_time: not a timestamp column in s, ms or µs")
            _offset_us(t.tz, name)
        elif name == "schema_version":
            if not pa.types.is_integer(t):
                raise Unsupported("schema_version: not an integer column")
            flags |= _np(pc.less(arr, 1)) & _np(arr.is_valid())
        elif _is_str(t):
            flags |= _maybe_pan(arr)
        elif not _scalar_ok(t):
            raise Unsupported(f"{name}: unknown column of a nested type")
    return flags, 0


def read(cls: type[Order] | type[Label], path: Path, *, max_problems: int = 1000) -> Columnar:
    """Read and validate a Parquet file of ``cls`` as columns; raises :class:`Unsupported`."""
    import pyarrow.parquet as pq

    from feature_state.io import InputError, _problem, _unflatten

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    try:
        flags, offset = (_orders_flags if cls is Order else _labels_flags)(table)
    except (pa.ArrowException, UnicodeError) as exc:  # e.g. invalid UTF-8 in a string column
        raise Unsupported(f"column checks failed: {exc}") from None
    out = Columnar(table, offset, lines=table.num_rows)
    what = cls.__name__.lower()
    invalid = np.zeros(table.num_rows, dtype=bool)
    suspects = np.nonzero(flags)[0]
    out.checked = len(suspects)
    if len(suspects):
        rows = table.take(pa.array(suspects)).to_pylist()
        for r, rec in zip(suspects.tolist(), rows, strict=True):
            lineno = r + 2  # as read_events numbers Parquet rows (row number + 1, after a header line)
            try:
                from_builtins(cls, _unflatten(rec))
            except ContractError as exc:
                invalid[r] = True
                _problem(out, f"{path}:{lineno}: invalid {what} (row {lineno - 1}): {exc}", max_problems)
    if invalid.any():
        table = table.filter(pa.array(~invalid))
    # string columns as plain strings (large_string and chunking would only slow the replay down)
    out.table = pa.table({name: _col(table, name) for name in table.column_names})
    return out
