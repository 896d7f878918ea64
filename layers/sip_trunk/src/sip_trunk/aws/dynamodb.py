"""The state table: deployment record, host heartbeats, failover lock, health counter."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from sip_trunk.aws.clients import aws_call, client, error_code
from sip_trunk.workflows.state import (
    DEPLOYMENT_KEY,
    HEALTH_KEY,
    LOCK_KEY,
    Deployment,
    HealthCounter,
    HostHeartbeat,
    heartbeat_key,
    history_key,
)

_SER = TypeSerializer()
_DE = TypeDeserializer()


def _to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    clean = json.loads(json.dumps(values), parse_float=Decimal)
    return {k: _SER.serialize(v) for k, v in clean.items() if v is not None}


def _from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    plain = {k: _DE.deserialize(v) for k, v in item.items()}
    return {k: (float(v) if isinstance(v, Decimal) else v) for k, v in plain.items()}


def _key(key: Mapping[str, str]) -> dict[str, Any]:
    return {k: {"S": v} for k, v in key.items()}


class DynamoStateStore:
    def __init__(self, table: str, ddb: Any | None = None) -> None:
        self.table = table
        self._ddb = ddb

    @property
    def ddb(self) -> Any:
        return self._ddb or client("dynamodb")

    def _get(self, key: Mapping[str, str]) -> dict[str, Any] | None:
        with aws_call("GetItem"):
            item = self.ddb.get_item(TableName=self.table, Key=_key(key), ConsistentRead=True).get("Item")
        return _from_item(item) if item else None

    # --- deployment ---------------------------------------------------------------------------
    def get_deployment(self) -> Deployment | None:
        item = self._get(DEPLOYMENT_KEY)
        return Deployment.model_validate(item) if item else None

    def put_deployment(self, deployment: Deployment) -> None:
        values = {**DEPLOYMENT_KEY, **deployment.model_dump(mode="json")}
        with aws_call("PutItem"):
            self.ddb.put_item(TableName=self.table, Item=_to_item(values))

    def put_history(self, timestamp: str, execution: str, record: Mapping[str, Any]) -> None:
        values = {**history_key(timestamp, execution), **record}
        with aws_call("PutItem"):
            self.ddb.put_item(TableName=self.table, Item=_to_item(values))

    def swap_roles(self, expected_primary: str, new_primary: str, new_standby: str | None, now: float) -> bool:
        names = {"#p": "primary_instance_id", "#s": "standby_instance_id", "#u": "updated_at"}
        values: dict[str, Any] = {
            ":expected": {"S": expected_primary},
            ":p": {"S": new_primary},
            ":u": {"N": str(now)},
        }
        if new_standby:
            values[":s"] = {"S": new_standby}
            update = "SET #p = :p, #s = :s, #u = :u"
        else:
            update = "SET #p = :p, #u = :u REMOVE #s"
        try:
            with aws_call("UpdateItem"):
                self.ddb.update_item(
                    TableName=self.table,
                    Key=_key(DEPLOYMENT_KEY),
                    UpdateExpression=update,
                    ConditionExpression="#p = :expected",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    # --- heartbeats -------------------------------------------------------------------------
    def heartbeats(self, instance_ids: Sequence[str]) -> dict[str, HostHeartbeat]:
        out: dict[str, HostHeartbeat] = {}
        for instance_id in dict.fromkeys(instance_ids):
            item = self._get(heartbeat_key(instance_id))
            if item:
                out[instance_id] = HostHeartbeat.model_validate({"instance_id": instance_id, **item})
        return out

    # --- failover lock ----------------------------------------------------------------------
    def acquire_lock(self, owner: str, now: float, ttl_s: int) -> str | None:
        item = _to_item({**LOCK_KEY, "owner": owner, "acquired_at": now, "expires_at": int(now) + ttl_s})
        try:
            with aws_call("PutItem"):
                self.ddb.put_item(
                    TableName=self.table,
                    Item=item,
                    ConditionExpression="attribute_not_exists(pk) OR expires_at < :now OR #o = :owner",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":now": {"N": str(int(now))}, ":owner": {"S": owner}},
                )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            current = self._get(LOCK_KEY) or {}
            return str(current.get("owner", "unknown"))
        return None

    def release_lock(self, owner: str) -> bool:
        try:
            with aws_call("DeleteItem"):
                self.ddb.delete_item(
                    TableName=self.table,
                    Key=_key(LOCK_KEY),
                    ConditionExpression="#o = :owner",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":owner": {"S": owner}},
                )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    # --- health counter ---------------------------------------------------------------------
    def health(self) -> HealthCounter:
        item = self._get(HEALTH_KEY)
        return HealthCounter.model_validate(item) if item else HealthCounter()

    def put_health(self, counter: HealthCounter) -> None:
        with aws_call("PutItem"):
            self.ddb.put_item(TableName=self.table, Item=_to_item({**HEALTH_KEY, **counter.model_dump(mode="json")}))
