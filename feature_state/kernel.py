"""The compiled batch kernel: fold a micro-batch and read every order's aggregates in one C call.

The kernel (:mod:`feature_state._kernel_src`) is a port of :mod:`feature_state.windows` over the
packed state format of :mod:`feature_state.codec`: per batch, Python hands it the stored blobs of
every entity the batch touches, the orders as columns, and (for out-of-order reads) the logged
events; it returns each order's aggregates as of itself, which orders were late, which (entity,
order) pairs were applied or duplicates, and the new blobs. Python does only O(1) work per entity
and per order around it. The pure-Python path (:mod:`feature_state.windows` on decoded states) stays
the reference and the fallback; the tests compare both, bit for bit and byte for byte.

It is compiled once per source hash with the system C compiler (``cc``/``gcc``, the toolchain the
compiled model runtime needs too) into ``<cache dir>/fskernel-<hash>.so`` and loaded with ctypes
(which releases the GIL during the call). Without a compiler the stores use the Python path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from feature_state._kernel_src import SOURCE
from feature_state.layout import US, Layout, LogEvent

log = logging.getLogger(__name__)

KMAX, DMAX, LMAX = 8, 32, 3
R_OK, R_NEED_LOG, R_OUT_SMALL = 0, 1, 2
_AGG = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4, "distinct_count": 5}
_LABEL_AGG = {"count": 6, "rate": 7}

_lock = threading.Lock()
_lib: Any = None
_tried = False


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "fraudscore-cache"


def load(cache_dir: Path | None = None) -> Any:
    """The compiled kernel (built once per source hash under ``cache_dir``), or None without a compiler.

    The first call decides for the process.
    """
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if cc is None:
            log.warning("no C compiler: feature_state uses its Python path (slower, same values)")
            return None
        digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
        root = cache_dir or default_cache_dir()
        lib = root / f"fskernel-{digest}.so"
        try:
            if not lib.is_file():
                root.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=root) as tmp:
                    src = Path(tmp) / "fskernel.c"
                    src.write_text(SOURCE)
                    out = Path(tmp) / "fskernel.so"
                    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(src), "-lm"],
                                   check=True, capture_output=True, timeout=120)
                    os.replace(out, lib)  # atomic: concurrent builders agree
            dll = ctypes.CDLL(str(lib))
            fn = dll.fs_run
            fn.restype = ctypes.c_int64
            P, N = ctypes.c_void_p, ctypes.c_int64
            fn.argtypes = [P, N, N, *([P] * 10), P, P, N, N, *([P] * 7), *([P] * 7), P, N, P, P, P, P, P, P, P, P, P,
                           P]
            fv = dll.fs_run_v
            fv.restype = N
            fv.argtypes = [P]
            for name, res, args in (
                ("fs_map_new", P, []), ("fs_map_free", None, [P]), ("fs_map_put", N, [P, P, N, P, N, P, N]),
                ("fs_map_stats", None, [P, P]), ("fs_map_get", N, [P, N, P, P, N, P, N, P]),
                ("fs_map_dump", N, [P, P, N, P, N, P, N, P, P]), ("fs_map_put_many", N, [P, N, P, P, P, P, P, P]),
            ):
                f = getattr(dll, name)
                f.restype = res
                f.argtypes = args
            rt = dll.fs_roundtrip
            rt.restype = ctypes.c_int64
            rt.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_void_p]
            _lib = dll
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("could not build the feature_state kernel (%s); using the Python path", exc)
            _lib = None
        return _lib


def _ptr(a: np.ndarray) -> int:
    return int(a.ctypes.data)


class KernelError(Exception):
    """The kernel refused its input (a corrupt blob, an unexpected state): use the Python path."""


@dataclass
class RunResult:
    features: np.ndarray  #: orders × (aggregates + seconds_since_previous), NaN = missing
    late_ns: np.ndarray  #: per order: namespace index that made it late, or -1
    late_wm: np.ndarray
    flags: np.ndarray  #: orders × namespaces: 1 applied, 2 already applied (duplicate)
    blobs: list[bytes | None]  #: per entity: the new state (None: unchanged)
    wms: np.ndarray  #: per entity: watermark after the batch
    log_blobs: list[bytes | None] | None = None  #: packed-log mode: per entity, the new log
    #: map mode: the changed entities' states and logs, packed: state e = buf[soff[e]:soff[e+1]], log likewise
    buf: bytes | None = None
    soff: np.ndarray | None = None
    loff: np.ndarray | None = None
    kbuf: bytes | None = None
    koff: np.ndarray | None = None
    changed: np.ndarray | None = None  #: map / records mode: per entity, True when the batch changed it
    #: records mode: commit record e = buf[soff[e]:soff[e+1]] (see ``write_record`` in the C source)
    records: bool = False


class KernelLayout:
    """The layout as the kernel's configuration words, plus the column maps the inputs use."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.ns_list = list(layout.namespaces.values())
        self.ns_index = {ns.name: j for j, ns in enumerate(self.ns_list)}
        self.num_paths: list[str] = []
        self.dist_paths: list[str] = []
        for ns in self.ns_list:
            if len(ns.levels) > LMAX or len(ns.num_fields) > KMAX or len(ns.distinct_fields) > DMAX:
                raise KernelError(f"namespace {ns.name} exceeds the kernel's limits")
            for p in ns.num_fields:
                if p not in self.num_paths:
                    self.num_paths.append(p)
            for p in ns.distinct_fields:
                if p not in self.dist_paths:
                    self.dist_paths.append(p)
        self.entity_paths = [ns.path for ns in self.ns_list]
        #: per namespace: its numeric / distinct fields as indices into num_paths / dist_paths
        self.ns_num = [[self.num_paths.index(p) for p in ns.num_fields] for ns in self.ns_list]
        self.ns_dist = [[self.dist_paths.index(p) for p in ns.distinct_fields] for ns in self.ns_list]
        self.is_orders = np.array([ns.source == "orders" for ns in self.ns_list], dtype=bool)
        cfg: list[int] = [len(self.ns_list), len(layout.plan), len(layout.since_previous), layout.lateness_us,
                          len(self.num_paths), len(self.dist_paths)]
        for ns in self.ns_list:
            levels = list(ns.levels) + [0] * (LMAX - len(ns.levels))
            ret = [ns.retention_s.get(r, 0) for r in ns.levels] + [0] * (LMAX - len(ns.levels))
            nf = [self.num_paths.index(p) for p in ns.num_fields] + [0] * (KMAX - len(ns.num_fields))
            df = [self.dist_paths.index(p) for p in ns.distinct_fields] + [0] * (DMAX - len(ns.distinct_fields))
            cfg += [0 if ns.source == "orders" else 1, len(ns.levels), *levels, *ret, len(ns.num_fields),
                    len(ns.distinct_fields), ns.log_retention_s, *nf, *df]
        for f, ns, ons in layout.plan:
            li = ns.levels.index(f.resolution_s)
            if f.source == "orders":
                agg = _AGG[f.aggregation]
                if f.aggregation == "distinct_count":
                    fidx = ns.distinct_fields.index(f.field or "")
                elif f.aggregation == "count":
                    fidx = 0
                else:
                    fidx = ns.num_fields.index(f.field or "")
                cfg += [self.ns_index[ns.name], agg, li, fidx, -1, 0, f.tiles]
            else:
                agg = _LABEL_AGG[f.aggregation]
                o = self.ns_index[ons.name] if ons is not None else -1
                oli = ons.levels.index(f.resolution_s) if ons is not None else 0
                cfg += [self.ns_index[ns.name], agg, li, 0, o, oli, f.tiles]
        for d in layout.since_previous:
            cfg += [self.ns_index[f"o.{d.params['entity']}"], int(d.params["window_s"]) * US]
        self.cfg = np.array(cfg, dtype=np.int64)
        self.cfg_ptr = int(self.cfg.ctypes.data)
        self.width = len(layout.plan) + len(layout.since_previous)
        #: output buffer reused across calls (a call fills it and copies the blobs out before returning)
        self.out_buf = bytearray(0)
        #: call shape → its arrays and argument vector (reads reuse theirs)
        self.plans: dict[tuple[int, int, int, int, int, bool], Any] = {}


class Strings:
    """Strings of one call, packed as UTF-8 with offsets (the kernel compares bytes: code-point order).

    Chunks are Python lists or Arrow string arrays (passed through without a Python object per item).
    """

    def __init__(self) -> None:
        self.chunks: list[Any] = []
        self.items: list[str] = []  #: the current Python chunk (appended to by add/extend)
        self.count = 0

    def _flush(self) -> None:
        if self.items:
            self.chunks.append(self.items)
            self.items = []

    def add(self, s: str) -> int:
        self.items.append(s)
        self.count += 1
        return self.count - 1

    def extend(self, values: Any) -> int:
        """Append a list of str or an Arrow string array; returns the index of its first item."""
        start = self.count
        if isinstance(values, pa.Array):
            self._flush()
            self.chunks.append(values)
        else:
            self.items.extend(values)
        self.count += len(values)
        return start

    def copy(self) -> Strings:
        out = Strings()
        out.chunks = [*self.chunks, *([list(self.items)] if self.items else [])]
        out.count = self.count
        return out

    def pack(self) -> tuple[bytes, np.ndarray]:
        self._flush()
        if not self.chunks:
            return b"", np.zeros(1, dtype=np.int64)
        if all(isinstance(c, list) for c in self.chunks):  # a few Python strings: no Arrow round trip
            items = [x for c in self.chunks for x in c]
            off = np.zeros(len(items) + 1, dtype=np.int64)
            joined = "".join(items)
            if joined.isascii():
                np.cumsum(np.fromiter(map(len, items), dtype=np.int64, count=len(items)), out=off[1:])
                return joined.encode("ascii"), off
            enc = [x.encode("utf-8", "surrogatepass") for x in items]
            np.cumsum(np.fromiter(map(len, enc), dtype=np.int64, count=len(enc)), out=off[1:])
            return b"".join(enc), off
        try:
            arrays = [c if isinstance(c, pa.Array) else pa.array(c, type=pa.string()) for c in self.chunks]
        except (UnicodeError, pa.ArrowException) as exc:  # e.g. a lone surrogate: the Python path handles it
            raise KernelError(f"strings not representable as UTF-8: {exc}") from None
        arr = arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)
        if arr.offset or arr.null_count:
            arr = pa.concat_arrays([arr.fill_null("")]) if arr.null_count else pa.concat_arrays([arr])
        bufs = arr.buffers()
        off = np.frombuffer(bufs[1], dtype=np.int32, count=len(arr) + 1).astype(np.int64)
        data = bufs[2].to_pybytes() if bufs[2] is not None else b""
        if off[0]:
            data = data[off[0] :]
            off -= off[0]
        return data[: int(off[-1])], off


class BlobMap:
    """Entity key → (packed state, packed log), kept in C memory (the embedded store with the kernel).

    A batch then never turns per-entity blobs into Python objects: the kernel looks them up and
    writes them back itself. Not thread-safe (one store, one event loop).
    """

    def __init__(self) -> None:
        self._lib = load()
        if self._lib is None:  # pragma: no cover - callers check availability first
            raise KernelError("kernel not available")
        self.handle = self._lib.fs_map_new()
        if not self.handle:  # pragma: no cover
            raise MemoryError("fs_map_new")

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self._lib.fs_map_free(self.handle)
            self.handle = None

    def stats(self) -> tuple[int, int, int]:
        """(entities, log entries, bytes)."""
        out = np.zeros(3, dtype=np.int64)
        self._lib.fs_map_stats(self.handle, _ptr(out))
        return int(out[0]), int(out[1]), int(out[2])

    def __len__(self) -> int:
        return self.stats()[0]

    def put(self, key: str, state: bytes, log: bytes | None) -> None:
        k = key.encode("utf-8", "surrogatepass")
        rc = self._lib.fs_map_put(self.handle, k, len(k), state, len(state), log, len(log or b""))
        if rc:  # pragma: no cover
            raise MemoryError("fs_map_put")

    def get(self, keys: Sequence[str], which: int) -> list[bytes | None]:
        """States (``which`` 0) or logs (1) of ``keys``; None where absent."""
        if not keys:
            return []
        strings = Strings()
        strings.extend(keys)
        kbuf, koff = strings.pack()
        lens = np.zeros(len(keys), dtype=np.int64)
        need = self._lib.fs_map_get(self.handle, len(keys), kbuf, _ptr(koff), which, None, 0, _ptr(lens))
        buf = bytearray(max(int(need), 1))
        c = (ctypes.c_char * len(buf)).from_buffer(buf)
        self._lib.fs_map_get(self.handle, len(keys), kbuf, _ptr(koff), which, ctypes.addressof(c), len(buf),
                             _ptr(lens))
        del c
        out: list[bytes | None] = []
        pos = 0
        with memoryview(buf) as mv:
            for n in lens.tolist():
                if n < 0:
                    out.append(None)
                else:
                    out.append(bytes(mv[pos : pos + n]))
                    pos += n
        return out

    def put_many(self, sel: np.ndarray, kbuf: bytes, koff: np.ndarray, buf: bytes, soff: np.ndarray,
                 loff: np.ndarray) -> None:
        """Store entities ``sel`` of a kernel output (map mode) in one call."""
        sel = np.ascontiguousarray(sel, dtype=np.int64)
        rc = self._lib.fs_map_put_many(self.handle, len(sel), _ptr(sel), kbuf, _ptr(koff), buf or b"\x00",
                                       _ptr(soff), _ptr(loff))
        if rc:  # pragma: no cover
            raise MemoryError("fs_map_put_many")

    def dump(self) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """Every (key → state) and (key → log)."""
        n = len(self)
        lens = np.zeros(3 * n + 3, dtype=np.int64)
        need = np.zeros(3, dtype=np.int64)
        self._lib.fs_map_dump(self.handle, None, 0, None, 0, None, 0, _ptr(lens), _ptr(need))
        bufs = [bytearray(max(int(x), 1)) for x in need.tolist()]
        cs = [(ctypes.c_char * len(b)).from_buffer(b) for b in bufs]
        self._lib.fs_map_dump(self.handle, ctypes.addressof(cs[0]), len(bufs[0]), ctypes.addressof(cs[1]),
                              len(bufs[1]), ctypes.addressof(cs[2]), len(bufs[2]), _ptr(lens), _ptr(need))
        del cs
        states: dict[str, bytes] = {}
        logs: dict[str, bytes] = {}
        kp = sp = lp = 0
        ls = lens.tolist()
        for q in range(n):
            kl, sl, ll = ls[3 * q], ls[3 * q + 1], ls[3 * q + 2]
            key = bytes(bufs[0][kp : kp + kl]).decode("utf-8", "surrogatepass")
            kp += kl
            states[key] = bytes(bufs[1][sp : sp + sl])
            sp += sl
            if ll >= 0:
                logs[key] = bytes(bufs[2][lp : lp + ll])
                lp += ll
        return states, logs


def run(
    kl: KernelLayout,
    mode: int,
    ent_ns: np.ndarray,
    blobs: Sequence[bytes | None] | tuple[bytes, np.ndarray],
    logs: Mapping[int, Sequence[LogEvent]] | None,
    strings: Strings,
    o_ts: np.ndarray,
    o_id: np.ndarray,
    o_ent: np.ndarray,
    o_num: np.ndarray,
    o_ok: np.ndarray,
    o_dv: np.ndarray,
    o_known: np.ndarray,
    log_blobs: Sequence[bytes | None] | None = None,
    blob_map: BlobMap | None = None,
    packed_keys: tuple[bytes, np.ndarray] | None = None,
    versions: np.ndarray | None = None,
) -> RunResult | tuple[np.ndarray, np.ndarray]:
    """One kernel call. Returns the result, or ``(entities, span starts)`` whose logs the reads need.

    With ``log_blobs`` (packed logs, one per entity: the embedded store) the kernel checks which events
    the logs already hold itself (``o_known`` is ignored), never asks for logs, and returns the new logs.
    With ``blob_map`` (and the entity keys packed as by :meth:`Strings.pack`) the states and logs are
    read from the map and the new ones returned packed (``buf``, ``soff``, ``loff``) for a bulk put.
    ``blobs`` may also be ``(buffer, positions)``: entity e's state is
    ``buffer[pos[2e]:pos[2e] + pos[2e+1]]``.
    With ``versions`` (per entity, and ``packed_keys``) the output is one commit record per changed
    entity for the Redis batch script instead of bare states.
    """
    lib = load()
    if lib is None:  # pragma: no cover - callers check availability first
        raise KernelError("kernel not available")
    n_ent = len(ent_ns)
    n = len(o_ts)
    kbuf: bytes | None = None
    koff = np.zeros(1, dtype=np.int64)
    if packed_keys is not None:
        kbuf, koff = packed_keys
        kbuf = kbuf or b"\x00"
    blob_total = 0
    if blob_map is not None:
        blob_buf = b"\x00"
        blob_pos = np.zeros(2 * n_ent + 1, dtype=np.int64)
    elif isinstance(blobs, tuple):
        blob_buf, blob_pos = blobs
        blob_total = len(blob_buf)
    else:
        lens = np.fromiter((len(b) if b else 0 for b in blobs), dtype=np.int64, count=n_ent)
        blob_pos = np.zeros(2 * n_ent + 1, dtype=np.int64)
        np.cumsum(lens[:-1], out=blob_pos[2 : 2 * n_ent : 2])
        blob_pos[1 : 2 * n_ent : 2] = lens
        blob_buf = b"".join(b for b in blobs if b)
        blob_total = len(blob_buf)
    blob_buf = blob_buf or b"\x00"
    lblob_buf: bytes | None = None
    lblob_off = None
    if log_blobs is not None:
        lblob_off = np.zeros(n_ent + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(b) if b else 0 for b in log_blobs), dtype=np.int64, count=n_ent),
                  out=lblob_off[1:])
        lblob_buf = b"".join(b for b in log_blobs if b) or b"\x00"
    rows: list[LogEvent] = []
    log_counts: list[tuple[int, int]] = []
    if logs:
        for e in sorted(logs):
            log_counts.append((e, len(logs[e])))
            rows.extend(logs[e])
    m = len(rows)
    nf = o_num.shape[1] if o_num.ndim == 2 else 1
    df = o_dv.shape[1] if o_dv.ndim == 2 else 1
    shape = (n, n_ent, m, nf, df, versions is not None)
    plan = kl.plans.get(shape) if mode == 1 else None  # reads reuse their plan (outputs are copied out)
    if plan is None:
        plan = _Plan(kl, shape)
        if mode == 1:
            if len(kl.plans) > 64:
                kl.plans.clear()
            kl.plans[shape] = plan
    else:
        plan.reset()
    v = plan.v
    v["ent_ns"][:] = ent_ns
    v["o_ts"][:] = o_ts
    v["o_id"][:] = o_id
    v["o_ent"][:] = o_ent.reshape(-1)
    v["o_num"][:] = o_num.reshape(-1)
    v["o_dv"][:] = o_dv.reshape(-1)
    v["o_ok"][:] = o_ok.reshape(-1)
    v["o_known"][:] = o_known.reshape(-1)
    if versions is not None:
        v["vers"][:] = versions
    if lblob_off is not None:
        v["lblob_off"][:] = lblob_off
    if logs:
        has_log, log_off = v["has_log"], v["log_off"]
        for e, k in log_counts:
            has_log[e] = 1
            log_off[e + 1 :] += k
        lg_ts, lg_id, lg_num, lg_ok, lg_dv = v["lg_ts"], v["lg_id"], v["lg_num"], v["lg_ok"], v["lg_dv"]
        for j, ev in enumerate(rows):
            lg_ts[j] = ev.ts
            lg_id[j] = strings.add(ev.id)
            for k, val in enumerate(ev.nums):
                if val is not None:
                    lg_num[j * KMAX + k] = val
                    lg_ok[j * KMAX + k] = 1
            for d, dv in enumerate(ev.dvals):
                if dv is not None:
                    lg_dv[j * DMAX + d] = strings.add(dv)
    sbuf, soff = strings.pack()
    sbuf = sbuf or b"\x00"
    soff = np.ascontiguousarray(soff, dtype=np.int64)
    blob_pos = np.ascontiguousarray(blob_pos, dtype=np.int64)
    koff = np.ascontiguousarray(koff, dtype=np.int64)
    nns = len(kl.ns_list)
    cap = (blob_total * 2 + (int(lblob_off[-1]) if lblob_off is not None else 0) + n * nns * 768 + 65536
           if mode == 0 and blob_map is None else 8)
    # bytes arguments by address (the locals keep them alive during the call)
    bufs = [blob_buf, sbuf, lblob_buf, kbuf]
    addr = [0 if b is None else ctypes.cast(ctypes.c_char_p(b), ctypes.c_void_p).value or 0 for b in bufs]
    args = plan.args
    args[1], args[2], args[16] = mode, n_ent, n
    args[4], args[5] = addr[0], _ptr(blob_pos)
    args[13], args[14], args[15] = addr[1], _ptr(soff), len(soff) - 1
    args[36] = addr[2]
    args[39], args[40], args[41] = (blob_map.handle if blob_map is not None else 0), addr[3], _ptr(koff)
    while True:
        if len(kl.out_buf) < cap:
            kl.out_buf = bytearray(max(cap, 2 * len(kl.out_buf)))
        out_buf = kl.out_buf
        cap = len(out_buf)
        out_c = (ctypes.c_char * cap).from_buffer(out_buf)
        args[31], args[32] = ctypes.addressof(out_c), cap
        rc = lib.fs_run_v(plan.args_ptr)
        del out_c
        if rc == R_OUT_SMALL:
            cap = int(v["out_need"][0]) + 65536
            continue
        break
    del bufs
    width = kl.width
    if rc == R_NEED_LOG:
        k = int(v["n_need"][0])
        return v["need_ent"][:k].copy(), v["need_start"][:k].copy()
    if rc != R_OK:
        raise KernelError(f"kernel returned {rc}")
    feat = v["feat"][: n * width].reshape(n, width)
    late_ns, late_wm, flags = v["late_ns"][:n], v["late_wm"][:n], v["flags"][: n * nns].reshape(n, nns)
    out_off, out_wm, out_loff = v["out_off"], v["out_wm"][:n_ent], v["out_loff"]
    if mode == 1:  # the plan is reused: hand out copies
        return RunResult(feat.copy(), late_ns.copy(), late_wm.copy(), flags.copy(), [None] * n_ent, out_wm.copy())
    if versions is not None:
        with memoryview(out_buf) as mv:
            buf = bytes(mv[: int(out_off[n_ent])])
        return RunResult(feat, late_ns, late_wm, flags, [], out_wm, None, buf, out_off, None, kbuf, koff,
                         np.diff(out_off) > 0, True)
    if blob_map is not None:
        with memoryview(out_buf) as mv:
            buf = bytes(mv[: int(out_loff[n_ent])])
        return RunResult(feat, late_ns, late_wm, flags, [], out_wm, None, buf, out_off, out_loff, kbuf, koff,
                         np.diff(out_off) > 0)
    with memoryview(out_buf) as mv:
        out_blobs = _slices(mv, out_off)
        out_logs = _slices(mv, out_loff) if log_blobs is not None else None
    return RunResult(feat, late_ns, late_wm, flags, out_blobs, out_wm, out_logs)


class _Plan:
    """The arrays of one kernel call shape, carved out of one buffer per element type, and the static
    part of its argument vector: fetching a numpy array's address through ctypes costs microseconds,
    and even a one-order read passes ~30 arrays."""

    def __init__(self, kl: KernelLayout, shape: tuple[int, int, int, int, int, bool]) -> None:
        n, n_ent, m, nf, df, has_vers = shape
        nns = len(kl.ns_list)
        spec: list[tuple[str, str, int, int]] = [  # name, element kind, size, fill
            ("ent_ns", "i", n_ent, 0), ("log_off", "i", n_ent + 1, 0), ("lg_ts", "i", m + 1, 0),
            ("lg_id", "i", m + 1, 0), ("lg_num", "i", (m + 1) * KMAX, 0), ("lg_dv", "i", (m + 1) * DMAX, -1),
            ("o_ts", "i", n, 0), ("o_id", "i", n, 0), ("o_ent", "i", n * nns, 0), ("o_num", "i", n * nf, 0),
            ("o_dv", "i", n * df, 0), ("late_ns", "i", n, 0), ("late_wm", "i", n, 0),
            ("need_ent", "i", n * nns, 0), ("need_start", "i", n * nns, 0), ("n_need", "i", 1, 0),
            ("out_off", "i", n_ent + 1, 0), ("out_wm", "i", n_ent + 1, 0), ("out_need", "i", 1, 0),
            ("lblob_off", "i", n_ent + 1, 0), ("out_loff", "i", n_ent + 1, 0), ("vers", "i", n_ent, 0),
            ("args", "i", 43, 0),
            ("has_log", "u", n_ent, 0), ("lg_ok", "u", (m + 1) * KMAX, 0), ("o_ok", "u", n * nf, 0),
            ("o_known", "u", n * nns, 0), ("flags", "u", n * nns, 0),
            ("feat", "f", n * kl.width, 0),
        ]
        size = {"i": 0, "u": 0, "f": 0}
        where: dict[str, tuple[str, int, int]] = {}
        for name, kind, k, _fill in spec:
            k = max(k, 1)
            where[name] = (kind, size[kind], k)
            size[kind] += k
        self.bufs: dict[str, np.ndarray] = {
            "i": np.zeros(size["i"], dtype=np.int64), "u": np.zeros(size["u"], dtype=np.uint8),
            "f": np.zeros(size["f"], dtype=np.float64),
        }
        base = {k: int(b.ctypes.data) for k, b in self.bufs.items()}
        item = {"i": 8, "u": 1, "f": 8}
        self.v: dict[str, np.ndarray] = {name: self.bufs[kind][a : a + k] for name, (kind, a, k) in where.items()}
        self.fills = [self.v[name] for name, _kind, _k, fill in spec if fill]
        for arr in self.fills:
            arr[:] = -1
        ptr = {name: base[kind] + item[kind] * a for name, (kind, a, _k) in where.items()}
        self.args = self.v["args"]
        self.args_ptr = ptr["args"]
        self.static = {
            0: kl.cfg_ptr, 3: ptr["ent_ns"], 6: ptr["has_log"], 7: ptr["log_off"], 8: ptr["lg_ts"], 9: ptr["lg_id"],
            10: ptr["lg_num"], 11: ptr["lg_ok"], 12: ptr["lg_dv"], 17: ptr["o_ts"], 18: ptr["o_id"],
            19: ptr["o_ent"], 20: ptr["o_num"], 21: ptr["o_ok"], 22: ptr["o_dv"], 23: ptr["o_known"],
            24: ptr["feat"], 25: ptr["late_ns"], 26: ptr["late_wm"], 27: ptr["flags"], 28: ptr["need_ent"],
            29: ptr["need_start"], 30: ptr["n_need"], 33: ptr["out_off"], 34: ptr["out_wm"], 35: ptr["out_need"],
            37: ptr["lblob_off"], 38: ptr["out_loff"], 42: ptr["vers"] if has_vers else 0,
        }
        for i, val in self.static.items():
            self.args[i] = val

    def reset(self) -> None:
        """Zero every array (then the -1 fills and the static arguments) for the next call."""
        self.bufs["i"].fill(0)
        self.bufs["u"].fill(0)
        for arr in self.fills:
            arr[:] = -1
        for i, val in self.static.items():
            self.args[i] = val


def _slices(mv: memoryview, off: np.ndarray) -> list[bytes | None]:
    """bytes of each non-empty ``[off[e], off[e + 1])``; None for empty ones."""
    offs = off.tolist()
    return [bytes(mv[a:z]) if z > a else None for a, z in zip(offs, offs[1:], strict=False)]


def roundtrip(kl: KernelLayout, ns_name: str, blob: bytes) -> bytes:
    """Decode a blob into the kernel's structures and encode it again (tests)."""
    lib = load()
    if lib is None:  # pragma: no cover
        raise KernelError("kernel not available")
    cap = len(blob) * 2 + 4096
    out = bytearray(cap)
    out_c = (ctypes.c_char * cap).from_buffer(out)
    n = np.zeros(1, dtype=np.int64)
    rc = lib.fs_roundtrip(_ptr(kl.cfg), kl.ns_index[ns_name], blob, len(blob), ctypes.addressof(out_c), cap, _ptr(n))
    del out_c
    if rc != R_OK:
        raise KernelError(f"kernel returned {rc}")
    return bytes(out[: int(n[0])])
