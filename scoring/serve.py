"""Run the standalone scoring server until SIGTERM / SIGINT, then stop gracefully.

Used by ``fraudscore serve`` (one process, or one of several sharing the port with SO_REUSEPORT).
On SIGTERM: health goes NOT_SERVING at once (load balancers stop sending), new calls are refused,
in-flight calls get ``shutdown_grace_s`` to finish, queued decisions are flushed, exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from contracts.config import Settings
from fraudscore.loop import running_loop_name
from rules.reload import RulesHolder
from scoring.models import ModelHolder
from scoring.pipeline import DecisionPipeline
from scoring.server import DecisionSink, FraudScoringServicer, start_server, stop_server

log = logging.getLogger(__name__)


async def _reload_loop(models: ModelHolder, rules: RulesHolder, settings: Settings) -> None:
    interval = min(settings.scoring.model_reload_interval_s, settings.rules.reload_interval_s)
    while True:
        await asyncio.sleep(interval)
        # separately: a failing model refresh must not keep the rules from reloading, nor the reverse
        try:
            await asyncio.to_thread(models.refresh)
        except Exception:  # a reload failure must never stop serving
            log.exception("model reload failed")
        try:
            rules.refresh()
        except Exception:
            log.exception("rules reload failed")


async def serve_grpc(
    settings: Settings,
    pipeline: DecisionPipeline,
    *,
    sink: DecisionSink | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    worker_index: int = 0,
    out: TextIO = sys.stdout,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    sc = settings.scoring
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    servicer = FraudScoringServicer(
        pipeline,
        max_concurrency=sc.max_concurrency,
        default_deadline_s=sc.default_deadline_ms / 1000.0,
        min_deadline_s=sc.min_deadline_ms / 1000.0,
        sink=sink or (lambda d: None),
    )
    tokens = [t.get_secret_value() for t in sc.auth_tokens]
    server, health, port = await start_server(
        servicer, sc.grpc_host, sc.grpc_port, max_message_bytes=sc.max_message_bytes, tls=sc.tls, tokens=tokens,
        reflection=sc.reflection, reuse_port=sc.workers > 1,
    )
    reload_task = asyncio.create_task(_reload_loop(pipeline.models, pipeline.rules, settings), name="reload")
    model = pipeline.models.current
    print(
        f"fraudscore serve[{worker_index}]: gRPC {sc.grpc_host}:{port} "
        f"({'TLS' if sc.tls.cert_file else 'plaintext'}{'+mTLS' if sc.tls.client_ca_file else ''}"
        f"{', token auth' if tokens else ''}) | model {model.version + ' (' + model.kind + ')' if model else 'none'}"
        f" | ruleset {pipeline.rules.current.version if pipeline.rules.current else 'none'}"
        f" | loop {running_loop_name()}",
        file=out, flush=True,
    )
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        log.info("stopping: draining in-flight calls (up to %.1fs)", sc.shutdown_grace_s)
        await stop_server(server, health, grace_s=sc.shutdown_grace_s, servicer=servicer)
    finally:
        reload_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reload_task
        if on_stop is not None:
            await on_stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    print(f"fraudscore serve[{worker_index}]: stopped", file=out, flush=True)
    return 0
