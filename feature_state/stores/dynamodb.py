"""DynamoDB backend (boto3), for AWS deployments; tested against a local DynamoDB API (moto server).

One table, partition key ``pk`` (the entity key, e.g. ``o.card:tok_1``) and sort key ``sk``:

======================  ==============================================================
``sk = "s"``            the entity's tiles ``b`` (msgpack bytes), version ``v``, ``ttl``
``sk = "e#<event id>"``  one applied event: ``ts`` (µs), values ``p``, ``ttl``
======================  ==============================================================

A local secondary index ``by_ts`` on ``ts`` serves the rare out-of-order read that needs one minute
of an entity's log. Reads are ``BatchGetItem`` (100 keys per call). A commit is one
``TransactWriteItems`` per entity: the state put conditioned on the version read, and one put per new
event conditioned on ``attribute_not_exists`` — so an event is applied exactly once per entity even
with concurrent writers. An entity with more than 99 new events in a batch is committed in chained
transactions of 99, each with its own version step. ``ttl`` (epoch seconds) lets DynamoDB's TTL
expire idle entities (after ``longest window + delay + lateness + 1 h``) and logged events (after
``lateness + 1 min + 1 day``, wall clock). boto3 is synchronous: calls run in worker threads, and
``commit_concurrency`` entities commit in parallel (use 1 against moto's server, whose
TransactWriteItems deep-copies the table without a lock and fails under concurrent writes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from contracts.config import FeatureStoreSettings
from contracts.exceptions import ConfigError
from feature_state import metrics
from feature_state.definitions import FeatureSet
from feature_state.exceptions import FeatureStoreUnavailable
from feature_state.layout import LogEvent
from feature_state.stores.tiled import Loaded, TiledStore, Update
from feature_state.windows import decode_event, decode_state, encode_event, encode_state, fold, prune

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the dynamodb feature store needs boto3: pip install 'fraudscore[aws]'") from exc

T = TypeVar("T")
_MAX_TX_EVENTS = 99
_LOG_TTL_MARGIN_S = 86400


class DynamoDBStore(TiledStore):
    """Tiles and the event log in one DynamoDB table."""

    kind = "dynamodb"
    durable = True
    shared = True

    def __init__(
        self,
        features: FeatureSet,
        table: str,
        *,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        allowed_lateness_s: float = 3600.0,
        timeout_ms: int = 50,
        write_timeout_ms: int = 2000,
        create_table: bool = True,
        commit_concurrency: int = 16,
        use_kernel: bool | None = None,
    ) -> None:
        super().__init__(features, allowed_lateness_s, use_kernel=use_kernel)
        self.table = table
        self.timeout_s = timeout_ms / 1000.0
        self.write_timeout_s = write_timeout_ms / 1000.0
        self.client = self._client(region, endpoint_url, self.timeout_s)
        self.write_client = self._client(region, endpoint_url, self.write_timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fs-dynamodb")
        #: entities committed in parallel (moto's server needs 1: its TransactWriteItems is not thread-safe)
        self.commit_concurrency = commit_concurrency
        self._raw: dict[str, tuple[int, bytes | None]] = {}
        self._create_table = create_table
        self._ready = False

    @staticmethod
    def _client(region: str, endpoint_url: str | None, timeout_s: float) -> Any:
        cfg = Config(
            connect_timeout=max(timeout_s, 0.05),
            read_timeout=max(timeout_s, 0.05),
            retries={"total_max_attempts": 1},
            max_pool_connections=32,
        )
        return boto3.client("dynamodb", region_name=region, endpoint_url=endpoint_url, config=cfg)

    # ------------------------------------------------------------------ plumbing

    async def _call(self, op: str, timeout_s: float, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                return await loop.run_in_executor(self.pool, fn)
        except TimeoutError as exc:
            metrics.UNAVAILABLE.labels(self.kind, op).inc()
            raise FeatureStoreUnavailable(f"dynamodb {op} did not answer within {timeout_s * 1000:.0f} ms") from exc
        except (BotoCoreError, ClientError) as exc:
            metrics.UNAVAILABLE.labels(self.kind, op).inc()
            raise FeatureStoreUnavailable(f"dynamodb {op} failed: {type(exc).__name__}: {exc}") from exc

    def ensure_table_sync(self) -> None:
        """Create the table (with its ``by_ts`` index and TTL) if it does not exist."""
        c = self.write_client
        try:
            c.describe_table(TableName=self.table)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
        c.create_table(
            TableName=self.table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
                {"AttributeName": "ts", "AttributeType": "N"},
            ],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            LocalSecondaryIndexes=[{
                "IndexName": "by_ts",
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "ts", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["p"]},
            }],
        )
        c.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
        c.update_time_to_live(TableName=self.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})

    async def _ensure(self) -> None:
        if not self._ready and self._create_table:
            await self._call("create_table", max(self.write_timeout_s, 30.0), self.ensure_table_sync)
        self._ready = True

    def _batch_get(self, client: Any, keys: list[dict[str, Any]], projection: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for i in range(0, len(keys), 100):
            request: dict[str, Any] = {self.table: {"Keys": keys[i : i + 100], "ProjectionExpression": projection,
                                                    "ConsistentRead": True}}
            for _ in range(50):
                resp = client.batch_get_item(RequestItems=request)
                items.extend(resp.get("Responses", {}).get(self.table, []))
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(0.01)
            else:
                raise FeatureStoreUnavailable("dynamodb kept returning unprocessed keys (throttled)")
        return items

    # ------------------------------------------------------------------ primitives

    async def _load(self, keys: Sequence[str], ids: dict[str, list[str]]) -> Loaded:
        await self._ensure()
        writing = bool(ids)
        wanted = [{"pk": {"S": k}, "sk": {"S": "s"}} for k in keys]
        for k, evs in ids.items():
            wanted.extend({"pk": {"S": k}, "sk": {"S": "e#" + e}} for e in dict.fromkeys(evs))
        client = self.write_client if writing else self.client
        items = await self._call("load" if writing else "read", self.write_timeout_s if writing else self.timeout_s,
                                 lambda: self._batch_get(client, wanted, "pk, sk, b, v"))
        states: dict[str, bytes | None] = {}
        versions: dict[str, int] = {}
        known: dict[str, set[str]] = {}
        raw: dict[str, tuple[int, bytes | None]] = {k: (0, None) for k in keys}
        for it in items:
            k, sk = it["pk"]["S"], it["sk"]["S"]
            if sk == "s":
                raw[k] = (int(it["v"]["N"]), bytes(it["b"]["B"]))
            else:
                known.setdefault(k, set()).add(sk[2:])
        for k in keys:
            versions[k], states[k] = raw[k]
        if writing:
            self._raw.update(raw)
        return Loaded(states, versions, known)

    async def _load_logs(self, spans: dict[str, list[tuple[int, int]]]) -> dict[str, list[LogEvent]]:
        def run() -> dict[str, list[LogEvent]]:
            out: dict[str, list[LogEvent]] = {}
            for k, ranges in spans.items():
                for a, b in ranges:
                    kwargs: dict[str, Any] = {
                        "TableName": self.table, "IndexName": "by_ts", "ConsistentRead": True,
                        "KeyConditionExpression": "pk = :k AND ts BETWEEN :a AND :b",
                        "ExpressionAttributeValues": {":k": {"S": k}, ":a": {"N": str(a)}, ":b": {"N": str(b - 1)}},
                    }
                    while True:
                        resp = self.client.query(**kwargs)
                        out.setdefault(k, []).extend(decode_event(bytes(i["p"]["B"])) for i in resp.get("Items", []))
                        if "LastEvaluatedKey" not in resp:
                            break
                        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
            return out

        return await self._call("read_log", self.write_timeout_s, run)

    def _transact(self, key: str, version: int, blob: bytes, events: Sequence[LogEvent]) -> bool:
        now = int(time.time())
        state_ttl = str(now + self.layout.ttl_s)
        ns = self.layout.namespace_of_key(key)
        log_ttl = str(now + ns.log_retention_s + _LOG_TTL_MARGIN_S)
        put: dict[str, Any] = {
            "TableName": self.table,
            "Item": {"pk": {"S": key}, "sk": {"S": "s"}, "b": {"B": blob}, "v": {"N": str(version + 1)},
                     "ttl": {"N": state_ttl}},
        }
        if version == 0:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "v = :v"
            put["ExpressionAttributeValues"] = {":v": {"N": str(version)}}
        items: list[dict[str, Any]] = [{"Put": put}]
        for ev in events:
            items.append({"Put": {
                "TableName": self.table,
                "Item": {"pk": {"S": key}, "sk": {"S": "e#" + ev.id}, "ts": {"N": str(ev.ts)},
                         "p": {"B": encode_event(ev)}, "ttl": {"N": log_ttl}},
                "ConditionExpression": "attribute_not_exists(pk)",
            }})
        try:
            self.write_client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                return False
            raise
        return True

    def _commit_one(self, u: Update) -> bool:
        if len(u.events) <= _MAX_TX_EVENTS:
            return self._transact(u.key, u.version, u.state, u.events)
        # Chain: fold the events onto the state as read, 99 at a time, one transaction each.
        version, blob = self._raw.get(u.key, (-1, None))
        if version != u.version:
            return False
        ns = self.layout.namespace_of_key(u.key)
        state = decode_state(ns, blob)
        for i in range(0, len(u.events), _MAX_TX_EVENTS):
            chunk = u.events[i : i + _MAX_TX_EVENTS]
            for ev in chunk:
                fold(ns, state, ev)
            prune(ns, state)
            if not self._transact(u.key, version, encode_state(ns, state), chunk):
                return False
            version += 1
        return True

    async def _commit(self, updates: Sequence[Update]) -> list[str]:
        loop = asyncio.get_running_loop()

        sem = asyncio.Semaphore(self.commit_concurrency)

        async def one(u: Update) -> bool:
            async with sem:
                return await loop.run_in_executor(self.pool, self._commit_one, u)

        async def run() -> list[str]:
            done = await asyncio.gather(*(one(u) for u in updates))
            return [u.key for u, ok in zip(updates, done, strict=True) if not ok]

        try:
            async with asyncio.timeout(self.write_timeout_s * 4):
                return await run()
        except TimeoutError as exc:
            metrics.UNAVAILABLE.labels(self.kind, "commit").inc()
            raise FeatureStoreUnavailable("dynamodb commit did not finish in time") from exc
        except (BotoCoreError, ClientError) as exc:
            metrics.UNAVAILABLE.labels(self.kind, "commit").inc()
            raise FeatureStoreUnavailable(f"dynamodb commit failed: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ lifecycle

    async def ping(self) -> bool:
        try:
            await self._call("ping", max(self.timeout_s, 1.0), lambda: self.client.describe_table(TableName=self.table))
        except FeatureStoreUnavailable:
            return False
        return True

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def from_settings(features: FeatureSet, settings: FeatureStoreSettings) -> DynamoDBStore:
    """Build the DynamoDB store from the settings."""
    if not settings.dynamodb_table:
        raise ConfigError("feature_store.type=dynamodb needs feature_store.dynamodb_table")
    return DynamoDBStore(
        features,
        settings.dynamodb_table,
        region=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        allowed_lateness_s=settings.allowed_lateness_s,
        timeout_ms=settings.timeout_ms,
        write_timeout_ms=settings.write_timeout_ms,
    )
