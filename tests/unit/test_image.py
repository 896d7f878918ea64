"""The host image definition: component document structure, pinned source, scripts (shellcheck), host files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "asterisk_image"
SCRIPTS = IMAGE / "scripts"
COMPONENT = IMAGE / "component.yaml"
MODULES_TEMPLATE = REPO / "layers/sip_trunk/src/sip_trunk/templates/modules.conf.j2"
AGENT_UNITS = REPO / "layers/sip_trunk/src/sip_trunk/agent/host_files/systemd"
# Image Builder component document actions (AWSTOE) this project may use.
ACTIONS = {"ExecuteBash", "S3Download", "WebDownload", "CreateFile", "SetFilePermissions", "Reboot", "UpdateOS"}
PHASES = {"build", "validate", "test"}


def load_component() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPONENT.read_text())
    return document


def steps(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for phase in document["phases"] for step in phase["steps"]]


def versions() -> dict[str, str]:
    out = {}
    for line in (IMAGE / "versions.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def shellcheck() -> str:
    """shellcheck from $SHELLCHECK, the dev venv (the Makefile links it there), or PATH; never skipped."""
    for candidate in (os.environ.get("SHELLCHECK"), str(REPO / ".venv/bin/shellcheck"), shutil.which("shellcheck")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("shellcheck not found: run `make dev` (links it into .venv/bin) or `apt-get install shellcheck`")


def test_component_has_build_validate_and_test_phases() -> None:
    document = load_component()

    assert document["schemaVersion"] == 1.0
    assert [p["name"] for p in document["phases"]] == ["build", "validate", "test"]
    assert {p["name"] for p in document["phases"]} == PHASES
    for phase in document["phases"]:
        assert phase["steps"], f"phase {phase['name']} has no steps"


def test_every_step_is_well_formed() -> None:
    names = []
    for step in steps(load_component()):
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]+", step["name"]), step
        assert step["action"] in ACTIONS, step
        assert step.get("onFailure", "Abort") in {"Abort", "Continue", "Ignore"}
        assert isinstance(step["inputs"], list | dict)
        names.append(step["name"])
    assert len(names) == len(set(names)), "step names must be unique"


def test_parameters_are_declared_and_used() -> None:
    document = load_component()
    declared = {name for param in document["parameters"] for name in param}
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", COMPONENT.read_text()))
    assert used <= declared
    assert declared <= used


def test_every_referenced_script_exists_and_every_script_is_referenced() -> None:
    referenced: set[str] = set()
    for step in steps(load_component()):
        if step["action"] == "ExecuteBash":
            for command in step["inputs"]["commands"]:
                found = re.findall(r"/scripts/([\w.-]+\.sh)", command)
                assert found, f"{step['name']} runs something that is not one of our scripts: {command}"
                referenced.update(found)
    for name in referenced:
        assert (SCRIPTS / name).is_file(), f"component references missing script {name}"
    # the rest are sourced helpers or the boot-time paths
    assert {p.name for p in SCRIPTS.glob("*.sh")} - referenced == {"lib.sh", "install-at-boot.sh"}


def test_install_at_boot_runs_the_same_build_steps() -> None:
    text = (SCRIPTS / "install-at-boot.sh").read_text()
    for step in ("install-base", "build-asterisk", "install-agent", "configure-host", "validate"):
        assert step in text


def test_asterisk_pin_is_22_lts_with_a_sha256() -> None:
    pins = versions()
    assert re.fullmatch(r"22\.\d+\.\d+", pins["ASTERISK_VERSION"])
    assert re.fullmatch(r"[0-9a-f]{64}", pins["ASTERISK_SHA256"])
    build = (SCRIPTS / "build-asterisk.sh").read_text()
    assert "sha256sum --check" in build


def test_modules_list_matches_the_renderers_modules_conf() -> None:
    template = set(re.findall(r"^\s*load\s*=\s*([\w]+)\.so", MODULES_TEMPLATE.read_text(), re.MULTILINE))
    listed = {line.strip() for line in (IMAGE / "files/modules.list").read_text().splitlines() if line.strip()} - {""}
    assert template == listed, f"only in template: {template - listed}; only in list: {listed - template}"
    assert "res_resolver_unbound" in listed  # host names (sip.rtc.elevenlabs.io) need it


def test_systemd_units_present() -> None:
    assert {p.name for p in (IMAGE / "files/systemd").iterdir()} == {"asterisk.service"}
    units = {p.name for p in AGENT_UNITS.iterdir()}
    assert units == {
        "sip-trunk-boot.service",
        "sip-trunk-agent.service",
        "sip-trunk-agent.timer",
        "sip-trunk-watch-peer.service",
        "sip-trunk-recordings.service",
        "sip-trunk-recordings.timer",
    }
    for unit in units:
        text = (AGENT_UNITS / unit).read_text()
        for command in re.findall(r"^ExecStart=(\S+)", text, re.MULTILINE):
            assert command == "/usr/local/bin/sip-trunk-agent", unit
    boot = (AGENT_UNITS / "sip-trunk-boot.service").read_text()
    assert "ExecStart=/usr/local/bin/sip-trunk-agent bootstrap --env-file /etc/sip-trunk/agent.env" in boot


def test_host_stack_and_units_name_only_units_that_exist() -> None:
    """user data, the install scripts and the bootstrap enable units by name: every name must be a shipped unit."""
    from sip_trunk.agent import bootstrap

    shipped = {p.name for p in AGENT_UNITS.iterdir()} | {"asterisk.service"}
    texts = [(REPO / "stacks/host.yaml").read_text(), *(p.read_text() for p in SCRIPTS.glob("*.sh"))]
    named = {m for text in texts for m in re.findall(r"\b(sip-trunk-[a-z-]+\.(?:service|timer))", text)}
    assert named <= shipped, named - shipped
    for unit in (bootstrap.HEARTBEAT_TIMER, bootstrap.RECORDINGS_TIMER, bootstrap.WATCH_PEER, bootstrap.BOOT_SERVICE):
        assert unit in shipped
    host = (REPO / "stacks/host.yaml").read_text()
    assert host.count("sip-trunk-agent bootstrap --env-file /etc/sip-trunk/agent.env") == 2


def test_ssh_has_no_passwords() -> None:
    text = (IMAGE / "files/sshd-sip-trunk.conf").read_text()
    assert "PasswordAuthentication no" in text
    assert "KbdInteractiveAuthentication no" in text


def test_unattended_upgrades_security_only() -> None:
    text = (IMAGE / "files/unattended-upgrades.conf").read_text()
    block = re.search(r"Allowed-Origins \{(.*?)\};", text, re.DOTALL)
    assert block
    origins = re.findall(r'"([^"]+)";', block.group(1))
    assert origins
    assert all("security" in o for o in origins)
    assert 'Automatic-Reboot "false"' in text


def test_pipeline_writes_ami_ids_to_ssm_for_both_architectures() -> None:
    class Loader(yaml.SafeLoader):
        pass

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", tag)
    template = yaml.load((IMAGE / "pipeline.yaml").read_text(), Loader=Loader)  # noqa: S506 - SafeLoader subclass
    resources = template["Resources"]
    recipes = [r for r in resources.values() if r["Type"] == "AWS::ImageBuilder::ImageRecipe"]
    assert sorted("arm64" in r["Properties"]["ParentImage"] for r in recipes) == [False, True]
    assert all("ubuntu/server/24.04" in r["Properties"]["ParentImage"] for r in recipes)
    params = [
        c["ParameterName"]
        for r in resources.values()
        if r["Type"] == "AWS::ImageBuilder::DistributionConfiguration"
        for d in r["Properties"]["Distributions"]
        for c in d["SsmParameterConfigurations"]
    ]
    assert sorted(params) == ["/${SipTrunkStackName}/ami/arm64", "/${SipTrunkStackName}/ami/x86_64"]
    pipelines = [r for r in resources.values() if r["Type"] == "AWS::ImageBuilder::ImagePipeline"]
    assert len(pipelines) == 2
    assert all(p["Properties"]["ImageTestsConfiguration"]["ImageTestsEnabled"] for p in pipelines)


def test_pipeline_template_passes_cfn_lint() -> None:
    cfn_lint = REPO / ".venv/bin/cfn-lint"
    if not cfn_lint.exists():
        pytest.fail("cfn-lint missing from the dev venv: run `make dev`")
    proc = subprocess.run([str(cfn_lint), str(IMAGE / "pipeline.yaml")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_shellcheck(script: str) -> None:
    proc = subprocess.run(
        [shellcheck(), "-x", "--severity=style", script], cwd=SCRIPTS, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
