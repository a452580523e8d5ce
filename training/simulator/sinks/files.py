"""File targets: ``orders``, ``labels`` and ``truth`` as JSONL or Parquet, plus ``summary.json``.

JSONL files hold the exact bytes of the stream, one event per line, in emission order (so
``orders.jsonl`` contains duplicates and malformed events when they are injected; ``labels.jsonl``
is sorted by ``label_time``). Parquet files hold the same events as typed tables: nested
``payment`` is flattened into ``payment_*`` columns, ``items`` is a list of structs, timestamps are
``timestamp[ms, UTC]``; malformed events cannot be typed and are left out (the truth table still
lists them), duplicates are kept as repeated rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Literal

import msgspec

from contracts.events import Label, Order
from training.simulator.exceptions import SinkError
from training.simulator.generator import Simulation
from training.simulator.records import SimEvent, TruthRecord
from training.simulator.sinks.base import Driver, ProgressFn, SinkReport, StopFlag

FileFormat = Literal["jsonl", "parquet"]
_order_decoder = msgspec.json.Decoder(Order)
_label_decoder = msgspec.json.Decoder(Label)
_truth_decoder = msgspec.json.Decoder(TruthRecord)
STREAMS: tuple[str, ...] = ("orders", "labels", "truth")
_FLUSH_BYTES = 1 << 20


class JsonlWriter:
    """Appends each event's bytes and a newline to ``<dir>/<stream>.jsonl``."""

    def __init__(self, out_dir: Path, streams: tuple[str, ...] = STREAMS) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.paths = {s: out_dir / f"{s}.jsonl" for s in streams}
        self._files: dict[str, IO[bytes]] = {s: p.open("wb") for s, p in self.paths.items()}
        self._buf: dict[str, list[bytes]] = {s: [] for s in streams}
        self._size: dict[str, int] = dict.fromkeys(streams, 0)

    def write_batch(self, batch: list[SimEvent]) -> list[SimEvent]:
        """Write a batch; return the events that were written (those of this writer's streams)."""
        bufs = self._buf
        if len(bufs) == len(STREAMS):
            for event in batch:
                bufs[event.stream].append(event.value)
            written = batch
        else:
            written = [e for e in batch if e.stream in bufs]
            for event in written:
                bufs[event.stream].append(event.value)
        for stream in bufs:
            self._flush(stream)
        return written

    def write(self, event: SimEvent) -> bool:
        """Write one event; False when its stream is not written here."""
        buf = self._buf.get(event.stream)
        if buf is None:
            return False
        buf.append(event.value)
        self._size[event.stream] += len(event.value) + 1
        if self._size[event.stream] > _FLUSH_BYTES:
            self._flush(event.stream)
        return True

    def _flush(self, stream: str) -> None:
        buf = self._buf[stream]
        if buf:
            buf.append(b"")
            self._files[stream].write(b"\n".join(buf))
            buf.clear()
        self._size[stream] = 0

    def close(self) -> None:
        for stream, f in self._files.items():
            self._flush(stream)
            f.close()


def _order_schema() -> Any:
    import pyarrow as pa

    ts = pa.timestamp("ms", tz="UTC")
    item = pa.struct(
        [("sku", pa.string()), ("category", pa.string()), ("quantity", pa.int32()), ("unit_price", pa.float64())]
    )
    return pa.schema(
        [
            ("order_id", pa.string()), ("event_time", ts), ("customer_id", pa.string()), ("amount", pa.float64()),
            ("currency", pa.string()), ("account_created_at", ts), ("merchant_id", pa.string()),
            ("terminal_id", pa.string()), ("channel", pa.string()), ("payment_method", pa.string()),
            ("payment_card_fingerprint", pa.string()), ("payment_card_bin", pa.string()),
            ("payment_card_country", pa.string()), ("ip_address", pa.string()), ("ip_country", pa.string()),
            ("device_id", pa.string()), ("email_domain", pa.string()), ("billing_country", pa.string()),
            ("shipping_country", pa.string()), ("items", pa.list_(item)), ("schema_version", pa.int16()),
        ]
    )  # fmt: skip


def _label_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("order_id", pa.string()), ("label", pa.string()), ("source", pa.string()),
            ("label_time", pa.timestamp("ms", tz="UTC")), ("customer_id", pa.string()),
            ("merchant_id", pa.string()), ("schema_version", pa.int16()),
        ]
    )  # fmt: skip


def _truth_schema() -> Any:
    import pyarrow as pa

    s = pa.string()
    return pa.schema(
        [
            ("kind", s), ("seq", pa.int64()), ("order_id", s), ("event_time", pa.timestamp("ms", tz="UTC")),
            ("scenario", s), ("scenario_id", s), ("customer_id", s), ("victim_customer_id", s),
            ("card_fingerprint", s), ("merchant_id", s), ("terminal_id", s), ("amount", pa.float64()),
            ("currency", s), ("defect", s), ("field", s), ("sha256", s),
        ]
    )  # fmt: skip


def _order_row(o: Order) -> tuple[Any, ...]:
    p = o.payment
    items = None
    if o.items is not None:
        items = [
            {"sku": i.sku, "category": i.category, "quantity": i.quantity, "unit_price": i.unit_price} for i in o.items
        ]
    return (
        o.order_id, o.event_time, o.customer_id, o.amount, o.currency, o.account_created_at, o.merchant_id,
        o.terminal_id, o.channel, p.method if p else None, p.card_fingerprint if p else None,
        p.card_bin if p else None, p.card_country if p else None, o.ip_address, o.ip_country, o.device_id,
        o.email_domain, o.billing_country, o.shipping_country, items, o.schema_version,
    )  # fmt: skip


def _label_row(la: Label) -> tuple[Any, ...]:
    return (la.order_id, la.label, la.source, la.label_time, la.customer_id, la.merchant_id, la.schema_version)


def _truth_row(t: TruthRecord) -> tuple[Any, ...]:
    return tuple(getattr(t, f) for f in t.__struct_fields__)


class ParquetWriter:
    """Typed tables ``<dir>/<stream>.parquet``, one row group per ``row_group`` rows."""

    def __init__(self, out_dir: Path, row_group: int = 100_000) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow is in the parquet extra
            raise SinkError("Parquet output needs pyarrow: pip install 'fraudscore[parquet]'") from exc
        out_dir.mkdir(parents=True, exist_ok=True)
        self.paths = {s: out_dir / f"{s}.parquet" for s in STREAMS}
        self._schemas = {"orders": _order_schema(), "labels": _label_schema(), "truth": _truth_schema()}
        self._writers = {s: pq.ParquetWriter(str(self.paths[s]), self._schemas[s]) for s in STREAMS}
        self._rows: dict[str, list[tuple[Any, ...]]] = {s: [] for s in STREAMS}
        self._row_group = row_group

    def write_batch(self, batch: list[SimEvent]) -> list[SimEvent]:
        """Add a batch; return the events that were written (malformed orders have no typed form)."""
        return [e for e in batch if self.write(e)]

    def write(self, event: SimEvent) -> bool:
        """Add one event; False for a malformed order (no typed form)."""
        kind = event.kind
        if kind == "order" or kind == "duplicate":
            row = _order_row(_order_decoder.decode(event.value))
        elif kind == "label":
            row = _label_row(_label_decoder.decode(event.value))
        elif kind == "truth":
            row = _truth_row(_truth_decoder.decode(event.value))
        else:
            return False
        rows = self._rows[event.stream]
        rows.append(row)
        if len(rows) >= self._row_group:
            self._flush(event.stream)
        return True

    def _flush(self, stream: str) -> None:
        import pyarrow as pa

        rows = self._rows[stream]
        schema = self._schemas[stream]
        columns = list(zip(*rows, strict=True))
        arrays = [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)]
        self._writers[stream].write_table(pa.Table.from_arrays(arrays, schema=schema))
        rows.clear()

    def close(self) -> None:
        for stream, writer in self._writers.items():
            if self._rows[stream]:
                self._flush(stream)
            writer.close()


def write_files(
    events: Iterable[SimEvent],
    out_dir: str | Path,
    *,
    fmt: FileFormat = "jsonl",
    rate: float | None = None,
    live: bool = False,
    stop: StopFlag | None = None,
    progress: ProgressFn | None = None,
) -> SinkReport:
    """Write a simulation (or any event stream) to ``out_dir`` as JSONL or Parquet.

    When ``events`` is a :class:`~training.simulator.generator.Simulation`, ``summary.json`` is written
    too. Returns what was written.
    """
    out = Path(out_dir)
    try:
        writer: JsonlWriter | ParquetWriter = JsonlWriter(out) if fmt == "jsonl" else ParquetWriter(out)
    except OSError as exc:
        raise SinkError(f"cannot write to {out}: {exc}") from exc
    report = SinkReport(target=f"files:{fmt}", outputs={s: str(p) for s, p in writer.paths.items()})
    driver = Driver(events, rate=rate, live=live, max_batch=10_000, stop=stop, progress=progress)
    try:
        for due, batch in driver.batches():
            wait = driver.delay(due)
            if wait > 0 and driver.stop.wait(wait):
                break
            report.count_batch(writer.write_batch(driver.prepare(batch)))
            driver.tick(report)
    except OSError as exc:
        raise SinkError(f"writing {out} failed: {exc}") from exc
    finally:
        writer.close()
    if isinstance(events, Simulation):
        write_summary(events, out / "summary.json")
        report.outputs["summary"] = str(out / "summary.json")
    return driver.finish(report)


def write_summary(sim: Simulation, path: Path) -> None:
    """``summary.json``: the run's counts and its options."""
    doc = msgspec.to_builtins(sim.summary)
    doc["fraud_rate"] = sim.summary.fraud_rate
    doc["config"] = msgspec.to_builtins(sim.config)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(doc)) + b"\n")


def read_jsonl(path: str | Path) -> list[bytes]:
    """Lines of a JSONL file (helper for tests and notebooks)."""
    with Path(path).open("rb") as f:
        return [line.rstrip(b"\n") for line in f]
