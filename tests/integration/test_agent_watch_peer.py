"""watch-peer: failover starts after exactly N consecutive failed OPTIONS probes, never on a single lost one; over
TCP its own prober keeps one connection to the primary."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sip_trunk.agent.watch import watch_peer
from sip_trunk.sip import ProbeResult, ProbeTarget, SipStreamFramer, Transport, probe_options

pytestmark = pytest.mark.integration

REGION = "us-east-1"


class SipResponder:
    """A UDP SIP peer on 127.0.0.1 answering OPTIONS with 200 OK while `on`; silent (a lost probe) when off."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.on = True
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.on or not data.startswith(b"OPTIONS "):
                continue
            head = data.split(b"\r\n\r\n", 1)[0].decode()
            keep = [
                line
                for line in head.split("\r\n")[1:]
                if line.split(":", 1)[0].strip().lower() in ("via", "from", "to", "call-id", "cseq")
            ]
            reply = "\r\n".join(["SIP/2.0 200 OK", *keep, "Content-Length: 0", "", ""]).encode()
            self.sock.sendto(reply, peer)
            self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def responder() -> Iterator[SipResponder]:
    r = SipResponder()
    yield r
    r.close()


@pytest.fixture
def sfn() -> Iterator[tuple[Any, str]]:
    with mock_aws():
        client = boto3.client("stepfunctions", region_name=REGION)
        arn = client.create_state_machine(
            name="trunk-failover",  # the host role may start the stack's own failover machine only
            definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )["stateMachineArn"]
        yield client, arn


def run(
    responder: SipResponder,
    sfn: tuple[Any, str],
    schedule: list[bool],
    failures: int,
    on_probe: Callable[[bool], None] | None = None,
) -> Any:
    """Probe once per schedule entry; before probe i the peer is switched to schedule[i]."""
    client, arn = sfn
    target = ProbeTarget("127.0.0.1", responder.port, Transport.UDP)
    probe_index = {"i": 0}
    responder.on = schedule[0]

    def prober(t: ProbeTarget, timeout_s: float) -> ProbeResult:
        result = probe_options(t, timeout_s)
        if on_probe:
            on_probe(result.reachable)
        return result

    def sleep(_: float) -> None:  # called between probes: flip the peer for the next one
        probe_index["i"] += 1
        if probe_index["i"] < len(schedule):
            responder.on = schedule[probe_index["i"]]

    return watch_peer(
        target,
        interval_s=0.0,
        failures=failures,
        timeout_s=0.3,
        sfn=client,
        state_machine_arn=arn,
        instance_id="i-standby",
        max_probes=len(schedule),
        prober=prober,
        sleep=sleep,
    )


def executions(sfn: tuple[Any, str]) -> list[dict[str, Any]]:
    client, arn = sfn
    return list(client.list_executions(stateMachineArn=arn)["executions"])


def test_single_lost_probes_never_trigger(responder: SipResponder, sfn: tuple[Any, str]) -> None:
    # Given a peer that drops one probe now and then (and two in a row once)
    schedule = [True, False, True, False, False, True, True, False, True]

    # When the standby watches with N=3
    state = run(responder, sfn, schedule, failures=3)

    # Then nothing starts
    assert state.history == schedule
    assert state.executions == []
    assert executions(sfn) == []


def test_triggers_after_exactly_n_failures_and_only_once_per_outage(
    responder: SipResponder, sfn: tuple[Any, str]
) -> None:
    # Given a peer that goes silent for five probes, comes back, then dies again
    schedule = [True, False, False, False, False, False, True, False, False, False]
    client, _arn = sfn
    started_after_probe: list[int] = []
    original = client.start_execution

    def spy(**kwargs: Any) -> Any:
        started_after_probe.append(len(responder_log))
        return original(**kwargs)

    client.start_execution = spy
    responder_log: list[bool] = []

    def on_probe(alive: bool) -> None:
        responder_log.append(alive)

    # When watched with N=3
    state = run(responder, sfn, schedule, failures=3, on_probe=on_probe)

    # Then one execution per outage, each started right after the third consecutive failure
    assert state.history == schedule
    assert started_after_probe == [4, 10]  # probes 2-4 and 8-10 (1-based) are the failing triples
    started = executions(sfn)
    assert len(started) == 2
    assert len(set(state.executions)) == 2
    payload = json.loads(client.describe_execution(executionArn=started[-1]["executionArn"])["input"])
    assert payload["consecutive_failures"] == 3
    assert payload["target"]["port"] == responder.port


def test_execution_name_is_idempotent(sfn: tuple[Any, str]) -> None:
    # A restarted watcher within the same streak reuses the name; AWS's ExecutionAlreadyExists is not an error
    from sip_trunk.agent.watch import execution_name

    target = ProbeTarget("10.0.1.10", 5060, Transport.UDP)
    assert execution_name(target, 1700000000.9) == execution_name(target, 1700000000.1)
    assert execution_name(target, 1700000000.0) == "peer-down-10-0-1-10-5060-1700000000"


class TcpSipPeer:
    """A TCP SIP peer on 127.0.0.1 answering every OPTIONS with 200 OK; counts the connections it accepted.

    ``stop()`` is the primary going away: its connections are closed and nothing listens any more."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self.answered = 0
        self.hung_up = 0  # connections the client closed
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        framer = SipStreamFramer()
        conn.settimeout(0.05)
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                self.hung_up += 1
                return
            for message in framer.feed(chunk):
                head = message.split(b"\r\n\r\n", 1)[0].decode()
                keep = [
                    line
                    for line in head.split("\r\n")[1:]
                    if line.split(":", 1)[0].strip().lower() in ("via", "from", "to", "call-id", "cseq")
                ]
                conn.sendall("\r\n".join(["SIP/2.0 200 OK", *keep, "Content-Length: 0", "", ""]).encode())
                self.answered += 1

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        for conn in self._conns:
            conn.close()
        for thread in self._threads:
            thread.join(timeout=2)


@pytest.fixture
def tcp_peer() -> Iterator[TcpSipPeer]:
    peer = TcpSipPeer()
    yield peer
    peer.stop()


def test_default_prober_keeps_one_connection_and_still_detects_the_outage(
    tcp_peer: TcpSipPeer, sfn: tuple[Any, str]
) -> None:
    # Given a primary answering over TCP, watched with the agent's own prober (no prober passed)
    client, arn = sfn
    probes = {"n": 0}

    def sleep(_: float) -> None:  # after the fifth probe the primary goes away
        probes["n"] += 1
        if probes["n"] == 5:
            tcp_peer.stop()

    # When watch-peer probes eight times with N=3
    state = watch_peer(
        ProbeTarget("127.0.0.1", tcp_peer.port, Transport.TCP),
        interval_s=0.0,
        failures=3,
        timeout_s=0.5,
        sfn=client,
        state_machine_arn=arn,
        instance_id="i-standby",
        max_probes=8,
        sleep=sleep,
    )

    # Then the five answered probes went over one connection (a new connection per probe would leave the
    # primary's Asterisk one stale idle check each), and the outage still started failover after three failures
    assert state.history == [True] * 5 + [False] * 3
    assert tcp_peer.answered == 5
    assert tcp_peer.accepted == 1
    assert len(state.executions) == 1
    assert len(executions(sfn)) == 1


def test_default_prober_rides_out_a_restart_of_the_primary(sfn: tuple[Any, str]) -> None:
    # Given a primary whose Asterisk restarts between two probes (its connections closed, then listening again)
    client, arn = sfn
    peers = [TcpSipPeer()]
    port = peers[0].port

    def sleep(_: float) -> None:  # between the two probes
        if len(peers) == 1:
            peers[0].stop()
            peers.append(TcpSipPeer(port))

    try:
        state = watch_peer(
            ProbeTarget("127.0.0.1", port, Transport.TCP),
            interval_s=0.0,
            failures=1,
            timeout_s=0.5,
            sfn=client,
            state_machine_arn=arn,
            instance_id="i-standby",
            max_probes=2,
            sleep=sleep,
        )
    finally:
        for peer in peers:
            peer.stop()
    # Then the probe that found its kept connection closed asked again on a new one: no failure, no failover
    assert state.history == [True, True]
    assert [peer.accepted for peer in peers] == [1, 1]
    assert executions(sfn) == []


def test_watcher_closes_its_kept_connection_when_it_stops(tcp_peer: TcpSipPeer) -> None:
    # Given watch-peer probing over its kept connection
    class Stopped(Exception):
        pass

    def sleep(_: float) -> None:  # the unit is stopped after the first probe
        raise Stopped

    # When it is stopped between probes
    with pytest.raises(Stopped):
        watch_peer(
            ProbeTarget("127.0.0.1", tcp_peer.port, Transport.TCP),
            interval_s=0.0,
            failures=3,
            timeout_s=0.5,
            sfn=None,
            state_machine_arn=None,
            instance_id="i-standby",
            sleep=sleep,
        )

    # Then the primary sees the connection closed (no half-open connection left behind)
    deadline = time.monotonic() + 2.0
    while tcp_peer.hung_up == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tcp_peer.accepted, tcp_peer.answered, tcp_peer.hung_up) == (1, 1, 1)
