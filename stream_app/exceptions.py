"""stream_app errors.

Hierarchy::

    contracts.exceptions.FraudscoreError
    └── StreamError
        ├── BrokerUnavailable          the Kafka / Kinesis endpoint cannot be reached (UNAVAILABLE)
        ├── SourceError                a source failed in a way a retry will not fix (e.g. stream missing)
        ├── CheckpointError            Kinesis checkpoints / leases could not be read or written
        ├── SinkError                  a batch of outputs could not be made durable (the batch is retried)
        │   └── WebhookDeliveryFailed  an action could not be delivered after every attempt (dead-lettered)
        ├── DeadLetterUnavailable      a dead letter could not be written: the consumer stops, never drops it
        └── BatchAbandoned             a batch's effects could not be made durable within its time budget;
                                       its offsets were rewound and it will be polled again

Third-party errors (aiokafka, botocore, aiohttp) are translated into these at the module that calls
the library; nothing above ``stream_app`` sees a third-party exception.
"""

from __future__ import annotations

from contracts.exceptions import FraudscoreError


class StreamError(FraudscoreError):
    """Root of stream_app errors."""


class BrokerUnavailable(StreamError):
    """The broker cannot be reached; the message names the bootstrap address."""

    grpc_status = "UNAVAILABLE"


class SourceError(StreamError):
    """A source cannot go on (a missing stream or topic, a permission error)."""

    grpc_status = "FAILED_PRECONDITION"


class CheckpointError(StreamError):
    """Checkpoints or shard leases could not be read or written."""

    grpc_status = "UNAVAILABLE"


class SinkError(StreamError):
    """Outputs could not be made durable; the batch is not committed and will be retried."""

    grpc_status = "UNAVAILABLE"


class WebhookDeliveryFailed(SinkError):
    """Every attempt to deliver an action failed; the action is dead-lettered with this error."""

    def __init__(self, message: str, *, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class DeadLetterUnavailable(StreamError):
    """The dead-letter destination refused a record. The consumer stops rather than drop an event."""

    grpc_status = "UNAVAILABLE"


class BatchAbandoned(StreamError):
    """A batch could not complete within its budget (e.g. the feature store stayed down).

    Its partitions were rewound to the batch's first offsets; nothing was committed.
    """

    grpc_status = "UNAVAILABLE"
