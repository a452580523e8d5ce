"""Reading orders and labels from JSONL or Parquet, and writing replayed features.

JSONL: one event per line, the topic's JSON contract. Parquet: one row per event, with ``payment``
either a struct column or flattened ``payment_<field>`` columns (as ``fraudscore simulate`` writes).
Every invalid event is reported as ``FILE:LINE: problem`` (line = row number + 1 for Parquet); the
caller decides whether to stop or skip them. Card numbers are refused by the contract decoders and
never echoed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from contracts.events import Label, Order, decode, from_builtins
from contracts.exceptions import ContractError
from feature_state.exceptions import FeatureStateError

E = TypeVar("E", Order, Label)
FORMATS = ("jsonl", "parquet")


class InputError(FeatureStateError):
    """An input file cannot be read at all (missing, wrong format)."""

    grpc_status = "INVALID_ARGUMENT"


@dataclass
class Loaded:
    events: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  #: ``FILE:LINE: message``
    lines: int = 0


def file_format(path: Path, explicit: str | None = None) -> str:
    """``jsonl`` or ``parquet`` from ``explicit`` or the file suffix."""
    if explicit:
        return explicit
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise InputError(f"{path}: cannot tell the format from the suffix; use .jsonl or .parquet (or --format)")


def _jsonl(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, line


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a core dependency
        raise InputError("reading Parquet needs pyarrow: pip install 'pyarrow>=15'") from exc
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    row = 0
    for batch in pf.iter_batches(batch_size=65536):
        for rec in batch.to_pylist():
            row += 1
            yield row + 1, _unflatten(rec)


def _unflatten(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    payment: dict[str, Any] = {}
    for k, v in rec.items():
        if v is None:
            continue
        if k.startswith("payment_") and "payment" not in rec:
            payment[k[len("payment_"):]] = v
        else:
            out[k] = v
    if payment:
        out["payment"] = payment
    for key in ("event_time", "account_created_at", "label_time"):
        v = out.get(key)
        if v is not None and not isinstance(v, str) and hasattr(v, "isoformat"):
            out[key] = v.isoformat()
    return out


def read_events(cls: type[E], path: str | Path, fmt: str | None = None, *, max_problems: int = 1000) -> Loaded:
    """Decode every event of ``path``; invalid ones become problems (``FILE:LINE: message``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    kind = file_format(p, fmt)
    out = Loaded()
    what = cls.__name__.lower()
    if kind == "jsonl":
        for lineno, raw in _jsonl(p):
            out.lines += 1
            try:
                out.events.append(decode(cls, raw))
            except ContractError as exc:
                _problem(out, f"{p}:{lineno}: invalid {what}: {exc}", max_problems)
    else:
        for lineno, rec in _parquet_rows(p):
            out.lines += 1
            try:
                out.events.append(from_builtins(cls, rec))
            except ContractError as exc:
                _problem(out, f"{p}:{lineno}: invalid {what} (row {lineno - 1}): {exc}", max_problems)
    return out


@dataclass
class LoadedTable:
    """A file read as validated columns (:func:`read_table`)."""

    table: Any  #: feature_state.replay.OrderTable or LabelTable
    problems: list[str] = field(default_factory=list)
    lines: int = 0
    checked: int = 0  #: rows the column checks sent to the contract one by one


def read_table(cls: type[E], path: str | Path, fmt: str | None = None, *, max_problems: int = 1000
               ) -> LoadedTable | str:
    """Decode ``path`` as validated Arrow columns (no object per event), or say why not.

    Parquet files in the layout ``fraudscore simulate`` writes are validated column-wise with the same
    outcome as :func:`read_events` (same valid rows, same problems; see :mod:`feature_state.columnar`).
    Returns the reason (a string) when the file must be read with :func:`read_events` instead: JSONL
    input, or a Parquet schema the column checks do not cover.
    """
    from feature_state import columnar
    from feature_state.replay import LabelTable, OrderTable

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    if file_format(p, fmt) != "parquet":
        return "JSONL input is decoded event by event"
    try:
        c = columnar.read(cls, p, max_problems=max_problems)
    except columnar.Unsupported as exc:
        return f"{p}: {exc}"
    table = OrderTable(c.table, c.offset_us) if cls is Order else LabelTable(c.table)
    return LoadedTable(table, c.problems, c.lines, c.checked)


def _problem(out: Any, msg: str, limit: int) -> None:
    if len(out.problems) < limit:
        out.problems.append(msg)
    elif len(out.problems) == limit:
        out.problems.append("… more invalid events not listed")


def write_features(
    path: str | Path, orders: Sequence[Order], names: Sequence[str], columns: dict[str, Any], fmt: str | None = None
) -> int:
    """Write one row per order: ``order_id``, ``event_time`` and every feature (null when missing)."""
    return write_rows(path, [o.order_id for o in orders], [o.event_time for o in orders], names, columns, fmt)


def write_rows(
    path: str | Path, ids: Sequence[str], event_times: Any, names: Sequence[str], columns: dict[str, Any],
    fmt: str | None = None,
) -> int:
    """:func:`write_features` from columns: ids, event times (datetimes or an Arrow timestamp array)."""
    import numpy as np

    p = Path(path)
    kind = file_format(p, fmt)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if isinstance(event_times, (pa.Array, pa.ChunkedArray)):
            times = event_times.cast(pa.timestamp("us", tz="UTC"))
        else:
            times = pa.array(event_times, type=pa.timestamp("us", tz="UTC"))
        arrays = {"order_id": pa.array(ids, type=pa.string()), "event_time": times}
        for n in names:
            col = np.asarray(columns[n], dtype=np.float64)
            arrays[n] = pa.array(col, type=pa.float64(), mask=np.isnan(col))
        pq.write_table(pa.table(arrays), tmp)
    else:
        if not isinstance(event_times, list):
            event_times = event_times.to_pylist()
        cols = [(n, np.asarray(columns[n], dtype=np.float64).tolist()) for n in names]
        with tmp.open("w", encoding="utf-8") as fh:
            for i, oid in enumerate(ids):
                row: dict[str, Any] = {"order_id": oid, "event_time": event_times[i].isoformat()}
                for n, vals in cols:
                    v = vals[i]
                    row[n] = None if v != v else v  # NaN → null
                fh.write(json.dumps(row, allow_nan=False, separators=(",", ":")))
                fh.write("\n")
    tmp.replace(p)
    return len(ids)
