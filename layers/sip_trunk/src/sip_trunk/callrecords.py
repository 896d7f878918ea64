"""Where call records live in S3 and how their media is judged: one definition for the host agent (writes them),
the operator CLI (reads them) and the template's Athena table (tests hold its location and columns to this).

Standard library only: the host agent imports it.

Layout: ``s3://<backup bucket>/calls/dt=YYYY-MM-DD/<host>-<batch>.jsonl``, one JSON record per line, the
partition being the UTC day the record was written (the day file's name; the call's end). Hive-style
``dt=`` keys let Athena's partition projection find every day without a crawler.
"""

from __future__ import annotations

import re

S3_PREFIX = "calls"
"""Top-level prefix of the call records in the backup bucket (template.yaml's Glue table reads it)."""
PARTITION = "dt"
"""The partition column: the UTC day, ``YYYY-MM-DD``."""

_DAY = re.compile(r"(\d{4})(\d{2})(\d{2})")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def day_prefix(day: str) -> str:
    """``calls/dt=2026-12-03/`` for ``20261203`` or ``2026-12-03``."""
    match = _DAY.fullmatch(day.replace("-", ""))
    if match is None:
        raise ValueError(f"not a day (YYYYMMDD or YYYY-MM-DD): {day!r}")
    return f"{S3_PREFIX}/{PARTITION}={match[1]}-{match[2]}-{match[3]}/"


def object_key(day: str, host: str, batch: str) -> str:
    """The key of one shipped batch: derived from the host and the batch's own name, so shipping the same batch
    again (after a crash or an outage) overwrites the same object instead of adding a copy."""
    return f"{day_prefix(day)}{_SAFE.sub('_', host) or 'host'}-{_SAFE.sub('_', batch)}.jsonl"
