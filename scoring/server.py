"""The gRPC scoring server: ``fraudscore.v1.FraudScoring`` plus ``grpc.health.v1.Health``.

* invalid requests → ``INVALID_ARGUMENT`` naming every bad field (``order.amount``);
* more than ``max_concurrency`` calls in flight → ``RESOURCE_EXHAUSTED`` (load shedding);
* the client's deadline bounds the feature read; a feature store that is down or late gives a
  degraded answer instead of a hang;
* decisions are published through a bounded buffer that never blocks the answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contracts.events import Decision
from contracts.exceptions import ContractError, FraudscoreError
from monitoring import metrics
from scoring.convert import decision_to_proto, order_from_proto
from scoring.pipeline import DecisionPipeline
from scoring.proto.fraudscore.v1 import scoring_pb2 as pb
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "fraudscore.v1.FraudScoring"
DecisionSink = Callable[[Decision], None]


def _discard(_: Decision) -> None:
    return None


class FraudScoringServicer(pb_grpc.FraudScoringServicer):
    """Score and ScoreBatch over the shared decision pipeline."""

    def __init__(
        self,
        pipeline: DecisionPipeline,
        *,
        max_concurrency: int = 256,
        default_deadline_s: float = 0.25,
        sink: DecisionSink = _discard,
    ) -> None:
        self.pipeline = pipeline
        self.max_concurrency = max_concurrency
        self.default_deadline_s = default_deadline_s
        self.sink = sink
        self.in_flight = 0

    def _feature_budget(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        budget = self.default_deadline_s if remaining is None else remaining
        # Leave room for model, rules and the answer: the store gets half of what is left.
        return max(0.001, min(self.pipeline.store_timeout_s, budget * 0.5))

    async def _guard(self, method: str, context: grpc.aio.ServicerContext) -> bool:
        if self.in_flight >= self.max_concurrency:
            metrics.REQUESTS.labels(method, "RESOURCE_EXHAUSTED").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: too many requests in flight; retry")
            return False
        return True

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:  # noqa: N802
        await self._guard("Score", context)
        self.in_flight += 1
        try:
            try:
                order = order_from_proto(request.order)
            except ContractError as exc:
                metrics.REQUESTS.labels("Score", "INVALID_ARGUMENT").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            decision = (await self.pipeline.decide([order], source="grpc", timeout_s=self._feature_budget(context)))[0]
            self.sink(decision)
            metrics.REQUESTS.labels("Score", "OK").inc()
            return decision_to_proto(decision, request.include_features)
        except FraudscoreError as exc:
            metrics.REQUESTS.labels("Score", exc.grpc_status_name()).inc()
            await context.abort(getattr(grpc.StatusCode, exc.grpc_status_name()), str(exc))
            raise  # unreachable: abort raises
        finally:
            self.in_flight -= 1

    async def ScoreBatch(  # noqa: N802
        self, request: pb.ScoreBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreBatchResponse:
        await self._guard("ScoreBatch", context)
        self.in_flight += 1
        try:
            orders = []
            problems: list[str] = []
            for i, msg in enumerate(request.orders):
                try:
                    orders.append(order_from_proto(msg, prefix=f"orders[{i}]"))
                except ContractError as exc:
                    problems.extend(str(e) for e in exc.errors)
            if problems:
                metrics.REQUESTS.labels("ScoreBatch", "INVALID_ARGUMENT").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid request: " + "; ".join(problems))
            decisions = await self.pipeline.decide(orders, source="grpc", timeout_s=self._feature_budget(context))
            for d in decisions:
                self.sink(d)
            metrics.REQUESTS.labels("ScoreBatch", "OK").inc()
            return pb.ScoreBatchResponse(results=[decision_to_proto(d, request.include_features) for d in decisions])
        finally:
            self.in_flight -= 1


async def start_server(
    servicer: FraudScoringServicer,
    host: str,
    port: int,
    *,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Start a grpc.aio server; returns the server, its health servicer and the bound port."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_FraudScoringServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, bound


async def stop_server(server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, grace_s: float = 5.0) -> None:
    """Graceful stop: report NOT_SERVING, refuse new calls, drain in-flight ones."""
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
    await asyncio.sleep(0)
