"""The embedded, in-process feature store (the default of ``fraudscore up``)."""

from __future__ import annotations

from collections.abc import Sequence

from contracts.events import Order
from feature_state.definitions import FeatureSet
from feature_state.stores.base import FeatureStore
from feature_state.windows import EntityLayout, EntityState, Features, derive, epoch, read_entity


class MemoryStore(FeatureStore):
    """Exact windows kept in a dict; state lives as long as the process."""

    def __init__(self, features: FeatureSet, allowed_lateness_s: float = 3600.0) -> None:
        super().__init__(features)
        self.layout = EntityLayout(features)
        self.horizon_s = features.max_window_s + allowed_lateness_s
        self.states: dict[str, EntityState] = {}

    def _features(self, order: Order) -> Features:
        values: Features = {}
        for entity in self.layout.by_entity:
            key = self.layout.key(entity, order)
            if key is None:
                values.update({f.name: None for f in self.layout.by_entity[entity]})
                continue
            values.update(read_entity(self.layout, entity, self.states.get(key), order))
        ordered: Features = {f.name: values[f.name] for f in self.features.aggregates}
        ordered.update(derive(self.features, order, ordered))
        return ordered

    def apply(self, order: Order) -> None:
        t = epoch(order)
        for entity in self.layout.by_entity:
            key = self.layout.key(entity, order)
            if key is None:
                continue
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = EntityState()
            if state.add(order.order_id, t, self.layout.values(entity, order)):
                state.prune(self.horizon_s)

    async def read_as_of(self, orders: Sequence[Order]) -> list[Features]:
        return [self._features(o) for o in orders]

    async def apply_and_read(self, orders: Sequence[Order]) -> list[Features]:
        out = []
        for o in orders:
            self.apply(o)
            out.append(self._features(o))
        return out
