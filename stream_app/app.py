"""``fraudscore worker`` as a faust-streaming application.

What faust does here, and what it does not
-----------------------------------------
faust is the **process framework**: the worker lifecycle (signals, graceful stop, crash handling,
logging), the web endpoint (``/healthz``, ``/readyz``, ``/metrics``, ``/stats`` on the metrics port),
timers (hot reload of rules and models, lag refresh) and the topic declarations.

The **hot path does not go through faust agents.** faust's agent path handles one event at a time
(~3,000 events/s with a produce per event on this machine, ~12,000 with ``take()`` and no produce),
and its offset tracking acks events individually and commits on a timer, independently of when our
effects are durable (see faust-streaming issues #502, #318, robinhood/faust #681 about offsets and
rebalances). The orders, labels and webhook consumers are therefore plain aiokafka consumer-group
members run by :class:`~stream_app.worker.StreamWorker` inside a faust (mode) service: micro-batches,
one batched feature update, one batched model call, batched produce, commit only after the effects
are acknowledged, rebalance listener that drains the in-flight batch. faust's own consumer only
joins its app group (for its leader assignor); it consumes none of our topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import faust
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contracts.config import Settings
from stream_app.kafka import bootstrap
from stream_app.worker import StreamWorker

log = logging.getLogger(__name__)

HealthFn = Callable[[], tuple[bool, dict[str, Any]]]


class WorkerService(Service):
    """Runs a :class:`StreamWorker` for the app's lifetime; stopping drains and commits the last batch."""

    def __init__(self, worker: StreamWorker, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.worker = worker
        self._task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._task = asyncio.create_task(self.worker.run(), name="stream-worker")
        self.add_future(self._watch())

    async def _watch(self) -> None:
        assert self._task is not None
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.exception("stream worker failed")
            await self.crash(exc)

    async def on_stop(self) -> None:
        self.worker.stop()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), 30.0)


def _broker_url(settings: Settings) -> str:
    return ";".join(f"kafka://{hp.strip()}" for hp in bootstrap(settings.kafka).split(","))


def _credentials(settings: Settings) -> Any:
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return None
    import ssl

    ctx = ssl.create_default_context() if "SSL" in k.security_protocol else None
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=k.sasl_username, password=k.sasl_password.get_secret_value() if k.sasl_password else None,
            mechanism=k.sasl_mechanism or "PLAIN", ssl_context=ctx,
        )
    return faust.SSLCredentials(ctx)


def build_app(
    settings: Settings,
    worker: StreamWorker,
    *,
    health: HealthFn,
    reload: Callable[[], None] | None = None,
    web_port: int | None = None,
) -> faust.App:
    """The faust app of one worker process."""
    s = settings.stream
    app = faust.App(
        f"{settings.kafka.consumer_group}-app",
        broker=_broker_url(settings),
        broker_credentials=_credentials(settings),
        autodiscover=False,
        store="memory://",
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        web_enabled=True,
        web_host=settings.metrics.host,
        web_port=web_port if web_port is not None else settings.metrics.port,
        web_in_thread=False,
        broker_session_timeout=s.session_timeout_ms / 1000.0,
        broker_heartbeat_interval=s.heartbeat_interval_ms / 1000.0,
        producer_acks=-1,
    )
    # Topic declarations (documentation and `faust` tooling; our consumers are aiokafka members).
    t = settings.kafka.topics
    for name in (t.orders, t.labels, t.decisions, t.actions, t.dead_letters):
        app.topic(name, value_serializer="raw", key_serializer="raw")
    service = WorkerService(worker)
    app.add_dependency(service)

    @app.page("/healthz")
    async def healthz(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        ok, detail = health()
        return view.json({"status": "ok" if ok else "unhealthy", **detail}, status=200 if ok else 503)

    @app.page("/readyz")
    async def readyz(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        ready = worker.ready.is_set()
        return view.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/metrics")
    async def prom(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return view.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/stats")
    async def stats(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        st = worker.stats
        return view.json({"orders": st.orders, "decisions": st.decisions, "dead_letters": st.dead_letters,
                          "duplicates": st.duplicates, "labels": st.labels, "batches": st.batches,
                          "retries": st.retries})

    if reload is not None:
        @app.timer(settings.rules.reload_interval_s)  # type: ignore[untyped-decorator]
        async def hot_reload() -> None:
            reload()

    return app


async def run_without_kafka(
    settings: Settings,
    worker: StreamWorker,
    *,
    health: HealthFn,
    reload: Callable[[], None] | None = None,
) -> int:
    """Run a worker whose source and sink are both Kinesis: there is no Kafka for faust to join, so
    the process is plain asyncio with the same HTTP endpoints (``/healthz``, ``/metrics``) and the
    same graceful stop on SIGTERM / SIGINT."""
    import signal

    from monitoring.http import MetricsServer

    def full_health() -> tuple[bool, dict[str, Any]]:
        ok, detail = health()
        return ok and worker.ready.is_set(), detail

    server = MetricsServer(settings.metrics.host, settings.metrics.port, full_health).start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)

    async def reloader() -> None:
        while reload is not None:
            await asyncio.sleep(settings.rules.reload_interval_s)
            reload()

    timer = asyncio.create_task(reloader())
    try:
        await worker.run()
        return 0
    finally:
        timer.cancel()
        server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_app(app: faust.App) -> int:
    """Run the faust worker in the foreground; returns the exit code."""
    from faust.worker import Worker

    level = logging.getLogger().getEffectiveLevel()
    worker = Worker(app, loglevel=logging.getLevelName(level), quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code
        return int(code) if isinstance(code, int) else (0 if code is None else 1)
    return 0
