"""A view of the feature store for the stream path that keeps what ``apply_batch`` reports.

The shared pipeline applies a batch through ``apply_and_read`` (features only). The stream also
needs to know which orders the store refused as *late* (older than an entity's watermark minus
the allowed lateness) so it can dead-letter them. This view delegates everything to the real
store and, when the store offers ``apply_batch``, keeps the late events of the last call in
:attr:`late`. It changes no result and holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.events import Label, Order
from feature_state.stores.base import FeatureStore
from feature_state.windows import Features


class LateCapturingStore(FeatureStore):
    """Delegates to ``inner``; records the late events of the last apply."""

    def __init__(self, inner: FeatureStore) -> None:
        super().__init__(inner.features)
        self.inner = inner
        self.durable = inner.durable
        self.shared = inner.shared
        self.late: list[Any] = []

    async def read_as_of(self, orders: Sequence[Order]) -> list[Features]:
        return await self.inner.read_as_of(orders)

    async def apply_batch(self, orders: Sequence[Order]) -> Any:
        result = await self.inner.apply_batch(orders)
        self.late = list(getattr(result, "late", ()) or ())
        return result

    async def apply_and_read(self, orders: Sequence[Order]) -> list[Features]:
        self.late = []
        if hasattr(self.inner, "apply_batch"):
            result = await self.apply_batch(orders)
            features: list[Features] = result.features
            return features
        return await self.inner.apply_and_read(orders)

    async def apply_labels(self, labels: Sequence[Label]) -> Any:
        return await self.inner.apply_labels(labels)

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
