"""`sip-trunk local drill flap`: the primary flaps, and nothing may split the brain (ADR-45).

Each run is one scenario on whichever host is the primary at that moment (so a run after a failover flaps the
other host):

- ``crash``: the primary's Asterisk is SIGKILLed; the standby's watch-peer starts the Failover execution and a
  second execution is started for the same outage (as the SIP-probe alarm would), both meeting at AcquireLock;
  the old primary's Asterisk comes back once the address has moved, and it is re-armed as the standby;
- ``reboot``: the primary loses power (every process of it killed, Run Command cannot reach it); the failover
  runs while it is down (its ``set-role standby`` waits, undelivered); it boots again from its disk, whose
  ``role.env`` still says primary, and must boot the standby; then the waiting ``set-role`` arrives;
- ``partition``: the network between the two hosts is cut while both still reach the outside and the control
  plane; the standby's watch-peer starts an execution, whose ConfirmPrimaryDown finds the address answering:
  a false alarm, nothing moved, the lock never taken; the network heals and watch-peer sees the primary again;
- ``blip``: the primary's Asterisk is killed and started again at once; depending on how quickly it is back,
  nothing happens, a false alarm, or a failover: each is allowed, a split brain is not.

Throughout, :class:`~sip_trunk_local.split_brain.AddressSampler` samples the router's NAT, EC2's association and
SIP answers on the Elastic IP, and :class:`~sip_trunk_local.split_brain.LockLedger` records the lock and the moves;
after each run the checks of :mod:`sip_trunk_local.split_brain` and the roles the hosts took must hold.

``plant`` puts a known defect in, to prove the checks catch it (the run then reports its violations instead of
failing): ``ignore-lock`` makes the lock's conditional write unconditional; ``stale-role`` boots the rebooted host
with its launch role in agent.env (a host trusting its own record over the state table's).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sip_trunk.agent.config import read_env_file

from sip_trunk_local.drills import (
    Drill,
    DrillFailed,
    LocalDeployment,
    _roles,
    agent_ok,
    call_ok,
    expect,
    heartbeat,
    lock_item,
    probe_public,
    rearm,
    run_command,
    summarize,
    wait_for,
)
from sip_trunk_local.split_brain import AddressSampler, KeptProber, LockLedger, Sample, check_all, check_roles
from sip_trunk_local.topology import PUBLIC_IP, SIP_PORT

SCENARIOS = ("crash", "reboot", "partition", "blip")
DEFAULT_ORDER = ("crash", "reboot", "partition", "blip")
PLANTS = ("ignore-lock", "stale-role")
EXECUTION_TIMEOUT_S = 120.0


@contextlib.contextmanager
def planted(plant: str | None) -> Iterator[None]:
    """The known defect ``plant`` in the in-process Failover functions, for the run."""
    if plant != "ignore-lock":
        yield
        return
    from sip_trunk.aws.dynamodb import DynamoStateStore, _to_item
    from sip_trunk.workflows.state import LOCK_KEY

    original = DynamoStateStore.acquire_lock

    def unconditional(self: DynamoStateStore, owner: str, now: float, ttl_s: int) -> str | None:
        item = _to_item({**LOCK_KEY, "owner": owner, "acquired_at": now, "expires_at": int(now) + ttl_s})
        self.ddb.put_item(TableName=self.table, Item=item)
        return None

    DynamoStateStore.acquire_lock = unconditional  # type: ignore[method-assign]
    try:
        yield
    finally:
        DynamoStateStore.acquire_lock = original  # type: ignore[method-assign]


class Flap:
    """The flap drill on a running local deployment: sampler and ledger across all runs."""

    def __init__(self, dep: LocalDeployment, plant: str | None = None) -> None:
        if plant is not None and plant not in PLANTS:
            raise ValueError(f"unknown plant {plant!r}: one of {', '.join(PLANTS)}")
        assert dep.plane is not None
        self.dep, self.plant = dep, plant
        self.manager = dep.manager
        self.sfn = dep.client("stepfunctions")
        self.arn = dep.plane.failover_state_machine_arn
        ec2 = dep.client("ec2")

        def associated() -> str | None:
            found = ec2.describe_addresses(PublicIps=[PUBLIC_IP])["Addresses"]
            return str(found[0]["InstanceId"]) if found and found[0].get("InstanceId") else None

        self.prober = KeptProber(self.manager.outside_namespace(), PUBLIC_IP, SIP_PORT)
        self.sampler = AddressSampler(
            router_netns=self.manager.network().router,
            public_ip=PUBLIC_IP,
            instances=lambda: {h.private_ip: iid for iid, h in list(self.manager.hosts.items())},
            associated=associated,
            probe=lambda: self.prober.latest,
        )
        self.ledger = LockLedger()

    # --- helpers ---------------------------------------------------------------------------------------
    def executions(self) -> dict[str, dict[str, Any]]:
        return {e["executionArn"]: dict(e) for e in self.sfn.list_executions(stateMachineArn=self.arn)["executions"]}

    def new_execution(self, known: set[str]) -> dict[str, Any] | None:
        return next((e for arn, e in self.executions().items() if arn not in known), None)

    def ended(self, arn: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            described: dict[str, Any] = self.sfn.describe_execution(executionArn=arn)
            return None if described["status"] == "RUNNING" else described

        described: dict[str, Any] = wait_for(done, EXECUTION_TIMEOUT_S, f"{arn} did not end")
        return described

    @staticmethod
    def outcome(described: dict[str, Any]) -> str:
        if described["status"] != "SUCCEEDED":
            return str(described["status"]).lower()
        with contextlib.suppress(ValueError, TypeError):
            return str(json.loads(described.get("output") or "{}").get("outcome", "succeeded"))
        return "succeeded"

    def second_trigger(self) -> str:
        """A second execution for the same outage (what the SIP-probe alarm adds to watch-peer's)."""
        name = f"drill-second-{int(time.time() * 1000)}"
        payload = {"source": "manual", "reason": "flap drill: a second trigger of the same outage"}
        started = self.sfn.start_execution(stateMachineArn=self.arn, name=name, input=json.dumps(payload))
        return str(started["executionArn"])

    def preconditions(self, drill: Drill) -> tuple[str, str, set[str]]:
        with drill.step("preconditions: roles, standby watching, lock free, EIP answering") as info:
            primary, standby = _roles(self.dep)
            status = self.manager.status()["hosts"]
            expect(status[primary]["asterisk_running"], f"the primary's Asterisk is not running: {status[primary]}")
            expect(status[standby]["watch_peer_running"], f"the standby runs no watch-peer: {status[standby]}")
            expect(lock_item(self.dep) is None, f"the failover lock is held: {lock_item(self.dep)}")
            expect(probe_public(self.dep, 2.0).reachable, f"{PUBLIC_IP} does not answer before the run")
            heartbeat(self.dep, standby)
            info["detail"] = f"primary {primary}, standby {standby}"
        return primary, standby, set(self.executions())

    def watch_peer_execution(self, known: set[str]) -> dict[str, Any]:
        execution: dict[str, Any] = wait_for(lambda: self.new_execution(known), 60, "watch-peer started no execution")
        expect(execution["name"].startswith("peer-down-"), f"not started by watch-peer: {execution['name']}")
        return execution

    def failover_pair(self, drill: Drill, known: set[str]) -> dict[str, str]:
        """watch-peer's execution and a second one meet at AcquireLock; both end. Returns name → outcome."""
        with drill.step("watch-peer starts Failover; a second execution for the same outage") as info:
            first = self.watch_peer_execution(known)
            second = self.second_trigger()
            info["detail"] = f"{first['name']} and {second.rsplit(':', 1)[-1]}"
        with drill.step("both executions end") as info:
            outcomes = {}
            for arn in (first["executionArn"], second):
                outcomes[arn.rsplit(":", 1)[-1]] = self.outcome(self.ended(arn))
            info["detail"] = ", ".join(f"{k}: {v}" for k, v in outcomes.items())
        return outcomes

    def settle_roles(self, drill: Drill, old_primary: str, new_primary: str) -> None:
        """Roles as the state table has them on both hosts (set-role through Run Command), fresh heartbeats."""
        with drill.step("roles on the hosts as the table has them; heartbeats") as info:
            peer = self.manager.host(new_primary).private_ip
            agent_ok(run_command(self.dep, new_primary, "sip-trunk-agent set-role --role primary"), "set-role")
            agent_ok(
                run_command(self.dep, old_primary, f"sip-trunk-agent set-role --role standby --peer-address {peer}"),
                "set-role standby",
            )
            beats = [heartbeat(self.dep, old_primary), heartbeat(self.dep, new_primary)]
            expect(all(b.get("asterisk_up") for b in beats), f"heartbeats: {beats}")
            info["detail"] = f"{new_primary} primary, {old_primary} standby watching {peer}"

    def call_step(self, drill: Drill) -> None:
        with drill.step(f"a call on {PUBLIC_IP}") as info:
            call = call_ok(self.dep)
            info["detail"] = f"answered in {call['seconds']} s"

    def role_env(self, instance_id: str) -> dict[str, str]:
        return read_env_file(self.manager.host(instance_id).path("/etc/sip-trunk/role.env"))

    # --- scenarios -------------------------------------------------------------------------------------
    def crash(self, drill: Drill) -> dict[str, Any]:
        primary, standby, known = self.preconditions(drill)
        self.ledger.arm(2)
        with drill.step("kill the primary's Asterisk") as info:
            self.manager.kill_host(primary)
            info["detail"] = primary
        outcomes = self.failover_pair(drill, known)
        facts: dict[str, Any] = {"executions": outcomes, "roles_before": {"primary": primary, "standby": standby}}
        if self.plant == "ignore-lock":
            return facts
        expect(sorted(outcomes.values()) == ["already_in_progress", "failed_over"], f"outcomes: {outcomes}")
        expect(_roles(self.dep) == (standby, primary), f"roles after: {_roles(self.dep)}")
        rearm(self.dep, drill, primary, standby)
        self.call_step(drill)
        return facts

    def reboot(self, drill: Drill) -> dict[str, Any]:
        primary, standby, known = self.preconditions(drill)
        hooks = self.dep.hooks
        assert hooks is not None
        self.ledger.arm(2)
        with drill.step("the primary loses power (every process killed; Run Command cannot reach it)") as info:
            hooks.host_offline(primary)
            self.manager.power_off(primary)
            info["detail"] = f"{primary}: role.env {self.role_env(primary)}"
        try:
            outcomes = self.failover_pair(drill, known)
            table = dict(zip(("primary", "standby"), _roles(self.dep), strict=True))
            pending = [r for r in hooks.runs.values() if r.instance_id == primary and r.ended is None]
            with drill.step("the old primary boots from its disk (sip-trunk-boot.service)") as info:
                boot = self.manager.power_on(primary, launch_role=self.plant == "stale-role")
                role_env = self.role_env(primary)
                source = boot.get("role_source")
                info["detail"] = f"{boot.get('role')} (from {source}); {len(pending)} command(s) waiting"
        finally:
            hooks.host_online(primary)
        violations = check_roles(boot.get("role"), table, primary, role_env)
        facts: dict[str, Any] = {
            "executions": outcomes,
            "roles_before": {"primary": primary, "standby": standby},
            "boot": {k: boot.get(k) for k in ("role", "role_source", "peer_address", "boot")},
            "set_role_waiting": len(pending),
            "role_violations": violations,
        }
        if self.plant is None:
            expect(not violations, "; ".join(violations))
            expect(sorted(outcomes.values()) == ["already_in_progress", "failed_over"], f"outcomes: {outcomes}")
            expect(table == {"primary": standby, "standby": primary}, f"roles after: {table}")
        with drill.step("the waiting set-role arrives: the old primary watches the new one") as info:
            peer = self.manager.host(standby).private_ip

            def watching() -> bool:
                host = self.manager.status()["hosts"][primary]
                return bool(host["watch_peer_running"] and host["peer_address"] == peer)

            wait_for(watching, 60, f"{primary} does not watch {peer}", 0.1)
            beats = [heartbeat(self.dep, primary), heartbeat(self.dep, standby)]
            expect(all(b.get("asterisk_up") for b in beats), f"heartbeats: {beats}")
            info["detail"] = f"{primary} standby watching {peer}; role.env {self.role_env(primary)}"
        if self.plant is None:
            self.call_step(drill)
        return facts

    def partition(self, drill: Drill) -> dict[str, Any]:
        primary, standby, known = self.preconditions(drill)
        watch_log = self.manager.host(standby).base / "watch-peer.log"
        with drill.step("cut the network between the hosts (both still see the outside)") as info:
            self.manager.partition(primary, standby)
            info["detail"] = f"{primary} ⟂ {standby}"
        try:
            with drill.step("watch-peer starts Failover; ConfirmPrimaryDown finds the address answering") as info:
                execution = self.watch_peer_execution(known)
                outcome = self.outcome(self.ended(execution["executionArn"]))
                info["detail"] = f"{execution['name']}: {outcome}"
            answered_again = watch_log.read_text().count("answers again")
        finally:
            self.manager.heal(primary, standby)
        expect(outcome == "false_alarm", f"{execution['name']} ended {outcome}, not false_alarm")
        expect(_roles(self.dep) == (primary, standby), f"roles changed: {_roles(self.dep)}")
        with drill.step("heal: watch-peer sees the primary again") as info:
            again = lambda: watch_log.read_text().count("answers again") > answered_again  # noqa: E731
            wait_for(again, 30, "no probe answered", 0.1)
            info["detail"] = f"{standby} → {primary} answers"
        return {"executions": {execution["name"]: outcome}, "roles_before": {"primary": primary, "standby": standby}}

    def blip(self, drill: Drill) -> dict[str, Any]:
        primary, standby, known = self.preconditions(drill)
        quiet_s = self.manager.watch_interval_s * (self.manager.watch_failures + 1) + self.manager.watch_timeout_s
        with drill.step("kill the primary's Asterisk and start it again at once") as info:
            self.manager.kill_host(primary)
            seconds = self.manager.restart_asterisk(primary)
            info["detail"] = f"{primary} back after {seconds:.2f} s"
        with drill.step(f"settle: every execution ended and {quiet_s:g} s without a new one") as info:
            outcomes: dict[str, str] = {}
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < quiet_s:
                fresh = {a: e for a, e in self.executions().items() if a not in known and a not in outcomes}
                for arn, e in fresh.items():
                    outcomes[e["name"]] = self.outcome(self.ended(arn))
                    known.add(arn)
                    quiet_since = time.monotonic()
                time.sleep(0.1)
            info["detail"] = ", ".join(f"{k}: {v}" for k, v in outcomes.items()) or "no execution"
        failed_over = [k for k, v in outcomes.items() if v == "failed_over"]
        expect(len(failed_over) <= 1, f"outcomes: {outcomes}")
        allowed = ("false_alarm", "failed_over", "already_in_progress")
        expect(all(v in allowed for v in outcomes.values()), f"outcomes: {outcomes}")
        if failed_over:
            expect(_roles(self.dep) == (standby, primary), f"roles after a failover: {_roles(self.dep)}")
            self.settle_roles(drill, primary, standby)
        else:
            expect(_roles(self.dep) == (primary, standby), f"roles changed without a failover: {_roles(self.dep)}")
        return {"executions": outcomes, "roles_before": {"primary": primary, "standby": standby}}

    # --- a run -----------------------------------------------------------------------------------------
    def run_once(self, run: int, scenario: str) -> dict[str, Any]:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
        drill = Drill(self.dep, "flap", run)
        started = time.time()
        try:
            with planted(self.plant):
                facts = getattr(self, scenario)(drill)
        except DrillFailed as exc:  # an unexpected outcome: say whether it split the brain too
            found = check_all(self.sampler.since(started), self.ledger.since(started))
            moves = [(e.execution, e.instance_id) for e in self.ledger.since(started) if e.what == "moved"]
            checks = "; ".join(found) or "no violation"
            raise DrillFailed(f"{exc}; moves {moves}; split-brain checks: {checks}") from exc
        with drill.step("split-brain checks over the run's samples and lock ledger") as info:
            samples = self.sampler.since(started)
            entries = self.ledger.since(started)
            violations = [*check_all(samples, entries), *facts.pop("role_violations", [])]
            info["detail"] = (
                f"{len(samples)} samples, {len(entries)} ledger entries, "
                f"{unanswered_s(samples):.2f} s unanswered; violations: {len(violations)}"
            )
        if self.plant is None:
            expect(not violations, "; ".join(violations))
        return drill.result(
            scenario=scenario,
            violations=violations,
            samples=len(samples),
            unanswered_s=round(unanswered_s(samples), 3),
            moves=[e.execution for e in entries if e.what == "moved"],
            **facts,
        )


def unanswered_s(samples: Sequence[Sample]) -> float:
    """How long SIP on the address went unanswered (sum of the gaps between answering samples)."""
    total, since = 0.0, None
    for s in samples:
        if s.answers is False and since is None:
            since = s.t
        elif s.answers and since is not None:
            total += s.t - since
            since = None
    if since is not None and samples:
        total += samples[-1].t - since
    return total


def flap(
    dep: LocalDeployment, repeat: int = 4, *, scenarios: Sequence[str] = (), plant: str | None = None
) -> dict[str, Any]:
    order = tuple(scenarios) or DEFAULT_ORDER
    drill = Flap(dep, plant)
    dispatcher = dep._dispatcher()
    runs = []
    drill.prober.start()
    drill.sampler.start()
    try:
        with drill.ledger.installed(dispatcher):
            for i in range(repeat):
                runs.append(drill.run_once(i + 1, order[i % len(order)]))
    finally:
        drill.sampler.stop()
        drill.prober.stop()
    by_scenario: dict[str, int] = {}
    for r in runs:
        by_scenario[r["scenario"]] = by_scenario.get(r["scenario"], 0) + 1
    gaps = [r["unanswered_s"] for r in runs if r["scenario"] in ("crash", "reboot")]
    return {
        "drill": "flap",
        "ok": True,
        "plant": plant,
        "runs": runs,
        "scenarios": by_scenario,
        "violations": [v for r in runs for v in r["violations"]],
        "samples": sum(r["samples"] for r in runs),
        "sampler_errors": drill.sampler.errors[:20],
        "unanswered_s": summarize(gaps) if gaps else None,
        "moves": sum(len(r["moves"]) for r in runs),
        "probe_connections": drill.prober.connections,
    }
