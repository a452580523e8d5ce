"""Exact TreeSHAP contributions for XGBoost tree ensembles, fast enough for a per-request answer.

Why not ``booster.predict(..., pred_contribs=True)``? It is exact but costs ~1.6 ms per row for a
200-tree depth-6 model on one core (measured: ``loadtests/model_bench.py``), most of a request's
budget. This module gives *the same numbers* (path-dependent TreeSHAP, the algorithm XGBoost uses;
the tests compare every column to XGBoost's own) in a fraction of the time, by moving the
expensive part to load time (the "Fast TreeSHAP v2" idea, Yang 2021):

For one leaf ``l`` with value ``v`` whose root path splits on the distinct features ``P``
(``d = |P|``), let ``z_j`` be the product of the cover fractions of the splits on ``j`` along the path
and ``o_j`` be 1 when the row satisfies every split on ``j`` along the path (missing values follow the
default direction), else 0. The leaf adds to feature ``i ∈ P``::

    φ_i += v · (o_i − z_i) · Σ_{S ⊆ A∖{i}} |S|!(d−|S|−1)!/d! · Π_{j ∈ P∖S∖{i}} z_j ,  A = {j : o_j = 1}

The right-hand side depends on the row only through the bit pattern ``o`` (``2^d`` values), so it is
tabulated per leaf at load. Scoring a row is then: compare the row with every leaf's intervals,
pack the bits into a pattern, gather one table row per leaf and scatter-add — a handful of
vectorised numpy passes, no tree walking in Python.

The pass is a small C loop (compiled once with the system C compiler — the same toolchain the
compiled model runtime needs — cached by source hash under the cache directory, loaded with
``ctypes``, which releases the GIL so big batches split across threads); without a compiler the same
pass runs as vectorised numpy (slower, same numbers). Two things made the C loop 2–3× faster
(measured, ``loadtests/model_bench.py``): the agreement test is branch-free (on real rows the
comparisons are unpredictable, and a mispredicted branch per row, leaf and feature cost more than the
rest of the pass), and batches go leaf-major over blocks of 32 rows, so a leaf's bounds and table
block stay in cache while every row of the block uses them (one row at a time, the 10–20 MB table
streams through the cache once per row).

The table has ``leaves × 2^D × D`` entries (``D`` = the most distinct features on any path); models
where that exceeds ``max_table_bytes`` (deep trees) are refused with :class:`TreeShapUnsupported`
and the runtime falls back to XGBoost's own contributions. Categorical splits and non-``gbtree``
boosters are refused the same way.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scoring.exceptions import TreeShapUnsupported

log = logging.getLogger(__name__)

DEFAULT_MAX_TABLE_BYTES = 256 * 1024 * 1024
_ROW_CHUNK = 16


_KERNEL_SRC = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#define FS_PREFETCH_AHEAD 16
#define FS_BLOCK_ROWS 32
/* A row agrees with a leaf's split on feature k when lo <= v < hi, or v is missing and the default
   direction leads to the leaf. Written without branches: comparisons on real data are unpredictable,
   and a mispredicted branch per (row, leaf, feature) cost more than the whole rest of the pass. NaN
   compares false both ways, so the interval test is 0 for it. */
#define FS_AGREES(v, lo, hi, miss) ((((v) >= (lo)) & ((v) < (hi))) | (((v) != (v)) & (miss)))

/* One row. Pass 1 (sequential): each leaf's agreement bits -> the table row it needs. Pass 2: gather
   those rows (random access into the table, prefetched ahead so cache misses overlap) and scatter-add
   them into phi. Returns 0, or -1 when out of memory. */
int fs_treeshap_row(const float* x, int64_t n_leaves, int64_t width, const int32_t* feat, const float* lo,
                    const float* hi, const uint8_t* miss, const float* table, double* phi) {
  const int64_t n_patterns = (int64_t)1 << width;
  int64_t* rows = (int64_t*)malloc((size_t)n_leaves * sizeof(int64_t));
  if (rows == NULL) return -1;
  for (int64_t l = 0; l < n_leaves; ++l) {
    const int64_t base = l * width;
    int64_t pattern = 0;
    for (int64_t k = 0; k < width; ++k) {
      const float v = x[feat[base + k]];
      pattern |= (int64_t)FS_AGREES(v, lo[base + k], hi[base + k], miss[base + k]) << k;
    }
    rows[l] = (l * n_patterns + pattern) * width;
  }
  for (int64_t l = 0; l < n_leaves; ++l) {
#if defined(__GNUC__)
    if (l + FS_PREFETCH_AHEAD < n_leaves) __builtin_prefetch(table + rows[l + FS_PREFETCH_AHEAD], 0, 0);
#endif
    const float* row = table + rows[l];
    const int32_t* f = feat + l * width;
    for (int64_t k = 0; k < width; ++k) phi[f[k]] += row[k];
  }
  free(rows);
  return 0;
}

/* Many rows, leaf-major over blocks of FS_BLOCK_ROWS rows: a leaf's bounds and its table block
   (2^width x width floats) are loaded once per block and stay in cache while every row of the block
   uses them, instead of the whole table streaming through the cache once per row. The path width is
   a compile-time constant in the specialised copies (loops unrolled). */
#define FS_BLOCK_BODY(W)                                                                                    \
  for (int64_t l = 0; l < n_leaves; ++l) {                                                                  \
    const int32_t* f = feat + l * (W);                                                                      \
    const float* lo_ = lo + l * (W);                                                                        \
    const float* hi_ = hi + l * (W);                                                                        \
    const uint8_t* m = miss + l * (W);                                                                      \
    const float* tl = table + l * ((int64_t)1 << (W)) * (W);                                                \
    for (int64_t r = 0; r < nr; ++r) {                                                                      \
      const float* xr = x + r * stride;                                                                     \
      int64_t pattern = 0;                                                                                  \
      for (int64_t k = 0; k < (W); ++k) {                                                                   \
        const float v = xr[f[k]];                                                                           \
        pattern |= (int64_t)FS_AGREES(v, lo_[k], hi_[k], m[k]) << k;                                        \
      }                                                                                                     \
      const float* row = tl + pattern * (W);                                                                \
      double* ph = phi + r * stride;                                                                        \
      for (int64_t k = 0; k < (W); ++k) ph[f[k]] += row[k];                                                 \
    }                                                                                                       \
  }
#define FS_BLOCK_FN(W)                                                                                      \
  static void fs_block_##W(const float* x, int64_t nr, int64_t stride, int64_t n_leaves, const int32_t* feat, \
                           const float* lo, const float* hi, const uint8_t* miss, const float* table,         \
                           double* phi) { FS_BLOCK_BODY(W) }
FS_BLOCK_FN(1) FS_BLOCK_FN(2) FS_BLOCK_FN(3) FS_BLOCK_FN(4) FS_BLOCK_FN(5) FS_BLOCK_FN(6) FS_BLOCK_FN(7)
FS_BLOCK_FN(8)
static void fs_block_any(const float* x, int64_t nr, int64_t stride, int64_t n_leaves, int64_t width,
                         const int32_t* feat, const float* lo, const float* hi, const uint8_t* miss,
                         const float* table, double* phi) { FS_BLOCK_BODY(width) }

/* Many rows: x is n_rows x stride (padded rows), phi the same shape, zeroed by the caller. */
int fs_treeshap_rows(const float* x, int64_t n_rows, int64_t stride, int64_t n_leaves, int64_t width,
                     const int32_t* feat, const float* lo, const float* hi, const uint8_t* miss, const float* table,
                     double* phi) {
  for (int64_t r0 = 0; r0 < n_rows; r0 += FS_BLOCK_ROWS) {
    const int64_t nr = n_rows - r0 < FS_BLOCK_ROWS ? n_rows - r0 : FS_BLOCK_ROWS;
    const float* xb = x + r0 * stride;
    double* pb = phi + r0 * stride;
    switch (width) {
      case 1: fs_block_1(xb, nr, stride, n_leaves, feat, lo, hi, miss, table, pb); break;
      case 2: fs_block_2(xb, nr, stride, n_leaves, feat, lo, hi, miss, table, pb); break;
      case 3: fs_block_3(xb, nr, stride, n_leaves, feat, lo, hi, miss, table, pb); break;
      case 4: fs_block_4(xb, nr, stride, n_leaves, feat, lo, hi, miss, table, pb); break;
      case 5: fs_block_5(xb, nr, stride, n_leaves, feat, lo, hi, miss, table, pb); break;
      case 6: fs_block_6(xb, nr, stride, n_leaves, feat, lo, hi, miss, table, pb); break;
      case 7: fs_block_7(xb, nr, stride, n_leaves, feat, lo, hi, miss, table, pb); break;
      case 8: fs_block_8(xb, nr, stride, n_leaves, feat, lo, hi, miss, table, pb); break;
      default: fs_block_any(xb, nr, stride, n_leaves, width, feat, lo, hi, miss, table, pb); break;
    }
  }
  return 0;
}
"""


def _kernel_dir() -> Path:
    return Path(tempfile.gettempdir()) / "fraudscore-cache"


_kernel: Any = None
_kernel_tried = False


def load_kernel(cache_dir: Path | None = None) -> Any:
    """The compiled kernel (built once per source hash under ``cache_dir``), or None without a C compiler.

    The first successful call decides for the process (the library is the same for every model).
    """
    global _kernel, _kernel_tried
    if _kernel_tried:
        return _kernel
    _kernel_tried = True
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler: TreeSHAP reasons use the numpy path (slower, same numbers)")
        return None
    digest = hashlib.sha256(_KERNEL_SRC.encode()).hexdigest()[:16]
    root = cache_dir or _kernel_dir()
    lib = root / f"treeshap-{digest}.so"
    try:
        if not lib.is_file():
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                src = Path(tmp) / "treeshap.c"
                src.write_text(_KERNEL_SRC)
                out = Path(tmp) / "treeshap.so"
                subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", str(out), str(src), "-lm"],
                               check=True, capture_output=True, timeout=120)
                os.replace(out, lib)  # atomic: concurrent builders agree
        dll = ctypes.CDLL(str(lib))
        fn = dll.fs_treeshap_row
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, *([ctypes.c_void_p] * 6)]
        many = dll.fs_treeshap_rows
        many.restype = ctypes.c_int
        many.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                         *([ctypes.c_void_p] * 6)]
        _kernel = (fn, many)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not build the TreeSHAP kernel (%s); using the numpy path", exc)
        _kernel = None
    return _kernel



@dataclass(frozen=True)
class _Leaf:
    value: float
    features: list[int]
    lo: list[float]
    hi: list[float]
    miss: list[bool]
    z: list[float]


def _tree_leaves(tree: dict[str, Any]) -> list[_Leaf]:
    left = tree["left_children"]
    right = tree["right_children"]
    feat = tree["split_indices"]
    cond = tree["split_conditions"]
    default_left = tree["default_left"]
    hess = tree["sum_hessian"]
    split_type = tree.get("split_type") or [0] * len(left)
    if any(int(t) != 0 for t in split_type):
        raise TreeShapUnsupported("categorical splits are not supported by the tabulated TreeSHAP")
    leaves: list[_Leaf] = []
    # (node, per-feature state: feature -> [lo, hi, miss, z], first-appearance order)
    stack: list[tuple[int, dict[int, list[Any]], list[int]]] = [(0, {}, [])]
    while stack:
        node, state, order = stack.pop()
        if left[node] == -1:
            leaves.append(
                _Leaf(
                    value=float(cond[node]),
                    features=list(order),
                    lo=[state[f][0] for f in order],
                    hi=[state[f][1] for f in order],
                    miss=[state[f][2] for f in order],
                    z=[state[f][3] for f in order],
                )
            )
            continue
        f = int(feat[node])
        t = float(np.float32(cond[node]))
        cover = float(hess[node])
        for child, is_left in ((left[node], True), (right[node], False)):
            frac = float(hess[child]) / cover if cover > 0 else 0.0
            new_state = {k: list(v) for k, v in state.items()}
            new_order = list(order)
            if f not in new_state:
                new_state[f] = [-math.inf, math.inf, True, 1.0]
                new_order.append(f)
            s = new_state[f]
            if is_left:  # x < t goes left ("yes")
                s[1] = min(s[1], t)
            else:
                s[0] = max(s[0], t)
            s[2] = bool(s[2] and (bool(default_left[node]) == is_left))
            s[3] = s[3] * frac
            stack.append((int(child), new_state, new_order))
    return leaves


def _weights(d: int) -> np.ndarray:
    """w[s] = s! (d - s - 1)! / d! for s in 0..d-1."""
    return np.array([math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) for s in range(d)])


def _table_for_depth(z: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    """Contribution table for leaves with ``d = z.shape[1]`` distinct path features.

    Returns ``(n, 2**width, width)``: entry ``[l, pattern, k]`` is what leaf ``l`` adds to its ``k``-th path
    feature when the row's agreement bits are ``pattern`` (bit k = o_k).
    """
    n, d = z.shape
    out = np.zeros((n, 2**width, width), dtype=np.float64)
    if d == 0:
        return out
    w = _weights(d)
    for pattern in range(2**d):
        o = [(pattern >> k) & 1 for k in range(d)]
        for k in range(d):
            others_in = [j for j in range(d) if j != k and o[j]]
            others_out = [j for j in range(d) if j != k and not o[j]]
            # e[m] = elementary symmetric polynomial of degree m of z over `others_in`
            e = [np.ones(n)] + [np.zeros(n) for _ in others_in]
            for j in others_in:
                zj = z[:, j]
                for m in range(len(e) - 1, 0, -1):
                    e[m] = e[m] + zj * e[m - 1]
            a = len(others_in)
            total = np.zeros(n)
            for m in range(a + 1):  # |S| = a - m features of A' follow the row, m are marginalised
                total += w[a - m] * e[m]
            if others_out:
                total *= np.prod(z[:, others_out], axis=1)
            out[:, pattern, k] = values * (o[k] - z[:, k]) * total
    return out


_pools: dict[int, Any] = {}


def _pool(threads: int) -> Any:
    """A shared thread pool for batch contributions (created on first use)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = _pools.get(threads)
    if pool is None:
        pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="treeshap")
    return pool


class TreeShap:
    """Tabulated path-dependent TreeSHAP for one XGBoost ``gbtree`` model."""

    def __init__(self, model_json: bytes | str, num_features: int, bias: float,
                 *, max_table_bytes: int = DEFAULT_MAX_TABLE_BYTES, use_kernel: bool = True,
                 threads: int | None = None, kernel_dir: Path | None = None) -> None:
        doc = json.loads(model_json)
        booster = doc["learner"]["gradient_booster"]
        if booster.get("name") != "gbtree":
            raise TreeShapUnsupported(f"booster {booster.get('name')!r} is not supported (gbtree only)")
        model = booster["model"]
        if any(int(i) != 0 for i in model.get("tree_info", [])):
            raise TreeShapUnsupported("multi-output models are not supported")
        leaves = [leaf for tree in model["trees"] for leaf in _tree_leaves(tree)]
        width = max((len(leaf.features) for leaf in leaves), default=0)
        n = len(leaves)
        table_bytes = n * (2**width) * max(width, 1) * 8
        if table_bytes > max_table_bytes:
            raise TreeShapUnsupported(
                f"contribution table would need {table_bytes / 2**20:.0f} MiB ({n} leaves, up to {width} distinct "
                f"features per path) > {max_table_bytes / 2**20:.0f} MiB"
            )
        self.num_features = num_features
        self.threads = max(1, threads if threads is not None else (os.cpu_count() or 1))
        self.width = width
        self.bias = bias
        pad = num_features  # index of an always-NaN column, so padded slots never agree
        self.feat = np.full((n, width), pad, dtype=np.intp)
        self.n_leaves = n
        self.lo = np.full((n, width), np.inf, dtype=np.float32)
        self.hi = np.full((n, width), -np.inf, dtype=np.float32)
        self.miss = np.zeros((n, width), dtype=bool)
        self.table = np.zeros((n, 2**width, width), dtype=np.float32)
        by_depth: dict[int, list[int]] = {}
        for i, leaf in enumerate(leaves):
            d = len(leaf.features)
            by_depth.setdefault(d, []).append(i)
            self.feat[i, :d] = leaf.features
            self.lo[i, :d] = leaf.lo
            self.hi[i, :d] = leaf.hi
            self.miss[i, :d] = leaf.miss
        for d, idx in by_depth.items():
            z = np.array([leaves[i].z for i in idx], dtype=np.float64).reshape(len(idx), d)
            values = np.array([leaves[i].value for i in idx], dtype=np.float64)
            self.table[idx] = _table_for_depth(z, values, width)
        self._pow2 = (1 << np.arange(width, dtype=np.intp)).astype(np.intp)
        self._rows = np.arange(n, dtype=np.intp)
        self._flat_feat = self.feat.ravel()
        self._feat32 = np.ascontiguousarray(self.feat, dtype=np.int32)
        self._miss8 = np.ascontiguousarray(self.miss, dtype=np.uint8)
        self._kernel = load_kernel(kernel_dir) if use_kernel and width > 0 else None

    @property
    def uses_kernel(self) -> bool:
        return self._kernel is not None

    @property
    def table_bytes(self) -> int:
        return int(self.table.nbytes)

    def _patterns(self, xv: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            o = (xv >= self.lo) & (xv < self.hi)
        o |= np.isnan(xv) & self.miss
        patterns: np.ndarray = o @ self._pow2
        return patterns

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Rows × (features + 1): per-feature contributions to the margin, bias last (like XGBoost)."""
        x = np.asarray(matrix, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        rows = x.shape[0]
        f = self.num_features
        out = np.empty((rows, f + 1), dtype=np.float64)
        out[:, f] = self.bias
        padded = np.empty((rows, f + 1), dtype=np.float32)
        padded[:, :f] = x
        padded[:, f] = np.nan
        if self.width == 0:
            out[:, :f] = 0.0
            return out
        if self._kernel is not None:
            one, many = self._kernel
            args = (self.n_leaves, self.width, self._feat32.ctypes.data, self.lo.ctypes.data, self.hi.ctypes.data,
                    self._miss8.ctypes.data, self.table.ctypes.data)
            phi = np.zeros((rows, f + 1), dtype=np.float64)
            if rows == 1:
                status = [one(padded.ctypes.data, *args, phi.ctypes.data)]
            else:
                # ctypes releases the GIL during the call: split big batches across threads (batch scoring)
                parts = np.array_split(np.arange(rows), min(self.threads, max(1, rows // 64)))

                def run(idx: np.ndarray) -> int:
                    lo_, n_ = int(idx[0]), len(idx)
                    return int(many(padded[lo_].ctypes.data, n_, f + 1, *args, phi[lo_].ctypes.data))

                if len(parts) == 1:
                    status = [run(parts[0])]
                else:
                    status = list(_pool(self.threads).map(run, parts))
            if any(s != 0 for s in status):
                raise MemoryError("TreeSHAP kernel: out of memory")
            out[:, :f] = phi[:, :f]
            return out
        for start in range(0, rows, _ROW_CHUNK):
            chunk = padded[start : start + _ROW_CHUNK]
            r = chunk.shape[0]
            xv = chunk[:, self.feat]  # (r, leaves, width)
            idx = self._patterns(xv)  # (r, leaves)
            vals = self.table[self._rows, idx]  # (r, leaves, width)
            offs = (np.arange(r, dtype=np.intp) * (f + 1))[:, None]
            flat = (self._flat_feat[None, :] + offs).ravel()
            sums = np.bincount(flat, weights=vals.ravel(), minlength=r * (f + 1)).reshape(r, f + 1)
            out[start : start + r, :f] = sums[:, :f]
        return out

