"""The permission proof: every AWS call the product makes in the tests, evaluated against its principal's
real policies (docs/TESTING.md, ADR-25).

- Recording: `botocore.client.BaseClient._make_api_call` is wrapped once per session. The caller's principal
  is read from the call stack, innermost first: a frame of `functions/<name>/app.py` is that function's
  role, a frame of the host agent (`sip_trunk.agent`) is the host role, `sip_trunk.operator_cli` is the
  operator, a frame of moto's Step Functions executor is the running state machine's role; a frame of the
  tests or of the harness (`sip_trunk_local.harness`, the emulated account and host) is the test arranging
  or inspecting the account, which is not recorded.
- Mapping (`requests_for`): each call becomes the authorizations AWS performs for it: the IAM action (the
  API operation name, with the documented exceptions), the resource ARN, the condition keys the policies
  test (dynamodb:LeadingKeys, cloudwatch:namespace, s3:prefix, kms:ViaService, resource tags,
  iam:PassedToService), plus the permissions AWS checks behind the call: kms:Decrypt/GenerateDataKey for
  resources the root template encrypts with the stack key (the state table, the buckets, the secrets, the
  topic), iam:PassRole for a RoleARN, s3:GetObject for a TemplateURL.
- Policies: the function and state-machine roles come from the SAM-transformed template.yaml (samtranslator,
  policy templates expanded), the host role from stacks/host.yaml plus the pinned AWS managed policy
  `AmazonSSMManagedInstanceCore`; KMS requests are also evaluated against the stack key's policy. Template
  references are bound to the names the call's own configuration used (the function's environment, the
  agent's `AgentConfig`), so the proof checks the policy as CloudFormation would instantiate it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from support.iam_eval import Decision, Policy, Request, evaluate, evaluate_with_key_policy

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
ACCOUNT = "123456789012"  # moto's account
HOST = "HostRole"
OPERATOR = "operator"
KEY_ID = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"  # the stack key's id in evaluated ARNs (its real id is random)


# --- who is calling ---------------------------------------------------------------------------------

_FUNCTION_APP = re.compile(r"[/\\]functions[/\\]([a-z0-9_]+)[/\\]app\.py$")
_TEST_SIDE = (f"{os.sep}tests{os.sep}", f"sip_trunk_local{os.sep}harness{os.sep}")


@cache
def _kind(code: CodeType) -> tuple[str, str]:
    """What a frame of this code says about the caller: ("function", name), ("host", ""), ("operator", ""),
    ("machine", ""), ("test", "") or ("", "") for code that serves any caller (adapters, botocore, moto)."""
    path = code.co_filename
    match = _FUNCTION_APP.search(path)
    if match:
        return "function", match.group(1)
    if f"sip_trunk{os.sep}agent{os.sep}" in path:
        return "host", ""
    if path.endswith(f"sip_trunk{os.sep}operator_cli.py"):
        return "operator", ""
    if f"moto{os.sep}stepfunctions{os.sep}parser{os.sep}" in path:
        return "machine", ""
    if any(part in path for part in _TEST_SIDE) and not path.endswith("iam_proof.py"):
        return "test", ""
    return "", ""


def pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


@dataclass(frozen=True)
class Call:
    """One recorded API call with the configuration its principal's policy is instantiated with."""

    principal: str  # logical id of the role in its template (e.g. LaunchHostFunctionRole, HostRole) or operator
    service: str  # boto3 client name
    operation: str
    params: Mapping[str, Any]
    region: str
    names: Mapping[str, str]  # the template parameters/references, bound from the caller's configuration
    tags: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # resource id -> tags (from moto)


def _machine_arn(frame: FrameType) -> str:
    env = frame.f_locals.get("env")
    try:
        return str(env.states.context_object.context_object_data["StateMachine"]["Id"])  # type: ignore[union-attr]
    except (AttributeError, KeyError, TypeError):
        return ""


def principal_of(frame: FrameType | None) -> tuple[str, FrameType | None]:
    """The principal of the innermost frame that names one (and that frame), or "" for the tests' own calls."""
    machine = ""
    while frame is not None:
        kind, name = _kind(frame.f_code)
        if kind == "function":
            return f"{pascal(name)}FunctionRole", frame
        if kind == "host":
            return HOST, frame
        if kind == "operator":
            return OPERATOR, frame
        if kind == "machine" and not machine:
            machine = _machine_arn(frame)
            if machine:
                return f"{pascal(machine.rsplit(':', 1)[-1].rsplit('-', 1)[-1])}StateMachineRole", frame
        if kind == "test":
            return "", None
        frame = frame.f_back
    return "", None


def _agent_config(frame: FrameType | None) -> Any:
    from sip_trunk.agent.config import AgentConfig

    while frame is not None:
        if _kind(frame.f_code)[0] == "host":
            for value in frame.f_locals.values():
                if isinstance(value, AgentConfig):
                    return value
        frame = frame.f_back
    return None


def function_names(env: Mapping[str, str], region: str) -> dict[str, str]:
    """The root template's references as the functions' environment names them (tests/support/world.py)."""
    stack = env.get("STACK_NAME", "trunk")
    arn = f"arn:aws:{{}}:{region}:{ACCOUNT}:{{}}"
    failover = env.get("FAILOVER_STATE_MACHINE_ARN") or arn.format("states", f"stateMachine:{stack}-failover")
    topic = env.get("NOTIFICATION_TOPIC_ARN") or arn.format("sns", f"{stack}-notifications")
    table = env.get("STATE_TABLE") or f"{stack}-state"
    backups = env.get("BACKUP_BUCKET") or f"{stack}-backups"
    recordings = env.get("RECORDINGS_BUCKET") or f"{stack}-recordings"
    return {
        "AWS::StackName": stack,
        "AWS::Region": region,
        "AWS::AccountId": ACCOUNT,
        "AWS::Partition": "aws",
        "StateTable": table,
        "StateTable.Arn": arn.format("dynamodb", f"table/{table}"),
        "BackupBucket": backups,
        "BackupBucket.Arn": f"arn:aws:s3:::{backups}",
        "RecordingsBucket": recordings,
        "RecordingsBucket.Arn": f"arn:aws:s3:::{recordings}",
        "NotificationTopic": topic,
        "NotificationTopic.TopicName": topic.rsplit(":", 1)[-1],
        "FailoverStateMachine": failover,
        "ProvisionStateMachine": arn.format("states", f"stateMachine:{stack}-provision"),
        "NetworkStack": arn.format("cloudformation", f"stack/{stack}-network/0a1b2c3d"),
        "StackKey": KEY_ID,
        "StackKey.Arn": arn.format("kms", f"key/{KEY_ID}"),
        "HostStackRole.Arn": env.get("HOST_STACK_ROLE_ARN") or f"arn:aws:iam::{ACCOUNT}:role/{stack}-HostStackRole",
        "DeadLetterQueue.Arn": arn.format("sqs", f"{stack}-dead-letters"),
    }


def host_names(config: Any, region: str) -> dict[str, str]:
    """stacks/host.yaml's parameters as the agent's configuration (written from them at boot) names them."""
    stack = config.stack or "trunk"
    names = function_names({"STACK_NAME": stack}, region)
    names.update(
        {
            "RootStackName": stack,
            "ConfigPrefix": config.config_prefix or f"/sip-trunk/{stack}/asterisk",
            "StateTable": config.state_table or names["StateTable"],
            "BackupBucket": config.backup_bucket or names["BackupBucket"],
            "RecordingsBucket": config.recordings_bucket or names["RecordingsBucket"],
            "FailoverStateMachineArn": config.failover_state_machine_arn or names["FailoverStateMachine"],
            "AsteriskLogGroup": config.asterisk_log_group or f"/sip-trunk/{stack}/asterisk",
            "CertificateZoneId": config.acme_hosted_zone_id or "",
            "CertificateSecretArn": config.tls_certificate_secret_arn or "",
            "CertificateKmsKeyArn": "",  # not in agent.env (the agent never names it): tests give their own
            "HostParametersName": f"/sip-trunk/{stack}/host-parameters",
            "AWS::StackName": f"{stack}-host",
            "AWS::StackId": f"arn:aws:cloudformation:{region}:{ACCOUNT}:stack/{stack}-host/0a1b2c3d",
        }
    )
    names["StateTable.Arn"] = f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{names['StateTable']}"
    return names


ENV_KEYS = (
    "STACK_NAME",
    "STATE_TABLE",
    "BACKUP_BUCKET",
    "RECORDINGS_BUCKET",
    "NOTIFICATION_TOPIC_ARN",
    "FAILOVER_STATE_MACHINE_ARN",
    "HOST_STACK_ROLE_ARN",
)


def _tags(service: str, operation: str, params: Mapping[str, Any], region: str) -> dict[str, dict[str, str]]:
    """Tags of the EC2 resources a call names, read from moto's backend (not through botocore)."""
    ids = [*params.get("InstanceIds", []), params.get("InstanceId"), params.get("AllocationId")]
    ids = [i for i in ids if isinstance(i, str)]
    if not ids or (service, operation) not in {("ssm", "SendCommand"), ("ec2", "AssociateAddress")}:
        return {}
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[ACCOUNT][region]
    return {i: dict(backend.tags.get(i, {})) for i in ids}


# --- the recorder -------------------------------------------------------------------------------------


class Recorder:
    """Every botocore call a principal makes, kept until the proof evaluates it."""

    def __init__(self) -> None:
        self.pending: list[Call] = []
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.original: Callable[..., Any] | None = None
        self.seconds = 0.0  # time spent recording (the proof's overhead on every call)

    def install(self) -> None:
        import botocore.client

        original = getattr(botocore.client.BaseClient, "_make_api_call")  # noqa: B009 - private, untyped
        self.original = original
        recorder = self

        def _make_api_call(client: Any, operation: str, params: dict[str, Any]) -> Any:
            started = time.perf_counter()
            recorder.record(client, operation, params, sys._getframe(1))
            recorder.seconds += time.perf_counter() - started
            return original(client, operation, params)

        setattr(botocore.client.BaseClient, "_make_api_call", _make_api_call)  # noqa: B010

    def uninstall(self) -> None:
        import botocore.client

        if self.original is not None:
            setattr(botocore.client.BaseClient, "_make_api_call", self.original)  # noqa: B010

    def record(self, client: Any, operation: str, params: dict[str, Any], frame: FrameType) -> None:
        principal, where = principal_of(frame)
        if not principal:
            return
        service = client.meta.service_model.service_name
        region = client.meta.region_name or "us-east-1"
        if principal == HOST:
            config = _agent_config(where)
            names = host_names(config, region) if config is not None else host_names(_NoConfig(), region)
        else:
            names = function_names({k: os.environ.get(k, "") for k in ENV_KEYS}, region)
        call = Call(
            principal, service, operation, _plain(params), region, names, _tags(service, operation, params, region)
        )
        with self.lock:
            self.pending.append(call)

    def add(self, calls: list[Call], seconds: float = 0.0) -> None:
        """Calls recorded elsewhere (a local deployment's call log) and the seconds recording them took."""
        with self.lock:
            self.pending.extend(calls)
            self.seconds += seconds

    def peek(self) -> list[Call]:
        """The calls recorded since the last evaluation, left for it."""
        with self.lock:
            return list(self.pending)

    def take(self) -> list[Call]:
        with self.lock:
            calls, self.pending = self.pending, []
        return calls


class _NoConfig:
    stack = config_prefix = state_table = backup_bucket = recordings_bucket = ""
    failover_state_machine_arn = asterisk_log_group = acme_hosted_zone_id = tls_certificate_secret_arn = ""


def _plain(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters the mapping reads (bodies and file objects dropped: they can be large or streams)."""
    return {k: v for k, v in params.items() if k not in ("Body", "MessageBody", "Message", "SecretString")}


# --- the calls of a local deployment (the e2e layer) ----------------------------------------------------


def e2e_calls(run_dir: Path) -> tuple[list[Call], list[str], float]:
    """The calls a local deployment's principals made, from its moto server's call log, attributed by the
    access key that signed each (local mode hands every function, state machine and host its role's own
    credentials, `sip_trunk_local.principals`); and what cannot be attributed or read, which fails the test.
    Calls signed with the account's credentials are local mode's own (creating the stacks, arranging the
    operator's settings, inspecting the account): not recorded, as the tests' own calls are not. The third
    value is the seconds the moto server spent logging."""
    from sip_trunk.agent.config import build_config
    from sip_trunk_local.controlplane import AWS_CREDENTIALS
    from sip_trunk_local.principals import CALLS, PRINCIPALS

    log, keys = run_dir / CALLS, run_dir / PRINCIPALS
    if not log.exists():
        return [], [], 0.0
    principals: dict[str, dict[str, Any]] = json.loads(keys.read_text()) if keys.exists() else {}
    calls: list[Call] = []
    problems: set[str] = set()
    seconds = 0.0
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        seconds += float(entry.get("log_s", 0.0))
        key, what = entry.get("key", ""), f"{entry.get('service')}:{entry.get('operation')}"
        if key == AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"]:
            continue
        who = principals.get(key)
        if who is None or not who.get("principal"):
            problems.add(f"{what} signed with {key!r}, a key local mode gave no known role ({entry.get('error', '')})")
            continue
        if entry.get("error"):
            problems.add(f"{who['principal']} {what}: the call log could not read the request: {entry['error']}")
            continue
        region = entry.get("region") or "us-east-1"
        bound: dict[str, str] = who.get("names", {})
        if who["principal"] == HOST:
            names = host_names(build_config({}, bound), region)
        else:
            names = function_names(bound, region)
            names.update({k.removeprefix("ref:"): v for k, v in bound.items() if k.startswith("ref:")})
        calls.append(
            Call(who["principal"], entry["service"], entry["operation"], _plain(entry.get("params", {})), region,
                 names, entry.get("tags", {}))
        )  # fmt: skip
    return calls, sorted(problems), seconds


# --- calls -> authorizations -----------------------------------------------------------------------

IAM_PREFIX = {"stepfunctions": "states"}
# Operations whose IAM action is not the operation's name (AWS's Service Authorization Reference).
ACTION_OF = {
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "ListObjectVersions"): "s3:ListBucketVersions",
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("lambda", "Invoke"): "lambda:InvokeFunction",
    ("lambda", "GetLayerVersionByArn"): "lambda:GetLayerVersion",
}
# Partition key of the state table (template.yaml StateTable KeySchema): what dynamodb:LeadingKeys holds.
PARTITION_KEY = "pk"


def action_of(service: str, operation: str) -> str:
    return ACTION_OF.get((service, operation), f"{IAM_PREFIX.get(service, service)}:{operation}")


def _attr(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("S")
    return value if isinstance(value, str) else None


def _leading_keys(operation: str, params: Mapping[str, Any]) -> list[str] | None:
    item = params.get("Item") if operation == "PutItem" else params.get("Key")
    if isinstance(item, Mapping):
        key = _attr(item.get(PARTITION_KEY))
        return [key] if key is not None else []
    return None


def encrypted_with_stack_key(names: Mapping[str, str]) -> dict[str, str]:
    keys = ("AWS::Region", "AWS::StackName", "StateTable.Arn", "BackupBucket", "RecordingsBucket", "NotificationTopic")
    return _encrypted(tuple((k, names[k]) for k in keys))


@cache
def _encrypted(items: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Resource ARN (or ARN prefix ending in `*`) -> the service that encrypts it with the stack key, for the
    root template's resources whose encryption names StackKey (read from the template, not listed here)."""
    names = dict(items)
    out: dict[str, str] = {}
    region, stack = names["AWS::Region"], names["AWS::StackName"].removesuffix("-host")
    for logical, resource in _root_template()["Resources"].items():
        props = resource.get("Properties", {})
        if "StackKey" not in json.dumps(_key_properties(resource["Type"], props)):
            continue
        kind = resource["Type"]
        if kind == "AWS::DynamoDB::Table":
            out[names["StateTable.Arn"] if logical == "StateTable" else f"table/{logical}"] = "dynamodb"
        elif kind == "AWS::S3::Bucket" and f"{logical}" in ("BackupBucket", "RecordingsBucket"):
            out[f"arn:aws:s3:::{names[logical]}/*"] = "s3"
        elif kind == "AWS::SecretsManager::Secret":
            out[f"arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:{stack}/*"] = "secretsmanager"
        elif kind == "AWS::SNS::Topic" and logical == "NotificationTopic":
            out[names["NotificationTopic"]] = "sns"
        elif kind == "AWS::SQS::Queue":
            out[f"arn:aws:sqs:{region}:{ACCOUNT}:{stack}-*"] = "sqs"
    return out


def _key_properties(kind: str, props: Mapping[str, Any]) -> Any:
    return {
        "AWS::DynamoDB::Table": props.get("SSESpecification"),
        "AWS::S3::Bucket": props.get("BucketEncryption"),
        "AWS::SecretsManager::Secret": props.get("KmsKeyId"),
        "AWS::SNS::Topic": props.get("KmsMasterKeyId"),
        "AWS::SQS::Queue": props.get("KmsMasterKeyId"),
    }.get(kind)


def _encrypting_service(arn: str, names: Mapping[str, str]) -> str:
    from support.iam_eval import wildcard_match

    return next((svc for pattern, svc in encrypted_with_stack_key(names).items() if wildcard_match(pattern, arn)), "")


def requests_for(call: Call, role_arn: str) -> list[Request]:
    """The authorizations AWS performs for one call: the call's own action, then the implied ones."""
    p, op, svc, region = call.params, call.operation, call.service, call.region
    action = action_of(svc, op)
    base: dict[str, Any] = {"aws:SecureTransport": "true", "aws:RequestedRegion": region}
    arn = f"arn:aws:{{}}:{region}:{ACCOUNT}:{{}}"
    out: list[Request] = []

    def need(act: str, resource: str, reason: str = "", **ctx: Any) -> None:
        out.append(Request(act, resource, {**base, **ctx}, role_arn, reason))

    def kms(arn_: str, *actions: str) -> None:
        via = _encrypting_service(arn_, call.names)
        for kms_action in actions if via else ():
            need(
                kms_action,
                call.names["StackKey.Arn"],
                f"{arn_} is encrypted with the stack key; {via} asks KMS as the caller",
                **{"kms:ViaService": f"{via}.{region}.amazonaws.com", "kms:CallerAccount": ACCOUNT},
            )

    if svc == "ssm" and op in ("GetParameter", "PutParameter", "DeleteParameter", "GetParameters"):
        for name in p.get("Names", [p.get("Name")]):
            if name.startswith("/aws/service/"):  # an AWS public parameter: its ARN has no account
                need(action, f"arn:aws:ssm:{region}::parameter{name}")
            else:
                need(action, arn.format("ssm", f"parameter{name}"))
    elif svc == "ssm" and op == "GetParametersByPath":
        need(action, arn.format("ssm", f"parameter{p['Path'].rstrip('/')}"))
    elif svc == "ssm" and op == "SendCommand":
        need(action, f"arn:aws:ssm:{region}::document/{p['DocumentName']}")
        for instance in p.get("InstanceIds", []):
            tags = {f"ssm:resourceTag/{k}": v for k, v in call.tags.get(instance, {}).items()}
            need(action, arn.format("ec2", f"instance/{instance}"), **tags)
    elif (svc, op) in {("ssm", "GetCommandInvocation"), ("ssm", "ListCommandInvocations")}:
        need(action, "*")
    elif svc == "secretsmanager":
        secret = p["SecretId"]
        resource = secret if secret.startswith("arn:") else arn.format("secretsmanager", f"secret:{secret}-AbCdEf")
        need(action, resource)
        kms(resource, "kms:Decrypt")
    elif svc == "ec2" and op == "AssociateAddress":
        for kind, ident in (("elastic-ip", p.get("AllocationId")), ("instance", p.get("InstanceId"))):
            if ident:
                tags = {f"aws:ResourceTag/{k}": v for k, v in call.tags.get(ident, {}).items()}
                need(action, arn.format("ec2", f"{kind}/{ident}"), **tags)
    elif svc == "ec2" and op.startswith("Describe"):
        need(action, "*")
    elif svc == "dynamodb":
        table = arn.format("dynamodb", f"table/{p['TableName']}")
        leading = _leading_keys(op, p)
        keys: dict[str, Any] = {"dynamodb:LeadingKeys": leading} if leading is not None else {}
        need(action, table, **keys)
        kms(table, "kms:Decrypt")
    elif svc == "s3":
        bucket = f"arn:aws:s3:::{p['Bucket']}"
        if action in ("s3:ListBucket", "s3:ListBucketVersions"):
            need(action, bucket, **({"s3:prefix": p["Prefix"]} if "Prefix" in p else {}))
        else:
            obj = f"{bucket}/{p['Key']}"
            need(action, obj)
            if op == "HeadObject":
                # A missing key answers 404 only with s3:ListBucket; without it, 403 (AWS's HeadObject docs).
                need("s3:ListBucket", bucket, "HeadObject of a missing key", **{"s3:prefix": p["Key"]})
            elif op == "PutObject":
                kms(obj, "kms:GenerateDataKey")
            elif op == "GetObject":
                kms(obj, "kms:Decrypt")
    elif svc == "stepfunctions":
        need(action, p.get("stateMachineArn") or p["executionArn"])
    elif svc == "cloudformation":
        name = p["StackName"]
        stack = name if name.startswith("arn:") else arn.format("cloudformation", f"stack/{name}/0a1b2c3d")
        need(action, stack)
        if p.get("RoleARN"):
            need(
                "iam:PassRole",
                p["RoleARN"],
                "CreateStack/UpdateStack with RoleARN",
                **{"iam:PassedToService": "cloudformation.amazonaws.com"},
            )
        url = p.get("TemplateURL")
        if url:
            match = re.match(r"https://([^.]+)\.s3[.-][^/]*/(.+)$", url)
            assert match, f"unexpected TemplateURL {url}"
            obj = f"arn:aws:s3:::{match[1]}/{match[2]}"
            need("s3:GetObject", obj, "CloudFormation reads TemplateURL with the caller's credentials")
            kms(obj, "kms:Decrypt")
    elif svc == "lambda":
        function = p.get("FunctionName") or p.get("Arn", "*")
        if function != "*" and not function.startswith("arn:"):  # a name: AWS authorizes the function's ARN
            function = arn.format("lambda", f"function:{function}")
        need(action, function)
    elif svc == "sns":
        need(action, p["TopicArn"])
        kms(p["TopicArn"], "kms:GenerateDataKey", "kms:Decrypt")
    elif svc == "sqs":
        queue = p["QueueUrl"].rsplit("/", 1)[-1]
        resource = arn.format("sqs", queue)
        need(action, resource)
        kms(resource, "kms:GenerateDataKey", "kms:Decrypt")
    elif svc == "cloudwatch" and op == "PutMetricData":
        need(action, "*", **{"cloudwatch:namespace": p["Namespace"]})
    elif svc == "logs" and op == "CreateLogStream":
        need(action, arn.format("logs", f"log-group:{p['logGroupName']}"))
    elif svc == "logs" and op == "PutLogEvents":
        need(action, arn.format("logs", f"log-group:{p['logGroupName']}:log-stream:{p['logStreamName']}"))
    elif svc == "route53" and op in ("GetHostedZone", "ChangeResourceRecordSets", "ListResourceRecordSets"):
        zone = (p.get("Id") or p["HostedZoneId"]).split("/")[-1]
        need(action, f"arn:aws:route53:::hostedzone/{zone}")
    else:
        raise AssertionError(f"{call.principal} calls {svc}:{op}: teach requests_for its resource and keys")
    return out


# --- the principals' policies ------------------------------------------------------------------------


def cfn_load(path: Path) -> dict[str, Any]:
    """A CloudFormation YAML template with its short-form tags as the long form (`!Sub x` -> `{"Fn::Sub": x}`);
    PyYAML's loader, because importing cfn-lint's decoder costs seconds."""
    import yaml

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        key = "Ref" if suffix == "Ref" else ("Condition" if suffix == "Condition" else f"Fn::{suffix}")
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if suffix == "GetAtt":
                value = str(value).split(".", 1)
            return {key: value}
        if isinstance(node, yaml.SequenceNode):
            return {key: loader.construct_sequence(node, deep=True)}
        return {key: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", tag)
    document: dict[str, Any] = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader subclass
    return document


@cache
def _root_template() -> dict[str, Any]:
    return cfn_load(ROOT / "template.yaml")


@cache
def transformed_template() -> dict[str, Any]:
    from support.sam import sam_transform

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return sam_transform(_root_template())


@cache
def host_template() -> dict[str, Any]:
    return cfn_load(ROOT / "stacks" / "host.yaml")


def resolve(node: Any, names: Mapping[str, str]) -> Any:
    """Ref/GetAtt/Sub/If/Join with `names` (conditional statements take their "true" branch: the proof
    evaluates the policy with every optional feature on, e.g. recordings)."""
    if isinstance(node, list):
        return [v for v in (resolve(v, names) for v in node) if v is not _NO_VALUE]
    if not isinstance(node, dict):
        return node
    if "Ref" in node:
        ref = node["Ref"]
        if ref == "AWS::NoValue":
            return _NO_VALUE
        if ref.endswith("Function") and ref not in names:
            return "".join(f"_{c.lower()}" if c.isupper() else c for c in ref.removesuffix("Function")).lstrip("_")
        if ref not in names:
            raise KeyError(f"no value for Ref {ref}")
        return names[ref]
    if "Fn::GetAtt" in node:
        att = node["Fn::GetAtt"]
        att = ".".join(att) if isinstance(att, list) else att
        if att.endswith("Function.Arn") and att not in names:
            fn = resolve({"Ref": att.removesuffix(".Arn")}, names)
            return f"arn:aws:lambda:{names['AWS::Region']}:{ACCOUNT}:function:{fn}"
        if att not in names:
            raise KeyError(f"no value for GetAtt {att}")
        return names[att]
    if "Fn::Sub" in node:
        sub = node["Fn::Sub"]
        text, scope = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])
        local = {k: str(resolve(v, names)) for k, v in scope.items()}

        def one(match: re.Match[str]) -> str:
            name = match[1]
            if name in local:
                return local[name]
            return str(resolve({"Fn::GetAtt": name} if "." in name else {"Ref": name}, names))

        return re.sub(r"\$\{([^}!]+)\}", one, text)
    if "Fn::If" in node:
        return resolve(node["Fn::If"][1], names)
    if "Fn::Join" in node:
        sep, parts = node["Fn::Join"]
        return sep.join(str(resolve(p, names)) for p in parts)
    return {k: v for k, v in ((k, resolve(v, names)) for k, v in node.items()) if v is not _NO_VALUE}


_NO_VALUE = object()

MANAGED = {"arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore": "AmazonSSMManagedInstanceCore.json"}


def _managed(arn: Any) -> Policy | None:
    """A pinned AWS managed policy (tests/support/data, with its source), or None for one whose calls the
    proof never sees (AWSLambdaBasicExecutionRole, X-Ray: the Lambda runtime's, not the code's)."""
    key = arn.get("Fn::Sub") if isinstance(arn, dict) else arn
    file = MANAGED.get(str(key))
    if file is None:
        return None
    pinned = json.loads((DATA / file).read_text())
    return Policy(file.removesuffix(".json"), pinned["PolicyVersion"]["Document"])


@dataclass(frozen=True)
class Principal:
    name: str
    arn: str
    policies: tuple[Policy, ...]


def principal_policies(name: str, names: Mapping[str, str]) -> Principal:
    """The role's inline policies (resolved with `names`) and its pinned managed policies."""
    if name == OPERATOR:
        # The operator's own rights are the account's to grant (docs/SECURITY.md): only resource policies
        # (the stack key's) are evaluated for its calls.
        return Principal(name, f"arn:aws:iam::{ACCOUNT}:role/operator", (Policy("operator", _ALLOW_ALL),))
    template = host_template() if name == HOST else transformed_template()
    role = template["Resources"][name]["Properties"]
    policies = [
        Policy(f"{name}/{p['PolicyName']}", resolve(p["PolicyDocument"], names)) for p in role.get("Policies", [])
    ]
    policies += [m for m in (_managed(a) for a in role.get("ManagedPolicyArns", [])) if m is not None]
    return Principal(name, f"arn:aws:iam::{ACCOUNT}:role/{names['AWS::StackName']}-{name}", tuple(policies))


_ALLOW_ALL = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def key_policy(names: Mapping[str, str]) -> Policy:
    return _key_policy(names["AWS::StackName"].removesuffix("-host"), names["AWS::Region"])


@cache
def _key_policy(stack: str, region: str) -> Policy:
    doc = _root_template()["Resources"]["StackKey"]["Properties"]["KeyPolicy"]
    return Policy("StackKey key policy", resolve(doc, function_names({"STACK_NAME": stack}, region)))


def without_statement(sid: str, role: str) -> Callable[[str, Mapping[str, str]], Principal]:
    """The real policies of every principal, but `role` loses the statement `sid` (planted-defect controls)."""
    from dataclasses import replace

    def load(name: str, names: Mapping[str, str]) -> Principal:
        principal = principal_policies(name, names)
        if name != role:
            return principal
        policies = []
        for policy in principal.policies:
            kept = [s for s in policy.statements() if s.get("Sid") != sid]
            policies.append(Policy(policy.name, {**policy.document, "Statement": kept}))
        removed = sum(len(p.statements()) for p in principal.policies) - sum(len(p.statements()) for p in policies)
        assert removed == 1, f"{role} has no statement {sid}"
        return replace(principal, policies=tuple(policies))

    return load


# --- evaluation -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Denial:
    principal: str
    call: str
    request: Request
    decision: Decision

    def message(self) -> str:
        why = f" ({self.request.reason})" if self.request.reason else ""
        by = f", explicitly denied by {self.decision.denied_by}" if self.decision.denied_by else ""
        return (
            f"{self.principal} may not {self.request.describe()}{why}{by}: {self.call} needs a statement "
            f'allowing "{self.request.action}" on "{self.request.resource}"'
            + (
                f" with {sorted(k for k in self.request.context if not k.startswith('aws:'))}"
                if self.request.context
                else ""
            )
        )


class Proof:
    """Evaluates recorded calls; remembers how many each principal made and every denial."""

    def __init__(self, load: Callable[[str, Mapping[str, str]], Principal] = principal_policies) -> None:
        self.load = load
        self.evaluated: Counter[str] = Counter()
        self._principals: dict[tuple[str, tuple[tuple[str, str], ...]], Principal] = {}
        self._decisions: dict[tuple[Any, ...], Decision] = {}
        self.seconds = 0.0  # time spent loading policies and evaluating

    def principal(self, call: Call) -> Principal:
        key = (call.principal, tuple(sorted(call.names.items())))
        if key not in self._principals:
            self._principals[key] = self.load(call.principal, call.names)
        return self._principals[key]

    def check(self, calls: list[Call]) -> list[Denial]:
        started = time.perf_counter()
        try:
            return self._check(calls)
        finally:
            self.seconds += time.perf_counter() - started

    def _check(self, calls: list[Call]) -> list[Denial]:
        denials: list[Denial] = []
        for call in calls:
            who = self.principal(call)
            self.evaluated[call.principal] += 1
            for request in requests_for(call, who.arn):
                cache_key = (id(who), request.key())
                decision = self._decisions.get(cache_key)
                if decision is None:
                    if request.action.lower().startswith("kms:"):
                        decision = evaluate_with_key_policy(who.policies, key_policy(call.names), request)
                    else:
                        decision = evaluate(who.policies, request)
                    self._decisions[cache_key] = decision
                if not decision.allowed:
                    denials.append(Denial(call.principal, f"{call.service}:{call.operation}", request, decision))
        return denials


def unique(denials: list[Denial]) -> list[str]:
    return sorted({d.message() for d in denials})


def iter_counts(counter: Mapping[str, int]) -> Iterator[str]:
    for name, count in sorted(counter.items()):
        yield f"{name}: {count}"
