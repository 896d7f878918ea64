"""The addresses, names and ports of the local deployment's emulated world, defined once.

Only documentation ranges stand for public addresses (203.0.113.0/24 for Elastic IPs, 198.51.100.0/24 for the
outside segment of carrier and ElevenLabs stand-in) and one private /24 is the hosts' LAN::

    client ns 198.51.100.50 ─┐                                    ┌─ host ns 10.0.0.10
    stand-in ns 198.51.100.20 ┼─ wan (bridge) 198.51.100.1  router  br0 10.0.0.1 ─┼─ host ns 10.0.0.11
    lambda ns 192.0.2.10     ─┘      192.0.2.1                                     └─ ...
                                     DNAT/SNAT 203.0.113.x <-> 10.0.0.y

The control plane's probes come from 192.0.2.10 (documentation range 192.0.2.0/24), standing for the public
AWS address a Lambda function outside a VPC sends from.
"""

from __future__ import annotations

# --- public side (documentation range 203.0.113.0/24) -------------------------------------------------------
PUBLIC_ADDRESSES = ("203.0.113.10", "203.0.113.11", "203.0.113.12", "203.0.113.13")
"""Elastic IPs in allocation order; the first is the primary's, the one carriers and ElevenLabs call."""
PUBLIC_IP = PUBLIC_ADDRESSES[0]

# --- outside segment (documentation range 198.51.100.0/24) --------------------------------------------------
ROUTER_OUTSIDE_IP = "198.51.100.1"
OUTSIDE_PREFIX = 24
STANDIN_IP = "198.51.100.20"
"""The ElevenLabs stand-in; every local host resolves ELEVENLABS_HOST to it."""
CLIENT_IP = "198.51.100.50"
"""The carrier / outside client."""
ELEVENLABS_HOST = "sip.rtc.elevenlabs.io"

# --- AWS's public side (documentation range 192.0.2.0/24), where Lambda functions outside a VPC send from ---
AWS_PUBLIC_GATEWAY = "192.0.2.1"
"""The router's address on the AWS segment (a second address of the outside bridge)."""
AWS_PUBLIC_PREFIX = 24
CONTROL_PLANE_IP = "192.0.2.10"
"""Where the control plane's SIP probes come from (VerifyTrunk, health check, failover): a public address
outside the VPC and outside every configured SIP network, as a Lambda function's is."""

# --- the hosts' LAN ----------------------------------------------------------------------------------------
PRIVATE_CIDR = "10.0.0.0/24"
ROUTER_PRIVATE_IP = "10.0.0.1"
FIRST_HOST_IP = "10.0.0.10"
PROBE_FUNCTION_IP = "10.0.0.120"
"""The in-VPC probe function's interface on the LAN (a member of the probe security group, ADR-27); outside
the addresses moto hands the hosts (from the bottom of each /25)."""

# --- ports -------------------------------------------------------------------------------------------------
SIP_PORT = 5060
"""The gateway's SIP (TCP) port on the Elastic IP, and the stand-in's and carrier's."""
STANDIN_RTP = (10000, 10999)
CARRIER_MEDIA_PORT = 6000

# --- the deployment ----------------------------------------------------------------------------------------
PHONE_NUMBER = "+14155550100"
"""The DID the carrier calls and the number imported into the ElevenLabs stand-in."""
