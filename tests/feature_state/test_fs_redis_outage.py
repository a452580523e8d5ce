"""Redis down, frozen or restarted: a typed error within the timeout, never a hang; then it recovers."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from collections.abc import Iterator

import pytest
from fs_streams import T0, stream_features

from contracts.events import Order
from feature_state.exceptions import FeatureStoreUnavailable
from feature_state.stores.redis import RedisStore
from tests.services import RedisServer

FS = stream_features()
#: a hang would blow this bound; it is not a latency assertion (the store's timeout is 100 ms)
NO_HANG_S = 10.0


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


def _order(i: int) -> Order:
    return Order(order_id=f"o{i}", event_time=T0 + dt.timedelta(seconds=i), customer_id="c1", amount=5.0,
                 currency="EUR")


async def _expect_unavailable(coro: object) -> str:
    with pytest.raises(FeatureStoreUnavailable) as info:
        await asyncio.wait_for(coro, NO_HANG_S)  # type: ignore[arg-type]
    return str(info.value)


def test_down_frozen_and_back_without_restarting_the_store(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        store = RedisStore(FS, own_redis.url, timeout_ms=100, write_timeout_ms=300)
        try:
            assert await store.ping()
            first = (await store.apply_batch([_order(1)])).features[0]
            assert first["c_cnt_5m"] == 1.0

            # frozen: the process accepts connections but never answers (SIGSTOP)
            assert own_redis.proc is not None
            own_redis.proc.send_signal(signal.SIGSTOP)
            msg = await _expect_unavailable(store.read_as_of([_order(2)]))
            assert "did not answer within 100 ms" in msg or "Timeout" in msg
            await _expect_unavailable(store.apply_batch([_order(2)]))
            assert not await store.ping()
            own_redis.proc.send_signal(signal.SIGCONT)

            # down: connection refused
            own_redis.stop()
            await _expect_unavailable(store.read_as_of([_order(2)]))
            await _expect_unavailable(store.apply_batch([_order(2)]))

            # back (empty: no persistence, and its Lua script cache is gone): works again, same store object
            own_redis.start()
            res = await asyncio.wait_for(store.apply_batch([_order(3), _order(4)]), NO_HANG_S)
            assert res.applied == 2 and res.features[1]["c_cnt_5m"] == 2.0
            assert (await store.read_as_of([_order(4)]))[0] == res.features[1]
            assert await store.ping()
        finally:
            await store.close()

    asyncio.run(scenario())
