"""The batch algorithm every backend shares, over four storage primitives.

A backend stores, per entity key, an :class:`~feature_state.windows.EntityState` (tiles, watermark)
with a version, and a log of applied events (id → time and values). It implements:

* ``_load(keys, ids)`` — states, versions, and which of ``ids`` each key's log already holds;
* ``_load_logs(spans)`` — logged events of a key within ``[start, end)`` event times;
* ``_commit(updates)`` — per key, atomically: write the state if the version is unchanged, add the
  new log events, prune the log; return the keys whose version had changed (conflicts).

Everything else — the lateness decision, exactly-once, the fold, the reads — is here and in
:mod:`feature_state.windows`, identical for every backend.

Lateness is decided once per event, before anything is applied: an order is late when its time is
more than the allowed lateness behind the watermark of *any* of its entities; then it is applied to
none of them. Within a batch, orders are applied in event-time order.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from contracts.events import Label, Order
from feature_state import metrics
from feature_state.definitions import FeatureSet
from feature_state.gcpause import gc_paused
from feature_state.layout import MAX_ID, Layout, LogEvent, to_us
from feature_state.stores.base import BatchResult, FeatureStore, LateEvent
from feature_state.windows import (
    EntityState,
    EntityView,
    Features,
    NeedLog,
    empty_features,
    fold,
    is_late,
    log_span,
    needs_log,
    prune,
    read_order,
)

#: Conflict retries before a commit gives up (another writer keeps changing the same entity).
MAX_RETRIES = 8


@dataclass
class Loaded:
    """States as read from the backend."""

    states: dict[str, EntityState]
    versions: dict[str, int]
    known: dict[str, set[str]]  #: key → ids (of those asked) already in its log


@dataclass
class Update:
    """One key's atomic write."""

    key: str
    version: int  #: the version read; the write happens only if it is still current
    state: EntityState
    events: list[LogEvent]
    log_floor_us: int  #: log entries older than this can be deleted


@dataclass
class _Work:
    loaded: Loaded
    logs: dict[str, list[LogEvent]] = field(default_factory=dict)
    new: dict[str, list[LogEvent]] = field(default_factory=dict)
    ids: dict[str, set[str]] = field(default_factory=dict)
    views: dict[str, EntityView] = field(default_factory=dict)


class TiledStore(FeatureStore):
    """A feature store over the four primitives; subclasses provide storage."""

    #: name used in metrics labels
    kind = "tiled"
    #: True for stores whose primitives never suspend (the embedded store): the collector can stay
    #: paused for the whole call. Remote stores pause it only around the CPU-bound sections, so it
    #: is never held off across network waits (overlapping calls would otherwise keep it off).
    pause_gc_whole_call = False

    def __init__(self, features: FeatureSet, allowed_lateness_s: float) -> None:
        super().__init__(features)
        self.layout = Layout(features, allowed_lateness_s)
        self.allowed_lateness_s = allowed_lateness_s

    # ------------------------------------------------------------------ primitives

    @abstractmethod
    async def _load(self, keys: Sequence[str], ids: dict[str, list[str]]) -> Loaded: ...

    @abstractmethod
    async def _load_logs(self, spans: dict[str, list[tuple[int, int]]]) -> dict[str, list[LogEvent]]: ...

    @abstractmethod
    async def _commit(self, updates: Sequence[Update]) -> list[str]: ...

    # ------------------------------------------------------------------ helpers

    def _read_keys(self, order: Order) -> list[tuple[str, tuple[int, str]]]:
        """(key, read key) pairs: label namespaces read everything known at the order's time."""
        ts = to_us(order)
        out = []
        for key in self.layout.read_keys(order):
            ns = self.layout.namespace_of_key(key)
            out.append((key, (ts, MAX_ID) if ns.source == "labels" else (ts, order.order_id)))
        return out

    async def _logs_for(
        self, states: dict[str, EntityState], wanted: Iterable[tuple[str, tuple[int, str], bool]]
    ) -> dict[str, list[LogEvent]]:
        """Fetch the log spans that out-of-order reads need (``force`` fetches regardless)."""
        spans: dict[str, list[tuple[int, int]]] = {}
        for key, okey, force in wanted:
            ns = self.layout.namespace_of_key(key)
            state = states.get(key)
            if state is None:
                continue
            if force or needs_log(ns, state, okey):
                span = log_span(ns, okey[0])
                if span not in spans.setdefault(key, []):
                    spans[key].append(span)
        if not spans:
            return {}
        metrics.OUT_OF_ORDER_READS.labels(self.kind).inc(len(spans))
        return await self._load_logs(spans)

    # ------------------------------------------------------------------ reads

    async def read_as_of(self, orders: Sequence[Order]) -> list[Features]:
        if self.pause_gc_whole_call:
            with gc_paused():
                return await self._read_as_of(orders)
        return await self._read_as_of(orders)

    async def _read_as_of(self, orders: Sequence[Order]) -> list[Features]:
        t0 = time.perf_counter()
        pairs = [self._read_keys(o) for o in orders]
        keys = list(dict.fromkeys(k for ps in pairs for k, _ in ps))
        loaded = await self._load(keys, {})
        logs = await self._logs_for(loaded.states, ((k, okey, False) for ps in pairs for k, okey in ps))
        views = {k: EntityView(s, logs.get(k)) for k, s in loaded.states.items()}
        out = []
        with gc_paused():
            for o in orders:
                self_events = dict(self.layout.order_events(o))
                out.append(read_order(self.layout, o, views, self_events))
        metrics.READ_SECONDS.labels(self.kind).observe(time.perf_counter() - t0)
        return out

    # ------------------------------------------------------------------ writes

    async def apply_batch(self, orders: Sequence[Order]) -> BatchResult:
        if self.pause_gc_whole_call:
            with gc_paused():
                return await self._apply_batch(orders)
        return await self._apply_batch(orders)

    async def _apply_batch(self, orders: Sequence[Order]) -> BatchResult:
        layout = self.layout
        result = BatchResult(features=[{} for _ in orders])
        first: dict[str, int] = {}
        for i, o in enumerate(orders):
            first.setdefault(o.order_id, i)
        events = {i: layout.order_events(orders[i]) for i in first.values()}
        reads = {i: self._read_keys(orders[i]) for i in first.values()}
        ids: dict[str, list[str]] = {}
        for evs in events.values():
            for k, ev in evs:
                ids.setdefault(k, []).append(ev.id)
        keys = list(dict.fromkeys([*ids, *(k for rs in reads.values() for k, _ in rs)]))
        loaded = await self._load(keys, ids)
        # only entities that already hold a later event in the same minute need their log
        wanted = [(k, okey, False) for rs in reads.values() for k, okey in rs]
        work = _Work(loaded, logs=await self._logs_for(loaded.states, wanted))
        work.views = {k: EntityView(s, work.logs.get(k)) for k, s in loaded.states.items()}
        with gc_paused():
            for i in sorted(first.values(), key=lambda i: (to_us(orders[i]), orders[i].order_id)):
                self._apply_one(work, i, orders[i], events[i], result)
        for i, j in enumerate(orders):  # in-batch duplicates answer like their first occurrence
            if first[j.order_id] != i:
                result.features[i] = result.features[first[j.order_id]]
                result.duplicates += len(events[first[j.order_id]])
        await self._commit_all(work, result, "orders")
        result.applied = sum(len(v) for v in work.new.values())
        self._count(result, "orders")
        return result

    def _apply_one(
        self, work: _Work, i: int, order: Order, evs: list[tuple[str, LogEvent]], result: BatchResult
    ) -> None:
        layout = self.layout
        states = work.loaded.states
        lateness = layout.lateness_us
        views = work.views
        late = next(((k, ev) for k, ev in evs if is_late(states[k], ev.ts, lateness)), None)
        if late is not None:
            k, ev = late
            result.late.append(LateEvent(i, ev.id, ev.ts, states[k].wm, k))
            try:
                result.features[i] = read_order(layout, order, views, dict(evs))
            except NeedLog:
                result.features[i] = empty_features(layout.features, order)
            return
        # read first (the order counted once as its own event), then fold: the same as folding first
        result.features[i] = read_order(layout, order, views, dict(evs))
        for k, ev in evs:
            if ev.id in work.loaded.known.get(k, ()) or ev.id in work.ids.get(k, ()):
                result.duplicates += 1
                continue
            fold(layout.namespace_of_key(k), states[k], ev)
            work.new.setdefault(k, []).append(ev)
            work.ids.setdefault(k, set()).add(ev.id)
            if k in work.logs:
                work.logs[k].append(ev)

    async def apply_labels(self, labels: Sequence[Label]) -> BatchResult:
        if self.pause_gc_whole_call:
            with gc_paused():
                return await self._apply_labels(labels)
        return await self._apply_labels(labels)

    async def _apply_labels(self, labels: Sequence[Label]) -> BatchResult:
        layout = self.layout
        result = BatchResult(features=[])
        events: list[tuple[int, list[tuple[str, LogEvent]]]] = []
        for i, lb in enumerate(labels):
            evs = layout.label_events(lb)
            if lb.label == "fraud":
                have = {k.split(":", 1)[0] for k, _ in evs}
                for ns in layout.label_namespaces:
                    if ns.name not in have:
                        metrics.UNMATCHED_LABELS.labels(ns.entity).inc()
            if evs:
                events.append((i, evs))
        if not events:
            return result
        ids: dict[str, list[str]] = {}
        for _, evs in events:
            for k, ev in evs:
                ids.setdefault(k, []).append(ev.id)
        work = _Work(await self._load(list(ids), ids))
        states = work.loaded.states
        for i, evs in sorted(events, key=lambda e: min(ev.ts for _, ev in e[1])):
            for k, ev in evs:  # label namespaces are independent (one per entity and delay)
                if is_late(states[k], ev.ts, layout.lateness_us):
                    result.late.append(LateEvent(i, ev.id, ev.ts, states[k].wm, k))
                elif ev.id in work.loaded.known.get(k, ()) or ev.id in work.ids.get(k, ()):
                    result.duplicates += 1
                else:
                    fold(layout.namespace_of_key(k), states[k], ev)
                    work.new.setdefault(k, []).append(ev)
                    work.ids.setdefault(k, set()).add(ev.id)
        await self._commit_all(work, result, "labels")
        result.applied = sum(len(v) for v in work.new.values())
        self._count(result, "labels")
        return result

    # ------------------------------------------------------------------ commit with retries

    def _updates(self, work: _Work, keys: Iterable[str]) -> list[Update]:
        out = []
        for k in keys:
            ns = self.layout.namespace_of_key(k)
            state = work.loaded.states[k]
            prune(ns, state)
            floor = state.wm - ns.log_retention_s * 1_000_000
            out.append(Update(k, work.loaded.versions.get(k, 0), state, work.new.get(k, []), floor))
        return out

    async def _commit_all(self, work: _Work, result: BatchResult, source: str) -> None:
        pending = list(work.new)
        for _attempt in range(MAX_RETRIES):
            if not pending:
                return
            with gc_paused():
                updates = self._updates(work, pending)
            conflicts = await self._commit(updates)
            if not conflicts:
                return
            metrics.CONFLICTS.labels(self.kind).inc(len(conflicts))
            # Another writer changed these keys: re-read them and re-apply our events on top.
            mine = {k: work.new[k] for k in conflicts}
            ids = {k: [ev.id for ev in evs] for k, evs in mine.items()}
            fresh = await self._load(conflicts, ids)
            for k in conflicts:
                ns = self.layout.namespace_of_key(k)
                state = fresh.states[k]
                kept = []
                for ev in mine[k]:
                    if ev.id in fresh.known.get(k, ()):
                        continue
                    if is_late(state, ev.ts, self.layout.lateness_us):
                        result.partial += 1
                        metrics.PARTIAL.labels(self.kind).inc()
                        continue
                    fold(ns, state, ev)
                    kept.append(ev)
                work.loaded.states[k] = state
                work.loaded.versions[k] = fresh.versions.get(k, 0)
                work.new[k] = kept
            pending = conflicts
        from feature_state.exceptions import FeatureStoreUnavailable

        raise FeatureStoreUnavailable(f"could not commit {len(pending)} entities after {MAX_RETRIES} conflicts")

    def _count(self, result: BatchResult, source: str) -> None:
        if result.late:
            metrics.LATE_EVENTS.labels(source, self.kind).inc(len(result.late))
        if result.duplicates:
            metrics.DUPLICATES.labels(source, self.kind).inc(result.duplicates)
        if result.applied:
            metrics.APPLIED.labels(source, self.kind).inc(result.applied)
