"""What every target shares: batching with an optional fixed rate, live re-stamping, a stop flag.

A target pulls batches from :func:`paced_batches`, waits until each batch is due (wall clock,
only with a ``rate``), re-stamps it with :class:`LiveStamper` in live mode, then writes it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import msgspec

from contracts.events import Label, Order, encode
from training.simulator.daygen import to_datetime
from training.simulator.generator import order_id_of
from training.simulator.records import SimEvent, TruthRecord

#: With a fixed rate, orders due within this many seconds of a batch's first order share the batch.
BATCH_WINDOW_S = 0.05

ProgressFn = Callable[["SinkReport"], None]
_order_decoder = msgspec.json.Decoder(Order)
_label_decoder = msgspec.json.Decoder(Label)
_truth_decoder = msgspec.json.Decoder(TruthRecord)


@dataclass
class SinkReport:
    """What a target wrote."""

    target: str
    orders: int = 0
    """events written to the orders stream (good orders, duplicates and malformed events)"""
    labels: int = 0
    truth: int = 0
    seconds: float = 0.0
    stopped: bool = False
    """True when a stop request ended the run early (live mode, Ctrl-C)"""
    outputs: dict[str, str] = field(default_factory=dict)
    """stream → where it went (file path, topic or stream name)"""

    def count_batch(self, batch: list[SimEvent]) -> None:
        """Count a written batch."""
        n_orders = n_labels = 0
        for event in batch:
            stream = event.stream
            if stream == "orders":
                n_orders += 1
            elif stream == "labels":
                n_labels += 1
        self.orders += n_orders
        self.labels += n_labels
        self.truth += len(batch) - n_orders - n_labels

    def count(self, event: SimEvent) -> None:
        """Count one written event."""
        if event.stream == "orders":
            self.orders += 1
        elif event.stream == "labels":
            self.labels += 1
        else:
            self.truth += 1


class StopFlag:
    """Set from a signal handler or another thread to end a run after the current batch."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True early when the flag is set."""
        return self._event.wait(seconds)


def paced_batches(
    events: Iterable[SimEvent], *, rate: float | None, max_batch: int, stop: StopFlag | None = None
) -> Iterator[tuple[float, list[SimEvent]]]:
    """Group ``events`` into batches of at most ``max_batch``.

    Yields ``(due, batch)``: ``due`` is the number of seconds after the start at which the batch may
    be sent — 0 without a ``rate``; with one, the n-th order is due at ``n / rate`` (labels and truth
    records ride along and do not count against the rate).
    """
    if rate is None:  # fast path: fixed-size chunks, all due at once
        it = iter(events)
        while chunk := list(islice(it, max_batch)):
            yield 0.0, chunk
            if stop is not None and stop.is_set():
                return
        return
    batch: list[SimEvent] = []
    batch_due = 0.0
    has_order = False
    n_orders = 0
    for event in events:
        if event.stream == "orders":
            due = n_orders / rate
            n_orders += 1
            if has_order and due - batch_due > BATCH_WINDOW_S:
                yield batch_due, batch
                batch, has_order = [], False
                if stop is not None and stop.is_set():
                    return
            if not has_order:
                batch_due, has_order = due, True
        batch.append(event)
        if len(batch) >= max_batch:
            yield batch_due, batch
            batch, has_order = [], False
            if stop is not None and stop.is_set():
                return
    if batch:
        yield batch_due, batch


class LiveStamper:
    """Live mode: re-stamp events with the wall clock at emission.

    An order's ``event_time`` becomes *now*; its ``account_created_at`` moves with it (the account
    age is kept); a label's ``label_time`` becomes *now* (it is emitted when the simulated clock
    passes its label time, so it still arrives after its order); a duplicate repeats the bytes of
    its first emission exactly; a malformed event is left as generated.
    """

    def __init__(self, clock: Callable[[], float] = time.time, remember: int = 20_000) -> None:
        self._clock = clock
        self._remember = remember
        self._seen: OrderedDict[str, tuple[SimEvent, dt.datetime]] = OrderedDict()

    def stamp(self, batch: list[SimEvent]) -> list[SimEvent]:
        """The batch with every timestamp moved to the current wall-clock time."""
        now_ms = int(self._clock() * 1000)
        now = to_datetime(now_ms)
        out: list[SimEvent] = []
        for ev in batch:
            if ev.kind == "duplicate":
                first = self._seen.get(order_id_of(ev.value))
                out.append(first[0]._replace(kind="duplicate") if first else self._order(ev, now, now_ms))
            elif ev.kind == "order":
                out.append(self._order(ev, now, now_ms))
            elif ev.kind == "label":
                label = msgspec.structs.replace(_label_decoder.decode(ev.value), label_time=now)
                out.append(ev._replace(value=encode(label), time_ms=now_ms))
            elif ev.kind == "truth":
                truth = _truth_decoder.decode(ev.value)
                seen = self._seen.get(truth.order_id or "")
                truth = msgspec.structs.replace(truth, event_time=seen[1] if seen else now)
                out.append(ev._replace(value=encode(truth), time_ms=now_ms))
            else:
                out.append(ev)
        return out

    def _order(self, ev: SimEvent, now: dt.datetime, now_ms: int) -> SimEvent:
        order = _order_decoder.decode(ev.value)
        created = order.account_created_at
        if created is not None:
            created = now - (order.event_time - created)
        order = msgspec.structs.replace(order, event_time=now, account_created_at=created)
        new = ev._replace(value=encode(order), time_ms=now_ms)
        self._seen[order.order_id] = (new, now)
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return new


class Driver:
    """Pull batches, keep the pace, re-stamp in live mode, report progress."""

    def __init__(
        self,
        events: Iterable[SimEvent],
        *,
        rate: float | None,
        live: bool,
        max_batch: int,
        stop: StopFlag | None = None,
        progress: ProgressFn | None = None,
        progress_every_s: float = 5.0,
    ) -> None:
        self.stop = stop or StopFlag()
        self._batches = paced_batches(events, rate=rate, max_batch=max_batch, stop=self.stop)
        self._stamper = LiveStamper() if live else None
        self._progress = progress
        self._every = progress_every_s
        self._start = time.monotonic()
        self._last = self._start

    def delay(self, due: float) -> float:
        """Seconds to wait before a batch due at ``due`` may go."""
        return self._start + due - time.monotonic()

    def batches(self) -> Iterator[tuple[float, list[SimEvent]]]:
        """(due, batch) pairs; the caller waits :meth:`delay` then calls :meth:`prepare`."""
        return self._batches

    def prepare(self, batch: list[SimEvent]) -> list[SimEvent]:
        """Re-stamp a batch in live mode (call right before writing it)."""
        return self._stamper.stamp(batch) if self._stamper is not None else batch

    def tick(self, report: SinkReport) -> None:
        """Update the elapsed time and report progress every few seconds."""
        now = time.monotonic()
        report.seconds = now - self._start
        if self._progress is not None and now - self._last >= self._every:
            self._last = now
            self._progress(report)

    def finish(self, report: SinkReport) -> SinkReport:
        """Final bookkeeping."""
        report.seconds = time.monotonic() - self._start
        report.stopped = self.stop.is_set()
        return report
