"""Shard leases and checkpoints for the Kinesis source, kept in a DynamoDB table.

One item per (application, stream, shard)::

    {"lease_key": "<group>:<stream>:<shard id>", "owner": "<worker id>", "lease_expires": 1790000000.5,
     "checkpoint": "<last processed sequence number>" | "SHARD_END", "updated_at": …}

* A worker **acquires** a shard with a conditional write that succeeds only if nobody holds it or
  its lease has expired; it **renews** its leases every third of ``kinesis_lease_s``; a worker that
  dies stops renewing and its shards are taken over once the lease expires.
* A **checkpoint** is a conditional write on ``owner = me``: a worker that lost a shard can never
  move its checkpoint (the new owner replays from the last checkpoint; effects are idempotent).
* ``SHARD_END`` marks a closed shard (after a split or merge) as fully processed; a child shard is
  only taken once all its parents are at ``SHARD_END``, so per-key order survives resharding.

Plus one **heartbeat** item per live worker, ``"<group>:<stream>#worker:<worker id>"`` with
``owner`` and ``lease_expires`` (never matched by the shard scan, which reads ``"<group>:<stream>:"``):
the workers that count for the fair share are those whose heartbeat has not expired. A worker
refreshes its heartbeat at each lease check and deletes it on a graceful stop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from stream_app.exceptions import CheckpointError

SHARD_END = "SHARD_END"


@dataclass
class Lease:
    shard_id: str
    owner: str | None
    lease_expires: float
    checkpoint: str | None

    @property
    def finished(self) -> bool:
        return self.checkpoint == SHARD_END

    def free(self, now: float) -> bool:
        return self.owner is None or self.lease_expires < now


class LeaseLost(CheckpointError):
    """This worker no longer owns the shard (another worker took it over)."""


class DynamoCheckpoints:
    """Leases and checkpoints in DynamoDB (synchronous boto3; call from a thread)."""

    def __init__(self, client: Any, table: str, app: str, stream: str, owner: str, lease_s: float) -> None:
        self.client = client
        self.table = table
        self.prefix = f"{app}:{stream}:"
        self.worker_prefix = f"{app}:{stream}#worker:"
        self.owner = owner
        self.lease_s = lease_s

    def _key(self, shard_id: str) -> dict[str, Any]:
        return {"lease_key": {"S": self.prefix + shard_id}}

    def ensure_table(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.describe_table(TableName=self.table)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise CheckpointError(f"DynamoDB table {self.table}: {exc}") from exc
        try:
            self.client.create_table(
                TableName=self.table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": "lease_key", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "lease_key", "KeyType": "HASH"}],
            )
            self.client.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 1})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise CheckpointError(f"cannot create DynamoDB table {self.table}: {exc}") from exc

    def _scan(self, prefix: str) -> list[dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "FilterExpression": "begins_with(lease_key, :p)", "ExpressionAttributeValues": {":p": {"S": prefix}},
        }
        try:
            while True:
                resp = self.client.scan(**kwargs)
                items.extend(resp.get("Items", []))
                if "LastEvaluatedKey" not in resp:
                    return items
                kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        except (BotoCoreError, ClientError) as exc:
            raise CheckpointError(f"cannot read leases from {self.table}: {exc}") from exc

    def leases(self) -> dict[str, Lease]:
        out: dict[str, Lease] = {}
        for item in self._scan(self.prefix):
            shard = item["lease_key"]["S"][len(self.prefix):]
            out[shard] = Lease(shard, item.get("owner", {}).get("S"),
                               float(item.get("lease_expires", {}).get("N", "0")),
                               item.get("checkpoint", {}).get("S"))
        return out

    # ------------------------------------------------------------------ worker heartbeats
    def heartbeat(self) -> None:
        """Announce this worker as live until ``now + lease_s``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_item(TableName=self.table, Item={
                "lease_key": {"S": self.worker_prefix + self.owner}, "owner": {"S": self.owner},
                "lease_expires": {"N": repr(time.time() + self.lease_s)},
            })
        except (BotoCoreError, ClientError) as exc:
            raise CheckpointError(f"cannot write the heartbeat of {self.owner}: {exc}") from exc

    def workers(self, now: float) -> set[str]:
        """The workers whose heartbeat has not expired."""
        return {item["owner"]["S"] for item in self._scan(self.worker_prefix)
                if "owner" in item and float(item.get("lease_expires", {}).get("N", "0")) >= now}

    def leave(self) -> None:
        """Delete this worker's heartbeat (graceful stop)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_item(TableName=self.table, Key={"lease_key": {"S": self.worker_prefix + self.owner}})
        except (BotoCoreError, ClientError) as exc:
            raise CheckpointError(f"cannot delete the heartbeat of {self.owner}: {exc}") from exc

    def acquire(self, shard_id: str) -> bool:
        """Take the shard if it is free, expired or already ours; False when another worker holds it."""
        return self._acquire(shard_id, time.time())

    def _acquire(self, shard_id: str, now: float) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.update_item(
                TableName=self.table, Key=self._key(shard_id),
                UpdateExpression="SET #o = :me, lease_expires = :exp",
                ConditionExpression="attribute_not_exists(lease_key) OR attribute_not_exists(#o) OR #o = :me "
                                    "OR lease_expires < :now",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": self.owner}, ":exp": {"N": repr(now + self.lease_s)},
                                           ":now": {"N": repr(now)}},
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise CheckpointError(f"cannot acquire shard {shard_id}: {exc}") from exc
        except BotoCoreError as exc:
            raise CheckpointError(f"cannot acquire shard {shard_id}: {exc}") from exc

    def _owned(self, shard_id: str, expr: str, values: dict[str, Any]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.update_item(
                TableName=self.table, Key=self._key(shard_id), UpdateExpression=expr,
                ConditionExpression="#o = :me", ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": self.owner}, **values},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise LeaseLost(f"shard {shard_id} is no longer owned by {self.owner}") from exc
            raise CheckpointError(f"lease update for {shard_id} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise CheckpointError(f"lease update for {shard_id} failed: {exc}") from exc

    def renew(self, shard_id: str) -> None:
        self._owned(shard_id, "SET lease_expires = :exp", {":exp": {"N": repr(time.time() + self.lease_s)}})

    def checkpoint(self, shard_id: str, sequence: str) -> None:
        self._owned(shard_id, "SET checkpoint = :c, lease_expires = :exp",
                    {":c": {"S": sequence}, ":exp": {"N": repr(time.time() + self.lease_s)}})

    def release(self, shard_id: str) -> None:
        try:
            self._owned(shard_id, "REMOVE #o SET lease_expires = :zero", {":zero": {"N": "0"}})
        except LeaseLost:
            pass
