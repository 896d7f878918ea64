"""CLI-output parsers, on text captured from a real Asterisk 22.10.1 (tests/unit/fixtures/asterisk)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sip_trunk.asterisk import (
    ChannelCount,
    ContactStatus,
    RegistrationStatus,
    TransportStatus,
    expected_pjsip_objects,
    parse_channel_count,
    parse_contacts,
    parse_endpoints,
    parse_registrations,
    parse_transports,
    parse_uptime,
    parse_version,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


def test_endpoints_with_state_transport_and_aors() -> None:
    endpoints = {e.name: e for e in parse_endpoints(fixture("pjsip_show_endpoints"))}

    assert set(endpoints) == {"alice", "elevenlabs"}
    assert endpoints["alice"].state == "Not in use"
    assert endpoints["alice"].transport == "transport-udp"
    assert endpoints["alice"].aors == ("alice",)
    assert endpoints["alice"].channels == 0
    assert endpoints["alice"].max_channels is None
    assert endpoints["elevenlabs"].state == "Unavailable"
    assert endpoints["elevenlabs"].transport == "transport-tcp"


def test_no_objects_found_is_an_empty_list() -> None:
    assert parse_endpoints(fixture("pjsip_show_endpoints_none")) == []
    assert parse_contacts(fixture("pjsip_show_contacts_none")) == []
    assert parse_registrations(fixture("pjsip_show_registrations_none")) == []


def test_transports() -> None:
    assert parse_transports(fixture("pjsip_show_transports")) == [
        TransportStatus("transport-tcp", "tcp", "127.0.0.1:25060"),
        TransportStatus("transport-udp", "udp", "127.0.0.1:25060"),
    ]


def test_contacts_keep_uri_parameters_and_rtt() -> None:
    contacts = parse_contacts(fixture("pjsip_show_contacts"))

    assert contacts == [
        ContactStatus("alice", "sip:alice@127.0.0.1:25060", "eb265167ca", "Avail", 0.422),
        ContactStatus("elevenlabs", "sip:127.0.0.1:25999;transport=tcp", "a0040d30f2", "Unavail", None),
    ]
    assert contacts[0].reachable
    assert not contacts[1].reachable


def test_contacts_from_show_aors_match_show_contacts() -> None:
    assert parse_contacts(fixture("pjsip_show_aors")) == parse_contacts(fixture("pjsip_show_contacts"))


def test_registrations() -> None:
    (reg,) = parse_registrations(fixture("pjsip_show_registrations"))
    assert reg == RegistrationStatus("carrier", "sip:127.0.0.1:25998", "carrier-auth", "Unregistered")
    assert not reg.registered


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            " carrier/sip:sip.example.net:5060    carrier-auth    Registered        (exp. 3591s)",
            RegistrationStatus("carrier", "sip:sip.example.net:5060", "carrier-auth", "Registered"),
        ),
        (
            " ipcarrier/sip:10.0.0.1                                                  Rejected",
            RegistrationStatus("ipcarrier", "sip:10.0.0.1", None, "Rejected"),
        ),
    ],
)
def test_registration_lines(line: str, expected: RegistrationStatus) -> None:
    assert parse_registrations(line) == [expected]


def test_channel_counts_idle_and_busy() -> None:
    assert parse_channel_count(fixture("core_show_channels_count_idle")) == ChannelCount(0, 0, 0)
    assert parse_channel_count(fixture("core_show_channels_count")) == ChannelCount(2, 2, 2)


def test_channel_count_rejects_other_output() -> None:
    with pytest.raises(ValueError, match="channels count"):
        parse_channel_count("No such command 'core show channels count'")


def test_version_and_uptime() -> None:
    assert parse_version(fixture("core_show_version")).startswith("22.10.1")
    assert parse_uptime(fixture("core_show_uptime_seconds")) == (12, 12)
    with pytest.raises(ValueError, match="version"):
        parse_version("Unable to connect to remote asterisk")


PJSIP_CONF = r"""
; rendered
[transport-tcp]
type=transport
protocol=tcp ; comment
bind=0.0.0.0:5060

[endpoint-defaults](!)
type=endpoint
context=from-extensions

[alice](endpoint-defaults)
aors=alice

[alice]
type=aor
contact=sip:alice@10.0.0.2\;transport=tcp

[elevenlabs]
type = endpoint
aors=elevenlabs

[carrier]
type=registration
server_uri=sip:carrier.example.net
"""


def test_expected_objects_from_pjsip_conf_follow_templates() -> None:
    objects = expected_pjsip_objects(PJSIP_CONF)

    assert objects.endpoints == {"alice", "elevenlabs"}
    assert objects.transports == {"transport-tcp"}
    assert objects.registrations == {"carrier"}
    assert objects.aors == {"alice"}
