"""stream_app errors.

Hierarchy::

    contracts.exceptions.FraudscoreError
    └── StreamError
        └── BrokerUnavailable      the Kafka / Kinesis endpoint cannot be reached
"""

from __future__ import annotations

from contracts.exceptions import FraudscoreError


class StreamError(FraudscoreError):
    """Root of stream_app errors."""


class BrokerUnavailable(StreamError):
    """The broker cannot be reached; the message names the bootstrap address."""

    grpc_status = "UNAVAILABLE"
