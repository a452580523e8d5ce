"""Score against the real Redis feature store: stopped or hung mid-test → degraded answers inside the
deadline; back → normal answers again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import grpc

from contracts.events import Order
from scoring.proto.fraudscore.v1 import scoring_pb2 as pb
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc
from tests.scoring.conftest import order_msg


async def _score(stub: Any, **kw: Any) -> pb.ScoreResponse:
    return await stub.Score(pb.ScoreRequest(order=order_msg(**kw), include_features=True), timeout=0.5)


async def test_redis_down_then_back(grpc_server: Any, channel_for: Any, redis_server: Any, redis_url: str,
                                    sample_orders: list[Order]) -> None:
    srv = await grpc_server(**{"feature_store.type": "redis", "feature_store.redis_url": redis_url})
    await srv.parts.pipeline.store.apply_and_read(sample_orders[:50])  # some history in Redis
    stub = pb_grpc.FraudScoringStub(channel_for(srv.target))
    cust = sample_orders[10].customer_id
    ok = await _score(stub, customer_id=cust, event_time=sample_orders[49].event_time.isoformat())
    assert not ok.degraded and ok.features["customer_order_count_24h"] >= 1

    # hung (SIGSTOP): reads time out → degraded, within the deadline
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        hung = await _score(stub, customer_id=cust)
        assert hung.degraded and "feature_store_unavailable" in hung.degraded_reasons and hung.HasField("score")
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)

    # stopped: connection refused → degraded
    redis_server.stop()
    for i in range(3):
        down = await _score(stub, order_id=f"down{i}")
        assert down.degraded and "feature_store_unavailable" in down.degraded_reasons

    # back: normal answers again (the client reconnects by itself)
    redis_server.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            back = await _score(stub, order_id="back")
        except grpc.aio.AioRpcError:
            back = None
        if back is not None and not back.degraded:
            break
        assert time.monotonic() < deadline, "still degraded 10 s after Redis came back"
        await asyncio.sleep(0.1)
