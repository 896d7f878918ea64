"""The Athena table over the call records reads what the gateway writes, where the host agent writes it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sip_trunk.agent import calls
from sip_trunk.callrecords import PARTITION, S3_PREFIX, object_key
from support.callrecord import example_record
from support.deploy import load_template
from test_host_iam import statements

pytestmark = pytest.mark.unit

NUMERIC = {"int", "bigint", "double", "float", "smallint", "tinyint"}


def table() -> dict[str, Any]:
    resource: dict[str, Any] = load_template()["Resources"]["CallRecordsTable"]["Properties"]["TableInput"]
    return resource


def _split_fields(body: str) -> list[str]:
    fields, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            fields.append(body[start:i])
            start = i + 1
    return [*fields, body[start:]]


def parse_type(text: str) -> Any:
    """A Hive type as data: ``struct<a:int,b:struct<…>>`` -> {"a": "int", "b": {…}}; scalars stay strings."""
    if text == "map<string,string>":
        return "map"
    if text.startswith("struct<") and text.endswith(">"):
        out = {}
        for field in _split_fields(text[len("struct<") : -1]):
            name, _, kind = field.partition(":")
            out[name] = parse_type(kind)
        return out
    return text


def shape(value: Any) -> Any:
    """A JSON value's shape in the table's terms: objects by key, "string" or "number" for scalars, "null" for
    a null (which any column holds)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if value is None:
        return "null"
    return "string" if isinstance(value, str) else "number"


def nulls_as_in(kinds: Any, record: Any) -> Any:
    """The table's shape with "null" wherever the record has a null (a scalar column of either kind holds it)."""
    if kinds == "map" and isinstance(record, dict) and set(record.values()) <= {"string"}:
        return record  # a map of strings holds any keys
    if isinstance(kinds, dict) and isinstance(record, dict):
        return {k: nulls_as_in(v, record.get(k)) for k, v in kinds.items()}
    return "null" if record == "null" and not isinstance(kinds, dict) else kinds


def table_shape(kinds: dict[str, Any]) -> dict[str, Any]:
    def one(kind: Any) -> Any:
        if isinstance(kind, dict):
            return {k: one(v) for k, v in kind.items()}
        assert kind in NUMERIC | {"string", "map"}, kind
        return kind if kind in ("string", "map") else "number"

    return {k: one(v) for k, v in kinds.items()}


def shipped_record() -> dict[str, Any]:
    """What the host agent writes to S3 for a record the real dialplan template produces."""
    body = calls.s3_body([example_record()])
    (line,) = body.decode().splitlines()
    record: dict[str, Any] = json.loads(line)
    return record


def columns() -> dict[str, Any]:
    return {c["Name"]: parse_type(c["Type"]) for c in table()["StorageDescriptor"]["Columns"]}


def test_every_field_the_dialplan_writes_has_a_column_of_its_kind() -> None:
    # Given the record the rendered dialplan writes, as the shipper puts it into S3
    record = shipped_record()
    # Then the table has exactly its fields, nested legs included, strings as strings and numbers as numbers
    assert "media" in record  # the host agent's verdict travels with the record
    assert nulls_as_in(table_shape(columns()), shape(record)) == shape(record)
    # and with the agent's BYE headers added, as ship-calls adds them
    record = {**record, "conversation_id": "conv_1", "agent_headers": {"x-call-outcome": "resolved"}}
    assert nulls_as_in(table_shape(columns()), shape(record)) == shape(record)


def test_the_comparison_sees_a_field_without_a_column() -> None:
    record = shipped_record()
    record["callee_leg"]["rx"]["new_figure"] = 0
    assert nulls_as_in(table_shape(columns()), shape(record)) != shape(record)


def test_the_comparison_sees_a_map_value_that_is_not_a_string() -> None:
    record = {**shipped_record(), "agent_headers": {"x-count": 3}}
    assert nulls_as_in(table_shape(columns()), shape(record)) != shape(record)


def test_the_table_reads_the_prefix_the_agent_writes() -> None:
    t = table()
    # the table's location and projection template are the shared prefix and partition column
    assert t["StorageDescriptor"]["Location"] == {"Fn::Sub": f"s3://${{BackupBucket}}/{S3_PREFIX}/"}
    template = t["Parameters"]["storage.location.template"]
    assert template == {"Fn::Sub": f"s3://${{BackupBucket}}/{S3_PREFIX}/{PARTITION}=${{!dt}}/"}
    assert [k["Name"] for k in t["PartitionKeys"]] == [PARTITION]
    # and a key the agent writes falls under it, with the day in the projection's format
    key = object_key("20261203", "i-0abc", "1796303932206000000")
    pattern = template["Fn::Sub"].removeprefix("s3://${BackupBucket}/").replace("${!dt}", "(?P<day>[^/]+)")
    match = re.match(pattern, key)
    assert match is not None, key
    assert t["Parameters"]["projection.dt.format"] == "yyyy-MM-dd"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", match["day"])
    assert match["day"] == "2026-12-03"
    assert t["Parameters"]["projection.enabled"] == "true"
    # and the host role may write exactly there (PutObject only: it never reads records back)
    by_sid = statements()
    assert by_sid["CallRecords"]["Action"] == "s3:PutObject"
    arn = f"arn:${{AWS::Partition}}:s3:::${{BackupBucket}}/{S3_PREFIX}/*"
    assert by_sid["CallRecords"]["Resource"] == {"Fn::Sub": arn}


def test_the_named_query_reads_the_table_in_its_workgroup() -> None:
    resources = load_template()["Resources"]
    query = resources["CallsLastHourQuery"]["Properties"]
    assert query["Database"] == {"Ref": "CallRecordsDatabase"}
    assert query["WorkGroup"] == {"Ref": "CallRecordsWorkGroup"}
    sql = query["QueryString"]
    assert re.search(rf"FROM {table()['Name']}\b", sql)
    assert re.search(rf"WHERE {PARTITION} >=", sql)  # prunes partitions: reads one or two days, not all
    # every column (and nested field) it selects exists
    kinds: dict[str, Any] = {**columns(), PARTITION: "string"}
    selected = re.search(r"SELECT(.*?)FROM", sql, re.S)
    assert selected is not None
    aliases = set(re.findall(r"\bAS (\w+)", selected[1]))
    paths = [p for p in re.findall(r"\b[a-z_]+(?:\.[a-z_]+)*\b", selected[1]) if p not in aliases]
    assert len(paths) > 10
    for path in paths:
        node: Any = kinds
        for part in path.split("."):
            assert isinstance(node, dict), f"{path}: {part} is not a struct"
            assert part in node, f"{path}: no such column"
            node = node[part]
    workgroup = resources["CallRecordsWorkGroup"]["Properties"]["WorkGroupConfiguration"]
    assert workgroup["EnforceWorkGroupConfiguration"] is True
    assert workgroup["ResultConfiguration"]["EncryptionConfiguration"]["EncryptionOption"] == "SSE_KMS"
