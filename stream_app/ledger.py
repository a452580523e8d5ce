"""The decision ledger: which order ids have already been decided, to mark redeliveries.

Feature updates are idempotent per order id in the store, so a duplicate or a replay never
double-counts. Decisions and actions are keyed by ``order_id`` (the consumers' idempotency key),
so a redelivered decision is harmless to a consumer that keeps one record per key; the ledger
lets the worker *mark* it (header ``fraudscore-duplicate: 1``) so the log says which records are
repeats.

``claim(ids)`` atomically records each id and says whether this call was the first to do so. The
worker claims a batch only after its decisions are computed and right before publishing them:
an id is therefore published unmarked at most once. A crash between the claim and the publish
(a few milliseconds) leaves that order with marked records only — still one effect per key.

Backends: ``memory`` (bounded, in-process: for one worker and for tests), ``redis`` / ``redis_cluster``
(one pipelined ``SET NX EX`` round trip per batch, shared by every worker).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from stream_app.exceptions import SinkError


class DecisionLedger(ABC):
    """Remembers decided order ids for ``ttl_s`` (at least the duplicate / replay horizon)."""

    #: True when several workers (processes) see one another's claims.
    shared: bool = False

    @abstractmethod
    async def claim(self, order_ids: Sequence[str]) -> list[bool]:
        """Record each id; True where this call is the first claim of that id."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class MemoryLedger(DecisionLedger):
    """In-process ledger bounded to ``max_entries`` ids (oldest forgotten first)."""

    def __init__(self, max_entries: int = 2_000_000) -> None:
        self.max_entries = max_entries
        self._ids: OrderedDict[str, None] = OrderedDict()

    async def claim(self, order_ids: Sequence[str]) -> list[bool]:
        ids = self._ids
        out = []
        for oid in order_ids:
            if oid in ids:
                out.append(False)
            else:
                ids[oid] = None
                out.append(True)
        while len(ids) > self.max_entries:
            ids.popitem(last=False)
        return out


class RedisLedger(DecisionLedger):
    """Claims as ``SET <prefix>{order_id} 1 NX EX ttl`` in one pipeline per batch."""

    shared = True

    def __init__(self, url: str, *, cluster: bool = False, ttl_s: int = 7 * 86400, prefix: str = "fs:decided:",
                 timeout_s: float = 2.0) -> None:
        import redis.asyncio as aioredis

        self.ttl_s = ttl_s
        self.prefix = prefix
        self.client: Any
        if cluster:
            self.client = aioredis.RedisCluster.from_url(url, socket_timeout=timeout_s)
        else:
            self.client = aioredis.Redis.from_url(url, socket_timeout=timeout_s)

    async def claim(self, order_ids: Sequence[str]) -> list[bool]:
        from redis.exceptions import RedisError

        if not order_ids:
            return []
        try:
            pipe = self.client.pipeline(transaction=False)
            for oid in order_ids:
                pipe.set(self.prefix + oid, b"1", nx=True, ex=self.ttl_s)
            replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise SinkError(f"decision ledger (Redis) unavailable: {type(exc).__name__}: {exc}") from exc
        return [bool(r) for r in replies]

    async def close(self) -> None:
        await self.client.aclose()
