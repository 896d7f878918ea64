"""Reload under load: N calls up through the rendered gateway (the capacity topology), then the host agent
applies a new config version exactly as on a host (``sip_trunk.agent.apply.apply_version``: fetch from SSM
— moto in-process —, check hashes, new release directory, symlink swap, ``core reload``, verify). Counts the
calls that dropped (channel + unique id before and after, and sipp's failed calls at the end) and the
apply time."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws
from sip_trunk_local.harness.gateway import merge, render_gateway
from sip_trunk_local.rtp import reserve_rtp_range
from sip_trunk_local.sipp import free_port

from bench.audio import write_audio
from bench.capacity import ConfigVariant, active_calls, gateway_settings, start_gateway
from bench.common import MediaCounter
from bench.topology import GATEWAY_IP, start_carrier, start_echo_agent

PREFIX = "/bench/asterisk"


def _channels(inst: Any) -> set[tuple[str, str]]:
    rows = [line.split("!") for line in inst.rx("core show channels concise").splitlines() if "!" in line]
    return {(row[0], row[-1]) for row in rows}


def run(root: Path, workdir: Path, *, calls: int, call_s: float, log: Any = print) -> dict[str, Any]:
    from sip_trunk import configstore
    from sip_trunk.agent.apply import apply_version
    from sip_trunk.agent.config import AgentConfig
    from sip_trunk.agent.runtime import AsteriskCli
    from sip_trunk.manifest import MANIFEST_NAME, Manifest

    workdir.mkdir(parents=True, exist_ok=True)
    audio = write_audio(workdir / "audio")["ulaw"]
    gw_range = reserve_rtp_range(max(200, 4 * calls + 100))
    uac_range = reserve_rtp_range(2 * calls + 100)
    sip_port = free_port(GATEWAY_IP)
    agent, agent_port = start_echo_agent(workdir, calls, "ulaw")
    gw = uac = None
    counter = None
    out: dict[str, Any] = {"calls": calls, "call_s": call_s, "config": "rendered"}
    try:
        from bench.variants import RENDERED

        variant: ConfigVariant = RENDERED  # the product's config as rendered
        gw, e164 = start_gateway(
            root, workdir, "bench-reload", variant, sip_port=sip_port, rtp=gw_range.ports, agent_port=agent_port
        )
        counter = MediaCounter((uac_range.low, uac_range.high)).install()
        uac = start_carrier(
            workdir,
            sip_port=sip_port,
            e164=e164,
            calls=calls,
            rate=max(10, calls / 5),
            hold_ms=int(call_s * 1000),
            timeout_s=call_s + 60,
            audio=audio,
            media_port=uac_range.low,
        )
        deadline = time.monotonic() + calls / max(10, calls / 5) + 10
        while time.monotonic() < deadline and active_calls(gw) < calls:
            time.sleep(0.5)
        time.sleep(1)
        up = active_calls(gw)
        before = _channels(gw)
        # the new version: another dial timeout and a new DID, rendered by the product's renderer
        settings, secrets = gateway_settings(sip_port, gw_range.ports, agent_port)
        settings["carriers"][0]["port"] = 5999
        changed = merge(
            settings, {"dialplan": {"dial_timeout_s": 33, "did_routes": {"+14155550199": {"kind": "agent"}}}}
        )
        v2 = render_gateway(changed, secrets, workdir / "gw-v2")
        files = dict(v2.rendered.files)
        files["asterisk/asterisk.conf"] = (gw.etc_dir / "asterisk.conf").read_bytes()  # unchanged: no restart
        files.pop(MANIFEST_NAME)
        files[MANIFEST_NAME] = Manifest.for_files(files).to_json()
        version = Manifest.from_json(files[MANIFEST_NAME]).version
        rtp0, t_rtp0 = counter.counts().to_range, time.monotonic()
        with mock_aws():
            ssm = boto3.client("ssm", region_name="us-east-1")
            configstore.publish_config(ssm, PREFIX, files, list(v2.rendered.secret_files), version)
            config = AgentConfig(
                stack="bench",
                config_prefix=PREFIX,
                config_dir=gw.etc_dir,
                releases_dir=gw.base / "releases",
                state_dir=workdir / "agent-state",
                fail2ban_dir=workdir / "fail2ban",
                fail2ban_reload=(),
                asterisk_cmd=("chroot", str(gw.root), "/usr/sbin/asterisk"),
                asterisk_conf=gw.conf_path,
                reload_timeout_s=15.0,
            )
            cli = AsteriskCli(config.asterisk_cmd, config.asterisk_conf)
            t0 = time.monotonic()
            result = apply_version(config, ssm, cli, version)
            apply_s = time.monotonic() - t0
        time.sleep(2)
        after = _channels(gw)
        rtp1, t_rtp1 = counter.counts().to_range, time.monotonic()
        route = gw.rx("dialplan show dial-carrier") + gw.rx("dialplan show route-agent")
        sipp_result = uac.wait(timeout=call_s + 90)
        failed = calls - (sipp_result.successful or 0)
        out.update(
            {
                "calls_up": up,
                "channels_before": len(before),
                "channels_kept": len(before & after),
                "dropped_calls": (len(before) - len(before & after)) // 2,
                "failed_calls": failed,
                "apply_s": round(apply_s, 2),
                "changed": result.get("changed"),
                "new_dialplan_active": bool(re.search(r",33\)", route)),
                "carrier_pps_during_apply": round((rtp1 - rtp0) / (t_rtp1 - t_rtp0)),
                "expected_pps": 50 * calls,
            }
        )
    finally:
        if uac is not None:
            uac.kill()
        agent.stop()
        if counter is not None:
            counter.remove()
        if gw is not None:
            gw.stop()
        for r in (gw_range, uac_range, *agent.ranges):
            r.release()
    log(
        f"  reload with {out.get('calls_up')} calls up: dropped {out.get('dropped_calls')}, failed "
        f"{out.get('failed_calls')}, apply {out.get('apply_s')} s, new dialplan {out.get('new_dialplan_active')}"
    )
    return out
