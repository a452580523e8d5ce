"""The gRPC scoring server: ``fraudscore.v1.FraudScoring`` plus ``grpc.health.v1.Health``.

* invalid requests → ``INVALID_ARGUMENT`` naming every bad field (``order.amount``); a card number
  anywhere → ``INVALID_ARGUMENT`` naming the field, never echoing or logging the number;
* more than ``max_concurrency`` calls in flight → ``RESOURCE_EXHAUSTED`` (load shedding);
* the client's deadline is honoured and split: the feature read gets a share, a remote model the
  rest; a call that arrives with (almost) no time left fails at once with ``DEADLINE_EXCEEDED``;
  a dependency that is down or late gives a ``degraded`` answer inside the deadline, never a hang;
* bearer tokens (``authorization: Bearer <token>``) when tokens are configured → otherwise
  ``UNAUTHENTICATED`` (health and reflection stay open for probes and tooling);
* TLS, and mTLS when a client CA is configured; reflection only when enabled;
* several processes may share the port (``SO_REUSEPORT``);
* decisions are handed to a sink (the bounded Kafka publisher) that never blocks the answer;
* graceful stop: health NOT_SERVING, new calls refused, in-flight calls drained.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contracts.config import TlsSettings
from contracts.events import Decision
from contracts.exceptions import ConfigError, ContractError, FraudscoreError
from monitoring import metrics
from scoring.convert import decision_to_proto, order_from_proto
from scoring.pipeline import DecisionPipeline
from scoring.proto.fraudscore.v1 import scoring_pb2 as pb
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc
from scoring.scoring_metrics import AUTH_FAILURES, IN_FLIGHT, SHED

log = logging.getLogger(__name__)

SERVICE_NAME = "fraudscore.v1.FraudScoring"
DecisionSink = Callable[[Decision], None]
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _discard(_: Decision) -> None:
    return None


class _Requests:
    """Pre-bound request counters (label lookups cost a microsecond each)."""

    def __init__(self) -> None:
        self._c: dict[tuple[str, str], Any] = {}

    def inc(self, method: str, code: str) -> None:
        c = self._c.get((method, code))
        if c is None:
            c = self._c[(method, code)] = metrics.REQUESTS.labels(method, code)
        c.inc()


class FraudScoringServicer(pb_grpc.FraudScoringServicer):
    """Score and ScoreBatch over the shared decision pipeline."""

    def __init__(
        self,
        pipeline: DecisionPipeline,
        *,
        max_concurrency: int = 256,
        default_deadline_s: float = 0.25,
        min_deadline_s: float = 0.001,
        max_batch: int = 1000,
        sink: DecisionSink = _discard,
    ) -> None:
        self.pipeline = pipeline
        self.max_concurrency = max_concurrency
        self.default_deadline_s = default_deadline_s
        self.min_deadline_s = min_deadline_s
        self.max_batch = max_batch
        self.sink = sink
        self.in_flight = 0
        self.draining = False
        self._last_arrival = 0.0
        self._requests = _Requests()

    async def drain(self, timeout_s: float, quiet_s: float = 0.1) -> bool:
        """Refuse new calls (UNAVAILABLE) and wait until the in-flight ones have answered.

        Also waits for ``quiet_s`` without any arriving call, so calls grpc has already received but
        not yet handed to us get a retryable UNAVAILABLE from here rather than being cancelled by the
        transport shutdown.
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._last_arrival = loop.time()
        while loop.time() < deadline:
            if self.in_flight == 0 and loop.time() - self._last_arrival >= quiet_s:
                return True
            await asyncio.sleep(0.005)
        return self.in_flight == 0

    async def _enter(self, method: str, context: grpc.aio.ServicerContext) -> float:
        """Admission: shed over the limit, fail fast without time; returns the budget in seconds."""
        if self.draining:
            self._last_arrival = asyncio.get_running_loop().time()
            self._requests.inc(method, "UNAVAILABLE")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another instance")
        if self.in_flight >= self.max_concurrency:
            SHED.inc()
            self._requests.inc(method, "RESOURCE_EXHAUSTED")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"server busy: {self.in_flight} calls in flight (limit {self.max_concurrency}); retry "
                                "with backoff or on another instance")
        remaining = context.time_remaining()
        budget = self.default_deadline_s if remaining is None else min(remaining, self.default_deadline_s * 4)
        if budget < self.min_deadline_s:
            self._requests.inc(method, "DEADLINE_EXCEEDED")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"deadline too short: {budget * 1000:.2f} ms left on arrival")
        return budget

    async def _fail(self, method: str, context: grpc.aio.ServicerContext, exc: FraudscoreError) -> None:
        code = exc.grpc_status_name()
        self._requests.inc(method, code)
        if code == "INTERNAL":
            log.error("%s failed: %s", method, exc)
        await context.abort(getattr(grpc.StatusCode, code, grpc.StatusCode.INTERNAL), str(exc))

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:  # noqa: N802
        budget = await self._enter("Score", context)
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            try:
                order = order_from_proto(request.order)
            except ContractError as exc:
                await self._fail("Score", context, exc)
                raise  # unreachable: abort raises
            try:
                decision = (await self.pipeline.decide([order], source="grpc", budget_s=budget))[0]
            except FraudscoreError as exc:
                await self._fail("Score", context, exc)
                raise
            self.sink(decision)
            self._requests.inc("Score", "OK")
            return decision_to_proto(decision, request.include_features)
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()

    async def ScoreBatch(  # noqa: N802
        self, request: pb.ScoreBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreBatchResponse:
        budget = await self._enter("ScoreBatch", context)
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            if len(request.orders) > self.max_batch:
                self._requests.inc("ScoreBatch", "INVALID_ARGUMENT")
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"orders: at most {self.max_batch} per call, got {len(request.orders)}")
            orders = []
            problems: list[str] = []
            for i, msg in enumerate(request.orders):
                try:
                    orders.append(order_from_proto(msg, prefix=f"orders[{i}]"))
                except ContractError as exc:
                    problems.extend(str(e) for e in exc.errors)
            if problems:
                self._requests.inc("ScoreBatch", "INVALID_ARGUMENT")
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid request: " + "; ".join(problems))
            try:
                decisions = await self.pipeline.decide(orders, source="grpc", budget_s=budget)
            except FraudscoreError as exc:
                await self._fail("ScoreBatch", context, exc)
                raise
            for d in decisions:
                self.sink(d)
            self._requests.inc("ScoreBatch", "OK")
            return pb.ScoreBatchResponse(results=[decision_to_proto(d, request.include_features) for d in decisions])
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()


async def _unauthenticated(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                        "missing or invalid bearer token: send metadata `authorization: Bearer <token>`")


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Accept a call only with ``authorization: Bearer <one of the tokens>`` (health / reflection exempt)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens or any(not t for t in tokens):
            raise ConfigError("scoring.auth_tokens: tokens must be non-empty strings")
        self._expected = [f"Bearer {t}".encode() for t in tokens]
        self._deny = grpc.unary_unary_rpc_method_handler(_unauthenticated)

    def _ok(self, metadata: Sequence[Any] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                return any(hmac.compare_digest(got, e) for e in self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.startswith(_OPEN_PREFIXES) or self._ok(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        AUTH_FAILURES.inc()
        return self._deny


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings; mTLS (client certificates required) when a client CA is set."""
    if tls.cert_file is None and tls.key_file is None:
        if tls.client_ca_file is not None:
            raise ConfigError("scoring.tls.client_ca_file needs scoring.tls.cert_file and key_file (mTLS is TLS+)")
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ConfigError("scoring.tls: set both cert_file and key_file")

    def read(p: Path, what: str) -> bytes:
        try:
            return p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"scoring.tls.{what}: cannot read {p}: {exc.strerror}") from None

    cert = read(tls.cert_file, "cert_file")
    key = read(tls.key_file, "key_file")
    ca = read(tls.client_ca_file, "client_ca_file") if tls.client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


async def start_server(
    servicer: FraudScoringServicer,
    host: str,
    port: int,
    *,
    max_message_bytes: int = 4 * 1024 * 1024,
    tls: TlsSettings | None = None,
    tokens: Sequence[str] = (),
    reflection: bool = False,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Start a grpc.aio server; returns the server, its health servicer and the bound port."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    interceptors = [TokenAuthInterceptor(tokens)] if tokens else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
    pb_grpc.add_FraudScoringServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection:
        from grpc_reflection.v1alpha import reflection as refl

        refl.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, refl.SERVICE_NAME), server
        )
    creds = server_credentials(tls) if tls is not None else None
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    if bound == 0:
        raise ConfigError(f"cannot bind gRPC port {address} (in use, or not an address of this host)")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, bound


async def stop_server(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    grace_s: float = 5.0,
    servicer: FraudScoringServicer | None = None,
) -> None:
    """Graceful stop: report NOT_SERVING, refuse new calls, let in-flight ones finish (up to ``grace_s``).

    With the servicer given, new calls are refused by the servicer itself (``UNAVAILABLE``, retryable)
    while the in-flight ones finish, and only then is the transport shut down: grpc core would
    otherwise cancel calls it had received but not yet handed to the application.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    await health_servicer.enter_graceful_shutdown()
    if servicer is not None:
        await servicer.drain(grace_s)
    await server.stop(max(0.0, grace_s - (loop.time() - start)))
    await asyncio.sleep(0)
