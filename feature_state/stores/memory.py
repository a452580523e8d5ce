"""The embedded, in-process feature store (the default of ``fraudscore up``).

State lives in dicts; with ``persist_path`` it is loaded at start and written atomically (temp file,
fsync, rename) on :meth:`MemoryStore.save` and :meth:`MemoryStore.close`. A snapshot written for other
feature definitions is set aside (renamed ``*.incompatible``) rather than misread.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import msgspec

from feature_state.definitions import FeatureSet
from feature_state.exceptions import FeatureStateError
from feature_state.layout import LogEvent
from feature_state.stores.tiled import Loaded, TiledStore, Update
from feature_state.windows import EntityState

log = logging.getLogger(__name__)

_SNAPSHOT_VERSION = 1


class _Snapshot(msgspec.Struct):
    version: int
    layout_digest: str
    states: dict[str, EntityState]
    logs: dict[str, list[tuple[int, str, tuple[int | None, ...], tuple[str | None, ...]]]]


class MemoryStore(TiledStore):
    """Tiles and logs kept in this process; optionally persisted to a local file."""

    kind = "memory"
    shared = False
    pause_gc_whole_call = True  # nothing here awaits the network

    def __init__(
        self, features: FeatureSet, allowed_lateness_s: float = 3600.0, persist_path: str | Path | None = None
    ) -> None:
        super().__init__(features, allowed_lateness_s)
        self.states: dict[str, EntityState] = {}
        self.logs: dict[str, dict[str, LogEvent]] = {}
        self._heaps: dict[str, list[tuple[int, str]]] = {}
        self.persist_path = Path(persist_path) if persist_path else None
        self.durable = self.persist_path is not None
        if self.persist_path is not None and self.persist_path.exists():
            self._restore(self.persist_path)

    # ------------------------------------------------------------------ primitives

    async def _load(self, keys: Sequence[str], ids: dict[str, list[str]]) -> Loaded:
        states = {k: self.states.get(k) or EntityState() for k in keys}
        known: dict[str, set[str]] = {}
        for k, wanted in ids.items():
            logged = self.logs.get(k)
            if logged:
                hit = {i for i in wanted if i in logged}
                if hit:
                    known[k] = hit
        return Loaded(states, {}, known)

    async def _load_logs(self, spans: dict[str, list[tuple[int, int]]]) -> dict[str, list[LogEvent]]:
        out: dict[str, list[LogEvent]] = {}
        for k, ranges in spans.items():
            events = self.logs.get(k, {}).values()
            out[k] = [e for e in events if any(a <= e.ts < b for a, b in ranges)]
        return out

    async def _commit(self, updates: Sequence[Update]) -> list[str]:
        for u in updates:
            self.states[u.key] = u.state
            logged = self.logs.setdefault(u.key, {})
            heap = self._heaps.setdefault(u.key, [])
            for ev in u.events:
                logged[ev.id] = ev
                heapq.heappush(heap, (ev.ts, ev.id))
            while heap and heap[0][0] < u.log_floor_us:
                _, eid = heapq.heappop(heap)
                logged.pop(eid, None)
        return []

    # ------------------------------------------------------------------ inspection

    def entity_count(self) -> int:
        return len(self.states)

    def logged_events(self) -> int:
        return sum(len(v) for v in self.logs.values())

    # ------------------------------------------------------------------ persistence

    def _digest(self) -> str:
        ns = sorted((n.name, n.levels, n.num_fields, n.distinct_fields) for n in self.layout.namespaces.values())
        return hashlib.sha256(repr(ns).encode()).hexdigest()[:16]

    def save(self, path: str | Path | None = None) -> Path:
        """Write a snapshot atomically; returns its path."""
        target = Path(path) if path else self.persist_path
        if target is None:
            raise FeatureStateError("memory store has no persist_path; pass a path to save()")
        snap = _Snapshot(
            _SNAPSHOT_VERSION,
            self._digest(),
            self.states,
            {k: [(e.ts, e.id, e.nums, e.dvals) for e in v.values()] for k, v in self.logs.items()},
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(msgspec.msgpack.encode(snap))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        return target

    def _restore(self, path: Path) -> None:
        try:
            snap = msgspec.msgpack.decode(path.read_bytes(), type=_Snapshot)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise FeatureStateError(
                f"{path}: not a feature store snapshot ({exc}); move it away to start empty"
            ) from None
        if snap.version != _SNAPSHOT_VERSION or snap.layout_digest != self._digest():
            aside = path.with_name(path.name + ".incompatible")
            os.replace(path, aside)
            log.warning("%s was written for other feature definitions; moved to %s, starting empty", path, aside)
            return
        self.states = snap.states
        for k, events in snap.logs.items():
            self.logs[k] = {e[1]: LogEvent(e[0], e[1], tuple(e[2]), tuple(e[3])) for e in events}
            heap = [(e[0], e[1]) for e in events]
            heapq.heapify(heap)
            self._heaps[k] = heap

    async def close(self) -> None:
        if self.persist_path is not None:
            self.save()


def from_settings(features: FeatureSet, settings: object) -> MemoryStore:
    """Build the embedded store from :class:`contracts.config.FeatureStoreSettings`."""
    return MemoryStore(
        features,
        allowed_lateness_s=getattr(settings, "allowed_lateness_s", 3600.0),
        persist_path=getattr(settings, "persist_path", None),
    )
