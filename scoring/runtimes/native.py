"""Native XGBoost runtime (``xgboost.Booster``), with fast exact reason codes.

Predictions use ``inplace_predict`` (no DMatrix). Contributions use :class:`scoring.treeshap.TreeShap`
(the same numbers as ``pred_contribs=True``, several times faster per row) when the model allows it,
else XGBoost's own ``pred_contribs``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xgboost as xgb

from scoring.artifacts import Manifest
from scoring.exceptions import ModelArtifactError, TreeShapUnsupported
from scoring.runtimes.base import ModelRuntime
from scoring.treeshap import TreeShap

log = logging.getLogger(__name__)


class NativeRuntime(ModelRuntime):
    kind = "native"

    def __init__(self, version_dir: Path, manifest: Manifest, *, fast_reasons: bool = True,
                 cache_dir: Path | None = None) -> None:
        self.version = manifest.version
        self.feature_names = manifest.feature_names
        self.model_path = version_dir / manifest.model_file
        self.booster = xgb.Booster()
        try:
            self.booster.load_model(str(self.model_path))
        except xgb.core.XGBoostError as exc:
            raise ModelArtifactError(f"{self.model_path}: XGBoost cannot load it: {str(exc).splitlines()[0]}") from None
        self.booster.set_param({"nthread": 1})
        n = self.booster.num_features()
        if n != len(self.feature_names):
            raise ModelArtifactError(
                f"{self.model_path}: model has {n} features but the manifest lists {len(self.feature_names)}"
            )
        self.treeshap: TreeShap | None = None
        self.treeshap_error: str | None = None
        if fast_reasons:
            probe = np.full((1, n), np.nan, dtype=np.float32)
            bias = float(self._xgb_contributions(probe)[0, -1])
            try:
                self.treeshap = TreeShap(bytes(self.booster.save_raw("json")), n, bias, kernel_dir=cache_dir)
            except TreeShapUnsupported as exc:
                self.treeshap_error = str(exc)
                log.warning("model %s: fast reasons unavailable (%s); using XGBoost pred_contribs", self.version, exc)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        out = self.booster.inplace_predict(matrix, validate_features=False)
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def margin(self, matrix: np.ndarray) -> np.ndarray:
        out = self.booster.inplace_predict(matrix, validate_features=False, predict_type="margin")
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def _xgb_contributions(self, matrix: np.ndarray) -> np.ndarray:
        dm = xgb.DMatrix(matrix, missing=np.nan, nthread=1)
        return np.asarray(self.booster.predict(dm, pred_contribs=True, validate_features=False), dtype=np.float64)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        if self.treeshap is not None:
            return self.treeshap.contributions(matrix)
        return self._xgb_contributions(matrix)

    def describe(self) -> dict[str, object]:
        return {
            "version": self.version,
            "runtime": self.kind,
            "reasons": "treeshap-table" if self.treeshap is not None else "xgboost-pred_contribs",
        }
