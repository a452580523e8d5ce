"""training errors.

Hierarchy::

    contracts.exceptions.FraudscoreError
    └── TrainingError
        └── RegistryError          unknown model version, or a promotion that is not allowed
"""

from __future__ import annotations

from contracts.exceptions import FraudscoreError


class TrainingError(FraudscoreError):
    """Root of training errors."""


class RegistryError(TrainingError):
    """The model registry refused an operation; the message says why."""

    grpc_status = "FAILED_PRECONDITION"
