"""Planted-defect controls for the import rules `make lint` enforces.

Each contract in pyproject's [tool.importlinter] is run against a copy of the packages with one forbidden
import planted (directly or through a shared module); it must break, naming the contract. The unmodified copy
keeps every contract. The workflows' ban on reading the environment (ruff TID251 in their ruff.toml) is
checked the same way on a planted module."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "pyproject.toml"
PACKAGES = {
    "sip_trunk": REPO / "layers" / "sip_trunk" / "src" / "sip_trunk",
    "sip_trunk_local": REPO / "local" / "src" / "sip_trunk_local",
}
BIN = Path(sys.executable).parent

PRODUCT = "The shipped package never imports local mode"
AGENT = "The host agent needs only the standard library, boto3 and the modules it shares"
DOMAIN = "The workflows (the domain) reach AWS only through the injected adapters"


def lint_imports(site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--config", str(CONFIG), "--no-cache"],
        cwd=site,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    for name, source in PACKAGES.items():
        shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def plant(site: Path, module: str, line: str) -> None:
    path = site / module
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_unmodified_packages_keep_every_contract(site: Path) -> None:
    proc = lint_imports(site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("sip_trunk/manifest.py", "import sip_trunk_local.topology", PRODUCT),
        ("sip_trunk/workflows/health.py", "from moto import mock_aws", PRODUCT),
        ("sip_trunk/agent/watch.py", "import yaml", AGENT),
        ("sip_trunk/agent/report.py", "from sip_trunk.settings import Settings", AGENT),
        # indirect: the agent imports manifest, which would now pull in pydantic through the settings
        ("sip_trunk/manifest.py", "import sip_trunk.settings", AGENT),
        ("sip_trunk/workflows/health.py", "import boto3", DOMAIN),
        ("sip_trunk/workflows/provision/launch.py", "from aws_lambda_powertools import Logger", DOMAIN),
        ("sip_trunk/workflows/failover.py", "from sip_trunk.aws.ec2 import Ec2Addresses", DOMAIN),
    ],
)
def test_a_planted_forbidden_import_breaks_its_contract(site: Path, module: str, line: str, contract: str) -> None:
    plant(site, module, line)
    proc = lint_imports(site)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{contract} BROKEN" in proc.stdout
    assert "2 kept, 1 broken" in proc.stdout


def ruff_workflow_module(source: str) -> subprocess.CompletedProcess[str]:
    filename = PACKAGES["sip_trunk"] / "workflows" / "planted.py"  # not written: ruff reads stdin
    return subprocess.run(
        [str(BIN / "ruff"), "check", "--output-format", "concise", "--stdin-filename", str(filename), "-"],
        input=source,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    "source",
    [
        'import os\n\nSTACK = os.environ["STACK_NAME"]\n',
        'import os\n\nSTACK = os.getenv("STACK_NAME")\n',
        'from os import environ\n\nSTACK = environ.get("STACK_NAME")\n',
    ],
)
def test_reading_the_environment_in_the_workflows_fails_ruff(source: str) -> None:
    proc = ruff_workflow_module(source)
    assert proc.returncode == 1
    assert "TID251" in proc.stdout


def test_the_workflows_may_still_use_os() -> None:
    proc = ruff_workflow_module("import os\n\nSEP = os.sep\n")
    assert proc.returncode == 0, proc.stdout
