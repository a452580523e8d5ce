"""The packed state format (v2): one entity's tiles as little-endian int64 words plus a string table.

The compiled kernel (:mod:`feature_state.kernel`) reads and writes this format directly; this module
is the pure-Python codec of the same bytes (the fallback path, snapshots, tests). Both encoders
produce identical bytes for the same state (tiles sorted by index, distinct values sorted, strings in
traversal order), which the tests check.

Layout (word = int64 little-endian; ``sid`` = index into the string table, -1 for the empty string)::

    0  magic (the bytes "FSTATE\\x02\\x00")      4  D (distinct fields)
    1  T: word offset of the string table      5  n_last (0..2)
    2  L (levels)                               6  wm       7  sid(wm_id)
    3  K (numeric fields)
    then n_last × (time, sid(id)); then L × (resolution s, m tiles); then per level, arrays of m words:
    idx, n, t, sid(i), for each numeric field k: c, s, lo, hi; for each distinct field: count;
    then for each distinct field, for each tile: the sids of its values (sorted by bytes; each distinct
    value stored once per entity)
    T: S (strings), S + 1 byte offsets, then the UTF-8 bytes, zero-padded to a multiple of 8.

A blob that does not start with the magic is the previous msgpack encoding (read transparently and
rewritten in this format on the next write).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from feature_state.exceptions import FeatureStateError
from feature_state.layout import LogEvent, Namespace

MAGIC_BYTES = b"FSTATE\x02\x00"
MAGIC = int.from_bytes(MAGIC_BYTES, "little")


class StateFormatError(FeatureStateError):
    """A stored state cannot be read with the current feature definitions."""


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogatepass")


def is_packed(blob: bytes | None) -> bool:
    return bool(blob) and blob[:8] == MAGIC_BYTES  # type: ignore[index]


def encode(ns: Namespace, state: object) -> bytes:
    """Pack an :class:`~feature_state.windows.EntityState` of namespace ``ns``."""
    from feature_state.windows import EntityState

    assert isinstance(state, EntityState)
    L, K, D = len(ns.levels), len(ns.num_fields), len(ns.distinct_fields)
    strs: list[bytes] = []

    def sid(s: str) -> int:
        if not s:
            return -1
        strs.append(_b(s))
        return len(strs) - 1

    words: list[int] = [MAGIC, 0, L, K, D, len(state.last), state.wm]
    words.append(sid(state.wm_id))
    for lt, li in state.last:
        words.append(int(lt))
        words.append(sid(str(li)))
    levels = []
    for r in ns.levels:
        level = state.tiles.get(r) or {}
        levels.append([level[i] for i in sorted(level)])
        words += [r, len(level)]
    dmap: dict[str, int] = {}
    for r, tiles in zip(ns.levels, levels, strict=True):
        level = state.tiles.get(r) or {}
        words += sorted(level)
        words += [t.n for t in tiles]
        words += [t.t for t in tiles]
        words += [sid(t.i) for t in tiles]
        for k in range(K):
            words += [t.c[k] for t in tiles]
            words += [t.s[k] for t in tiles]
            words += [t.lo[k] for t in tiles]
            words += [t.hi[k] for t in tiles]
        for d in range(D):
            words += [len(t.d[d]) for t in tiles]
        for d in range(D):
            for t in tiles:
                for v in sorted(t.d[d]):
                    j = dmap.get(v)
                    if j is None:
                        j = dmap[v] = len(strs)
                        strs.append(_b(v))
                    words.append(j)
    words[1] = len(words)
    words.append(len(strs))
    off = 0
    words.append(0)
    for s in strs:
        off += len(s)
        words.append(off)
    data = b"".join(strs)
    data += b"\x00" * (-len(data) % 8)
    return np.array(words, dtype="<i8").tobytes() + data


def decode(ns: Namespace, blob: bytes | None) -> object:
    """The :class:`~feature_state.windows.EntityState` of a packed (or legacy msgpack) blob."""
    from feature_state.windows import EntityState, Tile, decode_legacy

    if not blob:
        return EntityState()
    if not is_packed(blob):
        return decode_legacy(blob)
    if len(blob) % 8:
        raise StateFormatError(f"state of {ns.name}: truncated ({len(blob)} bytes)")
    w = np.frombuffer(blob, dtype="<i8")
    T, L, K, D, n_last = (int(x) for x in w[1:6])
    if (L, K, D) != (len(ns.levels), len(ns.num_fields), len(ns.distinct_fields)):
        raise StateFormatError(
            f"state of {ns.name} was written for other feature definitions (levels/fields {L}/{K}/{D}, now "
            f"{len(ns.levels)}/{len(ns.num_fields)}/{len(ns.distinct_fields)}); use a new key prefix or table "
            "when a namespace's fields change"
        )
    S = int(w[T])
    offs = w[T + 1 : T + 2 + S].tolist()
    base = 8 * (T + 2 + S)
    strs = [_s(blob[base + offs[j] : base + offs[j + 1]]) for j in range(S)]

    def st(x: int) -> str:
        return "" if x < 0 else strs[x]

    head = w[: T].tolist()
    state = EntityState(wm=head[6], wm_id=st(head[7]))
    p = 8
    last = []
    for _ in range(n_last):
        last.append((head[p], st(head[p + 1])))
        p += 2
    state.last = last
    ms = []
    for r in ns.levels:
        if head[p] != r:
            raise StateFormatError(f"state of {ns.name}: tile sizes differ from the definitions")
        ms.append(head[p + 1])
        p += 2
    tiles: dict[int, dict[int, Tile]] = {}
    for r, m in zip(ns.levels, ms, strict=True):
        cols = [head[p + j * m : p + (j + 1) * m] for j in range(4 + 4 * K + D)]
        p += (4 + 4 * K + D) * m
        counts = cols[4 + 4 * K :]
        dv: list[list[set[str]]] = [[set() for _ in range(D)] for _ in range(m)]
        for d in range(D):
            for q in range(m):
                c = counts[d][q]
                dv[q][d] = {strs[x] for x in head[p : p + c]}
                p += c
        if m:
            tiles[r] = {
                cols[0][q]: Tile(
                    cols[1][q], cols[2][q],
                    [cols[4 + 4 * k][q] for k in range(K)], [cols[5 + 4 * k][q] for k in range(K)],
                    [cols[6 + 4 * k][q] for k in range(K)], [cols[7 + 4 * k][q] for k in range(K)],
                    dv[q], st(cols[3][q]),
                )
                for q in range(m)
            }
    state.tiles = tiles
    return state


def legacy_to_packed(ns: Namespace, blob: bytes | None) -> bytes | None:
    """A stored blob in the packed format (legacy msgpack states are converted)."""
    if not blob or is_packed(blob):
        return blob
    return encode(ns, decode(ns, blob))


# ---------------------------------------------------------------------------- packed event logs

LOG_MAGIC_BYTES = b"FFSLOG\x02\x00"
LOG_MAGIC = int.from_bytes(LOG_MAGIC_BYTES, "little")


def encode_log(ns: Namespace, events: Iterable[LogEvent], floor_us: int) -> bytes:
    """Pack an entity's exactly-once log (the embedded store keeps it this way).

    Layout: magic, T, n, K, D; n rows of ``(ts, sid(id), num[K], ok[K], sid(dv)[D])`` sorted by
    ``(ts, id)``; the string table as in states (ids in row order, distinct values once each).
    Entries older than ``floor_us`` are dropped.
    """
    K, D = len(ns.num_fields), len(ns.distinct_fields)
    rows = sorted((ev for ev in events if ev.ts >= floor_us), key=lambda ev: (ev.ts, ev.id))
    strs: list[bytes] = []
    dmap: dict[str, int] = {}
    words: list[int] = [LOG_MAGIC, 5 + len(rows) * (2 + 2 * K + D), len(rows), K, D]
    for ev in rows:
        words.append(ev.ts)
        strs.append(_b(ev.id))
        words.append(len(strs) - 1)
        nums = ev.nums or (None,) * K
        words += [0 if v is None else v for v in nums]
        words += [0 if v is None else 1 for v in nums]
        for v in ev.dvals or (None,) * D:
            if v is None:
                words.append(-1)
                continue
            j = dmap.get(v)
            if j is None:
                j = dmap[v] = len(strs)
                strs.append(_b(v))
            words.append(j)
    words.append(len(strs))
    off = 0
    words.append(0)
    for s in strs:
        off += len(s)
        words.append(off)
    data = b"".join(strs)
    data += b"\x00" * (-len(data) % 8)
    return np.array(words, dtype="<i8").tobytes() + data


def decode_log(ns: Namespace, blob: bytes | None) -> list[LogEvent]:
    """The events of a packed log, in ``(ts, id)`` order."""
    if not blob:
        return []
    if blob[:8] != LOG_MAGIC_BYTES or len(blob) % 8:
        raise StateFormatError(f"log of {ns.name}: not a packed log")
    w = np.frombuffer(blob, dtype="<i8")
    T, n, K, D = (int(x) for x in w[1:5])
    if (K, D) != (len(ns.num_fields), len(ns.distinct_fields)):
        raise StateFormatError(f"log of {ns.name} was written for other feature definitions")
    S = int(w[T])
    offs = w[T + 1 : T + 2 + S].tolist()
    base = 8 * (T + 2 + S)
    strs = [_s(blob[base + offs[j] : base + offs[j + 1]]) for j in range(S)]
    head = w[:T].tolist()
    out = []
    rw = 2 + 2 * K + D
    for r in range(n):
        p = 5 + r * rw
        nums = tuple(head[p + 2 + k] if head[p + 2 + K + k] else None for k in range(K))
        dvals = tuple(None if x < 0 else strs[x] for x in head[p + 2 + 2 * K : p + rw])
        out.append(LogEvent(head[p], strs[head[p + 1]], nums, dvals))
    return out


def log_size(blob: bytes | None) -> int:
    """Entries in a packed log."""
    return 0 if not blob else int.from_bytes(blob[16:24], "little", signed=True)
