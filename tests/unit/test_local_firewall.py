"""Local mode's host firewall (`sip_trunk_local.firewall`): the network template's security group evaluated for
given parameters, and the iptables ruleset made from it. The e2e layer proves the kernel enforces it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sip_trunk_local.controlplane import load_template
from sip_trunk_local.firewall import (
    CHAIN,
    DROP_COMMENT,
    FirewallError,
    Ingress,
    TemplateEvaluator,
    admits,
    iptables_ruleset,
    keep_chains,
    security_group_ingress,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
NETWORK = load_template(REPO / "stacks" / "network.yaml")
GROUP = "SipSecurityGroup"
BASE = {
    "RootStackName": "stk",
    "LogKmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/0a1b2c3d-0000-1111-2222-333344445555",
}
STATIC = "198.51.100.0/24"
CARRIERS = "192.0.2.0/28,203.0.113.7/32"
PRIMARY, STANDBY = "10.0.0.10", "10.0.0.11"
HOSTS = {GROUP: [PRIMARY, STANDBY]}
ANYWHERE = "192.0.2.200"
"""A public address in no configured network (a scanner, or a Lambda function outside the VPC)."""


def rules(**parameters: str) -> list[Ingress]:
    return security_group_ingress(NETWORK, GROUP, {**BASE, **parameters})


# --- the network template's rules -------------------------------------------------------------------------


def test_default_parameters_open_sip_tcp_and_rtp_to_any_address_and_nothing_else() -> None:
    sg = rules()
    assert admits(sg, HOSTS, ANYWHERE, "tcp", 5060)
    assert admits(sg, HOSTS, ANYWHERE, "udp", 10000)
    assert admits(sg, HOSTS, ANYWHERE, "udp", 20000)
    assert not admits(sg, HOSTS, ANYWHERE, "udp", 5060)  # UDP SIP only from allowed networks
    assert not admits(sg, HOSTS, ANYWHERE, "tcp", 5061)  # TLS off
    assert not admits(sg, HOSTS, ANYWHERE, "tcp", 22)  # no SSH
    assert not admits(sg, HOSTS, ANYWHERE, "udp", 20001)


def test_the_static_range_narrows_sip_tcp_to_elevenlabs_and_the_allowed_networks() -> None:
    sg = rules(ElevenLabsStaticCidr=STATIC, AllowedSipCidrs=CARRIERS)
    assert admits(sg, HOSTS, "198.51.100.20", "tcp", 5060) == ["SipTcpFromElevenLabs"]
    assert admits(sg, HOSTS, "192.0.2.5", "tcp", 5060) == ["SipTcpFromCidr1"]
    assert admits(sg, HOSTS, "203.0.113.7", "udp", 5060) == ["SipUdpFromCidr2"]
    assert not admits(sg, HOSTS, "203.0.113.8", "tcp", 5060)
    assert not admits(sg, HOSTS, ANYWHERE, "tcp", 5060)
    assert admits(sg, HOSTS, ANYWHERE, "udp", 15000)  # media stays open


def test_tls_follows_the_same_sources_as_tcp() -> None:
    open_tls = rules(EnableTls="true")
    assert admits(open_tls, HOSTS, ANYWHERE, "tcp", 5061) == ["SipTlsFromAnywhere"]
    narrowed = rules(EnableTls="true", ElevenLabsStaticCidr=STATIC, AllowedSipCidrs="192.0.2.0/28")
    assert admits(narrowed, HOSTS, "198.51.100.9", "tcp", 5061) == ["SipTlsFromElevenLabs"]
    assert admits(narrowed, HOSTS, "192.0.2.1", "tcp", 5061) == ["SipTlsFromCidr1"]
    assert not admits(narrowed, HOSTS, ANYWHERE, "tcp", 5061)


def test_a_tls_trunk_opens_tls_5061_and_keeps_tcp_5060_closed_to_elevenlabs_and_the_internet() -> None:
    """ElevenLabs reaches a TLS trunk on 5061 only: TCP 5060 stays open to the other host and the allowed
    networks alone. Negative control: the TCP 5060 rules conditioned on the sources only (no ``TrunkOverTcp``)
    admit the scanner and the ElevenLabs range on 5060 and fail the first assertions."""
    open_tls = rules(EnableTls="true", SipTransport="tls")
    assert admits(open_tls, HOSTS, ANYWHERE, "tcp", 5061) == ["SipTlsFromAnywhere"]
    assert not admits(open_tls, HOSTS, ANYWHERE, "tcp", 5060)
    assert admits(open_tls, HOSTS, STANDBY, "tcp", 5060) == ["SipTcpFromPeerHosts"]  # watch-peer
    narrowed = rules(EnableTls="true", SipTransport="tls", ElevenLabsStaticCidr=STATIC, AllowedSipCidrs=CARRIERS)
    assert admits(narrowed, HOSTS, "198.51.100.20", "tcp", 5061) == ["SipTlsFromElevenLabs"]
    assert not admits(narrowed, HOSTS, "198.51.100.20", "tcp", 5060)
    assert admits(narrowed, HOSTS, "192.0.2.5", "tcp", 5060) == ["SipTcpFromCidr1"]  # carriers keep TCP
    # TLS on with the tcp transport (carriers over TLS, ElevenLabs over TCP) keeps both
    mixed = rules(EnableTls="true", SipTransport="tcp")
    assert admits(mixed, HOSTS, ANYWHERE, "tcp", 5060) == ["SipTcpFromAnywhere"]
    assert admits(mixed, HOSTS, ANYWHERE, "tcp", 5061) == ["SipTlsFromAnywhere"]


def test_the_peer_host_may_probe_sip_on_its_private_address_with_the_static_range_set() -> None:
    # watch-peer on the standby sends OPTIONS over TCP to the primary's private address (sip-trunk-watch-peer.service)
    sg = rules(ElevenLabsStaticCidr=STATIC)
    assert admits(sg, HOSTS, STANDBY, "tcp", 5060) == ["SipTcpFromPeerHosts"], "the standby's watch-peer is dropped"
    assert not admits(sg, HOSTS, "10.0.0.99", "tcp", 5060), "only members of the hosts' group, not the VPC"
    assert not admits(sg, HOSTS, STANDBY, "udp", 5060), "watch-peer probes over TCP only"


def test_the_in_vpc_probe_function_may_probe_the_hosts_with_the_static_range_set() -> None:
    """ADR-27: the control plane's probes come from the probe function's group inside the VPC; its public
    address outside the VPC is not admitted (no rule can name Lambda's addresses)."""
    probe = {**HOSTS, "ProbeSecurityGroup": ["10.0.0.120"]}
    sg = rules(ElevenLabsStaticCidr=STATIC, EnableTls="true")
    assert admits(sg, probe, "10.0.0.120", "tcp", 5060) == ["SipTcpFromProbe"]
    assert admits(sg, probe, "10.0.0.120", "tcp", 5061) == ["SipTlsFromProbe"]
    assert admits(sg, probe, "10.0.0.120", "udp", 5060) == ["SipUdpFromProbe"]
    assert not admits(sg, probe, ANYWHERE, "tcp", 5060)
    # without the static range the probe group does not exist: the control plane probes the public address
    open_sg = rules()
    assert not [r for r in open_sg if r.source_group == "ProbeSecurityGroup"]
    assert admits(open_sg, probe, ANYWHERE, "tcp", 5060) == ["SipTcpFromAnywhere"]


def test_every_rule_names_its_source() -> None:
    for parameters in ({}, {"ElevenLabsStaticCidr": STATIC, "AllowedSipCidrs": CARRIERS, "EnableTls": "true"}):
        for rule in rules(**parameters):
            assert (rule.cidr is None) != (rule.source_group is None), rule


# --- the evaluator ----------------------------------------------------------------------------------------

TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "Mode": {"Type": "String", "Default": "a", "AllowedValues": ["a", "b"]},
        "List": {"Type": "String", "Default": "", "AllowedPattern": "^[0-9.,/]*$"},
    },
    "Conditions": {
        "IsA": {"Fn::Equals": [{"Ref": "Mode"}, "a"]},
        "IsB": {"Fn::Not": [{"Condition": "IsA"}]},
        "HasSecond": {
            "Fn::Not": [{"Fn::Equals": [{"Fn::Select": [1, {"Fn::Split": [",", {"Fn::Sub": "${List},,"}]}]}, ""]}]
        },
        "Both": {"Fn::And": [{"Condition": "IsA"}, {"Condition": "HasSecond"}]},
        "Either": {"Fn::Or": [{"Condition": "IsB"}, {"Condition": "HasSecond"}]},
    },
    "Resources": {"G": {"Type": "AWS::EC2::SecurityGroup"}},
}


def test_conditions_follow_the_parameters_and_their_defaults() -> None:
    default = TemplateEvaluator(TEMPLATE, {})
    assert default.condition("IsA")
    assert not default.condition("IsB")
    assert not default.condition("HasSecond")
    listed = TemplateEvaluator(TEMPLATE, {"Mode": "b", "List": "10.0.0.0/8,192.0.2.0/24"})
    assert listed.condition("IsB")
    assert listed.condition("HasSecond")
    assert listed.condition("Either")
    assert not listed.condition("Both")


def test_values_resolve_if_novalue_select_split_join_sub_and_resource_refs() -> None:
    ev = TemplateEvaluator(TEMPLATE, {"List": "1.1.1.1/32,2.2.2.2/32"})
    node = {
        "Chosen": {"Fn::If": ["IsA", "yes", "no"]},
        "Gone": {"Fn::If": ["IsB", "x", {"Ref": "AWS::NoValue"}]},
        "Second": {"Fn::Select": ["1", {"Fn::Split": [",", {"Ref": "List"}]}]},
        "Joined": {"Fn::Join": ["-", ["a", {"Ref": "Mode"}]]},
        "Sub": {"Fn::Sub": ["${X}/${Mode}", {"X": "v"}]},
        "Group": {"Fn::GetAtt": ["G", "GroupId"]},
        "Items": ["keep", {"Fn::If": ["IsB", "drop", {"Ref": "AWS::NoValue"}]}],
    }
    assert ev.value(node) == {
        "Chosen": "yes",
        "Second": "2.2.2.2/32",
        "Joined": "a-a",
        "Sub": "v/a",
        "Group": ev.value({"Ref": "G"}),
        "Items": ["keep"],
    }


@pytest.mark.parametrize(
    ("parameters", "node", "message"),
    [
        ({"Nope": "1"}, None, "not declared"),
        ({"Mode": "c"}, None, "is not one of"),
        ({"List": "1.2.3.4 ; rm"}, None, "does not match"),
        ({}, {"Fn::Base64": "x"}, "not supported"),
        ({}, {"Ref": "Missing"}, "unknown resource or parameter"),
        ({}, {"Fn::Sub": "${G}"}, "deployed resource"),
        ({}, {"Fn::If": ["Undeclared", 1, 2]}, "not declared"),
    ],
)
def test_what_the_evaluator_does_not_model_or_cloudformation_refuses_is_an_error(
    parameters: dict[str, str], node: Any, message: str
) -> None:
    with pytest.raises(FirewallError, match=message):
        TemplateEvaluator(TEMPLATE, parameters).value(node)


def test_unmodelled_sources_are_refused() -> None:
    template = {
        "Resources": {
            "G": {
                "Type": "AWS::EC2::SecurityGroup",
                "Properties": {
                    "SecurityGroupIngress": [
                        {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "SourcePrefixListId": "pl-1"}
                    ]
                },
            },
        }
    }
    with pytest.raises(FirewallError, match="SourcePrefixListId is not modelled"):
        security_group_ingress(template, "G", {})


# --- the iptables ruleset ---------------------------------------------------------------------------------


def test_ruleset_admits_loopback_established_and_each_source_then_drops_the_rest() -> None:
    sg = [
        Ingress("Tcp", "tcp", 5060, 5060, cidr="198.51.100.0/24"),
        Ingress("Peers", "tcp", 5060, 5060, source_group=GROUP),
        Ingress("Media", "udp", 10000, 20000, cidr="0.0.0.0/0"),
        Ingress("Any", "all", None, None, cidr="192.0.2.1/32"),
    ]
    lines = iptables_ruleset(sg, HOSTS).splitlines()
    assert lines[0] == "*filter"
    assert lines[-1] == "COMMIT"
    assert ":INPUT DROP [0:0]" in lines
    inputs = [line for line in lines if line.startswith("-A INPUT")]
    assert inputs == [
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A INPUT -j {CHAIN}",
        f'-A INPUT -m comment --comment "{DROP_COMMENT}" -j DROP',
    ]
    chain = [line for line in lines if line.startswith(f"-A {CHAIN}")]
    assert chain == [
        f"-A {CHAIN} -s 198.51.100.0/24 -p tcp --dport 5060:5060 -m comment --comment Tcp -j ACCEPT",
        f"-A {CHAIN} -s {PRIMARY}/32 -p tcp --dport 5060:5060 -m comment --comment Peers -j ACCEPT",
        f"-A {CHAIN} -s {STANDBY}/32 -p tcp --dport 5060:5060 -m comment --comment Peers -j ACCEPT",
        f"-A {CHAIN} -s 0.0.0.0/0 -p udp --dport 10000:20000 -m comment --comment Media -j ACCEPT",
        f"-A {CHAIN} -s 192.0.2.1/32 -m comment --comment Any -j ACCEPT",
    ]


def test_a_group_source_without_members_admits_nobody() -> None:
    sg = [Ingress("Peers", "tcp", 5060, 5060, source_group=GROUP)]
    assert not [line for line in iptables_ruleset(sg, {}).splitlines() if line.startswith(f"-A {CHAIN}")]
    assert not admits(sg, {}, PRIMARY, "tcp", 5060)


SAVED_WITH_FAIL2BAN = """# Generated by iptables-save
*raw
:PREROUTING ACCEPT [0:0]
-A PREROUTING -s 10.0.0.11/32 -j DROP
COMMIT
*filter
:INPUT DROP [12:720]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SG_INGRESS - [0:0]
:f2b-asterisk-sip-trunk - [0:0]
-A INPUT -j f2b-asterisk-sip-trunk
-A INPUT -i lo -j ACCEPT
-A SG_INGRESS -s 0.0.0.0/0 -p tcp -m tcp --dport 5060 -j ACCEPT
-A f2b-asterisk-sip-trunk -s 198.51.100.66/32 -j REJECT --reject-with icmp-port-unreachable
-A f2b-asterisk-sip-trunk -j RETURN
COMMIT
"""


def test_a_rewrite_keeps_fail2bans_chains_and_their_jumps_ahead_of_the_group() -> None:
    sg = [Ingress("Tcp", "tcp", 5060, 5060, cidr="0.0.0.0/0")]
    ruleset = iptables_ruleset(sg, HOSTS)
    lines = keep_chains(ruleset, SAVED_WITH_FAIL2BAN).splitlines()
    inputs = [line for line in lines if line.startswith("-A INPUT")]
    assert inputs[0] == "-A INPUT -j f2b-asterisk-sip-trunk"
    assert inputs[1:] == [line for line in ruleset.splitlines() if line.startswith("-A INPUT")]
    assert ":f2b-asterisk-sip-trunk - [0:0]" in lines
    jail = [line for line in lines if line.startswith("-A f2b-")]
    assert jail == [
        "-A f2b-asterisk-sip-trunk -s 198.51.100.66/32 -j REJECT --reject-with icmp-port-unreachable",
        "-A f2b-asterisk-sip-trunk -j RETURN",
    ]
    assert lines[-1] == "COMMIT"
    assert lines.index(":f2b-asterisk-sip-trunk - [0:0]") < lines.index(inputs[0])
    assert "-A PREROUTING -s 10.0.0.11/32 -j DROP" not in lines  # only the filter table is rewritten
    # the group's own rules come from the new ruleset only
    assert [line for line in lines if line.startswith(f"-A {CHAIN}")] == [
        line for line in ruleset.splitlines() if line.startswith(f"-A {CHAIN}")
    ]


def test_without_fail2ban_chains_the_ruleset_is_unchanged() -> None:
    ruleset = iptables_ruleset([Ingress("Tcp", "tcp", 5060, 5060, cidr="0.0.0.0/0")], HOSTS)
    assert keep_chains(ruleset, "") == ruleset
    assert keep_chains(ruleset, SAVED_WITH_FAIL2BAN.replace("f2b-", "other-")) == ruleset
