"""The simulation: a deterministic, pure stream of events (no I/O, no wall clock).

:func:`simulate` returns a :class:`Simulation`; iterating it yields :class:`SimEvent` s in emission
order: ``orders`` (good orders, duplicates and malformed events), ``labels`` (released when the
simulated clock — the largest event time emitted so far — passes their ``label_time``, so the
label stream is sorted by ``label_time``) and ``truth`` (the ground-truth side records).

Days are encoded by :mod:`training.simulator.daygen` — in this process, or in ``workers`` worker
processes for big runs — and merged here, in day order, with the labels, duplicates, malformed
events and truth records. The output does not depend on the number of workers. Every random draw
comes from numpy ``PCG64`` streams seeded by ``(seed, day, purpose)``, so the same config gives
byte-identical events, and the duplicate / reorder / malformed-event options change the emission
but never the orders themselves.
"""

from __future__ import annotations

import heapq
import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import count

import msgspec

from contracts.events import Order, encode
from training.simulator.anomalies import bad_event, sha256_hex
from training.simulator.config import ANOMALIES, SCENARIOS, SimulationConfig, rng_for
from training.simulator.daygen import DayEncoder, DayOutput, encode_day_packed, run_tag, to_datetime, unpack
from training.simulator.records import DEFECTS, SimEvent, SimulationSummary, TruthRecord

#: Runs expected to produce at least this many orders use worker processes when ``workers`` is None.
PARALLEL_THRESHOLD = 300_000
_order_decoder = msgspec.json.Decoder(Order)


class Simulation:
    """An iterable simulation. Iterate once; :attr:`summary` is complete when iteration ends.

    ``workers``: processes encoding days in parallel; ``None`` = 1, except for runs of at least
    :data:`PARALLEL_THRESHOLD` orders on machines with more than 2 CPUs (then CPUs − 1, at most 4);
    1 = everything in this process. The output is identical either way.
    """

    def __init__(self, config: SimulationConfig, workers: int | None = None) -> None:
        self.config = config
        self.workers = resolve_workers(config, workers)
        end = config.end_ms
        self.summary = SimulationSummary(
            seed=config.seed,
            start=to_datetime(config.start_ms),
            end=to_datetime(end) if end is not None else None,
            customers=config.n_customers,
            merchants=config.n_merchants,
            terminals=0,
            fraud_rate_target=config.fraud_rate,
            fraud_by_scenario=dict.fromkeys(SCENARIOS, 0),
            instances_by_scenario=dict.fromkeys(SCENARIOS, 0),
            bad_events=dict.fromkeys(DEFECTS, 0),
        )
        self._started = False

    def __iter__(self) -> Iterator[SimEvent]:
        if self._started:
            raise RuntimeError("a Simulation can be iterated once; call simulate() again")
        self._started = True
        return _Merge(self).events()


def simulate(config: SimulationConfig, workers: int | None = None) -> Simulation:
    """The event stream of ``config`` (see the module docstring)."""
    return Simulation(config, workers)


def resolve_workers(config: SimulationConfig, workers: int | None) -> int:
    """How many processes encode days (see :class:`Simulation`)."""
    if workers is not None:
        return max(1, workers)
    expected = math.inf if config.days is None else config.days * config.orders_per_day
    if config.max_orders is not None:
        expected = min(expected, config.max_orders)
    cpus = os.cpu_count() or 1
    if expected == math.inf or expected < PARALLEL_THRESHOLD or cpus <= 2:
        return 1  # the merging process needs a core of its own
    return min(4, cpus - 1)


def _days(config: SimulationConfig) -> Iterable[int]:
    return range(math.ceil(config.days)) if config.days is not None else count()


def _local_days(config: SimulationConfig) -> Iterator[DayOutput]:
    encoder = DayEncoder(config)
    for day in _days(config):
        yield encoder.encode_day(day)


def _pooled_days(config: SimulationConfig, workers: int) -> Iterator[DayOutput]:
    """Days encoded by worker processes, yielded in day order, a few days ahead at most."""
    config_json = msgspec.json.encode(config)
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    ahead: list[Future[bytes]] = []
    days = iter(_days(config))
    try:
        for day in days:
            ahead.append(pool.submit(encode_day_packed, config_json, day))
            if len(ahead) >= 2 * workers:
                yield unpack(ahead.pop(0).result())
        while ahead:
            yield unpack(ahead.pop(0).result())
    finally:
        for fut in ahead:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class _Merge:
    """Merges encoded days into one stream: labels by label time, duplicates, malformed events, truth."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.cfg = sim.config
        self.summary = sim.summary
        self.tag = run_tag(self.cfg.seed)
        self.seq = 0  # position in the orders stream
        self.n_orders = 0  # good, unique orders
        self.n_bad = 0
        self.clock = -(2**62)
        self.heap: list[tuple[int, int, bytes, bytes, str]] = []
        self.pushed = 0
        self.instances: dict[str, set[str]] = {s: set() for s in SCENARIOS}
        self.done = False

    def events(self) -> Iterator[SimEvent]:
        cfg = self.cfg
        days = _local_days(cfg) if self.sim.workers == 1 else _pooled_days(cfg, self.sim.workers)
        try:
            for out in days:
                self.summary.terminals = out.terminals
                self.summary.days_generated = out.day + 1
                yield from self._emit_day(out)
                if self.done:
                    break
        finally:
            close = getattr(days, "close", None)
            if close is not None:
                close()
        if cfg.labels == "all":
            yield from self._release(2**62)
        elif cfg.labels == "until_end":
            end = cfg.end_ms
            yield from self._release((end if end is not None else self.clock + 1) - 1)
        self.heap.clear()

    def _release(self, until_ms: int) -> Iterator[SimEvent]:
        heap, labels = self.heap, self.summary.labels
        while heap and heap[0][0] <= until_ms:
            t, _, key, value, kind = heapq.heappop(heap)
            labels[kind] = labels.get(kind, 0) + 1
            yield SimEvent("labels", key, value, t, "label")

    def _emit_day(self, out: DayOutput) -> Iterator[SimEvent]:
        cfg, summary = self.cfg, self.summary
        n = len(out.values)
        rng = rng_for(cfg.seed, out.day, ANOMALIES)
        dup = (rng.random(n) < cfg.duplicate_rate).tolist() if cfg.duplicate_rate else None
        dup_gap = rng.integers(1, 200, n).tolist()
        n_bad = int(rng.binomial(n, cfg.bad_rate)) if cfg.bad_rate and n else 0
        bad_pos = sorted(rng.integers(0, max(n, 1), n_bad).tolist())
        bad_kind = rng.integers(0, len(DEFECTS), n_bad).tolist()
        bad_cut = rng.uniform(0.2, 0.9, n_bad).tolist()
        bad_style = rng.integers(0, 3, n_bad).tolist()
        bad_digits = rng.integers(0, 10, (n_bad, 14)).tolist()

        frauds = {m.index: m for m in out.frauds}
        labels = out.labels
        n_labels = len(labels)
        lp = 0
        bp = 0
        pending: dict[int, list[SimEvent]] = {}
        heap = self.heap
        max_orders = cfg.max_orders
        for i, (t, key, value) in enumerate(zip(out.times, out.keys, out.values, strict=True)):
            if t > self.clock:
                self.clock = t
                if heap and heap[0][0] <= t:
                    yield from self._release(t)
            while bp < n_bad and bad_pos[bp] <= i:
                yield from self._bad(value, t, bad_kind[bp], bad_cut[bp], bad_digits[bp], bad_style[bp])
                bp += 1
            event = SimEvent("orders", key, value, t, "order")
            yield event
            self.seq += 1
            self.n_orders += 1
            summary.orders = self.n_orders  # kept current: a stopped live run still reports its counts
            summary.events_emitted = self.seq
            mark = frauds.get(i) if frauds else None
            if mark is not None:
                summary.fraud_orders += 1
                summary.fraud_by_scenario[mark.scenario] += 1
                ids = self.instances[mark.scenario]
                ids.add(mark.scenario_id)
                summary.instances_by_scenario[mark.scenario] = len(ids)
                truth = TruthRecord(
                    kind="fraud", seq=self.seq - 1, order_id=mark.order_id, event_time=to_datetime(t),
                    scenario=mark.scenario, scenario_id=mark.scenario_id, customer_id=key.decode(),
                    victim_customer_id=mark.victim, card_fingerprint=mark.card, merchant_id=mark.merchant_id,
                    terminal_id=mark.terminal_id, amount=mark.amount, currency=mark.currency,
                )  # fmt: skip
                yield SimEvent("truth", mark.order_id.encode(), encode(truth), t, "truth")
            while lp < n_labels and labels[lp].index == i:
                la = labels[lp]
                if la.source == "review":
                    summary.reviews += 1
                okey = order_id_of(la.value).encode()
                heapq.heappush(heap, (la.label_time, self.pushed, okey, la.value, f"{la.source}/{la.label}"))
                self.pushed += 1
                lp += 1
            if dup is not None:
                if dup[i]:
                    pending.setdefault(i + dup_gap[i], []).append(event)
                if pending and i in pending:
                    for again in pending.pop(i):
                        yield from self._duplicate(again)
            if summary.first_event_time is None:
                summary.first_event_time = to_datetime(t)
            if max_orders is not None and self.n_orders >= max_orders:
                self.done = True
                break
        for pos in sorted(pending):
            for again in pending[pos]:
                yield from self._duplicate(again)
        if self.n_orders:
            summary.last_event_time = to_datetime(self.clock)

    def _duplicate(self, event: SimEvent) -> Iterator[SimEvent]:
        order_id = order_id_of(event.value)
        yield event._replace(kind="duplicate")
        truth = TruthRecord(kind="duplicate", seq=self.seq, order_id=order_id, event_time=to_datetime(event.time_ms))
        yield SimEvent("truth", order_id.encode(), encode(truth), event.time_ms, "truth")
        self.seq += 1
        self.summary.duplicates += 1
        self.summary.events_emitted = self.seq

    def _bad(self, template: bytes, t: int, kind: int, cut: float, digits: list[int], style: int) -> Iterator[SimEvent]:
        bad_id = f"bad_{self.tag}{self.n_bad:09d}"
        self.n_bad += 1
        order = _order_decoder.decode(template)
        raw, defect, field = bad_event(order, bad_id, kind, cut, digits, style)
        self.summary.bad_events[defect] += 1
        truth = TruthRecord(
            kind="bad", seq=self.seq, order_id=bad_id, event_time=order.event_time, defect=defect, field=field,
            sha256=sha256_hex(raw),
        )  # fmt: skip
        self.seq += 1
        yield SimEvent("orders", bad_id.encode(), raw, t, "bad")
        yield SimEvent("truth", bad_id.encode(), encode(truth), t, "truth")


def order_id_of(value: bytes) -> str:
    """The ``order_id`` of an encoded order or label (always its first field)."""
    start = value.index(b'"order_id":"') + 12
    return value[start : value.index(b'"', start)].decode()
