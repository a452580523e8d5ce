"""Redis and Redis Cluster backends (redis-py asyncio).

Keys per entity (``fs`` is ``redis_key_prefix``), all with the hash tag ``{<namespace>:<value>}`` so
they live in one slot:

==========================  ========  ==================================================
``fs:{o.card:tok_1}:s``     string    the tiles (msgpack)
``fs:{o.card:tok_1}:v``     string    the version (incremented by every write)
``fs:{o.card:tok_1}:l``     zset      applied event ids, scored by event time (µs)
``fs:{o.card:tok_1}:e``     hash      event id → the event's values (for out-of-order reads)
==========================  ========  ==================================================

* **Reads** (``read_as_of``): one ``MGET`` of every entity of the batch (on a cluster, one
  pipelined ``GET`` per entity, sent to each node in parallel) — one round trip for every feature;
  aggregation happens here, client-side, with :mod:`feature_state.windows`. Only a read whose entity
  already holds a later event in the same minute fetches that minute of the log (a second round trip).
* **Writes** (``apply_batch``): one pipelined round trip reads the versions and states (one atomic
  ``MGET`` per entity) and which event ids are already logged (``ZMSCORE``); the fold runs here; a
  second pipelined round trip runs one
  Lua script per entity that writes the new state *only if the version is unchanged*, adds the
  events to the log, prunes the log and refreshes the TTLs — atomically. A changed version (another
  writer) is retried on fresh state, so effects are exactly once per (entity, event id).
* **TTL**: every key expires ``longest window + delay + lateness + 1 h`` after its last write.
* **Failures**: socket timeouts (``timeout_ms`` for reads, ``write_timeout_ms`` for writes), no
  client-side retries; every redis-py error becomes :class:`FeatureStoreUnavailable`. Connections
  are re-established on the next call, and scripts are reloaded after a Redis restart.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from contracts.config import FeatureStoreSettings
from contracts.exceptions import ConfigError
from feature_state import batch, kernel, metrics
from feature_state.definitions import FeatureSet
from feature_state.exceptions import FeatureStoreUnavailable
from feature_state.layout import LogEvent
from feature_state.stores.tiled import Loaded, PackedUpdates, TiledStore, Update
from feature_state.windows import decode_event, encode_event

T = TypeVar("T")

_COMMIT = """
local v = tonumber(redis.call('GET', KEYS[4]) or '0')
if v ~= tonumber(ARGV[1]) then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('SET', KEYS[4], v + 1, 'PX', ttl)
local n = tonumber(ARGV[5])
local i = 6
for _ = 1, n do
  redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
  i = i + 3
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
for j = 1, #old, 500 do
  redis.call('HDEL', KEYS[3], unpack(old, j, math.min(j + 499, #old)))
end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4]) end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
"""

_LOG = """
local out = {}
for a = 1, #ARGV, 2 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[a], '(' .. ARGV[a + 1])
  for c = 1, #ids, 500 do
    local vals = redis.call('HMGET', KEYS[2], unpack(ids, c, math.min(c + 499, #ids)))
    for j = 1, #vals do if vals[j] then out[#out + 1] = vals[j] end end
  end
end
return out
"""

# Batch scripts (one Redis node): a micro-batch is one pipelined round trip of _LOAD_BATCH calls and
# one of _COMMIT_BATCH calls, each over a chunk of entities. Arguments and replies are flat
# little-endian binary payloads (Lua's struct library), built and read by numpy and the kernel, so
# neither side handles one Redis argument or reply element per entity. The scripts name their keys
# from the payload ("<prefix>:{<entity>}:<part>"): a standalone Redis allows it; Redis Cluster needs
# declared keys, so a cluster store sends the per-entity commands above instead.

_LOAD_BATCH = """
local prefix, n, names, ids = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local vers, lens, flags, states = {}, {}, {}, {}
local npos = 1 + 4 * n
local m = 0
for i = 1, n do m = m + struct.unpack('<i4', ids, 4 * i - 3) end
local lpos, dpos = 1 + 4 * n, 1 + 4 * n + 4 * m
for i = 1, n do
  local nl = struct.unpack('<i4', names, 4 * i - 3)
  local base = prefix .. ':{' .. string.sub(names, npos, npos + nl - 1) .. '}:'
  npos = npos + nl
  local r = redis.call('MGET', base .. 'v', base .. 's')
  vers[i] = struct.pack('<d', tonumber(r[1] or '0'))
  if r[2] then lens[i] = struct.pack('<i4', #r[2]); states[#states + 1] = r[2]
  else lens[i] = struct.pack('<i4', -1) end
  local c = struct.unpack('<i4', ids, 4 * i - 3)
  if c > 0 and not r[2] then
    -- no state, no log: both are written by one script with one TTL (script time is frozen)
    for q = 1, c do
      local l = struct.unpack('<i4', ids, lpos)
      lpos = lpos + 4
      dpos = dpos + l
      flags[#flags + 1] = '\\0'
    end
  elseif c > 0 then
    local args = {}
    for q = 1, c do
      local l = struct.unpack('<i4', ids, lpos)
      lpos = lpos + 4
      args[q] = string.sub(ids, dpos, dpos + l - 1)
      dpos = dpos + l
    end
    for a = 1, c, 1000 do
      local sc = redis.call('ZMSCORE', base .. 'l', unpack(args, a, math.min(a + 999, c)))
      for q = 1, #sc do flags[#flags + 1] = sc[q] and '\\1' or '\\0' end
    end
  end
end
return table.concat(vers) .. table.concat(lens) .. table.concat(flags) .. table.concat(states)
"""

_COMMIT_BATCH = """
local prefix, ttl, p = ARGV[1], ARGV[2], ARGV[3]
local n, pos = struct.unpack('<i4', p, 1)
local out = {}
for i = 1, n do
  local nl, vl, wl, sl, fl, ne, q = struct.unpack('<i4i4i4i4i4i4', p, pos)
  local base = prefix .. ':{' .. string.sub(p, q, q + nl - 1) .. '}:'
  q = q + nl
  local ver = string.sub(p, q, q + vl - 1)
  q = q + vl
  local newver = string.sub(p, q, q + wl - 1)
  q = q + wl
  local sq = q
  q = q + sl
  local floor = string.sub(p, q, q + fl - 1)
  q = q + fl
  if (redis.call('GET', base .. 'v') or '0') ~= ver then
    out[i] = '0'
    for _ = 1, ne do
      local il, tl, el, r = struct.unpack('<i4i4i4', p, q)
      q = r + il + tl + el
    end
  else
    out[i] = '1'
    redis.call('SET', base .. 's', string.sub(p, sq, sq + sl - 1), 'PX', ttl)
    redis.call('SET', base .. 'v', newver, 'PX', ttl)
    if ne > 0 then
      local z, h = {}, {}
      for e = 1, ne do
        local il, tl, el, r = struct.unpack('<i4i4i4', p, q)
        local id = string.sub(p, r, r + il - 1)
        z[2 * e - 1] = string.sub(p, r + il, r + il + tl - 1)
        z[2 * e] = id
        h[2 * e - 1] = id
        h[2 * e] = string.sub(p, r + il + tl, r + il + tl + el - 1)
        q = r + il + tl + el
      end
      for a = 1, #z, 1000 do redis.call('ZADD', base .. 'l', unpack(z, a, math.min(a + 999, #z))) end
      for a = 1, #h, 1000 do redis.call('HSET', base .. 'e', unpack(h, a, math.min(a + 999, #h))) end
    end
    local old = redis.call('ZRANGEBYSCORE', base .. 'l', '-inf', floor)
    if #old > 0 then
      for j = 1, #old, 500 do redis.call('HDEL', base .. 'e', unpack(old, j, math.min(j + 499, #old))) end
      redis.call('ZREMRANGEBYSCORE', base .. 'l', '-inf', floor)
    end
    redis.call('PEXPIRE', base .. 'l', ttl)
    redis.call('PEXPIRE', base .. 'e', ttl)
  end
  pos = q
end
return table.concat(out)
"""

#: Entities per pipeline (bounds memory and the time of one round trip).
CHUNK = 2000
#: Entities per batch-script call: bounds how long one call holds Redis (other clients wait meanwhile).
SCRIPT_ENTITIES = 200




class RedisStore(TiledStore):
    """Tiles in Redis (one node, or a Redis Cluster with ``cluster=True``)."""

    kind = "redis"
    durable = True
    shared = True

    def __init__(
        self,
        features: FeatureSet,
        url: str,
        *,
        allowed_lateness_s: float = 3600.0,
        timeout_ms: int = 50,
        write_timeout_ms: int = 2000,
        cluster: bool = False,
        key_prefix: str = "fs",
        use_kernel: bool | None = None,
    ) -> None:
        super().__init__(features, allowed_lateness_s, use_kernel=use_kernel)
        self.url = url
        self.key_prefix = key_prefix
        self.cluster = cluster
        self.kind = "redis_cluster" if cluster else "redis"
        self.timeout_s = timeout_ms / 1000.0
        self.write_timeout_s = write_timeout_ms / 1000.0
        self.reader = self._client(self.timeout_s)
        self.writer = self._client(self.write_timeout_s)
        self._sha: dict[str, str] = {}

    def _client(self, timeout_s: float) -> Any:
        common: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "decode_responses": False,
            "retry": Retry(NoBackoff(), 0),
        }
        try:
            if self.cluster:
                return RedisCluster.from_url(self.url, **common)
            return Redis.from_url(self.url, **common)
        except (ValueError, redis_errors.RedisError) as exc:
            raise ConfigError(f"feature store redis_url is not usable: {type(exc).__name__}: {exc}") from None

    def _k(self, key: str, part: str) -> str:
        return f"{self.key_prefix}:{{{key}}}:{part}"

    # ------------------------------------------------------------------ error translation

    async def _guard(self, op: str, timeout_s: float, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(timeout_s):
                return await fn()
        except TimeoutError as exc:
            metrics.UNAVAILABLE.labels(self.kind, op).inc()
            raise FeatureStoreUnavailable(f"{self.kind} {op} did not answer within {timeout_s * 1000:.0f} ms") from exc
        except (redis_errors.RedisError, OSError) as exc:
            metrics.UNAVAILABLE.labels(self.kind, op).inc()
            raise FeatureStoreUnavailable(f"{self.kind} {op} failed: {type(exc).__name__}: {exc}") from exc

    async def _scripts(self, client: Any) -> dict[str, str]:
        if not self._sha:
            self._sha = {"commit": await client.script_load(_COMMIT), "log": await client.script_load(_LOG)}
            if not self.cluster:
                self._sha["load_batch"] = await client.script_load(_LOAD_BATCH)
                self._sha["commit_batch"] = await client.script_load(_COMMIT_BATCH)
        return self._sha

    async def _run_scripts(self, client: Any, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """EVALSHA many script calls in one pipeline; reload scripts once if Redis forgot them."""
        for attempt in range(2):
            sha = await self._scripts(client)
            out: list[Any] = []
            for i in range(0, len(calls), CHUNK):
                pipe = client.pipeline(transaction=False)
                for name, keys, args in calls[i : i + CHUNK]:
                    pipe.execute_command("EVALSHA", sha[name], len(keys), *keys, *args)
                out.extend(await pipe.execute(raise_on_error=False))
            if attempt == 0 and any(isinstance(r, redis_errors.NoScriptError) for r in out):
                self._sha = {}
                continue
            for r in out:
                if isinstance(r, Exception):
                    raise r
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ batch scripts (one node)

    async def _load_batch(
        self, kl: kernel.KernelLayout, c: batch.Columns
    ) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray] | None:
        """States, versions and already-logged flags of a batch's entities in one round trip.

        Returns ``(buffer, positions, versions, known)`` as the kernel takes them (``known``: orders ×
        namespaces, 1 where that entity's log already holds the order). None on a cluster (the scripts
        name keys of many slots), which loads per entity.
        """
        if self.cluster:
            return None
        n = len(c.ent_ns)
        kbuf, koff = c.packed_keys
        oe = c.o_ent[:, kl.is_orders]
        ns_of_col = np.nonzero(kl.is_orders)[0]
        rows, cols = np.nonzero(oe >= 0)
        ents = oe[rows, cols]
        order = np.argsort(ents, kind="stable")
        rows, cols, ents = rows[order], cols[order], ents[order]
        counts = np.bincount(ents, minlength=n).astype(np.int64)
        first = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=first[1:])
        ids = kernel.Strings()
        ids.extend(pa.array(c.ids, type=pa.string()).take(pa.array(rows)))
        idbuf, idoff = ids.pack()
        klen = np.diff(koff).astype("<i4")
        idlen = np.diff(idoff).astype("<i4")
        chunks = [(a, min(n, a + SCRIPT_ENTITIES)) for a in range(0, n, SCRIPT_ENTITIES)]
        calls: list[tuple[str, list[str], list[Any]]] = []
        for a, z in chunks:
            names = klen[a:z].tobytes() + kbuf[koff[a] : koff[z]]
            pa_, pz = first[a], first[z]
            idpay = counts[a:z].astype("<i4").tobytes() + idlen[pa_:pz].tobytes() + idbuf[idoff[pa_] : idoff[pz]]
            calls.append(("load_batch", [], [self.key_prefix, str(z - a), names, idpay]))
        replies = await self._guard("load", self.write_timeout_s, lambda: self._run_scripts(self.writer, calls))
        versions = np.zeros(n, dtype=np.int64)
        pos = np.zeros(2 * n + 1, dtype=np.int64)
        flags = np.zeros(len(rows), dtype=np.uint8)
        base = 0
        for (a, z), r in zip(chunks, replies, strict=True):
            k, m = z - a, int(first[z] - first[a])
            versions[a:z] = np.frombuffer(r, dtype="<f8", count=k, offset=0).astype(np.int64)
            lens = np.frombuffer(r, dtype="<i4", count=k, offset=8 * k).astype(np.int64)
            flags[first[a] : first[z]] = np.frombuffer(r, dtype=np.uint8, count=m, offset=12 * k)
            sizes = np.maximum(lens, 0)
            starts = base + 12 * k + m + np.concatenate(([0], np.cumsum(sizes)[:-1]))
            pos[2 * a : 2 * z : 2] = starts
            pos[2 * a + 1 : 2 * z + 1 : 2] = sizes
            base += len(r)
        known = np.zeros(c.o_ent.shape, dtype=np.uint8)
        known[rows, ns_of_col[cols]] = flags
        return b"".join(replies), pos, versions, known

    async def _commit_records(self, updates: PackedUpdates) -> list[str]:
        """Commit a kernel's records in one pipelined round trip of batch scripts; returns the conflicts."""
        r = updates.res
        assert r.buf is not None and r.soff is not None
        buf, off = r.buf, r.soff.tolist()
        sel = updates.sel.tolist()
        ttl_ms = str(self.layout.ttl_s * 1000)
        calls: list[tuple[str, list[str], list[Any]]] = []
        for a in range(0, len(sel), SCRIPT_ENTITIES):
            part = sel[a : a + SCRIPT_ENTITIES]
            payload = struct.pack("<i", len(part)) + b"".join(buf[off[e] : off[e + 1]] for e in part)
            calls.append(("commit_batch", [], [self.key_prefix, ttl_ms, payload]))
        replies = await self._guard("commit", self.write_timeout_s, lambda: self._run_scripts(self.writer, calls))
        flags = b"".join(replies)
        return [updates.cols.key(e) for e, ok in zip(sel, flags, strict=True) if ok != ord("1")]

    # ------------------------------------------------------------------ primitives

    async def _load(self, keys: Sequence[str], ids: dict[str, list[str]]) -> Loaded:
        writing = bool(ids)
        client = self.writer if writing else self.reader

        async def run() -> list[Any]:
            out: list[Any] = []
            for i in range(0, len(keys), CHUNK):
                pipe = client.pipeline(transaction=False)
                for k in keys[i : i + CHUNK]:
                    if writing:
                        pipe.execute_command("MGET", self._k(k, "v"), self._k(k, "s"))  # atomic: version + state
                        if ids.get(k):
                            pipe.zmscore(self._k(k, "l"), ids[k])
                    elif self.cluster:
                        pipe.get(self._k(k, "s"))
                if writing or self.cluster:
                    out.extend(await pipe.execute())
                else:
                    out.extend(await client.mget([self._k(k, "s") for k in keys[i : i + CHUNK]]))
            return out

        replies = await self._guard("load" if writing else "read", self.write_timeout_s if writing else self.timeout_s,
                                    run)
        states, versions, known = {}, {}, {}
        it = iter(replies)
        for k in keys:
            if writing:
                ver, blob = next(it)
                versions[k] = int(ver or 0)
                if ids.get(k):
                    scores = next(it)
                    hit = {i for i, s in zip(ids[k], scores, strict=True) if s is not None}
                    if hit:
                        known[k] = hit
            else:
                blob = next(it)
            states[k] = blob
        return Loaded(states, versions, known)

    async def _load_logs(self, spans: dict[str, list[tuple[int, int]]]) -> dict[str, list[LogEvent]]:
        keys = list(spans)
        calls = [("log", [self._k(k, "l"), self._k(k, "e")], [str(x) for span in spans[k] for x in span]) for k in keys]
        replies = await self._guard("read_log", self.write_timeout_s, lambda: self._run_scripts(self.reader, calls))
        return {k: [decode_event(raw) for raw in r] for k, r in zip(keys, replies, strict=True)}

    async def _commit(self, updates: Sequence[Update]) -> list[str]:
        if isinstance(updates, PackedUpdates) and updates.res.records:
            return await self._commit_records(updates)
        ttl_ms = str(self.layout.ttl_s * 1000)
        calls = []
        for u in updates:
            args: list[Any] = [str(u.version), u.state, ttl_ms, str(u.log_floor_us), str(len(u.events))]
            for ev in u.events:
                args.extend((ev.id, str(ev.ts), encode_event(ev)))
            keys = [self._k(u.key, "s"), self._k(u.key, "l"), self._k(u.key, "e"), self._k(u.key, "v")]
            calls.append(("commit", keys, args))
        replies = await self._guard("commit", self.write_timeout_s, lambda: self._run_scripts(self.writer, calls))
        return [u.key for u, ok in zip(updates, replies, strict=True) if not ok]

    # ------------------------------------------------------------------ lifecycle

    async def ping(self) -> bool:
        try:
            await self._guard("ping", self.timeout_s, self.reader.ping)
        except FeatureStoreUnavailable:
            return False
        return True

    async def close(self) -> None:
        for client in (self.reader, self.writer):
            try:
                await client.aclose()
            except (redis_errors.RedisError, OSError):  # pragma: no cover - closing a dead connection
                pass


def from_settings(features: FeatureSet, settings: FeatureStoreSettings) -> RedisStore:
    """Build a Redis or Redis Cluster store from the settings."""
    if settings.redis_url is None:
        raise ConfigError(f"feature_store.type={settings.type} needs feature_store.redis_url (or REDIS_URL)")
    return RedisStore(
        features,
        settings.redis_url.get_secret_value(),
        allowed_lateness_s=settings.allowed_lateness_s,
        timeout_ms=settings.timeout_ms,
        write_timeout_ms=settings.write_timeout_ms,
        cluster=settings.type == "redis_cluster",
        key_prefix=settings.redis_key_prefix,
    )
