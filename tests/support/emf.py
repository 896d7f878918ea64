"""CloudWatch Embedded Metric Format, checked as CloudWatch Logs would before it extracts metrics.

The structure is the JSON schema of AWS's published specification ("Specification: Embedded metric format",
CloudWatch user guide); the references it cannot express (every dimension and metric a directive names is a
root member, dimension values are strings, metric values numbers) are checked after it. moto stores EMF log
events but extracts nothing, so this is where a test sees whether a metric would exist.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

UNITS = [
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
]  # fmt: skip

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},
                "CloudWatchMetrics": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "properties": {
                            "Namespace": {"type": "string", "minLength": 1, "maxLength": 1024},
                            "Dimensions": {
                                "type": "array",
                                "items": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": 30,
                                    "items": {"type": "string", "minLength": 1, "maxLength": 250},
                                },
                            },
                            "Metrics": {
                                "type": "array",
                                "maxItems": 100,
                                "items": {
                                    "type": "object",
                                    "required": ["Name"],
                                    "properties": {
                                        "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                                        "Unit": {"enum": UNITS},
                                        "StorageResolution": {"enum": [1, 60]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def metrics_of(message: str) -> dict[tuple[str, tuple[tuple[str, str], ...], str], float]:
    """Validate one EMF log event; return the data points CloudWatch would extract:
    (namespace, dimensions, metric name) -> value."""
    event = json.loads(message)
    jsonschema.validate(event, SCHEMA)
    points = {}
    for directive in event["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                assert isinstance(event.get(key), str), f"dimension {key} is not a string member: {event.get(key)!r}"
            dims = tuple((key, event[key]) for key in dimension_set)
            for metric in directive["Metrics"]:
                value = event.get(metric["Name"])
                assert isinstance(value, int | float), f"metric {metric['Name']} has no numeric value"
                assert not isinstance(value, bool)
                points[(directive["Namespace"], dims, metric["Name"])] = float(value)
    return points
