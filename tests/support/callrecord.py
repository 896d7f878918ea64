"""A call record as the rendered dialplan writes it, without running Asterisk.

The dialplan builds the record from three JSON skeletons (``CR_LEG``, ``CR_REC`` and the line
``call-record-emit`` appends); every ``${…}`` in them is an Asterisk expression. Putting the leg into the record
and a placeholder in each expression gives the record's exact shape: a quoted expression becomes the string
``"0"``, a bare one the number ``0``. Tests that compare the Athena table, the shipper or the CLI with what the
gateway writes derive it from here, so a field added to the template shows up in them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sip_trunk.render import render_configs
from sip_trunk.settings import load_secrets, load_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _set_value(text: str, pattern: str) -> str:
    line = next(line for line in text.splitlines() if re.search(pattern, line))
    start = re.search(pattern, line)
    assert start is not None
    assert line.endswith(")")
    return line[start.end() : -1]


def _placeholders(text: str) -> str:
    """Every top-level ``${…}`` (nesting balanced) replaced by ``0``."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            out.append("0")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def dialplan_record(extensions_conf: str) -> dict[str, Any]:
    """The record (both legs answered) whose shape the dialplan in ``extensions_conf`` writes."""
    leg = _set_value(extensions_conf, r"Set\(CR_LEG=(?=\{)")
    rec = _set_value(extensions_conf, r"Set\(CR_REC=(?=\{)")
    emit = _set_value(extensions_conf, r"Set\(FILE\([^=]*\)=")
    line = emit.replace("${CR_REC}", rec).replace("${CR_CALLEE}", leg).replace("${CR_LEG}", leg)
    record: dict[str, Any] = json.loads(_placeholders(line))
    return record


def example_record(name: str = "minimal") -> dict[str, Any]:
    """The record of the example settings' rendered dialplan."""
    files = render_configs(
        load_settings(EXAMPLES / f"{name}.yaml"), load_secrets(EXAMPLES / f"{name}.secrets.yaml")
    ).files
    return dialplan_record(files["asterisk/extensions.conf"].decode())
