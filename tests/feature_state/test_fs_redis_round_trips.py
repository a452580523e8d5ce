"""A Redis `as_of` read of an in-order order is one command (one round trip), counted by the server."""

from __future__ import annotations

import asyncio
import datetime as dt

import redis

from contracts.events import Order, Payment
from feature_state.definitions import load_feature_set
from feature_state.stores.redis import RedisStore

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _order(i: int, seconds: float) -> Order:
    return Order(order_id=f"rt{i}", event_time=T0 + dt.timedelta(seconds=seconds), customer_id=f"c{i % 3}",
                 amount=10.0 + i, currency="EUR", merchant_id="m1", device_id=f"d{i % 2}", ip_address="10.0.0.1",
                 payment=Payment(method="card", card_fingerprint=f"tok{i % 4}", card_country="DE"))


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}


def test_one_order_read_is_one_command(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)

    async def scenario() -> tuple[dict[str, int], dict[str, int], list[dict[str, float | None]]]:
        store = RedisStore(load_feature_set(), redis_url, allowed_lateness_s=3600, timeout_ms=2000)
        try:
            await store.apply_batch([_order(i, 60 * i) for i in range(40)])
            await store.read_as_of([_order(90, 60 * 41)])  # warm-up: connection set-up commands
            before = _calls(client)
            feats = await store.read_as_of([_order(91, 60 * 42)])
            after = _calls(client)
            return before, after, feats
        finally:
            await store.close()

    before, after, feats = asyncio.run(scenario())
    issued = {cmd: n - before.get(cmd, 0) for cmd, n in after.items() if n != before.get(cmd, 0)}
    assert sum(issued.values()) == 1, f"one read issued {issued}"
    assert feats[0]["customer_order_count_1h"] is not None
    client.close()
