"""The feature store interface every backend implements.

Two reads, one write:

* :meth:`FeatureStore.read_as_of` — the gRPC path: each order's features *including the order
  itself*, as of its event time, without applying it (the stream applies it later, once).
* :meth:`FeatureStore.apply_and_read` — the stream path: apply a batch of orders idempotently
  and return each order's features as of itself (earlier orders of the batch included).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from contracts.events import Label, Order
from feature_state.definitions import FeatureSet
from feature_state.windows import Features


class FeatureStore(ABC):
    """Rolling per-entity aggregates, exactly-once per (entity, order id)."""

    #: True when the backend persists across process restarts.
    durable: bool = False
    #: True when many processes can share the store (the gRPC server and stream workers).
    shared: bool = False

    def __init__(self, features: FeatureSet) -> None:
        self.features = features

    @property
    def feature_names(self) -> list[str]:
        return self.features.names

    @abstractmethod
    async def read_as_of(self, orders: Sequence[Order]) -> list[Features]:
        """Features of each order as of its event time, including itself; applies nothing."""

    @abstractmethod
    async def apply_and_read(self, orders: Sequence[Order]) -> list[Features]:
        """Apply the orders (idempotent) and return each one's features as of itself."""

    async def apply_labels(self, labels: Sequence[Label]) -> None:  # noqa: B027 - optional capability
        """Apply labelled outcomes to label-derived features (no-op when none are defined)."""

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""
