"""Build the product's rendered gateway config for the real-Asterisk tests.

Tests describe the deployment they need as a settings document (a dict, usually an example file with
overrides), and get back the directory the renderer wrote — exactly what the host agent would install.
Ports and RTP ranges are chosen per test so instances never collide.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sip_trunk.render import RenderedConfig, render_configs, write_rendered
from sip_trunk.settings import Settings, parse_secrets, parse_settings

from sip_trunk_local.controlplane import find_project_root

REPO_ROOT = find_project_root(Path(__file__).parent)
EXAMPLES = REPO_ROOT / "examples"


def load_example(name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings and secrets documents of ``examples/<name>.yaml`` as plain dicts."""
    settings = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    secrets = yaml.safe_load((EXAMPLES / f"{name}.secrets.yaml").read_text())
    return settings, secrets


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class RenderedGateway:
    settings: Settings
    rendered: RenderedConfig
    out_dir: Path

    @property
    def asterisk_dir(self) -> Path:
        """The Asterisk config directory to hand to ``asterisk_factory``."""
        return self.out_dir / "asterisk"

    def file(self, name: str) -> str:
        return (self.asterisk_dir / name).read_text()


def render_gateway(
    settings: Mapping[str, Any],
    secrets: Mapping[str, str],
    out_dir: Path,
    *,
    public_address: str | None = None,
) -> RenderedGateway:
    """Validate and render like production does, and write the files to ``out_dir``."""
    doc = parse_settings(dict(settings), "test settings")
    rendered = render_configs(doc, parse_secrets(dict(secrets), "test secrets"), public_address=public_address)
    write_rendered(rendered, out_dir)
    return RenderedGateway(settings=doc, rendered=rendered, out_dir=out_dir)


def loopback_network(
    bind_address: str,
    sip_port: int,
    rtp: tuple[int, int],
    *,
    tls_port: int | None = None,
    udp: bool = False,
) -> dict[str, Any]:
    """`network` settings for a gateway on loopback: no NAT, the test's own SIP port and RTP range."""
    network: dict[str, Any] = {
        "public_address": None,
        "local_nets": ["127.0.0.0/8"],
        "bind_address": bind_address,
        "sip_port": sip_port,
        "rtp_port_start": rtp[0],
        "rtp_port_end": rtp[1],
    }
    if tls_port is not None:
        network["tls_port"] = tls_port
    if udp:
        network["udp_enabled"] = True
    return network


def ip_carrier(
    host: str,
    port: int,
    dids: list[str],
    *,
    name: str = "carrier",
    transport: str = "tcp",
    codecs: list[str] | None = None,
) -> dict[str, Any]:
    """A carrier identified by its one source address (the test's sipp), delivering `dids`."""
    carrier: dict[str, Any] = {
        "name": name,
        "host": host,
        "port": port,
        "transport": transport,
        "auth": "ip",
        "match": [f"{host}/32"],
        "dids": dids,
    }
    if codecs is not None:
        carrier["codecs"] = codecs
    return carrier
