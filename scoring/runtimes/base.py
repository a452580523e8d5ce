"""The model runtime interface: every backend predicts fraud probabilities for a feature matrix."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class ModelRuntime(ABC):
    """A loaded, verified model."""

    version: str
    feature_names: tuple[str, ...]

    @abstractmethod
    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Fraud probability per row of ``matrix`` (float32, NaN = missing)."""

    @abstractmethod
    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Per-feature contributions to the margin (rows × (features + 1 bias))."""
