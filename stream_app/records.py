"""Source-neutral records: what a Kafka or Kinesis source hands to the processors, and what they emit.

A :class:`SourceRecord` names where it came from (``stream`` = topic or Kinesis stream, ``partition``
= partition number or shard id, ``position`` = offset or sequence number) so a dead letter can say
exactly which event failed, whatever the transport.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Kafka header on a repeated decision / action (an ``order_id`` already published unmarked). Kinesis
#: records have no headers: the Kinesis sink carries the mark as ``"duplicate": true`` in the JSON.
DUPLICATE_HEADER = "fraudscore-duplicate"


@dataclass(slots=True, frozen=True)
class SourceRecord:
    """One event as read from a source."""

    stream: str
    partition: int | str
    position: int | str
    key: bytes | None
    value: bytes
    timestamp_ms: int | None = None


@dataclass(slots=True)
class OutRecord:
    """One record to publish: ``key`` decides the partition (Kafka) or shard (Kinesis)."""

    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class Outputs:
    """Everything one batch publishes, by destination topic / stream name."""

    by_topic: dict[str, list[OutRecord]] = field(default_factory=dict)

    def add(self, topic: str, record: OutRecord) -> None:
        self.by_topic.setdefault(topic, []).append(record)

    def extend(self, topic: str, records: list[OutRecord]) -> None:
        if records:
            self.by_topic.setdefault(topic, []).extend(records)

    def count(self, topic: str) -> int:
        return len(self.by_topic.get(topic, ()))

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_topic.values())
