"""The model runtime interface: every backend scores a feature matrix; most also explain it.

One module per backend (``native``, ``compiled``, ``sagemaker``), chosen by a type name in the
settings (:data:`scoring.runtimes.RUNTIME_CLASS_FOR_TYPE`) and imported lazily. Capabilities are
declared, not assumed: a backend that cannot give contributions says so in
:attr:`ModelRuntime.supports_contributions` and the pipeline answers without reasons.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class ModelRuntime(ABC):
    """A loaded, verified model."""

    #: backend type name (``native``, ``compiled``, ``sagemaker``)
    kind: str = "abstract"
    version: str
    feature_names: tuple[str, ...]
    #: True when :meth:`contributions` works (reason codes)
    supports_contributions: bool = True
    #: True when calls block on I/O (a remote endpoint): the pipeline runs them in a thread with a deadline
    blocking_io: bool = False

    @abstractmethod
    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Fraud probability per row of ``matrix`` (float32, NaN = missing), float64."""

    @abstractmethod
    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Per-feature contributions to the margin (rows × (features + 1), bias last)."""

    def explain(self, matrix: np.ndarray, with_contributions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and (optionally) contributions in one call (remote backends override: one round trip)."""
        probs = self.predict(matrix)
        if not with_contributions or not self.supports_contributions:
            return probs, None
        return probs, self.contributions(matrix)

    def describe(self) -> dict[str, object]:
        """What serves, for health output and logs."""
        return {"version": self.version, "runtime": self.kind}

    def close(self) -> None:  # noqa: B027 - optional
        """Release resources."""
