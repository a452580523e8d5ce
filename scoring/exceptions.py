"""scoring errors.

Hierarchy::

    contracts.exceptions.FraudscoreError
    └── ScoringError
        ├── ModelArtifactError      a model artifact is missing, tampered with or incompatible
        └── ModelUnavailable        no model is loaded (the pipeline answers with rules only)
"""

from __future__ import annotations

from contracts.exceptions import FraudscoreError


class ScoringError(FraudscoreError):
    """Root of scoring errors."""


class ModelArtifactError(ScoringError):
    """A model artifact cannot be trusted or used; the message says which file and why."""

    grpc_status = "FAILED_PRECONDITION"


class ModelUnavailable(ScoringError):
    """No model is loaded."""

    grpc_status = "UNAVAILABLE"
