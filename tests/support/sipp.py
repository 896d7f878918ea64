"""sipp runs for the tests: :mod:`sip_trunk_local.sipp` (shared with local mode); scenario names are looked up
in ``tests/asterisk/scenarios`` first."""

from __future__ import annotations

from pathlib import Path

from sip_trunk_local import sipp as _sipp
from sip_trunk_local.sipp import (
    G711A_PCAP,
    SIPP_SHARE,
    TRANSPORTS,
    Sipp,
    SippError,
    SippResult,
    TlsTunnel,
    auth_field,
    free_media_port,
    free_port,
    free_sip_port,
    parse_screen,
    parse_stat_csv,
    received_messages,
    received_requests,
    registered_phone,
    run_sipp,
    scenario_path,
    traced_messages,
    write_injection,
)

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "asterisk" / "scenarios"
if SCENARIO_DIR not in _sipp.SCENARIO_DIRS:
    _sipp.SCENARIO_DIRS.insert(0, SCENARIO_DIR)

__all__ = [
    "G711A_PCAP",
    "SCENARIO_DIR",
    "SIPP_SHARE",
    "TRANSPORTS",
    "Sipp",
    "SippError",
    "SippResult",
    "TlsTunnel",
    "auth_field",
    "free_media_port",
    "free_port",
    "free_sip_port",
    "parse_screen",
    "parse_stat_csv",
    "received_messages",
    "received_requests",
    "registered_phone",
    "run_sipp",
    "scenario_path",
    "traced_messages",
    "write_injection",
]
