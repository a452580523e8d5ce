"""The HTTP webhook action sink: ``actions`` → POST to an endpoint, at least once, once per key.

Each action is POSTed as JSON (the ``actions`` event) with::

    Content-Type: application/json
    Idempotency-Key: <order_id>                      the receiver keeps the first, ignores repeats
    X-Fraudscore-Signature: sha256=<hex HMAC of the body>   when stream.webhook.secret is set
    X-Fraudscore-Attempt: <n>

* 2xx → delivered. 408, 429, 5xx, timeouts and connection errors → retried with exponential
  backoff and jitter (``Retry-After`` honoured up to ``backoff_max_ms``). Other 4xx → not retried.
* After ``max_attempts`` (or a non-retryable answer) the action is dead-lettered (stage ``delivery``)
  with the last status and error — never dropped silently.
* Deliveries run concurrently (``concurrency``); the batch's offsets are committed only when every
  action of the batch is delivered or dead-lettered. A crash re-delivers at most that batch, with
  the same Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import Sequence
from typing import Any

import msgspec

from contracts.config import TopicNames, WebhookSettings
from contracts.events import Action
from stream_app import metrics as smetrics
from stream_app.exceptions import WebhookDeliveryFailed
from stream_app.policy import ErrorPolicy, dead_letter_everything
from stream_app.processor import BatchResult, SourceKind, _Failures
from stream_app.records import SourceRecord

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(Action)
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Fraudscore-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookProcessor:
    """Delivers a batch of action records; failed deliveries become dead letters."""

    def __init__(self, settings: WebhookSettings, topics: TopicNames, *,
                 policy: ErrorPolicy = dead_letter_everything, source: SourceKind = "kafka") -> None:
        if settings.url is None:
            raise ValueError("stream.webhook.url is not set")
        self.settings = settings
        self.url = settings.url.get_secret_value()
        self.secret = settings.secret.get_secret_value().encode() if settings.secret else None
        self.topics = topics
        self.policy = policy
        self.source: SourceKind = source
        self.wanted = set(settings.actions)
        self._session: Any = None
        self._sem = asyncio.Semaphore(settings.concurrency)

    async def _client(self) -> Any:
        import aiohttp

        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout_ms / 1000.0)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        cap = self.settings.backoff_max_ms / 1000.0
        if retry_after:
            try:
                return min(cap, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = self.settings.backoff_base_ms / 1000.0 * 2 ** (attempt - 1)
        return float(min(cap, base) * (0.5 + random.random() / 2))  # noqa: S311 - jitter

    async def deliver(self, action: Action, body: bytes) -> int:
        """POST one action until delivered; returns the attempts used or raises ``WebhookDeliveryFailed``."""
        import aiohttp

        session = await self._client()
        headers = {"Content-Type": "application/json", "Idempotency-Key": action.order_id}
        if self.secret is not None:
            headers["X-Fraudscore-Signature"] = signature(self.secret, body)
        last_status: int | None = None
        last_error = ""
        for attempt in range(1, self.settings.max_attempts + 1):
            headers["X-Fraudscore-Attempt"] = str(attempt)
            retry_after = None
            try:
                async with self._sem, session.post(self.url, data=body, headers=headers) as resp:
                    last_status = resp.status
                    if 200 <= resp.status < 300:
                        smetrics.WEBHOOK.labels("delivered").inc()
                        return attempt
                    retry_after = resp.headers.get("Retry-After")
                    last_error = f"HTTP {resp.status}"
                    if resp.status not in RETRY_STATUS:
                        break
            except TimeoutError as exc:  # aiohttp's total timeout (its message is empty)
                last_status = None
                last_error = f"{type(exc).__name__}: no answer within {self.settings.timeout_ms} ms"
            except (aiohttp.ClientError, OSError) as exc:
                last_status = None
                last_error = f"{type(exc).__name__}: {exc}"
            if attempt < self.settings.max_attempts:
                smetrics.WEBHOOK.labels("retried").inc()
                await asyncio.sleep(self._delay(attempt, retry_after))
        smetrics.WEBHOOK.labels("dead_lettered").inc()
        raise WebhookDeliveryFailed(f"webhook delivery of {action.order_id} failed after {attempt} attempts: "
                                    f"{last_error}", attempts=attempt, status=last_status)

    async def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        result = BatchResult()
        fail = _Failures(self.policy, self.topics.dead_letters, self.source, result)
        todo: dict[str, tuple[Action, SourceRecord]] = {}
        for rec in records:
            try:
                action = _decoder.decode(rec.value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                fail(exc, rec, "decode")
                continue
            if action.action in self.wanted:
                todo.setdefault(action.order_id, (action, rec))  # once per key within a batch

        async def one(action: Action, rec: SourceRecord) -> None:
            try:
                await self.deliver(action, rec.value)
                result.orders += 1
            except WebhookDeliveryFailed as exc:
                fail(exc, rec, "delivery")

        await asyncio.gather(*(one(a, r) for a, r in todo.values()))
        return result

    def committed(self) -> None:
        return None
