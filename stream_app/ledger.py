"""The decision ledger: which order ids have already been decided, to mark redeliveries.

Feature updates are idempotent per order id in the store, so a duplicate or a replay never
double-counts. Decisions and actions are keyed by ``order_id`` (the consumers' idempotency key),
so a redelivered decision is harmless to a consumer that keeps one record per key; the ledger
lets the worker *mark* it (header ``fraudscore-duplicate: 1``) so the log says which records are
repeats.

Two phases per batch:

1. ``claim(ids, positions)`` — right before publishing — records each id as *pending*, with the
   source position of the record that carries it (``stream:partition:offset`` / shard + sequence
   number), and says whether this record may publish it unmarked: yes for the first claim of the
   id, **and for a pending claim by the same position** (the same record again: the attempt that
   claimed it died or was retried before its publish was confirmed); no otherwise (another record
   with the same id, or a confirmed one).
2. ``confirm(ids)`` — after the broker acknowledged the batch, before the offsets are committed —
   turns the pending claims into confirmed ones: a replay of those records after that (a commit lost
   to a rebalance, a crash before the commit) publishes them marked.

So a crash anywhere before the confirmation republishes the batch unmarked (every order keeps an
unmarked decision; if the broker had already taken the first publish, two — the consumers' key is
``order_id``), and only a crash after it marks the replay. An earlier version claimed in one phase:
a crash between the claim and the publish left up to a batch of orders with marked records only —
an action consumer that skips marked records never saw them.

Backends: ``memory`` (bounded, in-process: for one worker and for tests), ``redis`` / ``redis_cluster``
(one pipelined ``SET NX GET EX`` round trip per batch to claim, one ``SET XX`` round trip to confirm,
shared by every worker; ``SET`` with both ``NX`` and ``GET`` needs Redis ≥ 7.0).
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
    async def claim(self, order_ids: Sequence[str], positions: Sequence[str] | None = None) -> list[bool]:
        """Claim each id as pending at its record's position; True where this record may publish it
        unmarked (first claim, or a pending claim by the same position)."""

    @abstractmethod
    async def confirm(self, order_ids: Sequence[str]) -> None:
        """The claims' decisions are durable: a later claim of these ids (any position) is a repeat."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class MemoryLedger(DecisionLedger):
    """In-process ledger bounded to ``max_entries`` ids (oldest forgotten first)."""

    def __init__(self, max_entries: int = 2_000_000) -> None:
        self.max_entries = max_entries
        self._ids: OrderedDict[str, str | None] = OrderedDict()  # id -> pending position, None = confirmed

    async def claim(self, order_ids: Sequence[str], positions: Sequence[str] | None = None) -> list[bool]:
        ids = self._ids
        out = []
        for i, oid in enumerate(order_ids):
            pos = positions[i] if positions is not None else ""
            if oid in ids:
                out.append(pos != "" and ids[oid] == pos)  # the same record again, still pending
            else:
                ids[oid] = pos
                out.append(True)
        while len(ids) > self.max_entries:
            ids.popitem(last=False)
        return out

    async def confirm(self, order_ids: Sequence[str]) -> None:
        ids = self._ids
        for oid in order_ids:
            if oid in ids:
                ids[oid] = None


_CONFIRMED = b"d"


class RedisLedger(DecisionLedger):
    """Claims as ``SET <prefix>{order_id} p<position> NX GET EX ttl``, confirmations as
    ``SET <prefix>{order_id} d XX EX ttl``, one pipeline per batch each."""

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

    async def claim(self, order_ids: Sequence[str], positions: Sequence[str] | None = None) -> list[bool]:
        if not order_ids:
            return []
        pending = [b"p" + (positions[i] if positions is not None else "").encode() for i in range(len(order_ids))]

        def build(pipe: Any) -> None:
            for oid, value in zip(order_ids, pending, strict=True):
                pipe.set(self.prefix + oid, value, nx=True, get=True, ex=self.ttl_s)

        replies = await self._run(build)
        # None: nothing was there (ours now). Else the value held: ours again only if it is a pending
        # claim by the same record position.
        return [r is None or (r == value and value != b"p") for r, value in zip(replies, pending, strict=True)]

    async def confirm(self, order_ids: Sequence[str]) -> None:
        if not order_ids:
            return

        def build(pipe: Any) -> None:
            for oid in order_ids:
                pipe.set(self.prefix + oid, _CONFIRMED, xx=True, ex=self.ttl_s)

        await self._run(build)

    async def _run(self, build: Any) -> list[Any]:
        from redis.exceptions import RedisError

        try:
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            replies: list[Any] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise SinkError(f"decision ledger (Redis) unavailable: {type(exc).__name__}: {exc}") from exc
        return replies

    async def close(self) -> None:
        await self.client.aclose()
