"""The host image definition: component document structure, pinned source, host files, and the stock-Ubuntu
install-at-boot path (stacks/host.yaml's user data) running the same entry script. shellcheck of the image's
scripts is in `make lint`, cfn-lint of pipeline.yaml in `make validate`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sip_trunk_local.asterisk_runner import PATCHED_MODULES

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "asterisk_image"
COMPONENT = IMAGE / "component.yaml"
# The scripts, host files and pins are package data of sip_trunk: the image build unpacks them from the wheel, the
# stock-Ubuntu user data from the Lambda layer.
HOST_IMAGE = REPO / "layers/sip_trunk/src/sip_trunk/agent/host_files/image"
SCRIPTS = HOST_IMAGE / "scripts"
HOST_STACK = REPO / "stacks/host.yaml"
ENTRY = "bash /opt/sip-trunk-image/scripts/install-host.sh"
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
    for line in (HOST_IMAGE / "versions.env").read_text().splitlines():
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


def script_commands(document: dict[str, Any]) -> dict[str, list[str]]:
    """Step name -> its commands, for the steps that run one of our scripts (UnpackHostFiles runs none)."""
    out = {}
    for step in steps(document):
        if step["action"] == "ExecuteBash" and step["name"] != "UnpackHostFiles":
            out[step["name"]] = step["inputs"]["commands"]
    return out


def test_every_referenced_script_exists_and_every_script_is_referenced() -> None:
    referenced: set[str] = set()
    for name, commands in script_commands(load_component()).items():
        for command in commands:
            found = re.fullmatch(r"bash /opt/sip-trunk-image/scripts/([\w.-]+\.sh)", command)
            assert found, f"{name} runs something that is not one of our scripts: {command}"
            referenced.add(found.group(1))
    for name in referenced:
        assert (SCRIPTS / name).is_file(), f"component references missing script {name}"
    called = set(re.findall(r"for step in ([\w -]+); do", (SCRIPTS / "install-host.sh").read_text())[0].split())
    # the rest are the sourced helpers and the steps the entry script runs
    assert {p.name for p in SCRIPTS.glob("*.sh")} - referenced == {"lib.sh"} | {f"{s}.sh" for s in called} - referenced


def test_component_builds_through_the_one_entry_script() -> None:
    build = next(p for p in load_component()["phases"] if p["name"] == "build")
    assert [s["name"] for s in build["steps"]] == ["DownloadArtifacts", "UnpackHostFiles", "InstallHost", "Cleanup"]
    install = next(s for s in build["steps"] if s["name"] == "InstallHost")
    assert install["inputs"]["commands"] == [ENTRY]
    assert install["timeoutSeconds"] >= 3600  # the Asterisk build
    unpack = "\n".join(next(s for s in build["steps"] if s["name"] == "UnpackHostFiles")["inputs"]["commands"])
    assert "sip_trunk/agent/host_files/image/." in unpack


def test_install_host_runs_every_build_step_in_order() -> None:
    text = (SCRIPTS / "install-host.sh").read_text()
    order = re.findall(r"for step in ([\w -]+); do", text)[0].split()
    assert order == ["install-base", "build-asterisk", "install-agent", "configure-host", "validate"]
    assert "install-host finished in" in text


def test_asterisk_pin_is_22_lts_with_a_sha256() -> None:
    pins = versions()
    assert re.fullmatch(r"22\.\d+\.\d+", pins["ASTERISK_VERSION"])
    assert re.fullmatch(r"[0-9a-f]{64}", pins["ASTERISK_SHA256"])


def test_modules_list_matches_the_renderers_modules_conf() -> None:
    template = set(re.findall(r"^\s*load\s*=\s*([\w]+)\.so", MODULES_TEMPLATE.read_text(), re.MULTILINE))
    listed = {line.strip() for line in (HOST_IMAGE / "files/modules.list").read_text().splitlines() if line.strip()} - {
        ""
    }
    assert template == listed, f"only in template: {template - listed}; only in list: {listed - template}"
    assert "res_resolver_unbound" in listed  # host names (sip.rtc.elevenlabs.io) need it


def test_systemd_units_present() -> None:
    assert {p.name for p in (HOST_IMAGE / "files/systemd").iterdir()} == {"asterisk.service"}
    units = {p.name for p in AGENT_UNITS.iterdir()}
    assert units == {
        "sip-trunk-boot.service",
        "sip-trunk-agent.service",
        "sip-trunk-agent.timer",
        "sip-trunk-watch-peer.service",
        "sip-trunk-recordings.service",
        "sip-trunk-recordings.timer",
        "sip-trunk-recordings.path",
        "sip-trunk-calls.service",
        "sip-trunk-calls.timer",
        "sip-trunk-bye-headers.service",
        "sip-trunk-cert.service",
        "sip-trunk-cert.timer",
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
    named = {m for text in texts for m in re.findall(r"\b(sip-trunk-[a-z-]+\.(?:service|timer|path))", text)}
    assert named <= shipped, named - shipped
    for unit in (
        bootstrap.HEARTBEAT_TIMER,
        bootstrap.RECORDINGS_TIMER,
        bootstrap.RECORDINGS_PATH,
        bootstrap.CALLS_TIMER,
        bootstrap.BYE_HEADERS,
        bootstrap.CERT_TIMER,
        bootstrap.WATCH_PEER,
        bootstrap.BOOT_SERVICE,
    ):
        assert unit in shipped
    host = (REPO / "stacks/host.yaml").read_text()
    assert host.count("sip-trunk-agent bootstrap --env-file /etc/sip-trunk/agent.env") == 2


def test_ssh_has_no_passwords() -> None:
    text = (HOST_IMAGE / "files/sshd-sip-trunk.conf").read_text()
    assert "PasswordAuthentication no" in text
    assert "KbdInteractiveAuthentication no" in text


def test_unattended_upgrades_security_only() -> None:
    text = (HOST_IMAGE / "files/unattended-upgrades.conf").read_text()
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
    assert sorted(params) == ["/sip-trunk/${SipTrunkStackName}/ami/arm64", "/sip-trunk/${SipTrunkStackName}/ami/x86_64"]
    pipelines = [r for r in resources.values() if r["Type"] == "AWS::ImageBuilder::ImagePipeline"]
    assert len(pipelines) == 2
    assert all(p["Properties"]["ImageTestsConfiguration"]["ImageTestsEnabled"] for p in pipelines)


def pipeline_template() -> dict[str, Any]:
    """pipeline.yaml with each intrinsic's argument kept as is (`!Sub "x-${A}"` is the string "x-${A}")."""

    class Loader(yaml.SafeLoader):
        pass

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", tag)
    document: dict[str, Any] = yaml.load((IMAGE / "pipeline.yaml").read_text(), Loader=Loader)  # noqa: S506
    return document


def of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {n: r for n, r in template["Resources"].items() if r["Type"] == kind}


def test_each_pipeline_schedule_can_fire() -> None:
    """EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE builds only when a semantic version filter (x.x.x) on
    the parent image or a component matches a newer version (AWS::ImageBuilder::ImagePipeline Schedule): with
    a pinned AMI and an exact component version the schedule never fires."""
    template = pipeline_template()
    recipes = of_type(template, "AWS::ImageBuilder::ImageRecipe")
    pipelines = of_type(template, "AWS::ImageBuilder::ImagePipeline")
    assert pipelines
    for name, pipeline in pipelines.items():
        schedule = pipeline["Properties"]["Schedule"]
        assert schedule["ScheduleExpression"], name
        if schedule.get("PipelineExecutionStartCondition") == "EXPRESSION_MATCH_ONLY":
            continue
        recipe = recipes[pipeline["Properties"]["ImageRecipeArn"]]["Properties"]
        filters = [recipe["ParentImage"], *(c["ComponentArn"] for c in recipe["Components"])]
        assert any(str(f).endswith("/x.x.x") for f in filters), f"{name}: waits for updates nothing can announce"


def test_each_build_starts_from_the_parent_image_current_at_build_time() -> None:
    """A `{{resolve:ssm:…}}` parent is resolved once, when the stack is deployed (and again only when its text
    changes): every later build would start from that old Ubuntu image. `ssm:<name>` is resolved by Image
    Builder at each build."""
    for name, recipe in of_type(pipeline_template(), "AWS::ImageBuilder::ImageRecipe").items():
        parent = recipe["Properties"]["ParentImage"]
        assert "{{resolve:" not in parent, name
        assert parent.startswith("ssm:/aws/service/canonical/ubuntu/server/24.04/"), name


def test_builds_need_no_default_vpc() -> None:
    """Without a subnet Image Builder launches the build instance in the default VPC, which an account may not
    have: each infrastructure configuration names the subnet and the template's own security group."""
    template = pipeline_template()
    assert template["Parameters"]["SubnetId"]["Type"] == "AWS::EC2::Subnet::Id"
    groups = of_type(template, "AWS::EC2::SecurityGroup")
    assert groups
    for name, infra in of_type(template, "AWS::ImageBuilder::InfrastructureConfiguration").items():
        props = infra["Properties"]
        assert props["SubnetId"] == "SubnetId", name
        assert set(props["SecurityGroupIds"]) <= set(groups), name
    for name, group in groups.items():
        assert not group["Properties"].get("SecurityGroupIngress"), f"{name}: a build instance accepts nothing"


def test_build_log_groups_are_the_ones_image_builder_writes() -> None:
    """Image Builder writes a build's log to /aws/imagebuilder/<image name>, the image named after its recipe:
    a group with retention must exist under exactly that name, or the logs go to one kept forever."""
    template = pipeline_template()
    recipe_names = sorted(r["Properties"]["Name"] for r in of_type(template, "AWS::ImageBuilder::ImageRecipe").values())
    groups = sorted(g["Properties"]["LogGroupName"] for g in of_type(template, "AWS::Logs::LogGroup").values())
    assert [f"/aws/imagebuilder/{n}" for n in recipe_names] == [g for g in groups if g.startswith("/aws/imagebuilder/")]
    for group in of_type(template, "AWS::Logs::LogGroup").values():
        assert group["Properties"]["RetentionInDays"]


# --- the stock-Ubuntu path: stacks/host.yaml's user data ------------------------------------------------------


def load_host_stack() -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return {suffix: loader.construct_scalar(node)}
        if isinstance(node, yaml.SequenceNode):
            return {suffix: loader.construct_sequence(node, deep=True)}
        return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", tag)
    document: dict[str, Any] = yaml.load(HOST_STACK.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader subclass
    return document


def user_data() -> dict[str, str]:
    """Logical id -> the user data script (the Fn::Sub template string)."""
    out = {}
    for logical, resource in load_host_stack()["Resources"].items():
        if resource["Type"] == "AWS::EC2::Instance":
            out[logical] = resource["Properties"]["UserData"]["Fn::Base64"]["Sub"][0]
    assert set(out) == {"PrimaryInstance", "StandbyInstance"}
    return out


def install_at_boot_branch(script: str) -> str:
    start = script.index("if [ '${InstallAtBoot}' = 'true' ]; then")
    return script[start : script.index("\nfi\n", start)]


def test_user_data_runs_exactly_the_components_entry_script() -> None:
    for logical, script in user_data().items():
        calls = re.findall(r"^\s*(.*/opt/sip-trunk-image/scripts/.*)$", script, re.MULTILINE)
        assert calls == [ENTRY], logical
        branch = install_at_boot_branch(script)
        assert ENTRY in branch, f"{logical}: the entry script must run on the stock-Ubuntu path only"
        # what install-host.sh does is not repeated in the user data
        commands = re.sub(r"^\s*#.*$", "", branch, flags=re.MULTILINE)
        for duplicate in ("dpkg -i", "amazon-cloudwatch-agent", "fail2ban", "python3 -m venv", "pip install"):
            assert duplicate not in commands, f"{logical} repeats an install step: {duplicate}"


def test_user_data_unpacks_the_host_files_from_the_layer_where_the_component_does() -> None:
    """Both paths put scripts/, files/ and versions.env at /opt/sip-trunk-image (lib.sh's IMAGE_DIR) and the
    agent under /opt/sip-trunk-image/dist (install-agent.sh)."""
    for logical, script in user_data().items():
        branch = install_at_boot_branch(script)
        assert "IMAGE_DIR=/opt/sip-trunk-image" in script, logical
        assert '"python/sip_trunk/agent/host_files/image/"' in branch, logical
        assert 'dest / "dist"' in branch, logical


def apt_installs(text: str) -> list[list[str]]:
    """The package arguments of every apt-get/apt install and apt_install call (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for match in re.finditer(
        r"\b(?:apt-get|apt)\b[^\n;|&]*?\binstall\b([^\n;|&]*)|\bapt_install\b([^\n;|&(]*)", joined
    ):
        args = (match.group(1) or match.group(2) or "").split()
        out.append([a for a in args if not a.startswith("-") and not a.startswith('"')])
    return out


def test_no_apt_asterisk_package_anywhere() -> None:
    """Asterisk is always built from the pinned source: neither path installs Ubuntu's asterisk package (20.x)."""
    texts = {HOST_STACK: HOST_STACK.read_text(), COMPONENT: COMPONENT.read_text()}
    texts.update({p: p.read_text() for p in SCRIPTS.glob("*.sh")})
    found = {path.name: apt_installs(text) for path, text in texts.items()}
    for name in ("build-asterisk.sh", "install-base.sh", "host.yaml"):
        assert found[name], f"the parser sees no apt install in {name}"
    for name, installs in found.items():
        for packages in installs:
            assert not [p for p in packages if re.fullmatch(r"asterisk([-.].*)?", p)], (name, packages)
    assert apt_installs("apt-get install -y -q asterisk fail2ban") == [["asterisk", "fail2ban"]]  # the parser works


def test_creation_policy_covers_the_build_at_boot() -> None:
    for logical, resource in load_host_stack()["Resources"].items():
        if resource["Type"] == "AWS::EC2::Instance":
            timeout = resource["CreationPolicy"]["ResourceSignal"]["Timeout"]
            minutes = int(re.fullmatch(r"PT(\d+)M", timeout).group(1))  # type: ignore[union-attr]
            assert minutes >= 45, f"{logical}: {timeout} does not cover install-host.sh on t4g.small (docs/IMAGE.md)"


def test_user_data_unpacks_a_layer_into_what_install_host_expects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user data's layer step, run against a layer zip of this source tree (python/sip_trunk/...)."""
    import io
    import urllib.request
    import zipfile

    import boto3

    package = REPO / "layers/sip_trunk/src/sip_trunk"
    layer = tmp_path / "layer.zip"
    with zipfile.ZipFile(layer, "w") as zf:
        for path in package.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, "python/sip_trunk/" + path.relative_to(package).as_posix())
        zf.writestr("python/pydantic/__init__.py", "")  # the layer's dependencies are not unpacked

    script = user_data()["PrimaryInstance"]
    code = re.search(r'python3 - "\$IMAGE_DIR" <<\'PY\'\n(.*?)\nPY\n', script, re.DOTALL)
    assert code
    # the layer's ARN is not in the user data: it is read at boot from the root stack's host-parameters document
    assert "arn:aws:lambda" not in script
    assert "LayerVersionArn}" not in script
    source = code.group(1).replace("${HostParametersName}", "/sip-trunk/s/host-parameters")
    assert "${" not in source
    latest = "arn:aws:lambda:us-east-1:123456789012:layer:s-sip-trunk:8"
    asked: list[str] = []

    class FakeSsm:
        def get_parameter(self, Name: str) -> dict[str, Any]:
            assert Name == "/sip-trunk/s/host-parameters"
            return {"Parameter": {"Value": json.dumps({"LayerVersionArn": latest, "RootStackName": "s"})}}

    class FakeLambda:
        def get_layer_version_by_arn(self, Arn: str) -> dict[str, Any]:
            asked.append(Arn)
            return {"Content": {"Location": "https://layer.example/l.zip"}}

    clients = {"ssm": FakeSsm(), "lambda": FakeLambda()}
    monkeypatch.setattr(boto3, "client", lambda service: clients[service])
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(layer.read_bytes()))
    dest = tmp_path / "opt-sip-trunk-image"
    monkeypatch.setattr("sys.argv", ["-", str(dest)])
    exec(compile(source, "user-data", "exec"), {"__name__": "__main__"})  # noqa: S102 - the template's own code

    assert (dest / "scripts/install-host.sh").read_bytes() == (SCRIPTS / "install-host.sh").read_bytes()
    assert (dest / "versions.env").read_bytes() == (HOST_IMAGE / "versions.env").read_bytes()
    assert (dest / "files/modules.list").is_file()
    assert (dest / "dist/sip_trunk/agent/__main__.py").is_file()  # install-agent.sh's package-tree source
    assert (dest / "dist/sip_trunk/agent/host_files/systemd/sip-trunk-boot.service").is_file()
    assert not (dest / "dist/pydantic").exists()
    assert asked == [latest]


def test_user_data_passes_shellcheck(tmp_path: Path) -> None:
    for logical, script in user_data().items():
        rendered = re.sub(r"\$\{(AWS::)?[A-Za-z]+\}", "x", script)
        path = tmp_path / f"{logical}.sh"
        path.write_text(rendered)
        proc = subprocess.run(
            # SC2050: `[ '${InstallAtBoot}' = 'true' ]` is constant once CloudFormation substitutes it
            [shellcheck(), "--shell=bash", "--severity=style", "--exclude=SC2050", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


PATCHES = HOST_IMAGE / "patches"


def test_asterisk_patches_are_described_diffs_of_what_the_tests_rebuild() -> None:
    """Each patch is a unified diff with a description, touching only files built into a module of res/: the test
    root rebuilds exactly those modules from the same files (scripts/build-asterisk-modules.sh), so a patch
    elsewhere would reach the image but not the tests."""
    patches = sorted(PATCHES.glob("*.patch"))
    assert patches, "no Asterisk patches"
    for patch in patches:
        text = patch.read_text()
        header = text.split("\n--- ", 1)[0]
        assert len(header.split()) > 20, f"{patch.name}: say what it fixes and why before the diff"
        targets = re.findall(r"^\+\+\+ (\S+)", text, re.MULTILINE)
        assert targets, f"{patch.name}: not a unified diff"
        assert re.search(r"^@@ -\d+", text, re.MULTILINE), f"{patch.name}: no hunk"
        for target in targets:
            assert re.fullmatch(r"b/res/res_[a-z0-9_]+(/[^/]+|\.c)", target), f"{patch.name} patches {target}"


def test_the_patches_are_the_idle_check_and_the_refer_patch_in_order() -> None:
    names = [p.name for p in sorted(PATCHES.glob("*.patch"))]
    assert names == [
        "0001-res_pjsip-idle-check-finds-its-own-connection.patch",
        "0002-res_pjsip_refer-tel-target-and-403-for-unknown-target.patch",
    ], names


def test_refer_patch_takes_tel_as_a_blind_transfer_and_refuses_unknown_targets_with_403() -> None:
    """The refer patch rewrites a tel: target to the sip: form the blind-transfer path already handles (visual
    separators dropped, parameters left behind) and changes only the not-in-the-transfer-context answer."""
    text = (PATCHES / "0002-res_pjsip_refer-tel-target-and-403-for-unknown-target.patch").read_text()
    assert re.findall(r"^\+\+\+ (\S+)", text, re.MULTILINE) == ["b/res/res_pjsip_refer.c"]
    added = [line[1:] for line in text.splitlines() if line.startswith("+") and not line.startswith("+++")]
    removed = [line[1:] for line in text.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert removed == ["\t\treturn 404;"], removed
    assert "\t\treturn 403;" in added
    assert "\tif (target && PJSIP_URI_SCHEME_IS_TEL(target)) {" in added
    assert any('strchr("-.()", number->ptr[i])' in line for line in added), added


def test_build_asterisk_modules_lists_the_modules_the_patches_touch() -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/build-asterisk-modules.sh"), "--list", *map(str, sorted(PATCHES.glob("*.patch")))],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["res_pjsip", "res_pjsip_refer"], proc.stdout
    # the unpatched module set the negative controls run must hold Debian's copy of each
    assert [f"{m}.so" for m in proc.stdout.split()] == list(PATCHED_MODULES)


def test_build_asterisk_modules_refuses_a_patch_outside_res_modules(tmp_path: Path) -> None:
    bogus = tmp_path / "0099-elsewhere.patch"
    bogus.write_text("Elsewhere.\n\n--- a/main/pbx.c\n+++ b/main/pbx.c\n@@ -1 +1 @@\n-x\n+y\n")
    args = ["--suite", "forky", "--version", "1", "--mirror", "http://192.0.2.1", "--reference-dir", str(tmp_path)]
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "scripts/build-asterisk-modules.sh"),
            *args,
            "--out-dir",
            str(tmp_path / "out"),
            str(bogus),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stderr
    assert "b/main/pbx.c, which is not built into a module of res/" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_build_asterisk_modules_needs_debians_module_of_each_patched_module(tmp_path: Path) -> None:
    """Every rebuilt module is checked against Debian's own (build-option checksum, symbols): a reference
    directory without one of them is refused before anything is built."""
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "res_pjsip.so").write_bytes(b"")
    args = [
        "--suite",
        "forky",
        "--version",
        "1",
        "--mirror",
        "http://192.0.2.1",
        "--reference-dir",
        str(tmp_path / "ref"),
    ]
    patches = map(str, sorted(PATCHES.glob("*.patch")))
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/build-asterisk-modules.sh"), *args, "--out-dir", str(tmp_path / "out"), *patches],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"no reference module {tmp_path / 'ref'}/res_pjsip_refer.so" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_image_build_and_test_root_apply_the_same_patches() -> None:
    build = (SCRIPTS / "build-asterisk.sh").read_text()
    assert 'for patch in "$IMAGE_DIR"/patches/*.patch; do' in build
    assert "patch -p1 --forward --batch" in build
    assert "SIP_TRUNK_PATCHES" in build
    assert "/usr/lib/asterisk/SIP_TRUNK_PATCHES" in (SCRIPTS / "validate.sh").read_text()
    root = (REPO / "scripts/asterisk-root.sh").read_text()
    found = re.search(r'^PATCH_DIR="\$SCRIPTS/\.\./([^"]+)"$', root, re.MULTILINE)
    assert found, "asterisk-root.sh names no PATCH_DIR"
    assert (REPO / found.group(1)).resolve() == PATCHES.resolve()
