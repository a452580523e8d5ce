"""The webhook sink against a real local HTTP server that fails intermittently."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from streamkit import consumed, produce, read_all

from contracts.events import Action, encode
from fraudscore.assemble import build_parts
from stream_app.deadletter import decode_dead_letter
from stream_app.kafka import ensure_topics
from stream_app.webhook import signature
from stream_app.worker import StreamWorker
from tests.services import free_port

SECRET = "s3cret"


class FlakyReceiver:
    """Fails the first attempts of most keys (503, Retry-After, 429, dropped connection); rejects
    ``bad-*`` keys with 400; keeps the first delivery per Idempotency-Key."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.accepted: dict[str, bytes] = {}
        self.repeats = 0
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.headers["Idempotency-Key"]
        body = await request.read()
        if request.headers.get("X-Fraudscore-Signature") != signature(SECRET.encode(), body):
            self.bad_signatures += 1
            return web.Response(status=401)
        self.attempts[key] += 1
        n = self.attempts[key]
        if key.startswith("bad-"):
            return web.Response(status=400, text="unknown order")
        mode = hash(key) % 4
        if mode == 1 and n == 1:
            return web.Response(status=503)
        if mode == 2 and n <= 2:
            return web.Response(status=429, headers={"Retry-After": "0"})
        if mode == 3 and n == 1:
            assert request.transport is not None
            request.transport.close()  # connection dropped mid-request
            return web.Response(status=500)
        if key in self.accepted:
            self.repeats += 1
            return web.Response(status=200, text="already processed")
        self.accepted[key] = body
        return web.Response(status=201)


async def run_webhook_role(settings: Any, n: int) -> Any:
    """Run a worker with the webhook role until it has consumed ``n`` records; its (stopped) consumer."""
    parts = build_parts(settings)
    worker = StreamWorker(settings, parts.pipeline, parts.store, roles=("webhook",))
    task = asyncio.create_task(worker.run())
    try:
        await consumed(worker, task, "webhook", n)
        return worker.consumers["webhook"]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


@contextlib.asynccontextmanager
async def receiving(handler: Any) -> AsyncIterator[str]:
    """A real HTTP server on loopback calling ``handler`` for POST /hooks/fraud; yields its URL."""
    app = web.Application()
    app.router.add_post("/hooks/fraud", handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hooks/fraud"
    finally:
        await runner.cleanup()


async def test_webhook_delivers_every_action_once_per_key(stream_settings: Any) -> None:
    receiver = FlakyReceiver()
    async with receiving(receiver.handle) as url:
        settings = stream_settings(**{
            "stream.webhook.url": url,
            "stream.webhook.secret": SECRET,
            "stream.webhook.backoff_base_ms": 5,
            "stream.webhook.backoff_max_ms": 50,
            "stream.webhook.max_attempts": 4,
            "stream.webhook.timeout_ms": 1000,
        })
        await ensure_topics(settings.kafka)
        now = dt.datetime.now(dt.UTC)
        actions = [Action(order_id=f"o-{i}", action=("review", "challenge", "block")[i % 3], decided_at=now,
                          rule="r" if i % 2 else None, reason=None if i % 2 else "model score 0.97")
                   for i in range(300)]
        records: list[tuple[bytes | None, bytes]] = [(a.order_id.encode(), encode(a)) for a in actions]
        records += [(a.order_id.encode(), encode(a)) for a in actions[:30]]  # redeliveries of the same keys
        bad = [Action(order_id=f"bad-{i}", action="block", decided_at=now) for i in range(3)]
        records += [(a.order_id.encode(), encode(a)) for a in bad]
        records.append((b"junk", b"{not json"))
        await produce(settings.kafka.bootstrap or "", settings.kafka.topics.actions, records)

        await run_webhook_role(settings, len(records))

    assert receiver.bad_signatures == 0
    assert set(receiver.accepted) == {a.order_id for a in actions}, "every action delivered"
    assert all(receiver.accepted[a.order_id] == encode(a) for a in actions), "each once, with its own body"
    assert any(n > 1 for n in receiver.attempts.values()), "the server did fail and the sink retried"
    letters = [decode_dead_letter(r.value)
               for r in await read_all(settings.kafka.bootstrap or "", settings.kafka.topics.dead_letters,
                                       expect_at_least=4)]
    stages = Counter(dl.stage for dl in letters)
    assert stages == {"delivery": 3, "decode": 1}
    assert {dl.key for dl in letters if dl.stage == "delivery"} == {a.order_id for a in bad}
    assert all("HTTP 400" in dl.error for dl in letters if dl.stage == "delivery")


class StuckReceiver:
    """Always 503 for ``fail-503-*`` keys; never answers ``fail-hang-*`` (holds the request until
    released, far beyond the sink's timeout); accepts every other key at once. Counts requests per key."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.attempt_headers: dict[str, list[str]] = {}
        self.accepted: Counter[str] = Counter()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.headers["Idempotency-Key"]
        self.attempts[key] += 1
        self.attempt_headers.setdefault(key, []).append(request.headers["X-Fraudscore-Attempt"])
        await request.read()
        if key.startswith("fail-503"):
            return web.Response(status=503)
        if key.startswith("fail-hang"):
            await self.release.wait()
            return web.Response(status=504)
        self.accepted[key] += 1
        return web.Response(status=200)


async def test_webhook_dead_letters_after_max_attempts_with_the_attempt_count(stream_settings: Any) -> None:
    max_attempts = 3
    receiver = StuckReceiver()
    async with receiving(receiver.handle) as url:
        try:
            settings = stream_settings(**{
                "stream.max_batch": 10,  # several batches: the ones after the failing actions must go on
                "stream.webhook.url": url,
                "stream.webhook.backoff_base_ms": 5,
                "stream.webhook.backoff_max_ms": 20,
                "stream.webhook.max_attempts": max_attempts,
                "stream.webhook.timeout_ms": 300,
            })
            await ensure_topics(settings.kafka)
            now = dt.datetime.now(dt.UTC)
            failing = [Action(order_id=f"fail-{kind}-{n}", action="block", decided_at=now, rule="r")
                       for n in (1, 2) for kind in ("503", "hang")]
            good = [Action(order_id=f"ok-{i}", action=("review", "challenge", "block")[i % 3], decided_at=now,
                           reason="model score 0.97") for i in range(80)]
            # the failing actions come first, in the middle and near the end of the stream of good ones
            ordered = good[:5] + failing[:2] + good[5:40] + failing[2:] + good[40:]
            records: list[tuple[bytes | None, bytes]] = [(a.order_id.encode(), encode(a)) for a in ordered]
            await produce(settings.kafka.bootstrap or "", settings.kafka.topics.actions, records)

            consumer = await run_webhook_role(settings, len(records))
            stats = consumer.stats
            committed = sum(consumer.next_offset.values())
        finally:
            receiver.release.set()  # let the hanging requests end before the server stops

    # The consumer went through every record and committed them all: the failing keys did not stall it.
    assert stats.events == len(records) and committed == len(records), stats
    assert (stats.abandoned, stats.commit_failures) == (0, 0), stats
    # Every other action delivered exactly once.
    assert receiver.accepted == Counter({a.order_id: 1 for a in good})
    assert all(receiver.attempts[a.order_id] == 1 for a in good)
    # Each failing action was tried exactly max_attempts times, then dead-lettered.
    for a in failing:
        assert receiver.attempts[a.order_id] == max_attempts, receiver.attempts
        assert receiver.attempt_headers[a.order_id] == [str(n) for n in range(1, max_attempts + 1)]
    letters = [decode_dead_letter(r.value)
               for r in await read_all(settings.kafka.bootstrap or "", settings.kafka.topics.dead_letters,
                                       expect_at_least=4)]
    assert len(letters) == 4, letters
    assert sorted(dl.key or "" for dl in letters) == sorted(a.order_id for a in failing)
    for dl in letters:
        assert dl.stage == "delivery" and dl.error_type == "WebhookDeliveryFailed"
        assert dl.attempts == max_attempts, dl
        assert f"failed after {max_attempts} attempts" in dl.error
        assert dl.topic == settings.kafka.topics.actions and dl.source == "kafka"
        if (dl.key or "").startswith("fail-503"):
            assert dl.error.endswith("HTTP 503"), dl.error
        else:
            assert "TimeoutError: no answer within 300 ms" in dl.error, dl.error
