"""feature_state errors.

Hierarchy::

    contracts.exceptions.FraudscoreError
    └── FeatureStateError
        ├── FeatureDefinitionError      a feature definitions file is invalid (file:line in the message)
        └── FeatureStoreUnavailable     the store did not answer within its timeout (gRPC UNAVAILABLE)
"""

from __future__ import annotations

from contracts.exceptions import FraudscoreError


class FeatureStateError(FraudscoreError):
    """Root of feature_state errors."""


class FeatureDefinitionError(FeatureStateError):
    """A feature definitions file is invalid; the message names the file, line and fix."""

    grpc_status = "FAILED_PRECONDITION"


class FeatureStoreUnavailable(FeatureStateError):
    """The feature store is down, unreachable or too slow; callers fall back (degraded)."""

    grpc_status = "UNAVAILABLE"
