"""``fraudscore up``: the whole platform on one machine.

Starts, in order: the embedded Kafka-compatible broker (unless ``KAFKA_BOOTSTRAP`` is set), the
topics, a first model (trained on simulated history when the registry is empty), the feature
store, then in this process the stream worker, the gRPC scoring server and the metrics / health
endpoint. ``--demo`` adds live simulated traffic and a summary line every few seconds.

Ctrl-C or SIGTERM stops everything in reverse order; the broker child also dies with this
process if it is killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

from aiokafka import AIOKafkaProducer

from contracts.config import Settings
from contracts.exceptions import FraudscoreError
from fraudscore.assemble import Parts, build_parts
from monitoring.http import MetricsServer
from scoring.server import FraudScoringServicer, start_server, stop_server
from stream_app.embedded_broker import EmbeddedBroker, port_free
from stream_app.kafka import bootstrap, client_kwargs, ensure_topics
from stream_app.publisher import DecisionPublisher
from stream_app.worker import OrdersWorker

log = logging.getLogger("fraudscore.up")


class PortInUse(FraudscoreError):
    """A port the platform needs is taken."""


def check_ports(settings: Settings) -> None:
    """Fail fast, naming every port that is already taken."""
    wanted = [
        (settings.scoring.grpc_host, settings.scoring.grpc_port, "gRPC scoring (FRAUDSCORE_GRPC_PORT)"),
        (settings.metrics.host, settings.metrics.port, "metrics/health HTTP (FRAUDSCORE_METRICS_PORT)"),
    ]
    if settings.kafka.bootstrap is None:
        wanted.append(
            (settings.kafka.embedded_host, settings.kafka.embedded_port,
             "embedded Kafka broker (FRAUDSCORE__KAFKA__EMBEDDED_PORT, or set KAFKA_BOOTSTRAP)")
        )
    taken = [f"{host}:{port} — {what}" for host, port, what in wanted if not port_free(host, port)]
    if taken:
        raise PortInUse(
            "port already in use: " + "; ".join(taken)
            + ". Is another `fraudscore up` running? Stop it or choose other ports."
        )


@dataclass
class Summary:
    """Rolling numbers for the live summary line."""

    started: float = field(default_factory=time.monotonic)
    last_orders: int = 0
    last_t: float = field(default_factory=time.monotonic)


def _p99(values: deque[float], last: int) -> float | None:
    """p99 of the ``last`` values appended (the orders decided since the previous summary line)."""
    n = min(last, len(values))
    if n <= 0:
        return None
    s = sorted(list(values)[-n:])
    return s[min(n - 1, int(n * 0.99))]


def summary_line(worker: OrdersWorker, summary: Summary, parts: Parts) -> str:
    now = time.monotonic()
    st = worker.stats
    new_orders = st.orders - summary.last_orders
    rate = new_orders / max(1e-6, now - summary.last_t)
    summary.last_orders, summary.last_t = st.orders, now
    d = st.decisions
    p99 = _p99(st.recent_latency_ms, new_orders)  # this interval's orders: a start-up backlog does not linger
    model = parts.models.current.version if parts.models.current else "none"
    rs = parts.rules.current.version if parts.rules.current else "none"
    return (
        f"[{now - summary.started:6.0f}s] {rate:7.0f} orders/s | decided {st.orders:>8} | "
        f"allow {d['allow']} review {d['review']} challenge {d['challenge']} block {d['block']} | "
        f"dead letters {st.dead_letters} | p99 order→decision "
        + (f"{p99:.0f} ms" if p99 is not None else "n/a")
        + f" | model {model} | rules {rs}"
    )


async def _reload_loop(parts: Parts, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        parts.rules.refresh()
        await asyncio.to_thread(parts.models.refresh)  # loading a model (TreeSHAP table) takes ~1 s: off the loop


async def run_platform(
    settings: Settings,
    *,
    demo: bool = False,
    demo_rate: float = 200.0,
    out: TextIO = sys.stdout,
    ready: asyncio.Event | None = None,
) -> int:
    """Run until SIGINT/SIGTERM. Returns the process exit code."""
    from fraudscore.bootstrap import ensure_model  # heavy imports only when needed

    check_ports(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    broker: EmbeddedBroker | None = None
    if settings.kafka.bootstrap is None:
        broker = EmbeddedBroker(settings.kafka.embedded_host, settings.kafka.embedded_port,
                                log_file=settings.data_dir / "broker.log")
        broker.start()
        print(f"embedded Kafka-compatible broker on {broker.bootstrap} (memory storage)", file=out, flush=True)
    else:
        print(f"using Kafka at {settings.kafka.bootstrap}", file=out, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    metrics_server: MetricsServer | None = None
    grpc_server = None
    worker: OrdersWorker | None = None
    publisher: DecisionPublisher | None = None
    producer: AIOKafkaProducer | None = None
    try:
        await ensure_topics(settings.kafka)
        version = await asyncio.to_thread(ensure_model, settings, out)
        print(f"model {version} is the champion", file=out, flush=True)
        parts = build_parts(settings, background_compile=True)  # gRPC answers single orders: compile
        metrics_server = MetricsServer(settings.metrics.host, settings.metrics.port, parts.health).start()
        worker = OrdersWorker(settings, parts.pipeline, parts.store)
        summary = Summary()
        producer = AIOKafkaProducer(**client_kwargs(settings.kafka), linger_ms=5)
        await producer.start()
        publisher = DecisionPublisher(producer, settings.kafka.topics.decisions,
                                      maxsize=settings.scoring.publish_buffer).start()
        servicer = FraudScoringServicer(
            parts.pipeline,
            max_concurrency=settings.scoring.max_concurrency,
            default_deadline_s=settings.scoring.default_deadline_ms / 1000.0,
            min_deadline_s=settings.scoring.min_deadline_ms / 1000.0,
            sink=publisher.offer,
        )
        grpc_server, health_servicer, port = await start_server(
            servicer, settings.scoring.grpc_host, settings.scoring.grpc_port,
            max_message_bytes=settings.scoring.max_message_bytes, tls=settings.scoring.tls,
            tokens=[t.get_secret_value() for t in settings.scoring.auth_tokens], reflection=settings.scoring.reflection,
        )
        tasks.append(asyncio.create_task(worker.run(), name="orders-worker"))
        tasks.append(asyncio.create_task(_reload_loop(parts, settings.rules.reload_interval_s), name="reload"))
        print(
            f"fraudscore is up: gRPC {settings.scoring.grpc_host}:{port} | metrics "
            f"http://{settings.metrics.host}:{metrics_server.port}/metrics | Kafka {bootstrap(settings.kafka)} | "
            f"feature store {settings.feature_store.type} | Ctrl-C to stop",
            file=out, flush=True,
        )
        if demo:
            from fraudscore.demo import demo_traffic

            tasks.append(asyncio.create_task(demo_traffic(settings, demo_rate, stop), name="demo-traffic"))
        if ready is not None:
            ready.set()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2.0 if demo else 3600)
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            if demo and not stop.is_set():
                print(summary_line(worker, summary, parts), file=out, flush=True)
        print("stopping…", file=out, flush=True)
        await stop_server(grpc_server, health_servicer, grace_s=settings.scoring.shutdown_grace_s, servicer=servicer)
        grpc_server = None
        return 0
    finally:
        if worker is not None:
            # Let the worker finish its batch, publish and commit before anything it uses closes
            # (cancelling it mid-publish would abandon the batch: replayed later, but noisy).
            worker.stop()
            running = [t for t in tasks if t.get_name() == "orders-worker" and not t.done()]
            if running:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(running[0]), timeout=settings.scoring.shutdown_grace_s)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if grpc_server is not None:
            await grpc_server.stop(0)
        if publisher is not None:
            await publisher.stop()
        if producer is not None:
            await producer.stop()
        if metrics_server is not None:
            metrics_server.stop()
        if broker is not None:
            broker.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
