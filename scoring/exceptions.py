"""scoring errors.

Hierarchy::

    contracts.exceptions.FraudscoreError
    └── ScoringError
        ├── ModelArtifactError      a model artifact is missing, tampered with, unsigned or incompatible
        │                           (FAILED_PRECONDITION; the previous model keeps serving)
        ├── ModelUnavailable        no model is loaded (UNAVAILABLE; the pipeline answers with rules only)
        ├── CompiledUnavailable     the compiled runtime could not be built, loaded or failed parity
        │                           (the native runtime serves instead)
        ├── TreeShapUnsupported     the tabulated TreeSHAP cannot handle this model (XGBoost's
        │                           pred_contribs gives the reasons instead)
        └── EndpointUnavailable     the SageMaker endpoint failed, timed out or answered nonsense
                                    (UNAVAILABLE; the pipeline answers with rules only, ``model_error``)

Third-party errors (xgboost, tl2cgen, botocore) are translated into these where they are raised.
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


class CompiledUnavailable(ScoringError):
    """The compiled runtime could not be built, loaded or failed its parity check (native serves)."""


class TreeShapUnsupported(ScoringError):
    """The model cannot use the tabulated TreeSHAP (categorical splits, dart, table too large)."""


class EndpointUnavailable(ScoringError):
    """The SageMaker endpoint failed, timed out or answered something unreadable."""

    grpc_status = "UNAVAILABLE"
