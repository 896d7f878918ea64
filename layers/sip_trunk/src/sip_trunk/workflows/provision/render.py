"""RenderConfig: render the Asterisk configuration into a content-addressed version in the config store and
point the desired version at it."""

from __future__ import annotations

import re

from sip_trunk.errors import SettingsInvalid
from sip_trunk.render import render_configs
from sip_trunk.workflows.common import Model, load_settings
from sip_trunk.workflows.deps import Deps

VERSION_PATTERN = re.compile(r"^v[0-9a-f]{16}$")


class RenderResult(Model):
    version: str
    previous_version: str | None
    public_address: str
    published: bool
    files: int


def render_config(deps: Deps) -> RenderResult:
    loaded = load_settings(deps.settings, deps.secrets)
    address = deps.addresses.describe_address(deps.config.primary_allocation_id).public_ip
    public = loaded.settings.network.public_address or address
    rendered = render_configs(loaded.settings, loaded.secrets, public_address=public)
    if not VERSION_PATTERN.fullmatch(rendered.version):
        raise SettingsInvalid(f"renderer produced an unexpected version id {rendered.version!r}")
    published = not deps.config_store.has_version(rendered.version)
    if published:
        deps.config_store.publish(rendered.files, rendered.secret_files, rendered.version)
    previous = deps.config_store.desired_version()
    if previous != rendered.version:
        deps.config_store.set_desired_version(rendered.version)
    return RenderResult(
        version=rendered.version,
        previous_version=previous,
        public_address=public,
        published=published,
        files=len(rendered.files),
    )
