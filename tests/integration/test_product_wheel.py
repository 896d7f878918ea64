"""What ships: the sip_trunk wheel, which the Lambda layer's build installs (`pip install '.[lambda]'` in
layers/sip_trunk/Makefile) and the host install copies out of the layer (install-agent.sh).

The wheel is built offline with the project's own build backend (hatchling, as in layers/sip_trunk's
pyproject) and its file list is checked; then every shipped module is imported from the unpacked wheel with
local mode, moto and the SAM translator made unimportable, and so are the Lambda handlers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PRODUCT = REPO / "layers" / "sip_trunk"
FUNCTIONS = REPO / "functions"

# Imported only by the operator's `sip-trunk` command (typer/rich are the `cli` extra, not in the layer).
CLI_ONLY = {"sip_trunk.cli", "sip_trunk.operator_cli"}
ABSENT = ("sip_trunk_local", "moto", "samtranslator", "typer", "rich")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = "import sys, hatchling.build as b; print(b.build_wheel(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", build, str(out)], cwd=PRODUCT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return out / proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


@pytest.fixture(scope="module")
def unpacked(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


@pytest.mark.parametrize(
    "expected",
    [
        "sip_trunk/__init__.py",
        "sip_trunk/settings.py",
        "sip_trunk/render.py",
        "sip_trunk/manifest.py",
        "sip_trunk/configstore.py",
        "sip_trunk/sip/__init__.py",
        "sip_trunk/sip/message.py",
        "sip_trunk/sip/parse.py",
        "sip_trunk/sip/probe.py",
        "sip_trunk/elevenlabs/__init__.py",
        "sip_trunk/elevenlabs/client.py",
        "sip_trunk/elevenlabs/errors.py",
        "sip_trunk/elevenlabs/models.py",
        "sip_trunk/elevenlabs/reconcile.py",
        "sip_trunk/events.py",
        "sip_trunk/py.typed",
        "sip_trunk/templates/pjsip.conf.j2",
        "sip_trunk/workflows/provision/validate.py",
        "sip_trunk/workflows/provision/__init__.py",
        "sip_trunk/workflows/provision/launch.py",
        "sip_trunk/workflows/failover.py",
        "sip_trunk/aws/wiring.py",
        "sip_trunk/agent/__main__.py",
        "sip_trunk/agent/host_files/systemd/sip-trunk-agent.service",
        "sip_trunk/agent/host_files/image/scripts/install-agent.sh",
    ],
)
def test_the_wheel_holds_the_product(names: list[str], expected: str) -> None:
    assert expected in names


def test_the_wheel_holds_no_local_mode_harness_or_tests(names: list[str]) -> None:
    packages = {name.split("/")[0] for name in names}
    assert packages == {"sip_trunk", "sip_trunk-0.1.0.dist-info"}
    offending = [
        name
        for name in names
        if any(part in {"local", "standin", "scenarios", "tests", "support"} for part in Path(name).parts)
        or name.endswith((".xml", ".pcap", ".toml"))
        or Path(name).name.startswith(("test_", "conftest"))
    ]
    assert offending == []


def test_the_wheel_registers_no_cli_plugin(unpacked: Path) -> None:
    entry_points = (unpacked / "sip_trunk-0.1.0.dist-info" / "entry_points.txt").read_text()
    assert "[console_scripts]" in entry_points
    assert "sip_trunk.cli" not in entry_points.replace("sip_trunk.cli:main", "")


BLOCKED_IMPORTS = textwrap.dedent(
    """
    import importlib, importlib.abc, importlib.util, json, pkgutil, sys
    site, functions = sys.argv[1], sys.argv[2]
    absent, cli_only = set(sys.argv[3].split(",")), set(sys.argv[4].split(","))

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in absent:
                raise ModuleNotFoundError(f"No module named {name!r} (absent from the layer)", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    sys.path.insert(0, site)
    import sip_trunk
    assert sip_trunk.__file__.startswith(site), sip_trunk.__file__
    imported, failed = [], {}
    for info in pkgutil.walk_packages(sip_trunk.__path__, "sip_trunk."):
        if info.name in cli_only:
            continue
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except Exception as exc:
            failed[info.name] = f"{type(exc).__name__}: {exc}"
    handlers = []
    import pathlib
    for app in sorted(pathlib.Path(functions).glob("*/app.py")):
        spec = importlib.util.spec_from_file_location(f"handler_{app.parent.name}", app)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            handlers.append(app.parent.name)
        except Exception as exc:
            failed[str(app)] = f"{type(exc).__name__}: {exc}"
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in absent)
    print(json.dumps({"imported": imported, "handlers": handlers, "failed": failed, "leaked": leaked}))
    """
)


def test_every_shipped_module_and_handler_imports_without_local_mode(unpacked: Path) -> None:
    env = {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "sip-trunk",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS, str(unpacked), str(FUNCTIONS), ",".join(ABSENT), ",".join(CLI_ONLY)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=unpacked,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["failed"] == {}
    assert result["leaked"] == []
    assert {"sip_trunk.agent.__main__", "sip_trunk.workflows.provision", "sip_trunk.aws.wiring"} <= set(
        result["imported"]
    )
    assert len(result["handlers"]) == len(list(FUNCTIONS.glob("*/app.py")))


def test_the_blocker_catches_a_module_that_needs_local_mode(unpacked: Path, tmp_path: Path) -> None:
    """Control: the same check, on a copy of the unpacked wheel with one module that imports moto, fails."""
    site = tmp_path / "site"
    subprocess.run(["cp", "-a", str(unpacked), str(site)], check=True)
    target = site / "sip_trunk" / "manifest.py"
    target.write_text(target.read_text() + "\nimport moto\n")
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS, str(site), str(FUNCTIONS), ",".join(ABSENT), ",".join(CLI_ONLY)],
        capture_output=True,
        text=True,
        check=False,
        env={"AWS_DEFAULT_REGION": "us-east-1", "PATH": "/usr/bin:/bin", "POWERTOOLS_TRACE_DISABLED": "true"},
        cwd=site,
    )
    result = json.loads(proc.stdout.splitlines()[-1])
    assert "sip_trunk.manifest" in result["failed"]
    assert "absent from the layer" in result["failed"]["sip_trunk.manifest"]
