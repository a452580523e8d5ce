"""Parquet tables of the simulated streams (pyarrow): ``orders``, ``labels``, ``truth``.

``orders``: the contract fields, with the nested ``payment`` object flattened into ``payment_*``
columns, ``items`` as ``list<struct<sku, category, quantity:int32, unit_price:double>>`` and
timestamps as ``timestamp[ms, UTC]``. Duplicates are kept as repeated rows; malformed events have
no typed form and are left out (the truth table still lists them). Orders are accumulated column
by column and written one row group per ``row_group`` rows.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgspec

from contracts.events import Label
from training.simulator.exceptions import SinkError
from training.simulator.records import SimEvent, TruthRecord

STREAMS: tuple[str, ...] = ("orders", "labels", "truth")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


class _Payment(msgspec.Struct, frozen=True):
    method: str | None = None
    card_fingerprint: str | None = None
    card_bin: str | None = None
    card_country: str | None = None


class _Item(msgspec.Struct, frozen=True):
    sku: str | None = None
    category: str | None = None
    quantity: int = 1
    unit_price: float | None = None


class _Order(msgspec.Struct, frozen=True):
    """The fields of :class:`contracts.events.Order` without re-validation (the simulator made them)."""

    order_id: str
    customer_id: str
    amount: float
    currency: str
    account_created_at: dt.datetime | None = None
    merchant_id: str | None = None
    terminal_id: str | None = None
    channel: str | None = None
    payment: _Payment | None = None
    ip_address: str | None = None
    ip_country: str | None = None
    device_id: str | None = None
    email_domain: str | None = None
    billing_country: str | None = None
    shipping_country: str | None = None
    items: list[_Item] | None = None
    schema_version: int = 1


_order_decoder = msgspec.json.Decoder(_Order)
_label_decoder = msgspec.json.Decoder(Label)
_truth_decoder = msgspec.json.Decoder(TruthRecord)

#: Plain order columns (besides timestamps and items), in table order.
_ORDER_STRINGS = (
    "order_id", "customer_id", "amount", "currency", "merchant_id", "terminal_id", "channel",
    "payment_method", "payment_card_fingerprint", "payment_card_bin", "payment_card_country",
    "ip_address", "ip_country", "device_id", "email_domain", "billing_country", "shipping_country",
    "schema_version",
)  # fmt: skip


def order_schema() -> Any:
    """Arrow schema of ``orders.parquet``."""
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


def label_schema() -> Any:
    """Arrow schema of ``labels.parquet``."""
    import pyarrow as pa

    return pa.schema(
        [
            ("order_id", pa.string()), ("label", pa.string()), ("source", pa.string()),
            ("label_time", pa.timestamp("ms", tz="UTC")), ("customer_id", pa.string()),
            ("merchant_id", pa.string()), ("schema_version", pa.int16()),
        ]
    )  # fmt: skip


def truth_schema() -> Any:
    """Arrow schema of ``truth.parquet`` (the fields of :class:`TruthRecord`)."""
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


class _OrderColumns:
    """Orders accumulated as one Python list per column."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {name: [] for name in _ORDER_STRINGS}
        self.lists = tuple(self.cols.values())
        self.event_ms: list[int] = []
        self.acct_ms: list[int | None] = []
        self.offsets: list[int] = [0]
        self.has_items: list[bool] = []
        self.item_cols: dict[str, list[Any]] = {"sku": [], "category": [], "quantity": [], "unit_price": []}
        self.item_lists = tuple(self.item_cols.values())

    def __len__(self) -> int:
        return len(self.event_ms)

    def append(self, o: _Order, time_ms: int) -> None:
        p = o.payment
        (
            order_id, customer_id, amount, currency, merchant_id, terminal_id, channel, payment_method,
            card_fingerprint, card_bin, card_country, ip_address, ip_country, device_id, email_domain,
            billing_country, shipping_country, schema_version,
        ) = self.lists  # fmt: skip
        order_id.append(o.order_id)
        customer_id.append(o.customer_id)
        amount.append(o.amount)
        currency.append(o.currency)
        merchant_id.append(o.merchant_id)
        terminal_id.append(o.terminal_id)
        channel.append(o.channel)
        payment_method.append(p.method if p else None)
        card_fingerprint.append(p.card_fingerprint if p else None)
        card_bin.append(p.card_bin if p else None)
        card_country.append(p.card_country if p else None)
        ip_address.append(o.ip_address)
        ip_country.append(o.ip_country)
        device_id.append(o.device_id)
        email_domain.append(o.email_domain)
        billing_country.append(o.billing_country)
        shipping_country.append(o.shipping_country)
        schema_version.append(o.schema_version)
        self.event_ms.append(time_ms)
        created = o.account_created_at
        self.acct_ms.append(None if created is None else (created - _EPOCH) // _MS)
        items = o.items
        self.has_items.append(items is not None)
        if items:
            sku, category, quantity, unit_price = self.item_lists
            for it in items:
                sku.append(it.sku)
                category.append(it.category)
                quantity.append(it.quantity)
                unit_price.append(it.unit_price)
        self.offsets.append(len(self.item_lists[0]))

    def table(self, schema: Any) -> Any:
        import pyarrow as pa

        ts = pa.timestamp("ms", tz="UTC")
        item_type = schema.field("items").type.value_type
        children = [pa.array(self.item_cols[f.name], type=f.type) for f in item_type]
        items = pa.ListArray.from_arrays(
            pa.array(self.offsets, pa.int32()),
            pa.StructArray.from_arrays(children, fields=list(item_type)),
            mask=pa.array([not h for h in self.has_items], pa.bool_()),
        )
        arrays = {name: pa.array(values, type=schema.field(name).type) for name, values in self.cols.items()}
        arrays["event_time"] = pa.array(self.event_ms, pa.int64()).cast(ts)
        arrays["account_created_at"] = pa.array(self.acct_ms, pa.int64()).cast(ts)
        arrays["items"] = items
        return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


class ParquetWriter:
    """Writes ``<dir>/{orders,labels,truth}.parquet``."""

    def __init__(self, out_dir: Path, row_group: int = 100_000) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow is in the parquet extra
            raise SinkError("Parquet output needs pyarrow: pip install 'pyarrow>=15'") from exc
        out_dir.mkdir(parents=True, exist_ok=True)
        self.paths = {s: out_dir / f"{s}.parquet" for s in STREAMS}
        self._schemas = {"orders": order_schema(), "labels": label_schema(), "truth": truth_schema()}
        self._writers = {s: pq.ParquetWriter(str(self.paths[s]), self._schemas[s]) for s in STREAMS}
        self._orders = _OrderColumns()
        self._rows: dict[str, list[tuple[Any, ...]]] = {"labels": [], "truth": []}
        self._row_group = row_group

    def write_batch(self, batch: list[SimEvent]) -> list[SimEvent]:
        """Add a batch; return the events that were written (malformed orders have no typed form)."""
        written = []
        for event in batch:
            kind = event.kind
            if kind == "order" or kind == "duplicate":
                self._orders.append(_order_decoder.decode(event.value), event.time_ms)
                if len(self._orders) >= self._row_group:
                    self._flush("orders")
            elif kind == "label":
                la = _label_decoder.decode(event.value)
                self._add("labels", (la.order_id, la.label, la.source, la.label_time, la.customer_id,
                                     la.merchant_id, la.schema_version))  # fmt: skip
            elif kind == "truth":
                t = _truth_decoder.decode(event.value)
                self._add("truth", tuple(getattr(t, f) for f in t.__struct_fields__))
            else:
                continue
            written.append(event)
        return written

    def _add(self, stream: str, row: tuple[Any, ...]) -> None:
        rows = self._rows[stream]
        rows.append(row)
        if len(rows) >= self._row_group:
            self._flush(stream)

    def _flush(self, stream: str) -> None:
        import pyarrow as pa

        schema = self._schemas[stream]
        if stream == "orders":
            if not len(self._orders):
                return
            table = self._orders.table(schema)
            self._orders = _OrderColumns()
        else:
            rows = self._rows[stream]
            if not rows:
                return
            columns = list(zip(*rows, strict=True))
            arrays = [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)]
            table = pa.Table.from_arrays(arrays, schema=schema)
            rows.clear()
        self._writers[stream].write_table(table)

    def close(self) -> None:
        """Write what is pending and close the files."""
        for stream, writer in self._writers.items():
            self._flush(stream)
            writer.close()
