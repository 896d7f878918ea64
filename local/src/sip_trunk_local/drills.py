"""Drills on a running local deployment (the controller process): what an outage does to the real product.

- `failover` (HA): the primary's Asterisk is killed as in a crash; the standby's real `watch-peer` notices
  (N consecutive failed SIP OPTIONS probes) and starts the real Failover state machine in moto, whose
  handlers move the Elastic IP association; the router's 1:1 NAT follows (`ec2_hooks`). Measured: detection
  (primary dead → execution started, from the execution's own start time), movement (execution started → the
  public address answers SIP OPTIONS from the outside namespace) and their total, the RTO. Then a new call on
  the same public address, the state table's swapped roles, the released lock and the notification. Between
  repeats (and after the last run) the old primary is repaired and re-armed as the standby the way an operator
  does it: Asterisk started again, `sip-trunk-agent set-role` on both hosts and a heartbeat (`report`), all
  through SSM Run Command.
- `restore`: a marker row in the astdb and a voicemail file on the primary; the real Backup function (which
  runs `sip-trunk-agent backup` on the primary through Run Command); the host stack's instances are terminated
  and the stack deleted; the real Provision execution creates fresh hosts; `sip-trunk-agent restore --key K`
  through Run Command; verified by SIP OPTIONS on the Elastic IP, the restored version, the backed-up files
  byte for byte on the new host, and a call.
- `bad-config`: a call is held up while Provision runs on a version whose pjsip.conf Asterisk rejects (published
  to SSM and handed to the rest of the execution in place of the rendered version: the renderer only produces
  configs Asterisk loads); the agent rolls back, the execution ends in ProvisionFailed with a notification
  naming the step, the call up during the push survives and a new call succeeds.

Each drill returns a JSON-able result with its steps and their seconds; progress goes to `events.jsonl`
(kind `drill`), which `sip-trunk local drill` follows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sip_trunk import configstore
from sip_trunk.agent.backup import ASTDB, read_tarball
from sip_trunk.manifest import MANIFEST_NAME, Manifest
from sip_trunk.sip import ProbeTarget, Transport, probe_options
from sip_trunk.workflows.state import LOCK_KEY

from sip_trunk_local.controlplane import ControlPlane
from sip_trunk_local.ec2_hooks import Ec2Hooks
from sip_trunk_local.executor import Dispatcher, ExecutionReport, history_states
from sip_trunk_local.netns import run_in_namespace
from sip_trunk_local.standin import place_call
from sip_trunk_local.topology import PUBLIC_IP, SIP_PORT


class LocalDeployment(Protocol):
    """What a drill needs from the running local deployment (the controller's `LocalDeployment`)."""

    run_dir: Path
    plane: ControlPlane | None
    hooks: Ec2Hooks | None
    manager: Any
    standin: Any

    @property
    def phone_number(self) -> str: ...
    def emit(self, **event: Any) -> None: ...
    def client(self, service: str) -> Any: ...
    def agent_environment(self) -> dict[str, str]: ...
    def _dispatcher(self) -> Dispatcher: ...
    def provision(self, payload: dict[str, Any] | None = None) -> ExecutionReport: ...
    def call(self, duration_ms: int = 3000) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...


DRILLS = ("failover", "restore", "bad-config", "flap")
MARKER_FAMILY = "drill"
VOICEMAIL_FILE = "default/1000/INBOX/msg0000.txt"


class DrillFailed(RuntimeError):
    """A drill's expectation did not hold."""


@dataclass
class Drill:
    """One drill run: timed steps, reported as events and in the result."""

    dep: LocalDeployment
    name: str
    run: int = 1
    steps: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def emit(self, **event: Any) -> None:
        self.dep.emit(kind="drill", drill=self.name, run=self.run, **event)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[dict[str, Any]]:
        self.emit(step=title, status="start")
        started = time.monotonic()
        info: dict[str, Any] = {}
        try:
            yield info
        except BaseException as exc:
            seconds = round(time.monotonic() - started, 3)
            self.steps.append({"step": title, "seconds": seconds, "ok": False, "detail": f"{exc}"[:500]})
            self.emit(step=title, status="failed", seconds=seconds, error=f"{type(exc).__name__}: {exc}"[:1000])
            raise
        seconds = round(time.monotonic() - started, 3)
        detail = str(info.get("detail", ""))
        self.steps.append({"step": title, "seconds": seconds, "ok": True, "detail": detail})
        self.emit(step=title, status="done", seconds=seconds, detail=detail)

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"drill": self.name, "run": self.run, "ok": True, "steps": self.steps, **self.facts, **extra}


def expect(condition: object, message: str) -> None:
    if not condition:
        raise DrillFailed(message)


# --- helpers on the deployment -------------------------------------------------------------------------------


def _stamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def state_table(dep: LocalDeployment) -> str:
    assert dep.plane is not None
    return dep.plane.environment()["STATE_TABLE"]


def read_deployment(dep: LocalDeployment) -> dict[str, Any]:
    """`pk=deployment, sk=current` of the state table, as plain values."""
    from boto3.dynamodb.types import TypeDeserializer

    item = dep.client("dynamodb").get_item(
        TableName=state_table(dep), Key={"pk": {"S": "deployment"}, "sk": {"S": "current"}}, ConsistentRead=True
    )
    expect("Item" in item, "no deployment recorded in the state table")
    des = TypeDeserializer()
    return {k: des.deserialize(v) for k, v in item["Item"].items()}


def lock_item(dep: LocalDeployment) -> dict[str, Any] | None:

    item = dep.client("dynamodb").get_item(
        TableName=state_table(dep), Key={k: {"S": v} for k, v in LOCK_KEY.items()}, ConsistentRead=True
    )
    found: dict[str, Any] | None = item.get("Item")
    return found


def notifications(dep: LocalDeployment) -> list[dict[str, Any]]:
    """Every SNS message published in the emulated account (moto keeps them on the topic)."""
    from moto.sns.models import sns_backends

    out: list[dict[str, Any]] = []
    for account in list(sns_backends.keys()):
        backend = sns_backends[account].get("us-east-1")
        if backend is None:
            continue
        for arn, topic in list(backend.topics.items()):
            for message_id, message, subject, *_ in list(topic.sent_notifications):
                out.append({"topic": arn, "id": message_id, "subject": subject, "message": message})
    return out


def run_command(dep: LocalDeployment, instance_id: str, command: str, *, timeout_s: float = 300.0) -> dict[str, Any]:
    """One command on one instance through SSM Run Command (moto + the hooks that run it on the host): its
    status and, when it printed JSON (the agent does), the parsed answer."""
    ssm = dep.client("ssm")
    command_id = ssm.send_command(
        InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", Parameters={"commands": [command]}
    )["Command"]["CommandId"]
    return wait_command(dep, command_id, instance_id, timeout_s=timeout_s)


def wait_command(
    dep: LocalDeployment, command_id: str, instance_id: str, *, timeout_s: float = 300.0
) -> dict[str, Any]:
    ssm = dep.client("ssm")
    deadline = time.monotonic() + timeout_s
    while True:
        inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        if inv["Status"] not in ("Pending", "InProgress", "Delayed"):
            break
        expect(time.monotonic() < deadline, f"command {command_id} on {instance_id} still {inv['Status']}")
        time.sleep(0.05)
    stdout = str(inv.get("StandardOutputContent", ""))
    answer: Any = None
    with contextlib.suppress(ValueError):
        answer = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    return {
        "status": inv["Status"],
        "code": inv.get("ResponseCode"),
        "answer": answer,
        "stdout": stdout[-4000:],
        "stderr": str(inv.get("StandardErrorContent", ""))[-4000:],
    }


def agent_ok(result: dict[str, Any], what: str) -> dict[str, Any]:
    answer = result.get("answer")
    expect(
        result["status"] == "Success" and isinstance(answer, dict) and answer.get("ok"),
        f"{what}: {result['status']} {answer or ''} {result['stderr'][-800:]}",
    )
    assert isinstance(answer, dict)
    return answer


def probe_public(dep: LocalDeployment, timeout_s: float = 0.5) -> Any:
    """SIP OPTIONS to the Elastic IP, sent from the outside namespace (in this process: no interpreter start)."""

    target = ProbeTarget(PUBLIC_IP, SIP_PORT, Transport.TCP)
    return run_in_namespace(dep.manager.outside_namespace(), lambda: probe_options(target, timeout_s, verify=False))


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        expect(time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s")
        time.sleep(poll_s)


def heartbeat(dep: LocalDeployment, instance_id: str) -> dict[str, Any]:
    """`sip-trunk-agent report` on the host (the minute timer's job)."""
    return agent_ok(run_command(dep, instance_id, "sip-trunk-agent report", timeout_s=60), f"report on {instance_id}")


def call_ok(dep: LocalDeployment, duration_ms: int = 2000) -> dict[str, Any]:
    call = dep.call(duration_ms)
    expect(call.get("ok") and call.get("audio_both_ways"), f"the call failed: {json.dumps(call)[-1500:]}")
    return call


# --- failover ------------------------------------------------------------------------------------------------


def _roles(dep: LocalDeployment) -> tuple[str, str]:
    current = read_deployment(dep)
    primary, standby = current.get("primary_instance_id"), current.get("standby_instance_id")
    expect(primary and standby, f"failover needs a primary and a standby (HA): {current}")
    return str(primary), str(standby)


def rearm(dep: LocalDeployment, drill: Drill, old_primary: str, new_primary: str) -> None:
    """The operator's repair after a failover: the old primary's Asterisk runs again, the hosts' roles follow
    the state table (`set-role` on both: watch-peer moves to the new standby), fresh heartbeats."""
    manager = dep.manager
    with drill.step("re-arm: old primary repaired, roles set on the hosts, heartbeats") as info:
        manager.restart_asterisk(old_primary)
        peer = manager.host(new_primary).private_ip
        agent_ok(run_command(dep, new_primary, "sip-trunk-agent set-role --role primary"), "set-role primary")
        agent_ok(
            run_command(dep, old_primary, f"sip-trunk-agent set-role --role standby --peer-address {peer}"),
            "set-role standby",
        )
        beats = [heartbeat(dep, old_primary), heartbeat(dep, new_primary)]
        expect(all(b.get("asterisk_up") for b in beats), f"heartbeats after the repair: {beats}")
        status = manager.status()["hosts"]
        expect(status[old_primary]["watch_peer_running"], f"no watch-peer on the new standby: {status}")
        expect(not status[new_primary]["watch_peer_running"], f"watch-peer still on the new primary: {status}")
        info["detail"] = f"{old_primary} standby watching {peer}; {new_primary} primary"


def failover_once(dep: LocalDeployment, run: int, *, rearm_after: bool = True) -> dict[str, Any]:
    drill = Drill(dep, "failover", run)
    assert dep.plane is not None
    sfn = dep.client("stepfunctions")
    arn = dep.plane.failover_state_machine_arn
    manager = dep.manager
    with drill.step("preconditions: roles, standby watching, EIP answering, fresh heartbeat") as info:
        primary, standby = _roles(dep)
        status = manager.status()["hosts"]
        expect(status[primary]["asterisk_running"], f"the primary's Asterisk is not running: {status[primary]}")
        expect(status[standby]["watch_peer_running"], f"the standby runs no watch-peer: {status[standby]}")
        expect(lock_item(dep) is None, f"the failover lock is held: {lock_item(dep)}")
        answered = probe_public(dep, 2.0)
        expect(answered.reachable, f"{answered} before the drill")
        heartbeat(dep, standby)
        known = {e["executionArn"] for e in sfn.list_executions(stateMachineArn=arn)["executions"]}
        sent = len(notifications(dep))
        info["detail"] = f"primary {primary}, standby {standby} (watch-peer pid {status[standby]['watch_peer_pid']})"
    drill.facts["roles_before"] = {"primary": primary, "standby": standby}

    with drill.step("kill the primary's Asterisk (crash)") as info:
        manager.kill_host(primary)
        killed_at = time.time()
        expect(not manager.host(primary).asterisk.running, "Asterisk survived SIGKILL")
        info["detail"] = f"{primary}: SIGKILL to Asterisk's process group"

    with drill.step("watch-peer detects it and starts the Failover state machine") as info:

        def started() -> dict[str, Any] | None:
            for e in sfn.list_executions(stateMachineArn=arn)["executions"]:
                if e["executionArn"] not in known:
                    return dict(e)
            return None

        execution = wait_for(started, 60, "no Failover execution started by watch-peer")
        started_at = _stamp(execution["startDate"])
        info["detail"] = f"{execution['name']} after {started_at - killed_at:.2f} s"
    expect(execution["name"].startswith("peer-down-"), f"not started by watch-peer: {execution['name']}")

    with drill.step("the Elastic IP answers SIP OPTIONS from outside") as info:

        def answers() -> bool:
            return bool(probe_public(dep, 0.5).reachable)

        wait_for(answers, 120, f"{PUBLIC_IP} does not answer after the failover", poll_s=0.02)
        answered_at = time.time()
        info["detail"] = f"{answered_at - started_at:.2f} s after the execution started"

    with drill.step("the Failover execution ends") as info:

        def ended() -> dict[str, Any] | None:
            described: dict[str, Any] = sfn.describe_execution(executionArn=execution["executionArn"])
            return None if described["status"] == "RUNNING" else described

        described = wait_for(ended, 120, "the Failover execution did not end")
        output = json.loads(described.get("output") or "{}")
        history = sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)["events"]
        states = {s.name: s.duration_s for s in history_states(history)}
        stopped_at = _stamp(described["stopDate"])
        info["detail"] = f"{described['status']}: {output.get('outcome')} in {stopped_at - started_at:.2f} s"
    expect(
        described["status"] == "SUCCEEDED" and output.get("outcome") == "failed_over",
        f"Failover {described['status']}: {described.get('error')} {described.get('cause')} {output}",
    )

    with drill.step("state table, Elastic IP, lock, notification") as info:
        after = read_deployment(dep)
        expect(
            after.get("primary_instance_id") == standby and after.get("standby_instance_id") == primary,
            f"roles not swapped in the state table: {after}",
        )
        eip = dep.status().get("elastic_ip", {})
        expect(eip.get("instance_id") == standby, f"the Elastic IP is associated with {eip}")
        expect(manager.public_mapping().get(PUBLIC_IP) == standby, f"router: {manager.public_mapping()}")
        expect(lock_item(dep) is None, f"the lock is still held: {lock_item(dep)}")
        sent_now = notifications(dep)[sent:]
        subjects = [n["subject"] for n in sent_now]
        expect(any("failover done" in (s or "") for s in subjects), f"no 'failover done' notification: {subjects}")
        info["detail"] = f"primary {standby}, standby {primary}; lock released; notified: {subjects[-1]}"

    with drill.step(f"a new call on {PUBLIC_IP}") as info:
        call = call_ok(dep)
        info["detail"] = f"answered in {call['seconds']} s, RTP {call['rtp']}"

    detection = round(started_at - killed_at, 3)
    movement = round(answered_at - started_at, 3)
    drill.facts.update(
        execution=execution["name"],
        detection_s=detection,
        movement_s=movement,
        rto_s=round(detection + movement, 3),
        execution_s=round(stopped_at - started_at, 3),
        states_s=states,
        roles_after={"primary": standby, "standby": primary},
        lock_released=True,
        notifications=subjects,
        call=call,
        watch_peer={
            "interval_s": manager.watch_interval_s,
            "failures": manager.watch_failures,
            "timeout_s": manager.watch_timeout_s,
        },
    )
    if rearm_after:
        rearm(dep, drill, primary, standby)
    return drill.result()


def summarize(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95_index = max(0, min(len(ordered) - 1, round(0.95 * (len(ordered) - 1))))
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p95": round(ordered[p95_index], 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def failover(dep: LocalDeployment, repeat: int = 1) -> dict[str, Any]:
    runs = [failover_once(dep, i + 1) for i in range(repeat)]
    return {
        "drill": "failover",
        "ok": True,
        "runs": runs,
        "rto_s": summarize([r["rto_s"] for r in runs]),
        "detection_s": summarize([r["detection_s"] for r in runs]),
        "movement_s": summarize([r["movement_s"] for r in runs]),
        "watch_peer": runs[0]["watch_peer"],
    }


# --- restore -------------------------------------------------------------------------------------------------


def _file_digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


def restore(dep: LocalDeployment) -> dict[str, Any]:

    drill = Drill(dep, "restore")
    assert dep.plane is not None
    manager = dep.manager
    current = read_deployment(dep)
    primary = str(current["primary_instance_id"])
    standby = current.get("standby_instance_id")
    token = f"t{int(time.time() * 1000)}"
    with drill.step("state on the primary: an astdb row and a voicemail file") as info:
        host = manager.host(primary)
        host.rx(f"database put {MARKER_FAMILY} marker {token}")
        voicemail = host.path(f"/var/spool/asterisk/voicemail/{VOICEMAIL_FILE}")
        voicemail.parent.mkdir(parents=True, exist_ok=True)
        voicemail.write_text(f"drill {token}\n")
        info["detail"] = f"/{MARKER_FAMILY}/marker = {token} on {primary}"

    with drill.step("Backup function (runs `sip-trunk-agent backup` on the primary through Run Command)") as info:
        response = dep.client("lambda").invoke(
            FunctionName=dep.plane.physical["BackupFunction"],
            Payload=json.dumps({"id": f"drill-{token}", "source": "aws.events", "detail-type": "Scheduled Event"}),
        )
        result = json.loads(response["Payload"].read() or b"{}")
        expect("FunctionError" not in response, f"the Backup function failed: {result}")
        expect(result.get("instance_id") == primary, f"the backup ran on {result.get('instance_id')}, not {primary}")
        backup = agent_ok(wait_command(dep, result["command_id"], primary), "sip-trunk-agent backup")
        info["detail"] = (
            f"s3://{backup['bucket']}/{backup['key']} ({backup['bytes']} bytes, version {backup['version']})"
        )
    blob = dep.client("s3").get_object(Bucket=backup["bucket"], Key=backup["key"])["Body"].read()
    _, members = read_tarball(blob)
    expect(ASTDB in members and f"voicemail/{VOICEMAIL_FILE}" in members, f"backup members: {sorted(members)}")
    backed_up = {n: d for n, d in members.items() if n.startswith(("config/", "voicemail/"))}

    with drill.step("destroy the hosts (instances terminated, host stack deleted)") as info:
        ec2 = dep.client("ec2")
        victims = [i for i in (standby, primary) if i]  # the standby first: its watch-peer must not fail over
        for instance_id in victims:
            ec2.terminate_instances(InstanceIds=[instance_id])
        cfn = dep.client("cloudformation")
        stack = str(current.get("host_stack_name") or dep.plane.environment().get("HOST_STACK_NAME"))
        cfn.delete_stack(StackName=stack)
        expect(all(i not in manager.hosts for i in victims), f"hosts still running: {list(manager.hosts)}")
        probe = probe_public(dep, 0.5)
        expect(not probe.reachable, f"the Elastic IP still answers: {probe}")
        info["detail"] = f"{', '.join(victims)} gone; {stack} deleted; {PUBLIC_IP} silent"

    with drill.step("Provision execution (fresh hosts from the host stack)") as info:
        report = dep.provision({"reason": "restore drill: the hosts were lost"})
        expect(report.status == "SUCCEEDED", f"Provision {report.status}: {report.failures[-3:]} {report.cause}")
        fresh = read_deployment(dep)
        new_primary = str(fresh["primary_instance_id"])
        expect(new_primary not in victims, f"Provision kept the old primary {new_primary}")
        info["detail"] = f"{report.arn.rsplit(':', 1)[-1]} in {report.duration_s:.2f} s: primary {new_primary}"

    with drill.step("`sip-trunk-agent restore --key K` on the fresh primary (Run Command)") as info:
        restored = agent_ok(
            run_command(dep, new_primary, f"sip-trunk-agent restore --key {backup['key']}"), "sip-trunk-agent restore"
        )
        info["detail"] = (
            f"version {restored['version']} (release {restored['release']}), astdb rows {restored['astdb_rows']}, "
            f"voicemail files {restored['voicemail_files']}"
        )

    with drill.step("verify: OPTIONS on the Elastic IP, version, files, astdb") as info:
        probe = probe_public(dep, 2.0)
        expect(probe.reachable, f"the Elastic IP does not answer after the restore: {probe}")
        expect(restored["version"] == backup["version"], f"restored {restored['version']} != {backup['version']}")
        new_host = manager.host(new_primary)
        on_host: dict[str, bytes] = {}
        for name in backed_up:
            inside = "/etc/asterisk/" + name[len("config/") :] if name.startswith("config/") else ""
            inside = inside or "/var/spool/asterisk/voicemail/" + name[len("voicemail/") :]
            path = new_host.path(inside)
            on_host[name] = path.read_bytes() if path.is_file() else b""
        differing = sorted(n for n in backed_up if on_host[n] != backed_up[n])
        expect(not differing, f"restored files differ from the backup: {differing}")
        marker = new_host.rx(f"database get {MARKER_FAMILY} marker")
        expect(token in marker, f"astdb marker not restored: {marker!r}")
        beat = heartbeat(dep, new_primary)
        expect(beat.get("running_version", "").startswith(backup["version"]), f"heartbeat: {beat}")
        info["detail"] = (
            f"SIP {probe.status_code} in {probe.rtt_ms} ms; {len(backed_up)} files identical; astdb marker back; "
            f"running {beat.get('running_version')}"
        )

    with drill.step(f"a call on {PUBLIC_IP}") as info:
        call = call_ok(dep)
        info["detail"] = f"answered in {call['seconds']} s, RTP {call['rtp']}"

    drill.facts.update(
        backup_key=backup["key"],
        backup_version=backup["version"],
        restored_version=restored["version"],
        old_hosts=victims,
        new_primary=new_primary,
        files_identical=True,
        files=_file_digests(backed_up),
        astdb_marker_restored=True,
        call=call,
        provision_s=report.duration_s,
    )
    return drill.result()


# --- bad config ----------------------------------------------------------------------------------------------

BROKEN_ENDPOINT = b"\n[drill-broken-endpoint]\ntype = endpoint\nthis_option_does_not_exist = yes\n"


def publish_broken(dep: LocalDeployment, good: str) -> str:
    """A version identical to `good` but for an endpoint with an option PJSIP does not know (Asterisk refuses
    to load it); its manifest is consistent, so only Asterisk can tell."""

    ssm = dep.client("ssm")
    prefix = dep.agent_environment()["SIP_TRUNK_CONFIG_PREFIX"]
    files = configstore.fetch_config(ssm, prefix, good)
    secret = []
    for name in files:
        first = configstore.stored_names(name, files[name])[0]
        described = ssm.get_parameter(Name=f"{prefix.rstrip('/')}/{good}/{first}")["Parameter"]
        if described.get("Type") == "SecureString":
            secret.append(name)
    files["asterisk/pjsip.conf"] += BROKEN_ENDPOINT
    files[MANIFEST_NAME] = Manifest.for_files({k: v for k, v in files.items() if k != MANIFEST_NAME}).to_json()
    version = Manifest.from_json(files[MANIFEST_NAME]).version
    configstore.publish_config(ssm, prefix, files, secret, version)
    return version


def bad_config(dep: LocalDeployment, hold_ms: int = 20000) -> dict[str, Any]:

    drill = Drill(dep, "bad-config")
    dispatcher = dep._dispatcher()
    ssm = dep.client("ssm")
    prefix = dep.agent_environment()["SIP_TRUNK_CONFIG_PREFIX"]
    good = configstore.get_desired_version(ssm, prefix)
    expect(good, "no desired version")
    assert good is not None
    with drill.step("publish a version whose pjsip.conf Asterisk rejects") as info:
        broken = publish_broken(dep, good)
        info["detail"] = f"{broken} (= {good} + an endpoint with an unknown option)"

    held: dict[str, Any] = {}

    def hold_call() -> None:
        workdir = dep.run_dir / "calls" / f"held-{int(time.time() * 1000)}"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            result = place_call(
                dep.manager, dep.standin, dep.phone_number, workdir, public_ip=PUBLIC_IP, duration_ms=hold_ms,
                timeout=hold_ms / 1000 + 30,
            )  # fmt: skip
            held.update(result.summary(), audio_both_ways=result.audio_both_ways)
        except Exception as exc:
            held.update(ok=False, error=f"{type(exc).__name__}: {exc}")

    with drill.step("a call is up") as info:
        channels_before = dep.standin.channel_count()
        caller = threading.Thread(target=hold_call, name="held-call", daemon=True)
        caller.start()
        wait_for(lambda: dep.standin.channel_count() > channels_before, 15, "the held call was not answered", 0.1)
        info["detail"] = f"carrier → {dep.phone_number} @ {PUBLIC_IP}, held {hold_ms / 1000:g} s"

    def swap_version(function: str, event: dict[str, Any], result: Any) -> None:
        if function == "render_config" and isinstance(result, dict):
            configstore.set_desired_version(ssm, prefix, broken)
            result.update(version=broken, previous_version=good, published=True)

    sent = len(notifications(dep))
    with drill.step("Provision on the broken version (the real execution)") as info:
        dispatcher.after.append(swap_version)
        try:
            report = dep.provision({"reason": "bad-config drill"})
        finally:
            dispatcher.after.remove(swap_version)
        info["detail"] = f"{report.status} after {report.duration_s:.2f} s, states {report.entered()[-4:]}"
    expect(report.status == "FAILED", f"Provision {report.status} on a broken version")
    expect(report.error == "ProvisionFailed", f"ended in {report.error}, not ProvisionFailed")
    expect("ProvisionFailed" in report.entered(), f"states: {report.entered()}")

    with drill.step("the agents rolled back; the notification names the step") as info:
        applies = [
            run for run in list(dep.hooks.runs.values()) if any(f"apply --version {broken}" in c for c in run.commands)
        ] if dep.hooks else []  # fmt: skip
        expect(applies, "no apply of the broken version was sent")
        errors = []
        for run in applies:
            with contextlib.suppress(ValueError):
                errors.append(str(json.loads(run.stdout.strip().splitlines()[-1]).get("error", "")))
        expect(errors and all("rolled back" in e for e in errors), f"agent answers: {errors}")
        sent_now = notifications(dep)[sent:]
        failure = [n for n in sent_now if "provision failed" in (n["subject"] or "")]
        expect(failure, f"no failure notification: {[n['subject'] for n in sent_now]}")
        subject, message = str(failure[-1]["subject"]), str(failure[-1]["message"])
        step = subject.rsplit(" at ", 1)[-1]
        expect(step in ("ApplyConfig", "CheckApply") and f"FAILED at step {step}" in message, subject)
        expect(configstore.get_desired_version(ssm, prefix) == good, "the desired version was not restored")
        info["detail"] = f"{len(applies)} host(s) rolled back; notified: {subject}"

    with drill.step("the call up during the push survives") as info:
        caller.join(hold_ms / 1000 + 60)
        expect(held.get("ok") and held.get("audio_both_ways"), f"the held call: {held}")
        info["detail"] = f"{held.get('seconds')} s, RTP {held.get('rtp')}"

    with drill.step("hosts run the previous version; a new call") as info:
        running = {}
        for instance_id in list(dep.manager.hosts):
            running[instance_id] = heartbeat(dep, instance_id).get("running_version")
        expect(all(v == good for v in running.values()), f"running versions: {running}, want {good}")
        call = call_ok(dep)
        info["detail"] = f"{running}; call answered in {call['seconds']} s"

    drill.facts.update(
        good_version=good,
        broken_version=broken,
        provision_status=report.status,
        provision_error=report.error,
        failed_states=report.entered()[-5:],
        notification={"subject": subject, "message": message},
        failed_step=step,
        agent_errors=errors,
        held_call=held,
        call=call,
        running_versions=running,
    )
    return drill.result()


def run_drill(
    dep: LocalDeployment, name: str, *, repeat: int = 1, scenarios: tuple[str, ...] = (), plant: str | None = None
) -> dict[str, Any]:
    started = time.monotonic()
    if name == "flap":
        from sip_trunk_local.flap import flap

        result = flap(dep, repeat, scenarios=scenarios, plant=plant)
    elif name == "failover":
        result = failover(dep, repeat)
    elif name == "restore":
        result = restore(dep)
    elif name == "bad-config":
        result = bad_config(dep)
    else:
        raise ValueError(f"unknown drill {name!r}: one of {', '.join(DRILLS)}")
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
