"""Each function's role in template.yaml allows what its code calls, and nothing else.

Three tables, each checked against the next:
1. `FUNCTION_USES`: the port methods (`deps.<port>.<method>(…)`) each handler uses. The ports are compared
   with the ones its live code reads (`support.reach`, from the imported handler), and every port method the
   recorded runs below see a function use must be in its row.
2. `ADAPTER_NEEDS`: the IAM actions and an example resource ARN of each port method. Every AWS call the
   recorded runs see inside an adapter method must be in that method's row; permissions AWS checks without a
   call of our own (KMS behind DynamoDB/Secrets Manager/S3, `iam:PassRole`, the template fetch of
   CloudFormation, `s3:ListBucket` for a 404) are listed with their reason.
3. The SAM-transformed template (samtranslator, offline): each needed action is allowed on its resource
   by the function's role, and each allowed action/resource is needed (least privilege).

The recorded runs: the real handlers run in moto (Provision, a failed Provision with rollback, Failover, the
health check starting Failover, the backup) with every botocore call recorded per function and per adapter
method: each call must be made inside an adapter method, be in the function's needs and be allowed by its
role, and each call the state machines make must be allowed by theirs.
"""

from __future__ import annotations

import fnmatch
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cfnlint.decode import decode
from sip_trunk_local.harness.world import IMAGE_PARAMETER
from support.reach import reach
from support.sam import sam_transform

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account: recorded ARNs and the evaluated template agree
STACK = "trunk"  # tests/support/world.py names everything after this stack
TABLE = f"{STACK}-state"
BACKUPS = f"{STACK}-backups"
TOPIC = f"{STACK}-notifications"


# --- ARNs of the resources the code touches (examples; the template must allow them) --------------


def parameter(name: str) -> str:
    """A parameter's ARN; AWS's public parameters (`/aws/service/...`) have no account in theirs."""
    owner = "" if name.startswith("/aws/service/") else ACCOUNT
    return f"arn:aws:ssm:{REGION}:{owner}:parameter{name}"


def secret(name: str) -> str:
    return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbCdEf"


def ec2(kind: str, ident: str) -> str:
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{ident}"


def stack_arn(name: str) -> str:
    return f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{name}/0a1b2c3d-0000-0000-0000-000000000000"


def lambda_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


CONFIG = f"/sip-trunk/{STACK}/asterisk"
DESIRED = f"{CONFIG}/desired-version"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/stack-key"
TABLE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{TABLE}"
BUCKET_ARN = f"arn:aws:s3:::{BACKUPS}"
HOST_STACK = stack_arn(f"{STACK}-host")
HOST_STACK_ROLE = f"arn:aws:iam::{ACCOUNT}:role/{STACK}-HostStackRole"
FAILOVER_MACHINE = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{STACK}-failover"
PROVISION_MACHINE = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{STACK}-provision"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:{TOPIC}"
VERSION = "v0123456789abcdef"
INSTANCE = ec2("instance", "i-0123456789abcdef0")
ADDRESS = ec2("elastic-ip", "eipalloc-0123456789abcdef0")

Need = tuple[str, str]
"""(IAM action, resource ARN the action is authorized against)."""

TABLE_KEY = ("kms:Decrypt", KEY)
"""The state table is encrypted with the stack key: DynamoDB decrypts its table key as the caller."""

# --- 2. what each port method needs -------------------------------------------------------------
ADAPTER_NEEDS: dict[tuple[str, str], list[Need]] = {
    ("settings", "settings_document"): [("ssm:GetParameter", parameter(f"/sip-trunk/{STACK}/settings"))],
    ("settings", "operator_document"): [("ssm:GetParameter", parameter(f"/sip-trunk/{STACK}/operator-settings"))],
    ("parameters", "get_json"): [("ssm:GetParameter", parameter(f"/sip-trunk/{STACK}/host-parameters"))],
    # the image's SSM parameter: Ubuntu's public one by default (AWS-owned, no account in its ARN)
    ("parameters", "get_text"): [("ssm:GetParameter", parameter(IMAGE_PARAMETER))],
    ("secrets", "resolve"): [
        # `secretsmanager:<name>` (the template's references; encrypted with the stack key) ...
        ("secretsmanager:GetSecretValue", secret(f"{STACK}/sip/inbound-password")),
        ("kms:Decrypt", KEY),
        # ... or `ssm:/<name>` SecureString (aws/ssm key: its key policy admits callers through SSM).
        ("ssm:GetParameter", parameter(f"/sip-trunk/{STACK}/sip/outbound-password")),
    ],
    ("config_store", "has_version"): [("ssm:GetParameter", parameter(f"{CONFIG}/{VERSION}/manifest.json"))],
    # String/SecureString (aws/ssm key), Standard/Advanced tier: PutParameter is the only action.
    ("config_store", "publish"): [("ssm:PutParameter", parameter(f"{CONFIG}/{VERSION}/asterisk/pjsip.conf"))],
    ("config_store", "desired_version"): [("ssm:GetParameter", parameter(DESIRED))],
    ("config_store", "set_desired_version"): [("ssm:PutParameter", parameter(DESIRED))],
    ("config_store", "clear_desired_version"): [("ssm:DeleteParameter", parameter(DESIRED))],
    # WithDecryption=False: SecureString values are never decrypted into the snapshot.
    # Authorized on the path's ARN: `.../asterisk` (parameter ARNs never end in "/"), or the path as sent.
    ("config_store", "snapshot"): [
        ("ssm:GetParametersByPath", parameter(CONFIG)),
        ("ssm:GetParametersByPath", parameter(f"{CONFIG}/")),
    ],
    ("addresses", "describe_address"): [("ec2:DescribeAddresses", "*")],
    # By instance id: EC2 authorizes the address, the instance and the instance's primary interface.
    ("addresses", "associate"): [
        ("ec2:AssociateAddress", ADDRESS),
        ("ec2:AssociateAddress", INSTANCE),
        ("ec2:AssociateAddress", ec2("network-interface", "eni-0123456789abcdef0")),
    ],
    ("addresses", "instances"): [("ec2:DescribeInstances", "*")],
    ("stacks", "describe"): [("cloudformation:DescribeStacks", HOST_STACK)],
    # CloudFormation reads TemplateURL with the caller's credentials (SSE-KMS object: kms:Decrypt) and
    # needs iam:PassRole for RoleARN.
    ("stacks", "create"): [
        ("cloudformation:CreateStack", HOST_STACK),
        ("iam:PassRole", HOST_STACK_ROLE),
        ("s3:GetObject", f"{BUCKET_ARN}/templates/host.yaml"),
        ("kms:Decrypt", KEY),
    ],
    ("stacks", "update"): [
        ("cloudformation:UpdateStack", HOST_STACK),
        ("iam:PassRole", HOST_STACK_ROLE),
        ("s3:GetObject", f"{BUCKET_ARN}/templates/host.yaml"),
        ("kms:Decrypt", KEY),
    ],
    ("commands", "send"): [
        ("ssm:SendCommand", f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript"),
        ("ssm:SendCommand", INSTANCE),
    ],
    ("commands", "results"): [("ssm:GetCommandInvocation", "*")],
    ("state", "get_deployment"): [("dynamodb:GetItem", TABLE_ARN), TABLE_KEY],
    ("state", "put_deployment"): [("dynamodb:PutItem", TABLE_ARN), TABLE_KEY],
    ("state", "put_history"): [("dynamodb:PutItem", TABLE_ARN), TABLE_KEY],
    ("state", "swap_roles"): [("dynamodb:UpdateItem", TABLE_ARN), TABLE_KEY],
    ("state", "heartbeats"): [("dynamodb:GetItem", TABLE_ARN), TABLE_KEY],
    ("state", "acquire_lock"): [("dynamodb:PutItem", TABLE_ARN), ("dynamodb:GetItem", TABLE_ARN), TABLE_KEY],
    ("state", "release_lock"): [("dynamodb:DeleteItem", TABLE_ARN), TABLE_KEY],
    ("state", "health"): [("dynamodb:GetItem", TABLE_ARN), TABLE_KEY],
    ("state", "put_health"): [("dynamodb:PutItem", TABLE_ARN), TABLE_KEY],
    ("executions", "start"): [("states:StartExecution", FAILOVER_MACHINE)],
    ("executions", "history"): [
        ("states:GetExecutionHistory", f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{STACK}-provision:run-1")
    ],
    # The backups bucket encrypts with the stack key by default: PutObject needs a data key.
    ("objects", "put_json"): [
        ("s3:PutObject", f"{BUCKET_ARN}/{STACK}/20260101T000000Z/ssm-config.json"),
        ("kms:GenerateDataKey", KEY),
    ],
    # HeadObject is authorized as s3:GetObject; without s3:ListBucket a missing object is a 403, not a 404.
    ("objects", "put_if_changed"): [
        ("s3:GetObject", f"{BUCKET_ARN}/templates/host.yaml"),
        ("s3:ListBucket", BUCKET_ARN),
        ("s3:PutObject", f"{BUCKET_ARN}/templates/host.yaml"),
        ("kms:GenerateDataKey", KEY),
    ],
    # Powertools idempotency records in the state table (get, conditional put, update, delete on error).
    ("observability", "run_idempotent"): [
        ("dynamodb:GetItem", TABLE_ARN),
        ("dynamodb:PutItem", TABLE_ARN),
        ("dynamodb:UpdateItem", TABLE_ARN),
        ("dynamodb:DeleteItem", TABLE_ARN),
        TABLE_KEY,
    ],
}

PORT_ADAPTERS = {
    "settings": "SsmSettingsSource",
    "parameters": "JsonParameterReader",
    "secrets": "ParameterSecretResolver",
    "config_store": "SsmConfigStore",
    "addresses": "Ec2Addresses",
    "stacks": "CfnStacks",
    "commands": "SsmCommands",
    "state": "DynamoStateStore",
    "executions": "SfnExecutions",
    "objects": "S3Objects",
}
NOT_AWS_PORTS = {"config", "prober", "elevenlabs", "certificates"}

# --- 1. what each handler calls ------------------------------------------------------------------
# function → the state machine that invokes it (None: scheduled)
FUNCTION_ENTRY: dict[str, str | None] = {
    "validate_settings": "provision",
    "render_config": "provision",
    "launch_host": "provision",
    "check_host_stack": "provision",
    "apply_config": "provision",
    "check_apply": "provision",
    "verify_trunk": "provision",
    "sync_elevenlabs": "provision",
    "record_deployment": "provision",
    "failover_confirm": "failover",
    "failover_lock": "failover",
    "failover_move_eip": "failover",
    "failover_verify": "failover",
    "failover_swap_roles": "failover",
    "health_check": None,
    "backup": None,
}

SETTINGS = [("settings", "settings_document"), ("settings", "operator_document"), ("secrets", "resolve")]
FUNCTION_USES: dict[str, list[tuple[str, str]]] = {
    "validate_settings": SETTINGS,
    "render_config": [
        *SETTINGS,
        ("addresses", "describe_address"),
        ("config_store", "has_version"),
        ("config_store", "publish"),
        ("config_store", "desired_version"),
        ("config_store", "set_desired_version"),
    ],
    "launch_host": [
        ("observability", "run_idempotent"),
        ("objects", "put_if_changed"),
        ("parameters", "get_json"),
        ("parameters", "get_text"),
        ("state", "get_deployment"),
        ("stacks", "describe"),
        ("stacks", "create"),
        ("stacks", "update"),
    ],
    "check_host_stack": [
        ("stacks", "describe"),
        ("state", "get_deployment"),
        ("addresses", "describe_address"),
        ("addresses", "associate"),
        ("commands", "send"),
    ],
    "apply_config": [("state", "heartbeats"), ("commands", "send")],
    "check_apply": [("commands", "results")],
    "verify_trunk": [*SETTINGS, ("state", "heartbeats")],
    "sync_elevenlabs": [("observability", "run_idempotent"), *SETTINGS, ("state", "get_deployment")],
    "record_deployment": [
        ("state", "get_deployment"),
        ("state", "put_deployment"),
        ("state", "put_history"),
        ("executions", "history"),
        ("config_store", "set_desired_version"),
        ("config_store", "clear_desired_version"),
        ("commands", "send"),
    ],
    "failover_confirm": [
        ("state", "get_deployment"),
        ("state", "heartbeats"),
        ("addresses", "describe_address"),
        ("addresses", "instances"),
        *SETTINGS,
    ],
    "failover_lock": [("state", "acquire_lock"), ("state", "release_lock")],
    "failover_move_eip": [
        ("observability", "run_idempotent"),
        ("state", "acquire_lock"),
        ("addresses", "describe_address"),
        ("addresses", "associate"),
    ],
    "failover_verify": SETTINGS,
    "failover_swap_roles": [
        ("state", "get_deployment"),
        ("state", "swap_roles"),
        ("addresses", "instances"),
        ("commands", "send"),
    ],
    "health_check": [
        ("state", "get_deployment"),
        ("state", "heartbeats"),
        ("state", "health"),
        ("state", "put_health"),
        *SETTINGS,
        ("addresses", "describe_address"),
        ("addresses", "instances"),
        ("config_store", "desired_version"),
        ("executions", "start"),
    ],
    "backup": [
        ("state", "get_deployment"),
        ("commands", "send"),
        ("commands", "results"),
        ("config_store", "snapshot"),
        ("objects", "put_json"),
    ],
}

MACHINE_NEEDS: dict[str, list[Need]] = {
    "ProvisionStateMachine": [
        *[("lambda:InvokeFunction", lambda_arn(f)) for f in FUNCTION_ENTRY if FUNCTION_ENTRY[f] == "provision"],
        ("sns:Publish", TOPIC_ARN),
        # The topic is encrypted with the stack key: a publisher needs a data key.
        ("kms:GenerateDataKey", KEY),
        ("kms:Decrypt", KEY),
    ],
    "FailoverStateMachine": [
        *[("lambda:InvokeFunction", lambda_arn(f)) for f in FUNCTION_ENTRY if FUNCTION_ENTRY[f] == "failover"],
        ("sns:Publish", TOPIC_ARN),
        ("kms:GenerateDataKey", KEY),
        ("kms:Decrypt", KEY),
    ],
}
# Step Functions' own log delivery (Logging) cannot be scoped; test_templates.py pins that statement.
MACHINE_SERVICE_ACTIONS = {
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}


def pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


DLQ = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{STACK}-DeadLetterQueue"
CONFIGURATION_NEEDS: dict[str, list[Need]] = {
    # DeadLetterQueue of the two scheduled functions: Lambda sends failed events with the function's role,
    # to a queue encrypted with the stack key.
    "health_check": [("sqs:SendMessage", DLQ), ("kms:GenerateDataKey", KEY), ("kms:Decrypt", KEY)],
    "backup": [("sqs:SendMessage", DLQ), ("kms:GenerateDataKey", KEY), ("kms:Decrypt", KEY)],
}
# With the ElevenLabs static range (PROBE_FUNCTION set, ADR-27) the prober is `sip_trunk.aws.vpcprobe.VpcProber`:
# it resolves the probed public address to the holder's private address and invokes the in-VPC probe function.
VPC_PROBE_NEEDS: list[Need] = [
    ("ec2:DescribeAddresses", "*"),
    ("ec2:DescribeInstances", "*"),
    ("lambda:InvokeFunction", lambda_arn("sip_probe")),
]
for _probing in ("verify_trunk", "failover_confirm", "failover_verify", "health_check"):
    CONFIGURATION_NEEDS[_probing] = CONFIGURATION_NEEDS.get(_probing, []) + VPC_PROBE_NEEDS


def needs_of(function: str) -> list[Need]:
    uses = [need for use in FUNCTION_USES[function] for need in ADAPTER_NEEDS[use]]
    return uses + CONFIGURATION_NEEDS.get(function, [])


# --- the transformed template, evaluated with concrete names ----------------------------------------


def load(path: Path) -> dict[str, Any]:
    template, matches = decode(str(path))
    assert not matches
    return json.loads(json.dumps(template))


def transformed() -> dict[str, Any]:
    import os

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    return sam_transform(load(ROOT / "template.yaml"))


def snake(logical: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in logical.removesuffix("Function")).lstrip("_")


class Names:
    """Ref/GetAtt of the root template's resources → the names tests/support/world.py uses."""

    REFS: ClassVar[dict[str, str]] = {
        "AWS::StackName": STACK,
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "AWS::Partition": "aws",
        "StateTable": TABLE,
        "BackupBucket": BACKUPS,
        "NotificationTopic": TOPIC_ARN,
        "ProvisionStateMachine": PROVISION_MACHINE,
        "FailoverStateMachine": FAILOVER_MACHINE,
        "NetworkStack": stack_arn(f"{STACK}-NetworkStack"),
    }
    ATTS: ClassVar[dict[str, str]] = {
        "StateTable.Arn": TABLE_ARN,
        "BackupBucket.Arn": BUCKET_ARN,
        "StackKey.Arn": KEY,
        "HostStackRole.Arn": HOST_STACK_ROLE,
        "DeadLetterQueue.Arn": DLQ,
        "NotificationTopic.TopicName": TOPIC,
    }

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.value(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "Ref" in node:
            ref = node["Ref"]
            if ref.endswith("Function"):
                return snake(ref)
            assert ref in self.REFS, f"no test value for Ref {ref}"
            return self.REFS[ref]
        if "Fn::GetAtt" in node:
            att = ".".join(node["Fn::GetAtt"]) if isinstance(node["Fn::GetAtt"], list) else node["Fn::GetAtt"]
            if att.endswith("Function.Arn"):
                return lambda_arn(snake(att.removesuffix(".Arn")))
            assert att in self.ATTS, f"no test value for GetAtt {att}"
            return self.ATTS[att]
        if "Fn::Sub" in node:
            sub = node["Fn::Sub"]
            text, scope = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])
            values = {k: str(self.value(v)) for k, v in scope.items()}

            def one(name: str) -> str:
                if name in values:
                    return values[name]
                if "." in name:
                    return str(self.value({"Fn::GetAtt": name.split(".", 1)}))
                return str(self.value({"Ref": name}))

            import re

            return re.sub(r"\$\{([^}]+)\}", lambda m: one(m[1]), text)
        if "Fn::If" in node:  # a conditional statement: evaluate the "on" branch (recordings on, ...)
            return self.value(node["Fn::If"][1])
        return {k: self.value(v) for k, v in node.items()}


@dataclass
class Statement:
    actions: list[str]
    resources: list[str]
    condition: dict[str, Any] = field(default_factory=dict)


def role_statements(template: dict[str, Any], role: str) -> list[Statement]:
    names = Names()
    out: list[Statement] = []
    for policy in template["Resources"][role]["Properties"].get("Policies", []):
        for raw in names.value(policy["PolicyDocument"]["Statement"]):
            if not isinstance(raw, dict) or raw.get("Effect") != "Allow":
                continue
            actions = raw["Action"] if isinstance(raw["Action"], list) else [raw["Action"]]
            resources = raw["Resource"] if isinstance(raw["Resource"], list) else [raw["Resource"]]
            out.append(Statement(actions, resources, raw.get("Condition", {})))
    return out


def iam_match(pattern: str, value: str) -> bool:
    """IAM wildcards: `*` any run (including `/` and `:`), `?` one character; actions case-insensitive."""
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def allows(statements: list[Statement], action: str, arn: str) -> bool:
    return any(
        any(iam_match(a.lower(), action.lower()) for a in s.actions) and any(iam_match(r, arn) for r in s.resources)
        for s in statements
    )


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return transformed()


# --- 1. the ports each handler's code reads -----------------------------------------------------------


@pytest.mark.parametrize("function", sorted(FUNCTION_ENTRY))
def test_the_table_names_the_ports_the_code_reads(function: str) -> None:
    # Given what the imported handler's code can reach
    from sip_trunk.observability import run_idempotent

    reached = reach(function)
    # Then its AWS ports are the table's, and it is idempotent exactly when the table says so
    table = {port for port, _ in FUNCTION_USES[function]}
    assert reached.ports - NOT_AWS_PORTS == table - {"observability"}, function
    assert (run_idempotent in reached.functions) == ("observability" in table), f"{function}: idempotency changed"


def test_the_default_deps_are_the_aws_adapters() -> None:
    from sip_trunk.aws.wiring import build_deps
    from sip_trunk.workflows.config import parse_config

    config = parse_config(
        {"STACK_NAME": STACK, "CONFIG_PREFIX": CONFIG, "SETTINGS_PARAMETER": "/x", "STATE_TABLE": "t"}
    )
    deps = build_deps(config)
    for port, cls in PORT_ADAPTERS.items():
        assert type(getattr(deps, port)).__name__ == cls, port


OPERATION_ACTION = {"s3:HeadObject": "s3:GetObject"}


def action_of(prefix: str, operation: str) -> str:
    name = (
        "".join(p.capitalize() for p in operation.split("_")) if "_" in operation or operation.islower() else operation
    )
    key = f"{prefix}:{name}"
    return OPERATION_ACTION.get(key, key)


def test_the_idempotency_store_is_the_state_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from sip_trunk import observability
    from sip_trunk.environment import load_config

    for name, value in {"STACK_NAME": STACK, "CONFIG_PREFIX": CONFIG, "SETTINGS_PARAMETER": "/x"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STATE_TABLE", TABLE)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    load_config.cache_clear()
    observability.idempotency_store.cache_clear()
    try:
        assert observability.idempotency_store().table_name == TABLE
    finally:
        load_config.cache_clear()
        observability.idempotency_store.cache_clear()


# --- 3. the template allows exactly that ------------------------------------------------------------


@pytest.mark.parametrize("function", sorted(FUNCTION_ENTRY))
def test_role_allows_every_need(template: dict[str, Any], function: str) -> None:
    statements = role_statements(template, f"{pascal(function)}FunctionRole")
    missing = [need for need in needs_of(function) if not allows(statements, *need)]
    assert not missing, f"{function} cannot: {missing}"


@pytest.mark.parametrize("function", sorted(FUNCTION_ENTRY))
def test_role_allows_nothing_unused(template: dict[str, Any], function: str) -> None:
    needs = needs_of(function)
    for statement in role_statements(template, f"{pascal(function)}FunctionRole"):
        for action in statement.actions:
            wanted = [arn for a, arn in needs if a.lower() == action.lower()]
            assert wanted, f"{function}: {action} is allowed but never used"
            for resource in statement.resources:
                assert any(iam_match(resource, arn) for arn in wanted), (
                    f"{function}: {action} on {resource} matches nothing the code touches ({wanted})"
                )


@pytest.mark.parametrize("machine", sorted(MACHINE_NEEDS))
def test_state_machine_roles_allow_exactly_their_tasks(template: dict[str, Any], machine: str) -> None:
    statements = role_statements(template, f"{machine}Role")
    needs = MACHINE_NEEDS[machine]
    assert not [n for n in needs if not allows(statements, *n)]
    for statement in statements:
        for action in statement.actions:
            if action in MACHINE_SERVICE_ACTIONS:
                continue
            wanted = [arn for a, arn in needs if a == action]
            assert wanted, f"{machine}: {action} is allowed but no state uses it"
            for resource in statement.resources:
                assert any(iam_match(resource, arn) or iam_match(resource, arn + ":1") for arn in wanted), (
                    f"{machine}: {action} on {resource}"
                )


def test_sendcommand_and_address_moves_are_tag_conditioned(template: dict[str, Any]) -> None:
    for function in FUNCTION_ENTRY:
        for s in role_statements(template, f"{pascal(function)}FunctionRole"):
            on_instances = [r for r in s.resources if ":instance/" in r or ":elastic-ip/" in r]
            if on_instances and any(a in ("ssm:SendCommand", "ec2:AssociateAddress") for a in s.actions):
                tags = json.dumps(s.condition)
                assert "aws-sip-trunk:stack" in tags, f"{function}: {s.actions} not tag-scoped"
                assert STACK in tags, f"{function}: {s.actions} scoped to another stack's tag"


# --- moto runs with every botocore call recorded ------------------------------------------------


Use = tuple[str, str]
"""(port, method): the adapter method an AWS call is made in."""


@dataclass
class Call:
    who: str
    service: str
    operation: str
    params: dict[str, Any]
    use: Use | None


class Recorder:
    def __init__(self) -> None:
        self.local = threading.local()
        self.machine = ""
        self.calls: list[Call] = []
        self.invoked: set[str] = set()
        self.lock = threading.Lock()

    def who(self) -> str | None:
        if getattr(self.local, "quiet", 0):
            return None
        function = getattr(self.local, "function", None)
        if function:
            return str(function)
        if threading.current_thread() is threading.main_thread():
            return None  # the test itself
        return self.machine  # moto's state-machine executor

    def record(self, service: str, operation: str, params: dict[str, Any]) -> None:
        who = self.who()
        if who:
            uses = getattr(self.local, "uses", [])
            with self.lock:
                self.calls.append(Call(who, service, operation, dict(params), uses[-1] if uses else None))

    def as_use(self, use: Use, method: Any) -> Any:
        """`method`, noting while it runs that the AWS calls it makes are `use`'s (the innermost wins)."""

        def run(*args: Any, **kwargs: Any) -> Any:
            self.local.uses = [*getattr(self.local, "uses", []), use]
            try:
                return method(*args, **kwargs)
            finally:
                self.local.uses = self.local.uses[:-1]

        return run

    def as_function(self, name: str, handler: Any) -> Any:
        from aws_lambda_powertools.utilities import parameters

        def run(event: Any, context: Any) -> Any:
            previous = getattr(self.local, "function", None)
            self.local.function = name
            self.invoked.add(name)
            parameters.clear_caches()  # each function has its own container: nothing read by another is cached
            try:
                return handler(event, context)
            finally:
                self.local.function = previous

        return run

    def quietly(self, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            self.local.quiet = getattr(self.local, "quiet", 0) + 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.local.quiet -= 1

        return run


def call_needs(call: Call) -> list[Need]:
    """The IAM authorizations AWS performs for one recorded API call."""
    p, op = call.params, call.operation
    action = action_of(call.service, op)
    if call.service == "ssm" and op in ("GetParameter", "PutParameter", "DeleteParameter"):
        return [(action, parameter(p["Name"]))]
    if call.service == "ssm" and op == "GetParametersByPath":
        return [(action, parameter(p["Path"]))]
    if call.service == "ssm" and op == "SendCommand":
        doc = f"arn:aws:ssm:{REGION}::document/{p['DocumentName']}"
        return [(action, doc)] + [(action, ec2("instance", i)) for i in p["InstanceIds"]]
    if call.service == "secretsmanager":
        return [(action, secret(p["SecretId"])), ("kms:Decrypt", KEY)]
    if call.service == "ec2" and op == "AssociateAddress":
        return [(action, ec2("elastic-ip", p["AllocationId"])), (action, ec2("instance", p["InstanceId"]))]
    if call.service == "dynamodb":
        return [(action, f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{p['TableName']}"), TABLE_KEY]
    if call.service == "s3":
        return [(action, f"arn:aws:s3:::{p['Bucket']}/{p['Key']}")] + (
            [("kms:GenerateDataKey", KEY)] if op == "PutObject" else []
        )
    if call.service == "states":
        return [(action, p.get("stateMachineArn") or p["executionArn"])]
    if call.service == "cloudformation":
        name = p["StackName"]
        return [(action, name if name.startswith("arn:") else stack_arn(name))]
    if call.service == "lambda" and op == "Invoke":
        return [("lambda:InvokeFunction", p["FunctionName"])]
    if call.service == "sns":
        return [(action, p["TopicArn"])]
    if (call.service, op) in {
        ("ec2", "DescribeAddresses"),
        ("ec2", "DescribeInstances"),
        ("ssm", "GetCommandInvocation"),
    }:
        return [(action, "*")]
    raise AssertionError(f"{call.who} calls {call.service}:{op}: teach call_needs its resource")


ALARM = json.loads((ROOT / "tests" / "events" / "alarm_state_change.json").read_text())
SCHEDULE = json.loads((ROOT / "tests" / "events" / "scheduler_event.json").read_text())


@pytest.fixture(scope="module")
def recorded() -> Iterator[Recorder]:
    """Provision, Provision again with new settings, a failed Provision with rollback, Failover, three
    failing health checks (which start Failover) and a backup, with every botocore call recorded."""
    import botocore.client
    from moto import mock_aws
    from support.moto_sfn import FakeContext, Harness, create_state_machine, run, substitutions, wait_done
    from support.world import CONFIG_PREFIX, build_world

    mp = pytest.MonkeyPatch()
    recorder = Recorder()
    original = botocore.client.BaseClient._make_api_call

    def make_api_call(client: Any, operation: str, params: dict[str, Any]) -> Any:
        recorder.record(client.meta.service_model.signing_name, operation, params)
        return original(client, operation, params)

    mp.setattr(botocore.client.BaseClient, "_make_api_call", make_api_call)
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
    from support.reach import adapters

    for port, method in ADAPTER_NEEDS:
        if port == "observability":  # Powertools' idempotency records, behind run_idempotent
            for name in ("_get_record", "_put_record", "_update_record", "_delete_record"):
                original_method = getattr(DynamoDBPersistenceLayer, name)
                mp.setattr(DynamoDBPersistenceLayer, name, recorder.as_use((port, method), original_method))
            continue
        cls = type(adapters()[port])
        mp.setattr(cls, method, recorder.as_use((port, method), getattr(cls, method)))
    config: Any = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
    try:
        with mock_aws(config=config), build_world(mp) as world:
            from sip_trunk.observability import metrics

            # Powertools reads the namespace when the module is first imported (maybe before this environment).
            metrics.namespace = "AwsSipTrunkTest"
            harness = Harness()
            world.clock = harness.clock
            harness.handlers = {n: recorder.as_function(n, h) for n, h in harness.handlers.items()}
            harness.before.append(lambda name, event: recorder.quietly(world.tick)())
            world.responder.answering = recorder.quietly(world.responder.answering)  # the emulated host's view
            world.deliver_commands(wrap=recorder.quietly)
            import boto3

            sfn = boto3.client("stepfunctions", region_name=REGION)
            subs = substitutions(
                {
                    "NotificationTopicArn": world.topic_arn,
                    "StateTableName": TABLE,
                    "ConfigPrefix": CONFIG_PREFIX,
                    "FailoverStateMachineArn": world.env["FAILOVER_STATE_MACHINE_ARN"],
                }
            )
            assert world.topic_arn == TOPIC_ARN
            with harness.installed(mp):
                provision = create_state_machine(
                    sfn, f"{STACK}-provision", ROOT / "statemachines/provision.asl.yaml", subs
                )
                failover = create_state_machine(
                    sfn, f"{STACK}-failover", ROOT / "statemachines/failover.asl.yaml", subs
                )
                recorder.machine = "ProvisionStateMachine"
                first = run(sfn, provision, {})
                assert first["status"] == "SUCCEEDED", first
                world.put_settings(inbound_username="elevenlabs-in-2")
                second = run(sfn, provision, {})
                assert second["status"] == "SUCCEEDED", second
                world.put_settings(inbound_username="elevenlabs-in-3")
                from sip_trunk.aws.runcommand import SsmCommands

                results = SsmCommands.results
                world.fail_commands(mp, "apply failed")
                third = run(sfn, provision, {})
                assert third["status"] == "FAILED", third
                stack = json.loads(second["output"])["stack"]
                world.agent.healthy = True
                world.heartbeat(stack["standby_instance_id"], world.desired_version(), at=harness.clock.now())
                world.down.add(stack["primary_instance_id"])
                recorder.machine = "FailoverStateMachine"
                moved = run(sfn, failover, ALARM)
                assert moved["status"] == "SUCCEEDED", moved
                world.down.add("*")
                for _ in range(3):
                    harness.handlers["health_check"](SCHEDULE, FakeContext("health_check"))
                executions = sfn.list_executions(stateMachineArn=failover)["executions"]
                started = [e for e in executions if e["name"].startswith("health-")]
                assert started, "the health check started Failover"
                for execution in started:
                    wait_done(sfn, execution["executionArn"])
                mp.setattr(SsmCommands, "results", results)  # the host's backup succeeds
                harness.handlers["backup"](SCHEDULE, FakeContext("backup"))
                time.sleep(0.1)
        yield recorder
    finally:
        mp.undo()


def test_moto_runs_reached_every_function(recorded: Recorder) -> None:
    assert recorded.invoked == set(FUNCTION_ENTRY), set(FUNCTION_ENTRY) ^ recorded.invoked
    callers = {c.who for c in recorded.calls}
    assert set(FUNCTION_ENTRY) - {"check_apply"} <= callers, set(FUNCTION_ENTRY) - callers
    assert {"ProvisionStateMachine", "FailoverStateMachine"} <= callers


def test_every_recorded_call_is_in_the_table_and_allowed(recorded: Recorder, template: dict[str, Any]) -> None:
    problems: set[str] = set()
    for call in recorded.calls:
        if call.who in FUNCTION_ENTRY:
            role, table = f"{pascal(call.who)}FunctionRole", needs_of(call.who)
        else:
            role, table = f"{call.who}Role", MACHINE_NEEDS.get(call.who, [])
        statements = role_statements(template, role)
        for action, arn in call_needs(call):
            if action not in {a for a, _ in table}:
                problems.add(f"{call.who}: {action} on {arn} is missing from the table")
            if not allows(statements, action, arn):
                problems.add(f"{call.who}: {role} does not allow {action} on {arn}")
    assert not problems, "\n".join(sorted(problems))


def test_functions_call_aws_only_inside_adapters(recorded: Recorder) -> None:
    outside = {f"{c.who}: {c.service}:{c.operation}" for c in recorded.calls if c.who in FUNCTION_ENTRY and not c.use}
    assert not outside, "\n".join(sorted(outside))


def test_each_function_uses_only_its_row_of_the_table(recorded: Recorder) -> None:
    unlisted = {
        f"{c.who} uses {c.use}"
        for c in recorded.calls
        if c.use and c.who in FUNCTION_ENTRY and c.use not in FUNCTION_USES[c.who]
    }
    assert not unlisted, "\n".join(sorted(unlisted))


def test_each_adapter_method_calls_only_its_row_of_the_table(recorded: Recorder) -> None:
    unlisted: set[str] = set()
    for c in recorded.calls:
        if c.use:
            action = action_of(c.service, c.operation)
            if action not in {a for a, _ in ADAPTER_NEEDS[c.use]}:
                unlisted.add(f"{c.use} calls {action}")
    assert not unlisted, "\n".join(sorted(unlisted))
