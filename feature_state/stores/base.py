"""The feature store interface every backend implements.

Reads and writes:

* :meth:`FeatureStore.read_as_of` — the gRPC path: each order's features *including the order
  itself*, as of its event time, without applying it (the stream applies it later, once).
* :meth:`FeatureStore.apply_batch` — the stream path: apply a batch of orders exactly once per
  (entity, order id) and return each one's features as of itself, plus which orders were refused
  as late (the caller counts and dead-letters those). :meth:`apply_and_read` is the same, features only.
* :meth:`FeatureStore.apply_labels` — fraud labels for label-derived features.

Capabilities are declared as class attributes so callers check rather than assume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from contracts.events import Label, Order
from feature_state.definitions import FeatureSet
from feature_state.windows import Features


@dataclass
class LateEvent:
    """An event refused because it is older than an entity's watermark minus the allowed lateness."""

    index: int  #: position in the batch given to the store
    event_id: str
    event_time_us: int
    watermark_us: int  #: the entity watermark it was judged against
    entity_key: str

    def reason(self) -> str:
        late_s = (self.watermark_us - self.event_time_us) / 1e6
        return (f"event {self.event_id} is {late_s:.1f}s behind the watermark of {self.entity_key}, beyond the "
                f"allowed lateness; not applied")


@dataclass
class BatchResult:
    """What applying a batch did."""

    features: list[Features]
    late: list[LateEvent] = field(default_factory=list)
    #: (entity, event) pairs that were already applied (replays, redeliveries): changed nothing
    duplicates: int = 0
    #: (entity, event) pairs newly applied
    applied: int = 0
    #: events applied to some entities but refused for others after a concurrent writer moved a
    #: watermark between read and commit (rare; counted in a metric)
    partial: int = 0


class FeatureStore(ABC):
    """Rolling per-entity aggregates, exactly-once per (entity, event id)."""

    #: True when the backend persists across process restarts.
    durable: bool = False
    #: True when many processes can share the store (the gRPC server and stream workers).
    shared: bool = False
    #: True when the store computes label-derived features (``apply_labels`` does something).
    supports_labels: bool = True
    #: True when a batch is written in a bounded number of network round trips.
    batch_writes: bool = True

    def __init__(self, features: FeatureSet) -> None:
        self.features = features

    @property
    def feature_names(self) -> list[str]:
        return self.features.names

    @abstractmethod
    async def read_as_of(self, orders: Sequence[Order]) -> list[Features]:
        """Features of each order as of its event time, including itself; applies nothing."""

    @abstractmethod
    async def apply_batch(self, orders: Sequence[Order]) -> BatchResult:
        """Apply the orders (exactly once per entity) and return each one's features as of itself."""

    async def apply_and_read(self, orders: Sequence[Order]) -> list[Features]:
        """Apply the orders (idempotent) and return each one's features as of itself.

        Late orders are counted (``fraudscore_feature_late_events_total``) and not applied; use
        :meth:`apply_batch` to learn which ones to dead-letter.
        """
        return (await self.apply_batch(orders)).features

    async def apply_labels(self, labels: Sequence[Label]) -> BatchResult:
        """Apply labelled outcomes to label-derived features (exactly once per entity and order)."""
        return BatchResult(features=[])

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:  # noqa: B027 - optional
        """Release connections (and persist, for stores that do)."""
