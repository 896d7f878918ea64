"""RTP packet counters and cross-process RTP port ranges: :mod:`sip_trunk_local.rtp` (shared with local mode)."""

from __future__ import annotations

from sip_trunk_local.rtp import (
    BLOCK,
    LOCK_DIR,
    POOL_END,
    POOL_START,
    IptablesError,
    RtpCounter,
    RtpCounts,
    RtpRange,
    RtpRangeError,
    iptables,
    release_rtp_ranges,
    reserve_rtp_range,
    rtp_range,
)

__all__ = [
    "BLOCK",
    "LOCK_DIR",
    "POOL_END",
    "POOL_START",
    "IptablesError",
    "RtpCounter",
    "RtpCounts",
    "RtpRange",
    "RtpRangeError",
    "iptables",
    "release_rtp_ranges",
    "reserve_rtp_range",
    "rtp_range",
]
