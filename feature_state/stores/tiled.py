"""The batch algorithm every backend shares, over four storage primitives.

A backend stores, per entity key, a packed :class:`~feature_state.windows.EntityState` (tiles,
watermark; :mod:`feature_state.codec`) with a version, and a log of applied events (id → time and
values). It implements:

* ``_load(keys, ids)`` — stored blobs, versions, and which of ``ids`` each key's log already holds;
* ``_load_logs(spans)`` — logged events of a key within ``[start, end)`` event times;
* ``_commit(updates)`` — per key, atomically: write the state if the version is unchanged, add the
  new log events, prune the log; return the keys whose version had changed (conflicts).

Everything else — the lateness decision, exactly-once, the fold, the reads — is here, in the compiled
kernel (:mod:`feature_state.kernel`, a port of :mod:`feature_state.windows`) and, as the reference
and fallback, in :mod:`feature_state.windows` itself; identical for every backend.

A batch is one ``_load`` (one round trip on Redis), at most one ``_load_logs`` (only when a read
lands in a minute that already holds later events), one kernel call for the fold and every order's
aggregates, and one ``_commit``.

Lateness is decided once per event, before anything is applied: an order is late when its time is
more than the allowed lateness behind the watermark of *any* of its entities; then it is applied to
none of them. Within a batch, orders are applied in event-time order.
"""

from __future__ import annotations

import bisect
import logging
import struct
import time
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, overload

import numpy as np

from contracts.events import Label, Order
from feature_state import batch, codec, kernel, metrics
from feature_state.definitions import FeatureSet
from feature_state.exceptions import FeatureStateError, FeatureStoreUnavailable
from feature_state.gcpause import gc_paused
from feature_state.layout import MAX_ID, US, Layout, LogEvent, Namespace, to_us
from feature_state.stores.base import BatchResult, FeatureStore, LateEvent
from feature_state.windows import (
    EntityState,
    EntityView,
    Features,
    NeedLog,
    decode_state,
    empty_features,
    encode_state,
    fold,
    is_late,
    log_span,
    needs_log,
    prune,
    read_order,
)

log = logging.getLogger(__name__)

#: Conflict retries before a commit gives up (another writer keeps changing the same entity).
MAX_RETRIES = 8


@dataclass
class Loaded:
    """States as read from the backend."""

    states: dict[str, bytes | None]  #: key → stored blob (packed, the legacy msgpack, or None)
    versions: dict[str, int]
    known: dict[str, set[str]]  #: key → ids (of those asked) already in its log


class Update(NamedTuple):
    """One key's atomic write."""

    key: str
    version: int  #: the version read; the write happens only if it is still current
    state: bytes  #: the packed new state
    events: list[LogEvent]
    log_floor_us: int  #: log entries older than this can be deleted
    #: stores with ``packed_logs``: the whole new log (events merged, old ones dropped) from the kernel
    log: bytes | None = None


class PackedUpdates(Sequence[Update]):
    """One batch's writes as the kernel left them: packed, materialised only on access.

    Map mode (the embedded store) holds each changed entity's state and log; records mode (the Redis
    batch script) one commit record per entity. The store commits them in bulk; anything else
    (the conflict path, tests) can iterate them as :class:`Update` tuples.
    """

    def __init__(self, res: kernel.RunResult, kl: kernel.KernelLayout, cols: batch.Columns, sel: np.ndarray,
                 floors: np.ndarray) -> None:
        self.res, self.kl, self.cols, self.sel, self.floors = res, kl, cols, sel, floors
        self._events: dict[str, list[LogEvent]] | None = None

    def __len__(self) -> int:
        return len(self.sel)

    @overload
    def __getitem__(self, i: int) -> Update: ...

    @overload
    def __getitem__(self, i: slice) -> PackedUpdates: ...

    def __getitem__(self, i: int | slice) -> Update | PackedUpdates:
        if isinstance(i, slice):
            out = PackedUpdates(self.res, self.kl, self.cols, self.sel[i], self.floors[i])
            out._events = self._events
            return out
        if self._events is None:
            self._events = batch.applied_events(self.kl, self.cols, self.res.flags)
        e = int(self.sel[i])
        r = self.res
        assert r.buf is not None and r.soff is not None
        key = self.cols.key(e)
        events = self._events.get(key, [])
        if r.records:  # header, name, version, new version, state, ... (write_record in the C source)
            p = int(r.soff[e])
            nl, vl, wl, sl, _fl, _ne = struct.unpack_from("<6i", r.buf, p)
            p += 24 + nl
            version = int(r.buf[p : p + vl])
            p += vl + wl
            return Update(key, version, r.buf[p : p + sl], events, int(self.floors[i]))
        assert r.loff is not None
        state = r.buf[int(r.soff[e]) : int(r.soff[e + 1])]
        log_blob = r.buf[int(r.loff[e]) : int(r.loff[e + 1])]
        return Update(key, 0, state, events, int(self.floors[i]), log_blob)


@dataclass
class _Work:
    """The Python path's decoded states and progress."""

    loaded: Loaded
    states: dict[str, EntityState] = field(default_factory=dict)
    logs: dict[str, list[LogEvent]] = field(default_factory=dict)
    new: dict[str, list[LogEvent]] = field(default_factory=dict)
    ids: dict[str, set[str]] = field(default_factory=dict)
    views: dict[str, EntityView] = field(default_factory=dict)


class TiledStore(FeatureStore):
    """A feature store over the four primitives; subclasses provide storage.

    ``use_kernel``: None (default) uses the compiled kernel when a C compiler is available and the
    Python path otherwise; True requires the kernel; False always takes the Python path.
    """

    #: name used in metrics labels
    kind = "tiled"
    #: True for stores whose primitives never suspend (the embedded store): the collector can stay
    #: paused for the whole call. Remote stores pause it only around the CPU-bound sections, so it
    #: is never held off across network waits (overlapping calls would otherwise keep it off).
    pause_gc_whole_call = False
    #: True for stores that keep each entity's log as one packed blob (:func:`codec.encode_log`) and
    #: implement ``_load_packed``: the kernel then checks, appends and prunes the logs itself.
    packed_logs = False
    #: set by stores whose blobs live in a :class:`kernel.BlobMap` (the kernel reads them in place)
    blob_map: kernel.BlobMap | None = None

    def __init__(self, features: FeatureSet, allowed_lateness_s: float, *, use_kernel: bool | None = None) -> None:
        super().__init__(features)
        self.layout = Layout(features, allowed_lateness_s)
        self.allowed_lateness_s = allowed_lateness_s
        self.use_kernel = use_kernel
        self._kl: kernel.KernelLayout | None = None
        self._kernel_checked = False

    # ------------------------------------------------------------------ primitives

    @abstractmethod
    async def _load(self, keys: Sequence[str], ids: dict[str, list[str]]) -> Loaded: ...

    @abstractmethod
    async def _load_logs(self, spans: dict[str, list[tuple[int, int]]]) -> dict[str, list[LogEvent]]: ...

    @abstractmethod
    async def _commit(self, updates: Sequence[Update]) -> list[str]: ...

    async def _load_packed(self, keys: Sequence[str]) -> tuple[list[bytes | None], list[bytes | None]]:
        """Stores with ``packed_logs``: the stored state and packed log of each key."""
        raise NotImplementedError

    async def _load_batch(
        self, kl: kernel.KernelLayout, c: batch.Columns
    ) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray] | None:
        """Stores with batch scripts: ``(buffer, positions, versions, known)`` of a batch in one round
        trip, and ``_commit`` accepts the kernel's commit records. None: not supported."""
        return None

    # ------------------------------------------------------------------ kernel

    def kernel_layout(self) -> kernel.KernelLayout | None:
        """The compiled kernel's view of the layout, or None when the Python path is used."""
        if not self._kernel_checked:
            self._kernel_checked = True
            if self.use_kernel is not False and kernel.load() is not None:
                try:
                    self._kl = kernel.KernelLayout(self.layout)
                except kernel.KernelError as exc:
                    log.warning("feature definitions exceed the compiled kernel (%s); using the Python path", exc)
            if self.use_kernel and self._kl is None:
                raise FeatureStateError("the compiled feature kernel is not available (no C compiler?)")
        return self._kl

    @property
    def uses_kernel(self) -> bool:
        return self.kernel_layout() is not None

    # ------------------------------------------------------------------ helpers

    def _ns(self, key: str) -> Namespace:
        return self.layout.namespace_of_key(key)

    def _decode(self, key: str, blob: bytes | None) -> EntityState:
        return decode_state(self._ns(key), blob)

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
        return await self._fetch_logs(spans)

    async def _fetch_logs(self, spans: dict[str, list[tuple[int, int]]]) -> dict[str, list[LogEvent]]:
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
        kl = self.kernel_layout()
        out = None
        if kl is not None and orders:
            out = await self._read_compiled(kl, orders)
        if out is None:
            out = await self._read_python(orders)
        metrics.READ_SECONDS.labels(self.kind).observe(time.perf_counter() - t0)
        return out

    async def _read_python(self, orders: Sequence[Order]) -> list[Features]:
        pairs = [self._read_keys(o) for o in orders]
        keys = list(dict.fromkeys(k for ps in pairs for k, _ in ps))
        loaded = await self._load(keys, {})
        states = {k: self._decode(k, b) for k, b in loaded.states.items()}
        logs = await self._logs_for(states, ((k, okey, False) for ps in pairs for k, okey in ps))
        views = {k: EntityView(s, logs.get(k)) for k, s in states.items()}
        out = []
        with gc_paused():
            for o in orders:
                self_events = dict(self.layout.order_events(o))
                out.append(read_order(self.layout, o, views, self_events))
        return out

    async def _read_compiled(self, kl: kernel.KernelLayout, orders: Sequence[Order]) -> list[Features] | None:
        try:
            with gc_paused():
                c = batch.columns(kl, orders)
        except kernel.KernelError:
            return None
        log_blobs: list[bytes | None] | None = None
        states: list[bytes | None] = []
        if self.blob_map is not None:
            pass
        elif self.packed_logs:
            states, log_blobs = await self._load_packed(c.keys)
        else:
            loaded = await self._load(c.keys, {})
            states = [loaded.states.get(k) for k in c.keys]
        res = await self._run_kernel(kl, 1, c, states, np.zeros(c.o_ent.shape, dtype=np.uint8), log_blobs)
        if res is None:
            return None
        with gc_paused():
            return batch.features_of(self.features, kl, c, res.features)

    async def _run_kernel(
        self,
        kl: kernel.KernelLayout,
        mode: int,
        c: batch.Columns,
        states: list[bytes | None] | tuple[bytes, np.ndarray],
        known: np.ndarray,
        log_blobs: list[bytes | None] | None = None,
        versions: np.ndarray | None = None,
    ) -> kernel.RunResult | None:
        """One kernel call, fetching the logs it asks for once; None: use the Python path instead."""
        try:
            with gc_paused():
                if self.blob_map is not None:
                    states = [None] * len(c.ent_ns)
                else:
                    states = _packed_states(kl, c, states)
                args = (kl, mode, c.ent_ns, states)
                cols = (c.ts, np.arange(c.n, dtype=np.int64), c.o_ent, c.num, c.ok, c.dv, known)
                keys = c.packed_keys if self.blob_map is not None or versions is not None else None
                res = kernel.run(*args, None, c.strings, *cols, log_blobs, self.blob_map, keys, versions)
            if isinstance(res, tuple):
                ents, starts = res
                spans: dict[str, list[tuple[int, int]]] = {}
                for e, st in zip(ents.tolist(), starts.tolist(), strict=True):
                    r0 = kl.ns_list[int(c.ent_ns[e])].levels[0] * US
                    spans.setdefault(c.keys[e], []).append((st, st + r0))
                fetched = await self._fetch_logs(spans)
                logs = {e: fetched.get(c.keys[e], []) for e in dict.fromkeys(ents.tolist())}
                strings = c.strings.copy()
                with gc_paused():
                    res = kernel.run(*args, logs, strings, *cols, None, None, keys, versions)
                if isinstance(res, tuple):  # pragma: no cover - the kernel asked only once per entity
                    raise kernel.KernelError("kernel asked for logs twice")
            return res
        except (kernel.KernelError, codec.StateFormatError) as exc:
            log.warning("compiled feature kernel refused a batch (%s); using the Python path", exc)
            return None

    # ------------------------------------------------------------------ writes

    async def apply_batch(self, orders: Sequence[Order]) -> BatchResult:
        if self.pause_gc_whole_call:
            with gc_paused():
                return await self._apply_batch(orders)
        return await self._apply_batch(orders)

    async def _apply_batch(self, orders: Sequence[Order]) -> BatchResult:
        result = BatchResult(features=[{} for _ in orders])
        first: dict[str, int] = {}
        for i, o in enumerate(orders):
            first.setdefault(o.order_id, i)
        idx = list(first.values())
        kl = self.kernel_layout()
        n_events: list[int] | None = None
        if kl is not None and idx:
            n_events = await self._apply_compiled(kl, orders, idx, result)
        if n_events is None:
            n_events = await self._apply_python(orders, idx, result)
        for i, o in enumerate(orders):  # in-batch duplicates answer like their first occurrence
            j = first[o.order_id]
            if j != i:
                result.features[i] = result.features[j]
                result.duplicates += n_events[bisect.bisect_left(idx, j)]  # idx is ascending
        self._count(result, "orders")
        return result

    async def _apply_compiled(
        self, kl: kernel.KernelLayout, orders: Sequence[Order], idx: list[int], result: BatchResult
    ) -> list[int] | None:
        """The compiled path; returns the events per unique order, or None to use the Python path."""
        uniq = [orders[i] for i in idx] if len(idx) != len(orders) else list(orders)
        try:
            with gc_paused():
                c = batch.columns(kl, uniq)
                ids = {} if self.packed_logs else batch.asked_ids(kl, c)
        except kernel.KernelError:
            return None
        log_blobs: list[bytes | None] | None = None
        versions: dict[str, int] = {}
        states: list[bytes | None] | tuple[bytes, np.ndarray] = []
        vers_arr: np.ndarray | None = None
        batched = None if self.blob_map is not None or self.packed_logs else await self._load_batch(kl, c)
        if batched is not None:
            buf, pos, vers_arr, known = batched
            states = (buf, pos)
        elif self.blob_map is not None:
            known = np.zeros(c.o_ent.shape, dtype=np.uint8)
        elif self.packed_logs:
            states, log_blobs = await self._load_packed(c.keys)
            known = np.zeros(c.o_ent.shape, dtype=np.uint8)
        else:
            loaded = await self._load(c.keys, ids)
            states = [loaded.states.get(k) for k in c.keys]
            versions = loaded.versions
            with gc_paused():
                known = batch.known_flags(c, loaded.known)
        res = await self._run_kernel(kl, 0, c, states, known, log_blobs, vers_arr)
        if res is None:
            return None
        with gc_paused():
            feats = batch.features_of(self.features, kl, c, res.features)
            if len(idx) == len(orders):
                result.features = feats
            else:
                for q, i in enumerate(idx):
                    result.features[i] = feats[q]
            late = []
            for q in np.nonzero(res.late_ns >= 0)[0].tolist():
                j = int(res.late_ns[q])
                key = c.key(int(c.o_ent[q, j]))
                late.append(LateEvent(idx[q], c.ids[q], int(c.ts[q]), int(res.late_wm[q]), key))
            late.sort(key=lambda x: (x.event_time_us, x.event_id))  # processing order, as the Python path
            result.late.extend(late)
            result.duplicates += int(np.count_nonzero(res.flags == 2))
            if res.changed is not None:
                dirty = np.nonzero(res.changed)[0].tolist()
            else:
                dirty = [e for e, b in enumerate(res.blobs) if b is not None]
            keys = [c.keys[e] for e in dirty] if res.buf is None else []
            retention = np.array([ns.log_retention_s * US for ns in kl.ns_list], dtype=np.int64)
            floors_a = res.wms[dirty] - retention[c.ent_ns[dirty]]
            floors = floors_a.tolist()
            blobs = [res.blobs[e] or b"" for e in dirty] if res.buf is None else []
            updates: Sequence[Update]
            if res.buf is not None:
                updates = PackedUpdates(res, kl, c, np.array(dirty, dtype=np.int64), floors_a)
                applied = int(np.count_nonzero(res.flags == 1))
            elif res.log_blobs is not None:
                logs = [res.log_blobs[e] for e in dirty]
                updates = [Update(k, 0, b, [], f, lg) for k, b, f, lg in zip(keys, blobs, floors, logs, strict=True)]
                applied = int(np.count_nonzero(res.flags == 1))
            else:
                events = batch.applied_events(kl, c, res.flags)
                evs = [events.get(k, []) for k in keys]
                vers = [versions.get(k, 0) for k in keys]
                updates = [Update(k, v, b, ev, f)
                           for k, v, b, ev, f in zip(keys, vers, blobs, evs, floors, strict=True)]
                applied = -1
            per_order = (c.o_ent[:, kl.is_orders] >= 0).sum(axis=1).tolist()
        final = await self._commit_all(updates, result)
        result.applied = applied if applied >= 0 and final is updates else sum(len(u.events) for u in final)
        return [int(x) for x in per_order]

    async def _apply_python(self, orders: Sequence[Order], idx: list[int], result: BatchResult) -> list[int]:
        """The reference path (:mod:`feature_state.windows` on decoded states)."""
        layout = self.layout
        events = {i: layout.order_events(orders[i]) for i in idx}
        reads = {i: self._read_keys(orders[i]) for i in idx}
        ids: dict[str, list[str]] = {}
        for evs in events.values():
            for k, ev in evs:
                ids.setdefault(k, []).append(ev.id)
        keys = list(dict.fromkeys([*ids, *(k for rs in reads.values() for k, _ in rs)]))
        loaded = await self._load(keys, ids)
        work = _Work(loaded)
        with gc_paused():
            work.states = {k: self._decode(k, b) for k, b in loaded.states.items()}
        # only entities that already hold a later event in the same minute need their log
        wanted = [(k, okey, False) for rs in reads.values() for k, okey in rs]
        work.logs = await self._logs_for(work.states, wanted)
        work.views = {k: EntityView(s, work.logs.get(k)) for k, s in work.states.items()}
        with gc_paused():
            for i in sorted(idx, key=lambda i: (to_us(orders[i]), orders[i].order_id)):
                self._apply_one(work, i, orders[i], events[i], result)
            updates = self._updates(work, work.new)
        final = await self._commit_all(updates, result)
        result.applied = sum(len(u.events) for u in final)
        return [len(events[i]) for i in idx]

    def _apply_one(
        self, work: _Work, i: int, order: Order, evs: list[tuple[str, LogEvent]], result: BatchResult
    ) -> None:
        layout = self.layout
        states = work.states
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
        with gc_paused():
            work.states = states = {k: self._decode(k, b) for k, b in work.loaded.states.items()}
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
            updates = self._updates(work, work.new)
        final = await self._commit_all(updates, result)
        result.applied = sum(len(u.events) for u in final)
        self._count(result, "labels")
        return result

    # ------------------------------------------------------------------ commit with retries

    def _updates(self, work: _Work, keys: Iterable[str]) -> list[Update]:
        out = []
        for k in keys:
            ns = self._ns(k)
            state = work.states[k]
            prune(ns, state)
            floor = state.wm - ns.log_retention_s * US
            out.append(Update(k, work.loaded.versions.get(k, 0), encode_state(ns, state), work.new.get(k, []), floor))
        return out

    async def _commit_all(self, updates: Sequence[Update], result: BatchResult) -> Sequence[Update]:
        """Commit; on conflicts re-read those keys and re-apply our events on top. Returns the final writes."""
        pending: Sequence[Update] = updates
        final: dict[str, Update] | None = None
        for _attempt in range(MAX_RETRIES):
            if not pending:
                break
            conflicts = await self._commit(pending)
            if not conflicts:
                break
            metrics.CONFLICTS.labels(self.kind).inc(len(conflicts))
            if final is None:
                final = {u.key: u for u in updates}
            # Another writer changed these keys: re-read them and re-apply our events on top.
            mine = {k: final[k].events for k in conflicts}
            ids = {k: [ev.id for ev in evs] for k, evs in mine.items()}
            fresh = await self._load(conflicts, ids)
            with gc_paused():
                for k in conflicts:
                    ns = self._ns(k)
                    state = self._decode(k, fresh.states.get(k))
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
                    prune(ns, state)
                    final[k] = Update(k, fresh.versions.get(k, 0), encode_state(ns, state), kept,
                                      state.wm - ns.log_retention_s * US)
            pending = [final[k] for k in conflicts]
        else:
            if pending:
                raise FeatureStoreUnavailable(f"could not commit {len(pending)} entities after {MAX_RETRIES} conflicts")
        return list(final.values()) if final is not None else updates

    def _count(self, result: BatchResult, source: str) -> None:
        if result.late:
            metrics.LATE_EVENTS.labels(source, self.kind).inc(len(result.late))
        if result.duplicates:
            metrics.DUPLICATES.labels(source, self.kind).inc(result.duplicates)
        if result.applied:
            metrics.APPLIED.labels(source, self.kind).inc(result.applied)


def _packed_states(
    kl: kernel.KernelLayout, c: batch.Columns, states: list[bytes | None] | tuple[bytes, np.ndarray]
) -> list[bytes | None] | tuple[bytes, np.ndarray]:
    """The stored states with any legacy (msgpack) one converted to the packed format."""
    magic = codec.MAGIC_BYTES
    if isinstance(states, tuple):
        buf, pos = states
        starts, lens = pos[0 : 2 * len(c.ent_ns) : 2], pos[1 : 2 * len(c.ent_ns) : 2]
        live = np.nonzero(lens > 0)[0]
        if not len(live):
            return states
        raw = np.frombuffer(buf, dtype=np.uint8)
        heads = raw[starts[live][:, None] + np.arange(8)]
        if bool((heads == np.frombuffer(magic, dtype=np.uint8)).all()):
            return states
        blobs: list[bytes | None] = [buf[a : a + n] if n else None for a, n in zip(starts.tolist(), lens.tolist(),
                                                                                  strict=True)]
        states = blobs
    if all(b is None or b[:8] == magic for b in states):
        return states
    return [codec.legacy_to_packed(kl.ns_list[j], b) for b, j in zip(states, c.ent_ns.tolist(), strict=True)]
