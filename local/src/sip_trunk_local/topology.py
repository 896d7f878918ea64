"""The addresses, names and ports of the local deployment's emulated world, defined once.

Only documentation ranges stand for public addresses (203.0.113.0/24 for Elastic IPs, 198.51.100.0/24 for the
outside segment of carrier and ElevenLabs stand-in) and one private /24 is the hosts' LAN::

    client ns 198.51.100.50 ─┐                                    ┌─ host ns 10.0.0.10
    stand-in ns 198.51.100.20 ┼─ wan (bridge) 198.51.100.1  router  br0 10.0.0.1 ─┼─ host ns 10.0.0.11
                              ┘      DNAT/SNAT 203.0.113.x <-> 10.0.0.y            └─ ...
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

# --- the hosts' LAN ----------------------------------------------------------------------------------------
PRIVATE_CIDR = "10.0.0.0/24"
ROUTER_PRIVATE_IP = "10.0.0.1"
FIRST_HOST_IP = "10.0.0.10"

# --- ports -------------------------------------------------------------------------------------------------
SIP_PORT = 5060
"""The gateway's SIP (TCP) port on the Elastic IP, and the stand-in's and carrier's."""
STANDIN_RTP = (10000, 10999)
CARRIER_MEDIA_PORT = 6000

# --- the deployment ----------------------------------------------------------------------------------------
PHONE_NUMBER = "+14155550100"
"""The DID the carrier calls and the number imported into the ElevenLabs stand-in."""
