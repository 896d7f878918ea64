"""Fixtures for the real-Asterisk layer: the root file system, Asterisk instances, network namespaces,
RTP counters. Everything a fixture starts it also ends (by PID) and deletes, whatever the test's outcome.

These tests need root. They fail (never skip) when they cannot run, so a CI run cannot pass by not
testing. When a test fails, the logs of every Asterisk it started are attached to the report.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from support.asterisk import DEFAULT_ROOT, AsteriskError, AsteriskInstance, ensure_root, prune_runs, root_problem
from support.netns import ElasticIpTopology
from support.rtp import RtpCounter, release_rtp_ranges

_INSTANCES = pytest.StashKey[list[AsteriskInstance]]()
_ASTERISK_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/asterisk carries the ``asterisk`` marker (so ``-m asterisk`` selects it), except the
    ``image`` proofs: they need the root ``make image-check`` builds and run only there."""
    for item in items:
        if item.get_closest_marker("image") or item.get_closest_marker("asterisk"):
            continue
        if _ASTERISK_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.asterisk)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for inst in item.stash.get(_INSTANCES, []):
            report.sections.append((f"Asterisk {inst.name} logs", inst.diagnostics()))
    return report


@pytest.fixture(scope="session")
def asterisk_root() -> Path:
    """The Asterisk 22 root file system: ``scripts/asterisk-root.sh`` runs once per session (it returns at
    once when the root is in place, restores it from the cache or builds it). ``ASTERISK_ROOT`` overrides
    the location."""
    if os.geteuid() != 0:
        pytest.fail(
            "the real-Asterisk tests need root (chroot, mount and network namespaces): "
            "run them as root, e.g. `sudo make test-asterisk`",
            pytrace=False,
        )
    root = Path(os.environ.get("ASTERISK_ROOT", str(DEFAULT_ROOT)))
    try:
        root = ensure_root(root)
    except AsteriskError as exc:
        pytest.fail(f"could not prepare the Asterisk root file system:\n{exc}", pytrace=False)
    problem = root_problem(root)
    if problem:
        pytest.fail(problem, pytrace=False)
    prune_runs(root)
    return root


@pytest.fixture(autouse=True)
def _release_rtp_ranges() -> Iterator[None]:
    """RTP ranges reserved during a test (``support.rtp.rtp_range``) are free again after it, once
    everything it started has stopped (this fixture is set up first, so it is torn down last)."""
    yield
    release_rtp_ranges()


def _instance_name(request: pytest.FixtureRequest, index: int) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-.") or "test"
    suffix = f"-{index}"
    return base[: 40 - len(suffix)] + suffix


AsteriskFactory = Callable[..., AsteriskInstance]


@pytest.fixture
def asterisk_factory(asterisk_root: Path, request: pytest.FixtureRequest) -> Iterator[AsteriskFactory]:
    """Start Asterisk instances; all are stopped (``core stop now`` + kill by PID) after the test.

    ``asterisk_factory(config_dir, *, name=None, netns=None, variables=None, extra_files=None,
    boot_timeout=30.0, modules=None, start=True) -> AsteriskInstance`` (``modules``: the module directory inside the
    root, e.g. ``support.asterisk.unpatched_module_dir(root)``). The instance's files stay under
    ``<root>/inst/run<pid>/<name>/`` after the test for post-mortems (the next session deletes the
    directories of runs whose process is gone).
    """
    instances: list[AsteriskInstance] = request.node.stash.setdefault(_INSTANCES, [])

    def start(
        config_dir: Path | None,
        *,
        name: str | None = None,
        netns: str | None = None,
        variables: Mapping[str, str] | None = None,
        extra_files: Mapping[str, str | bytes] | None = None,
        boot_timeout: float = 30.0,
        modules: str | None = None,
        start: bool = True,
    ) -> AsteriskInstance:
        inst = AsteriskInstance(
            asterisk_root,
            name or _instance_name(request, len(instances) + 1),
            config_dir,
            netns=netns,
            variables=dict(variables or {}),
            extra_files=dict(extra_files or {}),
            boot_timeout=boot_timeout,
            modules=modules,
        )
        instances.append(inst)
        if start:
            inst.start()
        return inst

    yield start
    errors = []
    for inst in reversed(instances):
        try:
            inst.stop()
        except Exception as exc:  # report every instance that would not stop, after trying them all
            errors.append(f"{inst.name}: {exc}")
    if errors:
        pytest.fail("Asterisk instances did not stop: " + "; ".join(errors), pytrace=False)


TopologyFactory = Callable[..., ElasticIpTopology]


@pytest.fixture
def topology_factory(request: pytest.FixtureRequest) -> Iterator[TopologyFactory]:
    """Build :class:`ElasticIpTopology` instances: ``topology_factory(instances=(("a", "10.0.0.10"),))``.
    After the test, Asterisk instances running inside them are stopped, then the namespaces are deleted."""
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root", pytrace=False)
    topologies: list[ElasticIpTopology] = []

    def build(instances: Sequence[tuple[str, str]] = (("a", "10.0.0.10"),)) -> ElasticIpTopology:
        topo = ElasticIpTopology()
        topologies.append(topo)
        return topo.build(instances)

    yield build
    for topo in reversed(topologies):
        for inst in request.node.stash.get(_INSTANCES, []):
            if inst.netns in topo.namespaces:
                inst.stop()
        leftovers = topo.teardown()
        if leftovers:
            pytest.fail(f"processes were still running in {topo.prefix}-*: {leftovers}", pytrace=False)


@pytest.fixture
def elastic_ip_topology(topology_factory: TopologyFactory) -> ElasticIpTopology:
    """One instance namespace (10.0.0.10) behind the 203.0.113.10 "Elastic IP", client at 198.51.100.50."""
    return topology_factory()


RtpCounterFactory = Callable[..., RtpCounter]


@pytest.fixture
def rtp_counter() -> Iterator[RtpCounterFactory]:
    """``rtp_counter((low, high), interface="lo", netns=None) -> RtpCounter`` (installed); removed after."""
    if os.geteuid() != 0:
        pytest.fail("iptables counters need root", pytrace=False)
    counters: list[RtpCounter] = []

    def make(ports: tuple[int, int], interface: str = "lo", netns: str | None = None) -> RtpCounter:
        counter = RtpCounter(ports, interface=interface, netns=netns)
        counters.append(counter)
        return counter.install()

    yield make
    for counter in counters:
        counter.remove()
