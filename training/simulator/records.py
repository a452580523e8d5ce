"""What the simulator emits besides orders and labels: ground truth and a run summary.

The ground truth is a *side file*: nothing in an order event says whether it is fraud.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal, NamedTuple

import msgspec

TruthKind = Literal["fraud", "duplicate", "bad"]
Stream = Literal["orders", "labels", "truth"]

#: Malformed-event kinds injected by ``bad_rate`` (the ``defect`` of a ``bad`` truth record).
DEFECTS: tuple[str, ...] = ("invalid_json", "missing_fields", "negative_amount", "naive_timestamp", "pan_in_field")


class TruthRecord(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One line of ``truth.jsonl``.

    * ``fraud``: a fraud order, its scenario and scenario instance (a burst, a spree, an episode …).
    * ``duplicate``: an order emitted again, byte-identical (``order_id`` is the duplicated order).
    * ``bad``: a malformed event; ``order_id`` is the id it carries (``bad_…``; for ``invalid_json``
      it may be cut off), ``defect`` its kind, ``field`` the offending field(s) and ``sha256`` the hex
      digest of the exact bytes emitted, so a dead-letter record can be matched without storing them.

    ``seq`` is the position in the ``orders`` stream (0-based, counting every emitted event).
    """

    kind: TruthKind
    seq: int
    order_id: str | None = None
    event_time: dt.datetime | None = None
    scenario: str | None = None
    scenario_id: str | None = None
    customer_id: str | None = None
    victim_customer_id: str | None = None
    card_fingerprint: str | None = None
    merchant_id: str | None = None
    terminal_id: str | None = None
    amount: float | None = None
    currency: str | None = None
    defect: str | None = None
    field: str | None = None
    sha256: str | None = None


class SimulationSummary(msgspec.Struct, kw_only=True):
    """Counts of a run (``summary.json``), filled in while the simulation is iterated."""

    seed: int
    start: dt.datetime
    end: dt.datetime | None
    customers: int
    merchants: int
    terminals: int
    fraud_rate_target: float
    days_generated: int = 0
    orders: int = 0
    fraud_orders: int = 0
    fraud_by_scenario: dict[str, int] = msgspec.field(default_factory=dict)
    instances_by_scenario: dict[str, int] = msgspec.field(default_factory=dict)
    labels: dict[str, int] = msgspec.field(default_factory=dict)
    reviews: int = 0
    duplicates: int = 0
    bad_events: dict[str, int] = msgspec.field(default_factory=dict)
    events_emitted: int = 0
    first_event_time: dt.datetime | None = None
    last_event_time: dt.datetime | None = None

    @property
    def fraud_rate(self) -> float:
        """Realised share of fraud among the (unique, good) orders."""
        return self.fraud_orders / self.orders if self.orders else 0.0


EventKind = Literal["order", "duplicate", "bad", "label", "truth"]


class SimEvent(NamedTuple):
    """One emitted event.

    ``stream`` is ``orders``, ``labels`` or ``truth``; ``key`` the partition key (customer_id for
    orders, order_id for labels and truth); ``value`` the exact bytes (JSON); ``time_ms`` the event
    time (orders, truth) or label time (labels) in epoch ms; ``kind`` tells a good ``order``, a
    ``duplicate`` (the same bytes again) and a ``bad`` (malformed) event apart on the orders stream.
    Decode ``value`` with :mod:`contracts.events` when typed objects are needed.
    """

    stream: Stream
    key: bytes
    value: bytes
    time_ms: int
    kind: EventKind
