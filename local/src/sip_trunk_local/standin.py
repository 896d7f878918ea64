"""The outside world of local mode: the ElevenLabs stand-in and the carrier, and one real call through both.

* **ElevenLabs stand-in**: a second Asterisk (config in ``standin/``, package data) in its own namespace on the
  router's outside segment at ``198.51.100.20:5060`` (TCP), the address every local host resolves
  ``sip.rtc.elevenlabs.io`` to (the host's ``/etc/hosts``). Like ElevenLabs it is INVITE-only, challenges every
  INVITE and identifies the gateway by digest user name (``elevenlabs.outbound_username``), routes only the
  imported number with its ``+``, answers and echoes the audio; it calls into the gateway at the public address
  with ``elevenlabs.inbound_username`` (:meth:`Standin.originate`). Credentials come from the deployment's
  settings and secrets (:func:`credentials`).
* **carrier**: sipp in the client namespace (``198.51.100.50``) sends the call to the DID over TCP to the public
  address, with G.711 audio; the gateway identifies it by that address (:func:`carrier_settings`).
* :func:`place_call`: carrier → gateway → stand-in, with RTP counted on both legs in both directions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip_trunk_local.asterisk_runner import AsteriskInstance
from sip_trunk_local.hosts import HostError, LocalHostManager
from sip_trunk_local.rtp import RtpCounter, RtpCounts
from sip_trunk_local.sipp import SippResult, run_sipp
from sip_trunk_local.topology import CARRIER_MEDIA_PORT, CLIENT_IP, PUBLIC_IP, SIP_PORT, STANDIN_IP, STANDIN_RTP

CONFIG_DIR = Path(__file__).resolve().parent / "standin"
STANDIN_LABEL = "elevenlabs"
STANDIN_PORT = SIP_PORT
CARRIER_PORT = SIP_PORT
CARRIER_SCENARIO = "carrier_uac_pcap.xml"


@dataclass(frozen=True)
class Credentials:
    e164: str
    gateway_out: tuple[str, str]  # (user, password) the gateway authenticates with when it calls the agent
    gateway_in: tuple[str, str]  # (user, password) the agent authenticates with when it calls the gateway


def credentials(settings: Any, secrets: Mapping[str, str]) -> Credentials:
    """The stand-in's side of the trunk from a settings document (``sip_trunk.settings.Settings`` or its dict)
    and the secret values by reference (``{"ssm:/demo/sip/...": "value"}``)."""
    el = settings["elevenlabs"] if isinstance(settings, Mapping) else settings.elevenlabs
    get = el.get if isinstance(el, Mapping) else lambda key: getattr(el, key)

    def secret(ref: str) -> str:
        return str(secrets.get(ref, ref)) if isinstance(secrets, Mapping) else ref

    return Credentials(
        e164=str(get("phone_number")),
        gateway_out=(str(get("outbound_username")), secret(str(get("outbound_password")))),
        gateway_in=(str(get("inbound_username")), secret(str(get("inbound_password")))),
    )


def carrier_settings(e164: str, name: str = "carrier") -> dict[str, Any]:
    """The settings overrides that make the local carrier (sipp at 198.51.100.50) a carrier of the deployment,
    identified by its address, with ``e164`` as its DID; merge into the settings document."""
    return {
        "carriers": [
            {
                "name": name,
                "host": CLIENT_IP,
                "port": CARRIER_PORT,
                "transport": "tcp",
                "auth": "ip",
                "match": [f"{CLIENT_IP}/32"],
                "dids": [e164],
            }
        ],
    }


@dataclass
class Standin:
    """The running ElevenLabs stand-in."""

    inst: AsteriskInstance
    address: str
    port: int
    rtp_range: tuple[int, int]
    creds: Credentials
    netns: str

    def agent_calls(self) -> list[str]:
        """The Request-URI users of the calls the agent took (one log line per call)."""
        return re.findall(r"STANDIN-AGENT-CALL ruri_user=(\S*)", self.inst.log_text("messages"))

    def originate(self, exten: str, endpoint: str = "to-gateway") -> str:
        """Call ``exten`` on the gateway (at the public address) as the agent does (asynchronous)."""
        return self.inst.rx(f"channel originate PJSIP/{exten}@{endpoint} extension echo@agent-outbound")

    def channel_count(self) -> int:
        m = re.search(r"(\d+) active channels?", self.inst.rx("core show channels count"))
        return int(m.group(1)) if m else -1

    def stop(self) -> None:
        self.inst.stop()


def start_standin(
    manager: LocalHostManager, creds: Credentials, *, public_ip: str = PUBLIC_IP, gateway_port: int = 5060
) -> Standin:
    """Start the stand-in in its namespace on the outside segment; recorded with the manager for teardown."""
    topo = manager.network()
    if STANDIN_LABEL in topo.outside:
        raise HostError("the ElevenLabs stand-in is running already")
    netns = manager.add_outside(STANDIN_LABEL, STANDIN_IP)
    variables = {
        "HOLDER_IP": STANDIN_IP,
        "SIP_PORT": str(STANDIN_PORT),
        "RTP_START": str(STANDIN_RTP[0]),
        "RTP_END": str(STANDIN_RTP[1]),
        "E164": creds.e164,
        "GATEWAY_OUT_USER": creds.gateway_out[0],
        "GATEWAY_OUT_PASSWORD": creds.gateway_out[1],
        "GATEWAY_IN_USER": creds.gateway_in[0],
        "GATEWAY_IN_PASSWORD": creds.gateway_in[1],
        "GATEWAY_IP": public_ip,
        "GATEWAY_PORT": str(gateway_port),
    }
    inst = AsteriskInstance(
        manager.root,
        STANDIN_LABEL,
        config_dir=CONFIG_DIR,
        netns=netns,
        variables=variables,
        group=f"local-{topo.prefix}",
    )
    inst.prepare()
    try:
        inst.start(prepare=False)
    finally:
        if inst.pid is not None:
            manager.record_process(STANDIN_LABEL, inst.pid, extra={"base": str(inst.base)})
    return Standin(inst, STANDIN_IP, STANDIN_PORT, STANDIN_RTP, creds, netns)


@dataclass
class CallResult:
    """One carrier → gateway → agent call: did it succeed, how long it took, and the RTP packets seen
    (carrier leg at the carrier, agent leg at the stand-in; ``to_range`` = received, ``from_range`` = sent)."""

    ok: bool
    did: str
    public_ip: str
    seconds: float
    carrier: RtpCounts
    agent: RtpCounts
    agent_calls: list[str]
    sipp: SippResult

    @property
    def audio_both_ways(self) -> bool:
        return min(self.carrier.to_range, self.carrier.from_range, self.agent.to_range, self.agent.from_range) > 0

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "did": self.did,
            "public_ip": self.public_ip,
            "seconds": round(self.seconds, 3),
            "rtp": {
                "carrier_sent": self.carrier.from_range,
                "carrier_received": self.carrier.to_range,
                "agent_received": self.agent.to_range,
                "agent_sent": self.agent.from_range,
            },
            "agent_calls": self.agent_calls,
        }

    def describe(self) -> str:
        return f"{self.summary()}\n{self.sipp.describe()}"


def place_call(
    manager: LocalHostManager,
    standin: Standin | None,
    did: str,
    workdir: Path,
    *,
    public_ip: str = PUBLIC_IP,
    port: int = 5060,
    duration_ms: int = 3000,
    timeout: float = 30.0,
) -> CallResult:
    """The carrier (sipp in the client namespace) calls ``did`` at ``public_ip`` over TCP with G.711 audio for
    ``duration_ms``; returns when the call has ended. ``ok`` means answered, held and hung up with 200 to the BYE.
    Without ``standin`` the agent leg is not counted."""
    client = manager.outside_namespace()
    agent_before = len(standin.agent_calls()) if standin else 0
    carrier = RtpCounter((CARRIER_MEDIA_PORT, CARRIER_MEDIA_PORT), interface="eth0", netns=client).install()
    agent = RtpCounter(standin.rtp_range, interface="eth0", netns=standin.netns).install() if standin else None
    started = time.monotonic()
    try:
        result = run_sipp(
            CARRIER_SCENARIO,
            workdir,
            remote=f"{public_ip}:{port}",
            transport="t1",
            local_ip=CLIENT_IP,
            local_port=CARRIER_PORT,
            service=did,
            duration_ms=duration_ms,
            media_port=CARRIER_MEDIA_PORT,
            netns=client,
            timeout=timeout,
        )
        seconds = time.monotonic() - started
        carrier_counts = carrier.counts()
        agent_counts = agent.counts() if agent else RtpCounts(0, 0)
    finally:
        carrier.remove()
        if agent:
            agent.remove()
    calls = standin.agent_calls()[agent_before:] if standin else []
    return CallResult(result.ok, did, public_ip, seconds, carrier_counts, agent_counts, calls, result)
