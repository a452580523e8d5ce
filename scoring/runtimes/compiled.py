"""Compiled runtime: the model's trees turned into C by treelite / tl2cgen, built once per model hash.

* **Build once.** The shared library is keyed by the model file's sha256 and the tl2cgen version and
  cached under ``<data_dir>/compiled/``; concurrent servers (several processes on one port) take a
  file lock so one builds and the others reuse it.
* **Parity at load.** Before it may serve, the library scores sample rows (values on both sides of
  every split threshold of the model, plus missing values) and must agree with XGBoost to 1e-6;
  otherwise :class:`CompiledUnavailable` is raised and the caller keeps the native runtime.
* **Fast single rows.** One row calls the generated ``predict(union Entry*, int, float*)`` function
  (tl2cgen's documented deployment entry point) through ``ctypes`` — no DMatrix, no thread pool.
  Batches of 32 rows or more go to XGBoost's multi-threaded batch predict, which measured faster
  than ``tl2cgen.Predictor`` for batches (the parity check covers both paths of the library).
* **Reasons** come from the native runtime it wraps (tabulated TreeSHAP), so they are identical.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from scoring.exceptions import CompiledUnavailable
from scoring.runtimes.base import ModelRuntime
from scoring.runtimes.native import NativeRuntime

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-6
_BATCH_VIA_NATIVE = 32



def _versions() -> str:
    import tl2cgen
    import treelite

    return f"tl2cgen{tl2cgen.__version__}-treelite{treelite.__version__}"


def library_path(cache_dir: Path, model_sha256: str) -> Path:
    return cache_dir / f"{model_sha256[:32]}-{_versions()}.so"


def build_library(native: NativeRuntime, model_sha256: str, cache_dir: Path, *, jobs: int = 2) -> Path:
    """Compile (or reuse) the shared library for one model; returns its path."""
    try:
        import tl2cgen
        import treelite
    except ImportError as exc:
        raise CompiledUnavailable(f"compiled runtime needs `pip install 'fraudscore[compiled]'` ({exc})") from None
    lib = library_path(cache_dir, model_sha256)
    if lib.is_file():
        return lib
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = lib.with_suffix(".lock").open("w")
    except OSError as exc:
        raise CompiledUnavailable(f"cannot use the compiled-model cache {cache_dir}: {exc}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same model
        if lib.is_file():
            return lib
        t0 = time.monotonic()
        tmp = lib.with_name(f".{lib.name}.{os.getpid()}.tmp.so")
        try:
            model = treelite.frontend.from_xgboost(native.booster)
            tl2cgen.export_lib(model, toolchain="gcc", libpath=str(tmp), params={"parallel_comp": max(1, jobs * 2)},
                               nthread=jobs, verbose=False)
            os.replace(tmp, lib)
        except Exception as exc:  # treelite/tl2cgen/compiler errors have many types
            tmp.unlink(missing_ok=True)
            first_line = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise CompiledUnavailable(f"compiling model {native.version} failed: {first_line}") from None
        log.info("compiled model %s in %.1fs -> %s", native.version, time.monotonic() - t0, lib)
    return lib


def parity_rows(native: NativeRuntime, n: int = 256, seed: int = 7) -> np.ndarray:
    """Rows that exercise both sides of every split threshold, and missing values."""
    doc = json.loads(native.booster.save_raw("json"))
    trees = doc["learner"]["gradient_booster"]["model"]["trees"]
    nf = len(native.feature_names)
    thresholds: list[list[float]] = [[] for _ in range(nf)]
    for t in trees:
        for node, left in enumerate(t["left_children"]):
            if left != -1:
                thresholds[int(t["split_indices"][node])].append(float(t["split_conditions"][node]))
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, nf)).astype(np.float32)
    for j, th in enumerate(thresholds):
        if not th:
            continue
        picks = np.asarray(th, dtype=np.float32)[rng.integers(0, len(th), n)]
        nudge = rng.choice(np.array([-1e-3, 0.0, 1e-3], dtype=np.float32), n) * np.maximum(1.0, np.abs(picks))
        rows[:, j] = picks + nudge
    rows[rng.random(rows.shape) < 0.1] = np.nan
    return rows


class CompiledRuntime(ModelRuntime):
    kind = "compiled"

    def __init__(self, native: NativeRuntime, library: Path, *, batch_threads: int = 1) -> None:
        import tl2cgen

        self.native = native
        self.version = native.version
        self.feature_names = native.feature_names
        self.library = library
        try:
            self._dll = ctypes.CDLL(str(library))
            fn: Any = self._dll.predict
            try:
                self.predictor = tl2cgen.Predictor(str(library), nthread=batch_threads)
            except tl2cgen.TL2cgenError:  # more threads than OpenMP allows here (OMP_NUM_THREADS)
                self.predictor = tl2cgen.Predictor(str(library), nthread=1)
        except (OSError, AttributeError, tl2cgen.TL2cgenError) as exc:
            raise CompiledUnavailable(f"cannot load {library}: {exc}") from None
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self._predict_row = fn
        if self.predictor.leaf_output_type != "float32" or int(self._dll.get_num_feature()) != len(self.feature_names):
            raise CompiledUnavailable(f"{library}: unexpected output type or feature count")
        self.check_parity()

    def check_parity(self, rows: np.ndarray | None = None) -> float:
        """Max |compiled − native| over sample rows; raises when above 1e-6."""
        sample = parity_rows(self.native) if rows is None else rows
        want = self.native.predict(sample)
        got_batch = self._predict_batch(sample)
        got_rows = np.array([self._predict_one(r) for r in sample[:64]])
        diffs = np.concatenate([np.abs(got_batch - want), np.abs(got_rows - want[:64])])
        worst = float(np.max(diffs))  # NaN propagates, and fails the check below
        if not worst <= PARITY_TOLERANCE:
            raise CompiledUnavailable(
                f"model {self.version}: compiled predictions differ from XGBoost by {worst:.3g} (> {PARITY_TOLERANCE})"
            )
        return worst

    def _predict_one(self, row: np.ndarray) -> float:
        entries = np.array(row, dtype=np.float32)  # a private copy: safe from several threads
        entries.view(np.int32)[np.isnan(entries)] = -1  # tl2cgen's "missing" marker
        result = np.zeros(1, dtype=np.float32)  # the generated code accumulates into it
        self._predict_row(entries.ctypes.data, 0, result.ctypes.data)
        return float(result[0])

    def _predict_batch(self, matrix: np.ndarray) -> np.ndarray:
        import tl2cgen

        dm = tl2cgen.DMatrix(np.ascontiguousarray(matrix, dtype=np.float32), missing=np.nan)
        return np.asarray(self.predictor.predict(dm), dtype=np.float64).reshape(-1)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        rows = matrix.shape[0]
        if rows < _BATCH_VIA_NATIVE:
            return np.array([self._predict_one(matrix[i]) for i in range(rows)], dtype=np.float64)
        # Large batches: XGBoost's own multi-threaded batch predict is faster than tl2cgen's here
        # (loadtests/model_bench.py), and equal to 1e-6 (checked at load).
        return self.native.predict(matrix)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        return self.native.contributions(matrix)

    def describe(self) -> dict[str, object]:
        d = self.native.describe()
        d.update(runtime=self.kind, library=self.library.name)
        return d
