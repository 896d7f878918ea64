"""`sip-trunk local`: the whole product on this machine (moto for AWS, Asterisk hosts in network namespaces).

Registered as the `local` sub-command of the product's `sip-trunk` command through the `sip_trunk.cli`
entry-point group, so it exists only where this distribution is installed (development and test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from sip_trunk_local.topology import PUBLIC_IP

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_INVALID = 2


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    return typer.Exit(EXIT_INVALID)


app = typer.Typer(
    help="The whole product on this machine: moto for AWS, local Asterisk hosts in network namespaces (root).",
    no_args_is_help=True,
)

RunDirOption = Annotated[Path, typer.Option("--run-dir", help="state of the local deployment (PIDs, logs, sockets)")]
_DEFAULT_RUN_DIR = Path("/run/aws-sip-trunk/local")


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="local deployment", show_lines=False)
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in summary.get("steps_s", {}).items():
        table.add_row(name, f"{seconds:.2f}")
    out.print(table)
    prov = summary.get("provision", {})
    steps = Table(title=f"provision {prov.get('execution', '')} (measured, Wait states not slept)")
    steps.add_column("step")
    steps.add_column("seconds", justify="right")
    for name, seconds in prov.get("steps_s", {}).items():
        steps.add_row(name, f"{seconds:.2f}")
    steps.add_row("total", f"{prov.get('total_s', 0):.2f}")
    out.print(steps)
    waits = prov.get("waits_nominal_s") or []
    retries = prov.get("retries_nominal_s") or []
    out.print(f"nominal Wait states: {len(waits)} ({sum(waits):.0f} s on AWS); retry back-offs: {len(retries)}")
    out.print(f"config version [bold]{prov.get('version')}[/] on Elastic IP {summary.get('public_ip')}")
    for host in summary.get("hosts", []):
        out.print(
            f"  host {host['instance_id']} {host['role']} {host['private_ip']}: boot {host.get('boot_s')} s, "
            f"user data {host.get('user_data_s')} s",
            highlight=False,
        )
    call = summary.get("call", {})
    rtp = call.get("rtp", {})
    verdict = "[green]answered, audio both ways[/]" if call.get("audio_both_ways") else "[red]FAILED[/]"
    out.print(
        f"call carrier → {call.get('did')} @ {call.get('public_ip')} → agent: {verdict} in {call.get('seconds')} s"
    )
    out.print(
        f"  RTP packets: carrier sent {rtp.get('carrier_sent')}, received {rtp.get('carrier_received')}; "
        f"agent received {rtp.get('agent_received')}, sent {rtp.get('agent_sent')}",
        highlight=False,
    )


def _controller_or_exit(run_dir: Path) -> int:
    from sip_trunk_local.orchestrator import controller_pid

    pid = controller_pid(run_dir)
    if pid is None:
        raise _fail(f"no local deployment is running (run dir {run_dir}); start one with `sip-trunk local up`")
    return pid


def _deployment(
    project: Path, config_env: str | None, samconfig: Path | None, single_host: bool
) -> tuple[str, dict[str, str], bool]:
    """(stack name, root-stack parameters, high availability) of `local up`, from a samconfig profile or
    local mode's own defaults."""
    import tomllib

    from sip_trunk_local.controlplane import load_template
    from sip_trunk_local.orchestrator import GUIDED_ANSWERS, LOCAL_IMAGE, STACK
    from sip_trunk_local.profiles import SAMCONFIG, ProfileError, parameter_values, profile_parameters

    if config_env is None:
        if samconfig is not None:
            raise _fail("--samconfig needs --config-env NAME")
        return STACK, dict(GUIDED_ANSWERS), not single_host
    template = load_template(project / "template.yaml")
    path = samconfig or project / SAMCONFIG
    try:
        stack, parameters, answered = profile_parameters(path, config_env, template, GUIDED_ANSWERS)
    except (ProfileError, OSError, tomllib.TOMLDecodeError) as exc:
        raise _fail(str(exc)) from exc
    high_availability = parameter_values(template, parameters).get("HighAvailability") == "true"
    image = {k: parameters[k] for k in LOCAL_IMAGE if k in parameters}
    out.print(
        f"profile {config_env} ({path}): stack {stack}, {len(parameters) - len(answered)} parameter overrides"
        + (f"; answered as --guided would ask: {', '.join(answered)}" if answered else "")
        + (f"; local hosts boot the local Asterisk image, not {image}" if image else ""),
        highlight=False,
    )
    return stack, parameters, high_availability and not single_host


@app.command("up")
def local_up(
    run_dir: RunDirOption = _DEFAULT_RUN_DIR,
    single_host: Annotated[bool, typer.Option("--single-host", help="no standby host")] = False,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 900.0,
    watch_interval: Annotated[
        float, typer.Option(help="the standby's watch-peer --interval in seconds (production: 1.5)")
    ] = 0.5,
    watch_failures: Annotated[
        int, typer.Option(help="the standby's watch-peer --failures: failed probes before failover (production: 3)")
    ] = 3,
    config_env: Annotated[
        str | None,
        typer.Option(
            "--config-env",
            help="deploy this samconfig.toml profile: its stack_name and parameter_overrides, as `sam deploy "
            "--config-env` sends them (what CloudFormation refuses is refused here)",
        ),
    ] = None,
    samconfig: Annotated[
        Path | None, typer.Option("--samconfig", help="the samconfig file (default: the project's samconfig.toml)")
    ] = None,
    elevenlabs_static_cidr: Annotated[
        str,
        typer.Option(
            help="the template's ElevenLabsStaticCidr: SIP TCP/TLS only from this /24 and --allowed-sip-cidrs "
            "(the ElevenLabs stand-in is at 198.51.100.20)"
        ),
    ] = "",
    allowed_sip_cidrs: Annotated[
        str, typer.Option(help="the template's AllowedSipCidrs (the local carrier is at 198.51.100.50)")
    ] = "",
) -> None:
    """Create the control plane in moto, provision local hosts with the real state machine, place a real call."""
    import os
    import time

    from rich.live import Live
    from rich.spinner import Spinner

    from sip_trunk_local.controlplane import find_project_root
    from sip_trunk_local.orchestrator import LOG, controller_pid, read_events, spawn_controller

    if os.geteuid() != 0:
        raise _fail("local mode needs root (network namespaces, mounts, Asterisk): run it with sudo")
    if controller_pid(run_dir) is not None:
        raise _fail(f"a local deployment is already running ({run_dir}); `sip-trunk local down` first")
    project = find_project_root()
    stack, parameters, high_availability = _deployment(project, config_env, samconfig, single_host)
    network = {"ElevenLabsStaticCidr": elevenlabs_static_cidr, "AllowedSipCidrs": allowed_sip_cidrs}
    network_options = {name: value for name, value in network.items() if value}
    pid = spawn_controller(
        run_dir,
        project,
        stack=stack,
        parameters=parameters | network_options,
        high_availability=high_availability,
        watch_interval_s=watch_interval,
        watch_failures=watch_failures,
    )
    out.print(f"controller pid {pid}, run dir {run_dir} (log: {run_dir / LOG})", highlight=False)
    offset, deadline, current = 0, time.monotonic() + timeout, "starting"
    with Live(Spinner("dots", text=current), console=out, transient=True) as live:
        while True:
            events, offset = read_events(run_dir, offset)
            for event in events:
                kind = event.get("kind")
                if kind == "step" and event["status"] == "start":
                    current = event["title"]
                elif kind == "step" and event["status"] == "done":
                    live.console.print(
                        f"[green]✓[/] {escape(event['title'])} [dim]{event['seconds']:.2f} s[/] "
                        f"{escape(str(event.get('detail', '')))}"
                    )
                elif kind == "step":
                    live.console.print(f"[red]✗[/] {escape(event['title'])}: {escape(str(event.get('error')))}")
                elif kind == "host":
                    live.console.print(
                        f"  [dim]host {event['instance_id']}: {event['event']} {escape(str(event['detail']))} "
                        f"({event['seconds']} s)[/]"
                    )
                elif kind == "ready":
                    live.stop()
                    _print_summary(event["summary"])
                    out.print(f"[bold green]up[/]: `sip-trunk local status|call|down` (run dir {run_dir})")
                    return
                elif kind == "failed" and event.get("problems"):
                    live.stop()
                    err.print(f"[bold red]local up refused[/]: CloudFormation refuses stack {escape(stack)}:")
                    for problem in event["problems"]:
                        err.print(f"  {escape(str(problem))}", highlight=False)
                    err.print("no stack was created", highlight=False)
                    raise typer.Exit(1)
                elif kind == "failed":
                    live.stop()
                    err.print(f"[bold red]local up failed[/]: {escape(str(event.get('error')))}")
                    err.print(escape(str(event.get("trace", ""))[-1500:]), highlight=False)
                    raise typer.Exit(1)
            live.update(Spinner("dots", text=current))
            if controller_pid(run_dir) is None and not events:
                raise _fail(f"the controller exited; see {run_dir / LOG}")
            if time.monotonic() > deadline:
                raise _fail(f"not up after {timeout:.0f} s; see {run_dir / LOG}")
            time.sleep(0.2)


@app.command("status")
def local_status(run_dir: RunDirOption = _DEFAULT_RUN_DIR) -> None:
    """What runs: hosts, the Elastic IP's holder, the last provisioning."""
    import json

    from sip_trunk_local.orchestrator import send_request

    _controller_or_exit(run_dir)
    answer = send_request(run_dir, {"command": "status"}, timeout_s=30)
    out.print_json(json.dumps({k: v for k, v in answer.items() if k != "summary"}, default=str))


@app.command("call")
def local_call(
    run_dir: RunDirOption = _DEFAULT_RUN_DIR,
    duration_ms: Annotated[int, typer.Option(help="how long the call holds audio")] = 3000,
) -> None:
    """Place a real call: the carrier calls the DID at the Elastic IP, the gateway hands it to the agent."""
    import json

    from sip_trunk_local.orchestrator import send_request

    _controller_or_exit(run_dir)
    answer = send_request(run_dir, {"command": "call", "duration_ms": duration_ms})
    out.print_json(json.dumps(answer, default=str))
    if not answer.get("ok"):
        raise typer.Exit(1)


@app.command("calls")
def local_calls(
    run_dir: RunDirOption = _DEFAULT_RUN_DIR,
    count: Annotated[int, typer.Option(help="how many of the newest calls, per host")] = 20,
) -> None:
    """The last calls: the records each host's Asterisk wrote at hangup (JSON, newest last)."""
    import json

    from sip_trunk_local.orchestrator import send_request

    _controller_or_exit(run_dir)
    answer = send_request(run_dir, {"command": "calls", "count": count}, timeout_s=30)
    out.print_json(json.dumps(answer.get("calls", answer), default=str))
    if not answer.get("ok"):
        raise typer.Exit(1)


def _print_drill(result: dict[str, Any]) -> None:
    from rich.table import Table

    runs = result.get("runs") or [result]
    for run in runs:
        title = f"drill {result.get('drill')}" + (f" run {run.get('run')}" if len(runs) > 1 else "")
        table = Table(title=title)
        table.add_column("step")
        table.add_column("seconds", justify="right")
        table.add_column("what happened")
        for step in run.get("steps", []):
            mark = "[green]✓[/]" if step.get("ok") else "[red]✗[/]"
            table.add_row(f"{mark} {escape(step['step'])}", f"{step['seconds']:.2f}", escape(str(step.get("detail"))))
        out.print(table)
        if "rto_s" in run and not isinstance(run["rto_s"], dict):
            out.print(
                f"RTO [bold]{run['rto_s']:.2f} s[/] = detection {run['detection_s']:.2f} s (primary dead → "
                f"{escape(str(run['execution']))} started) + movement {run['movement_s']:.2f} s (→ SIP OPTIONS "
                f"answered on {PUBLIC_IP} from outside); execution {run['execution_s']:.2f} s",
                highlight=False,
            )
    if isinstance(result.get("rto_s"), dict):
        wp = result.get("watch_peer", {})
        out.print(
            f"watch-peer --interval {wp.get('interval_s')} --failures {wp.get('failures')} --timeout "
            f"{wp.get('timeout_s')} (production: --interval 1.5 --failures 3 --timeout 1)",
            highlight=False,
        )
        table = Table(title=f"failover RTO over {result['rto_s']['n']} runs (seconds)")
        for column in ("", "median", "p95", "min", "max"):
            table.add_column(column, justify="right" if column else "left")
        for key, label in (("rto_s", "RTO"), ("detection_s", "detection"), ("movement_s", "movement")):
            stats = result[key]
            table.add_row(label, *(f"{stats[k]:.2f}" for k in ("median", "p95", "min", "max")))
        out.print(table)
    out.print(f"[bold green]drill {result.get('drill')} passed[/] in {result.get('seconds', 0):.1f} s")


@app.command("drill")
def local_drill(
    name: Annotated[str, typer.Argument(help="failover | restore | bad-config | flap")],
    run_dir: RunDirOption = _DEFAULT_RUN_DIR,
    repeat: Annotated[int, typer.Option(help="failover, flap: run it N times (the standby re-armed in between)")] = 1,
    scenario: Annotated[
        list[str] | None, typer.Option(help="flap: crash | reboot | partition | blip, cycled (default: all four)")
    ] = None,
    plant: Annotated[
        str | None, typer.Option(help="flap: a known defect the checks must catch (ignore-lock | stale-role)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="write the result as JSON here")] = None,
) -> None:
    """Run a drill on the local deployment: failover (kill the primary), restore (backup, lose the hosts,
    provision, restore), bad-config (push a version Asterisk rejects during a call), flap (the primary crashes,
    reboots, is cut off from the standby, blips; no split brain)."""
    import json
    import threading
    import time

    from sip_trunk_local.drills import DRILLS, write_json
    from sip_trunk_local.orchestrator import read_events, send_request

    if name not in DRILLS:
        raise _fail(f"unknown drill {name!r}: one of {', '.join(DRILLS)}")
    if repeat < 1 or (repeat > 1 and name not in ("failover", "flap")):
        raise _fail("--repeat N (N ≥ 1) is for the failover and flap drills")
    if (scenario or plant) and name != "flap":
        raise _fail("--scenario and --plant are for the flap drill")
    _controller_or_exit(run_dir)
    _, offset = read_events(run_dir)
    box: dict[str, Any] = {}

    def request() -> None:
        try:
            request = {"command": "drill", "drill": name, "repeat": repeat, "scenarios": scenario or [], "plant": plant}
            box["answer"] = send_request(run_dir, request, 3600)
        except Exception as exc:
            box["answer"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    worker = threading.Thread(target=request, daemon=True)
    worker.start()
    while worker.is_alive() or offset < (run_dir / "events.jsonl").stat().st_size:
        events, offset = read_events(run_dir, offset)
        for event in events:
            if event.get("kind") != "drill" or event.get("status") == "start":
                continue
            prefix = f"[dim]#{event['run']}[/] " if repeat > 1 else ""
            if event["status"] == "done":
                out.print(
                    f"{prefix}[green]✓[/] {escape(event['step'])} [dim]{event['seconds']:.2f} s[/] "
                    f"{escape(str(event.get('detail', '')))}"
                )
            else:
                out.print(f"{prefix}[red]✗[/] {escape(event['step'])}: {escape(str(event.get('error')))}")
        if not events:
            time.sleep(0.1)
        worker.join(0)
    answer = box.get("answer", {})
    if not answer.get("ok"):
        err.print(f"[bold red]drill {name} failed[/]: {escape(str(answer.get('error')))}")
        if answer.get("trace"):
            err.print(escape(str(answer["trace"])[-1500:]), highlight=False)
        raise typer.Exit(1)
    result = answer["result"]
    _print_drill(result)
    if json_out is not None:
        write_json(json_out, result)
        out.print(f"result: {json_out}", highlight=False)
    else:
        (run_dir / f"drill-{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


@app.command("measure")
def local_measure(
    run_dir: RunDirOption = Path("/run/aws-sip-trunk/measure"),
    ups: Annotated[int, typer.Option(help="`local up` runs whose provisioning is timed")] = 5,
    failovers: Annotated[int, typer.Option(help="failover drills on the last deployment")] = 10,
    out_file: Annotated[Path, typer.Option("--out", help="JSON result")] = Path("bench/results/local_drills.json"),
) -> None:
    """Time `local up` (provisioning) N times and the failover drill M times; write medians and p95."""
    import datetime
    import json
    import os
    import platform
    import subprocess
    import sys

    from sip_trunk_local.drills import summarize, write_json
    from sip_trunk_local.orchestrator import read_events, send_request

    def cli(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "sip_trunk.cli", "local", *args, "--run-dir", str(run_dir)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if proc.returncode != 0:
            subprocess.run([sys.executable, "-m", "sip_trunk.cli", "local", "down", "--run-dir", str(run_dir)],
                           capture_output=True, check=False)  # fmt: skip
            raise _fail(f"local {args[0]} failed: {proc.stdout[-1500:]} {proc.stderr[-1500:]}")

    provision: list[float] = []
    up_total: list[float] = []
    runs: dict[str, Any] = {}
    for index in range(max(1, ups)):
        cli("up")
        events, _ = read_events(run_dir)
        summary = next(e["summary"] for e in events if e.get("kind") == "ready")
        provision.append(float(summary["steps_s"]["provision"]))
        up_total.append(round(sum(summary["steps_s"].values()), 3))
        out.print(f"up {index + 1}/{ups}: provision {provision[-1]:.2f} s, up {up_total[-1]:.2f} s", highlight=False)
        if index < ups - 1:
            cli("down")
    try:
        answer = send_request(run_dir, {"command": "drill", "drill": "failover", "repeat": failovers}, 3600)
        if not answer.get("ok"):
            raise _fail(f"failover drill failed: {answer.get('error')}")
        runs = answer["result"]
    finally:
        cli("down")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu,
            "kernel": platform.release(),
            "os": platform.freedesktop_os_release().get("PRETTY_NAME", platform.system()),
            "python": platform.python_version(),
        },
        "provision_s": summarize(provision),
        "local_up_s": summarize(up_total),
        "failover_rto_s": runs["rto_s"],
        "failover_detection_s": runs["detection_s"],
        "failover_movement_s": runs["movement_s"],
        "watch_peer": {**runs["watch_peer"], "production": {"interval_s": 5, "failures": 3, "timeout_s": 2}},
        "failover_runs": [
            {k: r[k] for k in ("rto_s", "detection_s", "movement_s", "execution_s", "execution")} for r in runs["runs"]
        ],
        "method": (
            "provision_s: the Provision step of `sip-trunk local up` (the real state machine in moto, Wait states "
            "paced, not slept), one fresh deployment per run. Failover: `sip-trunk local drill failover --repeat N`: "
            "SIGKILL to the primary's Asterisk; detection = until the Failover execution's start time (started by "
            f"the standby's watch-peer); movement = from there until SIP OPTIONS to {PUBLIC_IP} from the outside "
            "namespace is answered; the standby is re-armed between runs."
        ),
    }
    write_json(out_file, result)
    out.print_json(json.dumps({k: v for k, v in result.items() if k != "failover_runs"}))


@app.command("down")
def local_down(run_dir: RunDirOption = _DEFAULT_RUN_DIR) -> None:
    """Remove every process, namespace and mount local mode made."""
    import contextlib
    import os
    import signal
    import time

    from sip_trunk_local.asterisk_runner import process_alive
    from sip_trunk_local.orchestrator import (
        CONTROL,
        PIDFILE,
        controller_pid,
        send_request,
        teardown_without_controller,
    )

    pid = controller_pid(run_dir)
    removed: dict[str, Any] = {}
    if pid is not None:
        with contextlib.suppress(OSError):
            removed = send_request(run_dir, {"command": "down"}, timeout_s=180).get("removed", {})
        deadline = time.monotonic() + 30
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    leftovers = teardown_without_controller(run_dir)
    for name in (CONTROL, PIDFILE):
        (run_dir / name).unlink(missing_ok=True)
    count = sum(len(v) for v in removed.values()) + sum(len(v) for v in leftovers.values())
    out.print(f"down: removed {count} processes/namespaces/mounts ({run_dir})", highlight=False)
