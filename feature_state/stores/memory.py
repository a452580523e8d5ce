"""The embedded, in-process feature store (the default of ``fraudscore up``).

State lives in dicts; with ``persist_path`` it is loaded at start and written atomically (temp file,
fsync, rename) on :meth:`MemoryStore.save` and :meth:`MemoryStore.close`. A snapshot written for other
feature definitions is set aside (renamed ``*.incompatible``) rather than misread. States are kept
packed (:mod:`feature_state.codec`, the bytes the compiled kernel reads and writes); snapshots of
format 1 (msgpack states) are read and converted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import msgspec

from feature_state import codec, kernel
from feature_state.definitions import FeatureSet
from feature_state.exceptions import FeatureStateError
from feature_state.layout import LogEvent
from feature_state.stores.tiled import Loaded, PackedUpdates, TiledStore, Update
from feature_state.windows import decode_legacy

log = logging.getLogger(__name__)

_SNAPSHOT_VERSION = 2


class _Snapshot(msgspec.Struct):
    version: int
    layout_digest: str
    states: dict[str, msgspec.Raw]  #: format 2: packed bytes; format 1: msgpack EntityState maps
    logs: dict[str, msgspec.Raw]  #: format 2: packed logs; format 1: lists of (ts, id, nums, dvals)


class MemoryStore(TiledStore):
    """Tiles and logs kept in this process; optionally persisted to a local file."""

    kind = "memory"
    shared = False
    pause_gc_whole_call = True  # nothing here awaits the network
    packed_logs = True  # logs are packed bytes the kernel reads and rewrites itself

    def __init__(
        self,
        features: FeatureSet,
        allowed_lateness_s: float = 3600.0,
        persist_path: str | Path | None = None,
        *,
        use_kernel: bool | None = None,
    ) -> None:
        super().__init__(features, allowed_lateness_s, use_kernel=use_kernel)
        self._states: dict[str, bytes] = {}  #: key → packed state (without the compiled kernel)
        self._logs: dict[str, bytes] = {}  #: key → packed exactly-once log (codec.encode_log)
        if self.use_kernel is not False and self.kernel_layout() is not None:
            self.blob_map = kernel.BlobMap()  # the same blobs, kept in C memory (no Python object per entity)
        self.persist_path = Path(persist_path) if persist_path else None
        self.durable = self.persist_path is not None
        if self.persist_path is not None and self.persist_path.exists():
            self._restore(self.persist_path)

    # ------------------------------------------------------------------ storage

    @property
    def states(self) -> dict[str, bytes]:
        """Every entity's packed state (a copy when the blobs live in the kernel's map)."""
        return self.blob_map.dump()[0] if self.blob_map is not None else self._states

    @property
    def logs(self) -> dict[str, bytes]:
        """Every entity's packed log (a copy when the blobs live in the kernel's map)."""
        return self.blob_map.dump()[1] if self.blob_map is not None else self._logs

    def _get(self, keys: Sequence[str], which: int) -> list[bytes | None]:
        if self.blob_map is not None:
            return self.blob_map.get(keys, which)
        return list(map((self._logs if which else self._states).get, keys))

    def _put(self, key: str, state: bytes, log_blob: bytes) -> None:
        if self.blob_map is not None:
            self.blob_map.put(key, state, log_blob)
        else:
            self._states[key] = state
            self._logs[key] = log_blob

    # ------------------------------------------------------------------ primitives

    async def _load(self, keys: Sequence[str], ids: dict[str, list[str]]) -> Loaded:
        states = dict(zip(keys, self._get(keys, 0), strict=True))
        known: dict[str, set[str]] = {}
        asked = list(ids)
        for k, blob in zip(asked, self._get(asked, 1), strict=True):
            if blob:
                logged = {ev.id for ev in codec.decode_log(self._ns(k), blob)}
                hit = {i for i in ids[k] if i in logged}
                if hit:
                    known[k] = hit
        return Loaded(states, {}, known)

    async def _load_packed(self, keys: Sequence[str]) -> tuple[list[bytes | None], list[bytes | None]]:
        return self._get(keys, 0), self._get(keys, 1)

    async def _load_logs(self, spans: dict[str, list[tuple[int, int]]]) -> dict[str, list[LogEvent]]:
        out: dict[str, list[LogEvent]] = {}
        keys = list(spans)
        for k, blob in zip(keys, self._get(keys, 1), strict=True):
            events = codec.decode_log(self._ns(k), blob)
            out[k] = [e for e in events if any(a <= e.ts < b for a, b in spans[k])]
        return out

    async def _commit(self, updates: Sequence[Update]) -> list[str]:
        if isinstance(updates, PackedUpdates) and self.blob_map is not None:
            r = updates.res
            assert r.kbuf is not None and r.koff is not None and r.buf is not None
            assert r.soff is not None and r.loff is not None
            self.blob_map.put_many(updates.sel, r.kbuf, r.koff, r.buf, r.soff, r.loff)
            return []
        for u in updates:
            if u.log is not None:  # the kernel's packed log (events already merged, old ones dropped)
                self._put(u.key, u.state, u.log)
                continue
            ns = self._ns(u.key)
            old = codec.decode_log(ns, self._get([u.key], 1)[0])
            self._put(u.key, u.state, codec.encode_log(ns, [*old, *u.events], u.log_floor_us))
        return []

    # ------------------------------------------------------------------ inspection

    def entity_count(self) -> int:
        return self.blob_map.stats()[0] if self.blob_map is not None else len(self._states)

    def logged_events(self) -> int:
        if self.blob_map is not None:
            return self.blob_map.stats()[1]
        return sum(codec.log_size(v) for v in self._logs.values())

    # ------------------------------------------------------------------ persistence

    def _digest(self) -> str:
        ns = sorted((n.name, n.levels, n.num_fields, n.distinct_fields) for n in self.layout.namespaces.values())
        return hashlib.sha256(repr(ns).encode()).hexdigest()[:16]

    def save(self, path: str | Path | None = None) -> Path:
        """Write a snapshot atomically; returns its path."""
        target = Path(path) if path else self.persist_path
        if target is None:
            raise FeatureStateError("memory store has no persist_path; pass a path to save()")
        states, logs = self.blob_map.dump() if self.blob_map is not None else (self._states, self._logs)
        snap = _Snapshot(
            _SNAPSHOT_VERSION,
            self._digest(),
            {k: msgspec.Raw(msgspec.msgpack.encode(v)) for k, v in states.items()},
            {k: msgspec.Raw(msgspec.msgpack.encode(v)) for k, v in logs.items()},
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
        if snap.version not in (1, _SNAPSHOT_VERSION) or snap.layout_digest != self._digest():
            aside = path.with_name(path.name + ".incompatible")
            os.replace(path, aside)
            log.warning("%s was written for other feature definitions; moved to %s, starting empty", path, aside)
            return
        ns_of = self.layout.namespace_of_key
        if snap.version == 1:
            rows = msgspec.msgpack.Decoder(list[tuple[int, str, tuple[int | None, ...], tuple[str | None, ...]]])
            for k, raw in snap.states.items():
                logged = [LogEvent(e[0], e[1], tuple(e[2]), tuple(e[3])) for e in rows.decode(snap.logs[k])] \
                    if k in snap.logs else []
                self._put(k, codec.encode(ns_of(k), decode_legacy(bytes(raw))),
                          codec.encode_log(ns_of(k), logged, -(2**62)))
        else:
            for k, raw in snap.states.items():
                log_raw = snap.logs.get(k)
                self._put(k, msgspec.msgpack.decode(raw, type=bytes),
                          msgspec.msgpack.decode(log_raw, type=bytes) if log_raw is not None else b"")

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
