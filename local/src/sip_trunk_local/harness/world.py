"""A moto-backed AWS account with everything the workflows touch, and an emulated host agent.

Used by the handler integration tests and the state-machine tests. moto gaps it fills, and nothing else:
SSM Run Command runs nothing (once `deliver_commands` is called, the emulated agent reacts to each command
SSM accepts: `sip-trunk-agent apply` writes its heartbeat, as the real agent's `report` does, and
`sip-trunk-agent set-role` is recorded), SSM accepts commands for any instance (an instance in
`unregistered` is refused with `InvalidInstanceId`, as SSM refuses one whose agent is not registered),
a stack update restarts and replaces nothing (each UpdateStack is planned with CloudFormation's rules and what it
would stop/start or replace is recorded in `stack_updates`),
CloudFormation's template parser raises a Python error on a template that is neither YAML nor JSON (it is
refused with `ValidationError` "Template format error", as CloudFormation does), and public addresses are
not local (the probe reaches a responder on 127.0.0.1 through the `PROBE_TARGETS` mapping).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import boto3
from sip_trunk.workflows.common import API_KEY_UNSET

from sip_trunk_local.controlplane import load_template
from sip_trunk_local.executor import reset_handler_caches
from sip_trunk_local.harness.moto_sfn import ACCOUNT, REGION, ROOT, SipResponder
from sip_trunk_local.stack_updates import Interruption, emulate_updates

STACK = "trunk"
SETTINGS_PARAMETER = f"/sip-trunk/{STACK}/settings"
OPERATOR_SETTINGS_PARAMETER = f"/sip-trunk/{STACK}/operator-settings"
HOST_PARAMETERS = f"/sip-trunk/{STACK}/host-parameters"
IMAGE_PARAMETER = "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id"
"""The root stack's default image reference (an AWS public parameter, as template.yaml names it)."""
IMAGE_ID = "ami-0123456789abcdef0"
CONFIG_PREFIX = f"/sip-trunk/{STACK}/asterisk"
TABLE = f"{STACK}-state"
BACKUPS = f"{STACK}-backups"
INBOUND_PASSWORD = "inbound-Pass-1234"
OUTBOUND_PASSWORD = "outbound-Pass-5678"
API_KEY = "sk_test_key_0123456789"

HOST_TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Description: Test host stack with the same parameters and outputs as stacks/host.yaml uses for the workflows.
Parameters:
  RootStackName: {Type: String}
  ConfigPrefix: {Type: String}
  StateTable: {Type: String}
  PrimaryImageId: {Type: String}
  StandbyImageId: {Type: String}
  ConfigVersion: {Type: String, Default: none}
Resources:
  # As in stacks/host.yaml, the user data names the config version: a stack update that changed it would
  # stop and start the hosts, which is why LaunchHost keeps the previous value on updates. Each slot has its
  # image (a new one replaces that instance only).
  PrimaryInstance:
    Type: AWS::EC2::Instance
    Properties:
      ImageId: !Ref PrimaryImageId
      InstanceType: t4g.small
      Tags: [{Key: aws-sip-trunk:stack, Value: !Ref RootStackName}, {Key: aws-sip-trunk:role, Value: primary}]
      UserData: {"Fn::Base64": !Sub "SIP_TRUNK_CONFIG_VERSION=${ConfigVersion}"}
  StandbyInstance:
    Type: AWS::EC2::Instance
    Properties:
      ImageId: !Ref StandbyImageId
      InstanceType: t4g.small
      Tags: [{Key: aws-sip-trunk:stack, Value: !Ref RootStackName}, {Key: aws-sip-trunk:role, Value: standby}]
      UserData: {"Fn::Base64": !Sub "SIP_TRUNK_CONFIG_VERSION=${ConfigVersion}"}
Outputs:
  PrimaryInstanceId: {Value: !Ref PrimaryInstance}
  PrimaryPrivateIp: {Value: !GetAtt PrimaryInstance.PrivateIp}
  StandbyInstanceId: {Value: !Ref StandbyInstance}
  StandbyPrivateIp: {Value: !GetAtt StandbyInstance.PrivateIp}
  ConfigVersion: {Value: !Ref ConfigVersion}
"""


def settings_document(*, api_key: bool = True) -> dict[str, Any]:
    """As template.yaml's SettingsParameter: the API key is always a reference to the stack's secret (whose
    value is "unset" until an operator stores a key); `api_key=False` is a hand-written document without one."""
    el: dict[str, Any] = {
        "phone_number": "+14155550100",
        "transport": "tcp",
        "outbound_username": "gateway-out",
        "outbound_password": f"ssm:/sip-trunk/{STACK}/sip/outbound-password",
        "inbound_username": "elevenlabs-in",
        "inbound_password": f"secretsmanager:{STACK}/sip/inbound-password",
    }
    if api_key:
        el["api_key"] = f"secretsmanager:{STACK}/elevenlabs/api-key"
    return {"name": "demo", "elevenlabs": el, "network": {"local_nets": ["10.0.0.0/16"]}}


def operator_document(stack: str = STACK, *, outbound_password: str | None = None) -> dict[str, Any]:
    """A full document as an operator writes it and `sip-trunk push` stores (a carrier, a softphone, the IVR),
    for `stack`; the outbound password is this world's SSM reference unless another is given."""
    return {
        "name": "acme-voice",
        "elevenlabs": {
            "phone_number": "+14155550100",
            "transport": "tcp",
            "outbound_username": "gateway-out",
            "outbound_password": outbound_password or f"ssm:/sip-trunk/{stack}/sip/outbound-password",
            "inbound_username": "acme-elevenlabs",
            "inbound_password": f"secretsmanager:{stack}/sip/inbound-password",
        },
        "network": {"public_address": "203.0.113.10", "local_nets": ["10.20.0.0/16"]},
        "carriers": [
            {
                "name": "backup-carrier",
                "host": "198.51.100.20",
                "transport": "tcp",
                "auth": "ip",
                "match": ["198.51.100.0/28"],
                "dids": ["+442071838750"],
            }
        ],
        "extensions": [{"number": "1001", "password": f"ssm:/sip-trunk/{stack}/ext/1001", "video": False}],
        "dialplan": {
            "did_routes": {"+442071838750": {"kind": "ivr"}},
            "ivr": {
                "enabled": True,
                "choices": {"1": {"kind": "agent"}, "2": {"kind": "extension", "extension": "1001"}},
            },
        },
    }


def create_state_table(dynamodb: Any, name: str = TABLE) -> None:
    """The state table as template.yaml declares it (keys, attributes, billing), in the current moto account;
    `dynamodb` is a boto3 client or resource."""
    table = load_template(ROOT / "template.yaml")["Resources"]["StateTable"]["Properties"]
    dynamodb.create_table(
        TableName=name,
        KeySchema=table["KeySchema"],
        AttributeDefinitions=table["AttributeDefinitions"],
        BillingMode=table["BillingMode"],
    )


@dataclass
class Agent:
    """The host agent as the workflows see it: apply → heartbeat with the version, after a delay."""

    healthy: bool = True
    report_delay_s: float = 0.0
    pending: list[tuple[float, str, str]] = field(default_factory=list)


@dataclass
class World:
    env: dict[str, str]
    allocation_id: str
    address: str
    topic_arn: str
    queue_url: str
    responder: SipResponder
    api_key: bool = False
    """The API-key secret holds a key (else "unset", as the template creates it)."""
    agent: Agent = field(default_factory=Agent)
    down: set[str] = field(default_factory=set)
    """Instances that do not answer SIP (a dead primary)."""
    clock: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent_commands: list[str] = field(default_factory=list)
    sent: list[tuple[str, str]] = field(default_factory=list)
    """(instance id, command) for every command sent through Run Command, in order."""
    roles: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """instance id → (role, peer address) after the last `set-role` it was sent."""
    dead_letter_url: str = ""
    """The scheduled functions' dead-letter queue (template.yaml DeadLetterQueue)."""
    unregistered: set[str] = field(default_factory=set)
    """Instances whose SSM agent is not registered: Run Command refuses them."""
    delivered: Callable[[list[str], list[str]], None] | None = None
    """Called with (instance ids, commands) for every command SSM accepts (`deliver_commands`)."""
    stack_updates: list[tuple[str, list[Interruption]]] = field(default_factory=list)
    """(stack, what CloudFormation would stop/start or replace) for every UpdateStack moto applied; moto itself
    restarts and replaces nothing (`sip_trunk_local.stack_updates`)."""
    expected_interruptions: set[str] = field(default_factory=set)
    """Resources a test means to stop/start or replace (an image rollout); any other fails the test."""

    def interruptions(self) -> list[Interruption]:
        return [i for _, plan in self.stack_updates for i in plan]

    def check_interruptions(self) -> None:
        """Fail when a stack update would have stopped/started or replaced a resource the test did not expect:
        on AWS that is a dropped call (moto restarts nothing, so the test would not see it otherwise)."""
        unexpected = [str(i) for i in self.interruptions() if i.resource not in self.expected_interruptions]
        if unexpected:
            raise AssertionError("a host stack update would interrupt: " + "; ".join(unexpected))

    # --- AWS views -----------------------------------------------------------------------------
    @property
    def ec2(self) -> Any:
        return boto3.client("ec2", region_name=REGION)

    @property
    def ddb(self) -> Any:
        return boto3.resource("dynamodb", region_name=REGION).Table(TABLE)

    def holder(self) -> str | None:
        found = self.ec2.describe_addresses(AllocationIds=[self.allocation_id])["Addresses"][0]
        holder: str | None = found.get("InstanceId")
        return holder

    def item(self, pk: str, sk: str) -> dict[str, Any] | None:
        item = self.ddb.get_item(Key={"pk": pk, "sk": sk}, ConsistentRead=True).get("Item")
        return dict(item) if item else None

    def notifications(self) -> list[dict[str, str]]:
        sqs = boto3.client("sqs", region_name=REGION)
        out: list[dict[str, str]] = []
        while True:
            messages = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return out
            for message in messages:
                body = json.loads(message["Body"])
                out.append({"subject": body.get("Subject", ""), "message": body["Message"]})
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def desired_version(self) -> str | None:
        ssm = boto3.client("ssm", region_name=REGION)
        try:
            return str(ssm.get_parameter(Name=f"{CONFIG_PREFIX}/desired-version")["Parameter"]["Value"])
        except ssm.exceptions.ParameterNotFound:
            return None

    # --- how the schedules invoke their functions ---------------------------------------------------
    def invoke_scheduled(self, handler: Any, event: dict[str, Any], context: Any) -> Any:
        """An asynchronous invocation, as EventBridge Scheduler makes it: when the function raises, Lambda
        (after its retries) sends the event to the function's dead-letter queue, which is alarmed on.
        Returns the function's result, or None when the event went to the dead-letter queue."""
        try:
            return handler(event, context)
        except Exception as exc:
            boto3.client("sqs", region_name=REGION).send_message(
                QueueUrl=self.dead_letter_url,
                MessageBody=json.dumps(event),
                MessageAttributes={
                    "ErrorCode": {"DataType": "Number", "StringValue": "200"},
                    "ErrorMessage": {"DataType": "String", "StringValue": str(exc)[:256] or type(exc).__name__},
                    "RequestID": {"DataType": "String", "StringValue": getattr(context, "aws_request_id", "-")},
                },
            )
            return None

    def dead_letters(self) -> list[str]:
        """The error messages of the events in the dead-letter queue."""
        sqs = boto3.client("sqs", region_name=REGION)
        found = sqs.receive_message(
            QueueUrl=self.dead_letter_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        return [m["MessageAttributes"]["ErrorMessage"]["StringValue"] for m in found]

    # --- the emulated hosts ------------------------------------------------------------------------
    def answering(self) -> bool:
        holder = self.holder()
        return holder is not None and holder not in self.down and "*" not in self.down

    # --- changes an operator (or a fault) makes ------------------------------------------------
    def put_settings(
        self, *, network: dict[str, Any] | None = None, tls: dict[str, Any] | None = None, **elevenlabs: Any
    ) -> None:
        """The template's settings document with these `elevenlabs` fields (and `network`/`tls` sections)."""
        document = settings_document()
        document["elevenlabs"].update(elevenlabs)
        document["network"].update(network or {})
        if tls is not None:
            document["tls"] = tls
        ssm = boto3.client("ssm", region_name=REGION)
        ssm.put_parameter(Name=SETTINGS_PARAMETER, Type="String", Value=json.dumps(document), Overwrite=True)
        _reset_caches()

    def put_host_parameters(self, **changes: str) -> None:
        """Change the root stack's parameters for the host stack (`/<stack>/host-parameters`)."""
        ssm = boto3.client("ssm", region_name=REGION)
        document = json.loads(ssm.get_parameter(Name=HOST_PARAMETERS)["Parameter"]["Value"])
        document.update(changes)
        ssm.put_parameter(Name=HOST_PARAMETERS, Type="String", Value=json.dumps(document), Overwrite=True)
        _reset_caches()

    @staticmethod
    def publish_image(ami: str) -> None:
        """A new value of the image's public parameter, as AWS (or the image pipeline) publishes one. Written
        into moto's backend: callers may not write reserved `/aws/...` names, in moto as in AWS."""
        import datetime

        from moto.ssm.models import Parameter, ssm_backends

        versions = ssm_backends[ACCOUNT][REGION]._parameters[IMAGE_PARAMETER]
        versions.append(
            Parameter(  # type: ignore[abstract]  # moto's own class, as moto instantiates it
                account_id=ACCOUNT,
                name=IMAGE_PARAMETER,
                value=ami,
                parameter_type="String",
                description=None,
                allowed_pattern=None,
                keyid=None,
                last_modified_date=datetime.datetime.now(tz=datetime.UTC),
                version=len(versions) + 1,
                data_type="aws:ec2:image",
            )
        )

    def put_api_key(self, value: str) -> None:
        sm = boto3.client("secretsmanager", region_name=REGION)
        sm.put_secret_value(SecretId=f"{STACK}/elevenlabs/api-key", SecretString=value)
        _reset_caches()

    def stack_events(self) -> int:
        """How many events the host stack has (each create/update adds some)."""
        cfn = boto3.client("cloudformation", region_name=REGION)
        return len(cfn.describe_stack_events(StackName=f"{STACK}-host")["StackEvents"])

    def stack_parameters(self) -> dict[str, str]:
        cfn = boto3.client("cloudformation", region_name=REGION)
        stack = cfn.describe_stacks(StackName=f"{STACK}-host")["Stacks"][0]
        return {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}

    def stack_outputs(self) -> dict[str, str]:
        cfn = boto3.client("cloudformation", region_name=REGION)
        stack = cfn.describe_stacks(StackName=f"{STACK}-host")["Stacks"][0]
        return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    def private_ip(self, instance_id: str) -> str:
        found = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return str(found["PrivateIpAddress"])

    def break_host_template(self) -> None:
        s3 = boto3.client("s3", region_name=REGION)
        s3.put_object(Bucket=BACKUPS, Key="templates/host.yaml", Body=b"Resources: [this is not a template")

    def fail_commands(self, monkeypatch: Any, output: str) -> None:
        """Every Run Command invocation ends Failed with `output` (moto always reports Success)."""
        from sip_trunk.aws.runcommand import SsmCommands
        from sip_trunk.workflows.ports import CommandResult

        def results(_: Any, command_id: str, instance_ids: Any) -> list[CommandResult]:
            return [CommandResult(instance_id=i, status="Failed", output=output) for i in instance_ids]

        monkeypatch.setattr(SsmCommands, "results", results)
        self.agent.healthy = False

    def ssm_versions(self) -> dict[str, int]:
        ssm = boto3.client("ssm", region_name=REGION)
        out: dict[str, int] = {}
        for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=CONFIG_PREFIX + "/", Recursive=True):
            out.update({p["Name"]: p["Version"] for p in page["Parameters"]})
        return out

    def heartbeat(self, instance_id: str, version: str | None, *, at: float | None = None, up: bool = True) -> None:
        now = self.clock.now() if self.clock else 0.0
        self.ddb.put_item(
            Item={
                "pk": f"host#{instance_id}",
                "sk": "heartbeat",
                "running_version": version,
                "asterisk_up": up,
                "endpoint_loaded": up,
                "qualify": "Reachable",
                "reported_at": Decimal(str(at if at is not None else now)),
            }
        )

    def run_hosts(self, count: int = 2, stack: str = STACK) -> list[str]:
        """Running instances tagged as stacks/host.yaml tags the hosts (the roles may act only on those)."""
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "aws-sip-trunk:stack", "Value": stack}]}]
        reservation = self.ec2.run_instances(
            ImageId="ami-12345678", MinCount=count, MaxCount=count, TagSpecifications=tags
        )
        return [i["InstanceId"] for i in reservation["Instances"]]

    def deploy_two_hosts(self, version: str = "v0123456789abcdef") -> tuple[str, str]:
        """A recorded deployment: two instances, the Elastic IP on the primary, both reporting `version`.

        Returns (primary, standby) instance ids.
        """
        import time

        ids = self.run_hosts(2)
        self.ec2.associate_address(AllocationId=self.allocation_id, InstanceId=ids[0])
        boto3.client("ssm", region_name=REGION).put_parameter(
            Name=f"{CONFIG_PREFIX}/desired-version", Type="String", Value=version, Overwrite=True
        )
        self.ddb.put_item(
            Item={
                "pk": "deployment",
                "sk": "current",
                "desired_version": version,
                "primary_instance_id": ids[0],
                "standby_instance_id": ids[1],
                "allocation_id": self.allocation_id,
            }
        )
        for instance_id in ids:
            self.heartbeat(instance_id, version, at=time.time())
        return ids[0], ids[1]

    def deliver_commands(self, wrap: Callable[[Any], Any] = lambda f: f) -> None:
        """Run Command delivers each accepted command to the emulated agent (`wrap` decorates its handler,
        e.g. to keep the agent's own AWS calls out of a recording)."""
        self.delivered = wrap(self.on_command)

    def on_command(self, instance_ids: list[str], commands: list[str]) -> None:
        """What `sip-trunk-agent apply --version V` and `set-role` do on each host (Run Command in moto runs
        nothing)."""
        self.sent_commands += commands
        self.sent += [(i, c) for c in commands for i in instance_ids]
        for command in commands:
            role = re.fullmatch(r"sip-trunk-agent set-role --role (primary|standby)(?: --peer-address (\S+))?", command)
            if role is not None:
                self.roles.update(dict.fromkeys(instance_ids, (role.group(1), role.group(2))))
                continue
            match = re.fullmatch(r"sip-trunk-agent apply --version (v[0-9a-f]{16})", command)
            if match is None or not self.agent.healthy:
                continue
            due = (self.clock.now() if self.clock else 0.0) + self.agent.report_delay_s
            with self.lock:
                self.agent.pending += [(due, i, match.group(1)) for i in instance_ids]
        self.tick()

    def tick(self) -> None:
        """Hosts report what became due (called before every handler invocation)."""
        now = self.clock.now() if self.clock else float("inf")
        with self.lock:
            due = [p for p in self.agent.pending if p[0] <= now]
            self.agent.pending = [p for p in self.agent.pending if p[0] > now]
        for _, instance_id, version in due:
            self.heartbeat(instance_id, version)


def _emulate_refusals(monkeypatch: Any, world: World) -> None:
    """What the real services refuse and moto does not (see the module docstring), and command delivery."""
    from moto.cloudformation.exceptions import ValidationError
    from moto.cloudformation.models import Stack as MotoStack
    from moto.core.exceptions import JsonRESTError
    from moto.ssm.models import SimpleSystemManagerBackend

    send_command = SimpleSystemManagerBackend.send_command
    parse_template = MotoStack.parse_template

    def refusing_send_command(backend: Any, **kwargs: Any) -> Any:
        instance_ids = list(kwargs.get("instance_ids") or [])
        if set(instance_ids) & world.unregistered:
            raise JsonRESTError("InvalidInstanceId", "Instances not in a valid state for account")
        command = send_command(backend, **kwargs)
        if world.delivered is not None:
            world.delivered(instance_ids, list((kwargs.get("parameters") or {}).get("commands", [])))
        return command

    def refusing_parse_template(template: str) -> dict[str, Any]:
        try:
            return parse_template(template)
        except ValueError as exc:
            raise ValidationError(message=f"Template format error: {exc}") from None

    monkeypatch.setattr(SimpleSystemManagerBackend, "send_command", refusing_send_command)
    monkeypatch.setattr(MotoStack, "parse_template", staticmethod(refusing_parse_template))
    emulate_updates(monkeypatch.setattr, lambda stack, plan: world.stack_updates.append((stack, plan)))


@contextmanager
def build_world(monkeypatch: Any, *, api_key: bool = False, api_url: str = "http://127.0.0.1:9") -> Iterator[World]:
    """Create the account's resources inside an active `mock_aws` and set the functions' environment."""
    for key, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_SERVICE_NAME": STACK,
        "POWERTOOLS_METRICS_NAMESPACE": "AwsSipTrunkTest",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",  # loading moto's AMI catalogue costs seconds per test
    }.items():
        monkeypatch.setenv(key, value)
    create_state_table(boto3.client("dynamodb", region_name=REGION))
    ec2 = boto3.client("ec2", region_name=REGION)
    # Tagged as stacks/network.yaml tags the Elastic IP: the roles may associate only this stack's address.
    allocation = ec2.allocate_address(
        Domain="vpc",
        TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": [{"Key": "aws-sip-trunk:stack", "Value": STACK}]}],
    )
    World.publish_image(IMAGE_ID)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BACKUPS)
    s3.put_object(Bucket=BACKUPS, Key="templates/host.yaml", Body=HOST_TEMPLATE.encode())
    ssm = boto3.client("ssm", region_name=REGION)
    ssm.put_parameter(Name=SETTINGS_PARAMETER, Type="String", Value=json.dumps(settings_document()))
    ssm.put_parameter(
        Name=HOST_PARAMETERS,
        Type="String",
        Value=json.dumps(
            {
                "RootStackName": STACK,
                "ConfigPrefix": CONFIG_PREFIX,
                "StateTable": TABLE,
                "ImageSource": "ssm-parameter",
                "Image": IMAGE_PARAMETER,
                "LayerVersionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{STACK}-sip-trunk:1",
            }
        ),
    )
    ssm.put_parameter(Name=f"/sip-trunk/{STACK}/sip/outbound-password", Type="SecureString", Value=OUTBOUND_PASSWORD)
    sm = boto3.client("secretsmanager", region_name=REGION)
    sm.create_secret(Name=f"{STACK}/sip/inbound-password", SecretString=INBOUND_PASSWORD)
    sm.create_secret(Name=f"{STACK}/elevenlabs/api-key", SecretString=API_KEY if api_key else API_KEY_UNSET)
    sns = boto3.client("sns", region_name=REGION)
    topic_arn = sns.create_topic(Name=f"{STACK}-notifications")["TopicArn"]
    sqs = boto3.client("sqs", region_name=REGION)
    queue_url = sqs.create_queue(QueueName=f"{STACK}-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    dead_letter_url = sqs.create_queue(QueueName=f"{STACK}-dead-letters")["QueueUrl"]

    world_ref: list[World] = []
    responder = SipResponder(lambda: world_ref[0].answering())
    env = {
        "STACK_NAME": STACK,
        "CONFIG_PREFIX": CONFIG_PREFIX,
        "SETTINGS_PARAMETER": SETTINGS_PARAMETER,
        "OPERATOR_SETTINGS_PARAMETER": OPERATOR_SETTINGS_PARAMETER,
        "HOST_PARAMETERS_PARAMETER": HOST_PARAMETERS,
        "STATE_TABLE": TABLE,
        "BACKUP_BUCKET": BACKUPS,
        "RECORDINGS_BUCKET": "",
        "NOTIFICATION_TOPIC_ARN": topic_arn,
        "HOST_TEMPLATE_URL": f"https://{BACKUPS}.s3.{REGION}.amazonaws.com/templates/host.yaml",
        "HOST_STACK_NAME": f"{STACK}-host",
        "HOST_STACK_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/{STACK}-HostStackRole",
        "NETWORK_STACK_NAME": f"{STACK}-network",
        "PRIMARY_ALLOCATION_ID": allocation["AllocationId"],
        "FAILOVER_STATE_MACHINE_ARN": f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{STACK}-failover",
        "PROBE_TARGETS": json.dumps({allocation["PublicIp"]: responder.target}),
        # a dead host closes the connection at once, so this bounds only a slow answer: on a loaded machine the
        # responder thread (this process's GIL) took longer than 1 s and a healthy host was judged unreachable
        "PROBE_TIMEOUT_S": "5",
        "VERIFY_TIMEOUT_S": "60",
        "ELEVENLABS_API_URL": api_url,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    world = World(
        env=env,
        allocation_id=allocation["AllocationId"],
        address=allocation["PublicIp"],
        topic_arn=topic_arn,
        queue_url=queue_url,
        responder=responder,
        api_key=api_key,
        dead_letter_url=dead_letter_url,
    )
    world_ref.append(world)
    _emulate_refusals(monkeypatch, world)
    _reset_caches()
    try:
        yield world
        world.check_interruptions()
    finally:
        responder.close()
        _reset_caches()


def _reset_caches() -> None:
    reset_handler_caches()
