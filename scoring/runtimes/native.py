"""Native XGBoost runtime (``xgboost.Booster``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xgboost as xgb

from scoring.artifacts import Manifest
from scoring.runtimes.base import ModelRuntime


class NativeRuntime(ModelRuntime):
    def __init__(self, version_dir: Path, manifest: Manifest) -> None:
        self.version = manifest.version
        self.feature_names = manifest.feature_names
        self.booster = xgb.Booster()
        self.booster.load_model(str(version_dir / manifest.model_file))
        self.booster.set_param({"nthread": 1})

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        out = self.booster.inplace_predict(matrix, validate_features=False)
        return np.asarray(out, dtype=np.float64)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        dm = xgb.DMatrix(matrix, missing=np.nan)
        return np.asarray(self.booster.predict(dm, pred_contribs=True, validate_features=False), dtype=np.float64)
