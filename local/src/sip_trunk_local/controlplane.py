"""The control plane of local mode: moto stands in for AWS, `template.yaml` is created in it.

moto does not apply the SAM transform and has gaps; `root_template` and `create_control_plane` apply the
documented fix-ups and nothing else:
- the SAM transform runs here (samtranslator), with code and definition locations pointing at S3 objects;
- the network stack is created on its own and its outputs replace `GetAtt NetworkStack.Outputs.X`
  (moto cannot resolve nested-stack outputs); in it `Fn::Cidr` and `Fn::GetAZs` are evaluated here;
- state machine definitions are given inline with the substitutions applied (moto leaves
  `DefinitionSubstitutions` unresolved and `DefinitionS3Location` empty), `$$` escaped for moto's Fn::Sub;
- `AWS::Scheduler::Schedule` is removed (unsupported), and so is the dashboard (moto cannot resolve
  `${Alarm.Arn}` inside its body);
- with moto's executor on (`configure_moto`), API calls go to a second Step Functions backend that
  CloudFormation does not write to: the created state machines are registered there too, same name and ARN;
- `AWS::SecretsManager::Secret` resources are stored by moto's CloudFormation without being created: the
  secrets are created afterwards with the same name and a generated (or the given) value;
- moto evaluates no template `Rules` and no parameter constraints: the parameters are checked first, as
  CloudFormation checks them at CreateStack (`profiles.parameter_problems`), and refused the same way.

Used by local mode (`sip-trunk local up`) and the wiring test; nothing here is imported by the handlers.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
import secrets
import string
import threading
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sip_trunk.configstore import stack_parameter

from sip_trunk_local.profiles import ParametersRefused, parameter_problems

REGION = "us-east-1"
ACCOUNT = "123456789012"
ARTIFACTS_BUCKET = "local-artifacts"
CODE_KEY = "code.zip"
DEFINITION_KEY = "definition.json"

AWS_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


def find_project_root(start: Path | None = None) -> Path:
    """The checkout that holds `template.yaml`, `stacks/`, `functions/` and `statemachines/`."""
    env = os.environ.get("SIP_TRUNK_PROJECT_DIR")
    candidates = [Path(env)] if env else []
    here = (start or Path.cwd()).resolve()
    candidates += [here, *here.parents, *Path(__file__).resolve().parents]
    for candidate in candidates:
        if (candidate / "template.yaml").is_file() and (candidate / "stacks" / "host.yaml").is_file():
            return candidate
    raise FileNotFoundError("no template.yaml with stacks/host.yaml here or above (set SIP_TRUNK_PROJECT_DIR)")


# --- moto ---------------------------------------------------------------------------------------


def configure_moto() -> None:
    """Run state machines for real and keep Lambda in-process (no Docker); no AMI catalogue (seconds); DynamoDB's
    writes atomic (:func:`atomic_dynamodb_writes`)."""
    from moto.core.config import default_user_config

    default_user_config["stepfunctions"] = {"execute_state_machine": True}
    default_user_config["lambda"] = {"use_docker": False}
    os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    atomic_dynamodb_writes()


_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")
_WRITE_LOCK = threading.RLock()


def atomic_dynamodb_writes() -> None:
    """DynamoDB checks a write's condition and applies it atomically; moto's threaded server does not (two
    concurrent conditional PutItems of the Failover lock both succeeded: the flap drill's lock check reported two
    holders, ADR-45). Every write of moto's DynamoDB backend in this process runs under one lock. Idempotent."""
    from moto.dynamodb.models import DynamoDBBackend

    for name in _WRITES:
        original = getattr(DynamoDBBackend, name)
        if getattr(original, "_atomic", False):
            continue

        def atomic(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with _WRITE_LOCK:
                return _original(self, *args, **kwargs)

        atomic._atomic = True  # type: ignore[attr-defined]
        setattr(DynamoDBBackend, name, atomic)


class MotoServer:
    """moto's threaded server on 127.0.0.1 and a random port, in this process (so its backends can be patched);
    with `call_log`, every request is logged there first (`sip_trunk_local.principals.CallLog`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, call_log: Path | None = None) -> None:
        from moto.moto_server import threaded_moto_server as tms
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        from sip_trunk_local.principals import CallLog

        configure_moto()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        owner = self
        self.call_log: CallLog | None = None

        class _Server(tms.ThreadedMotoServer):
            def _server_entry(self) -> None:  # moto's own, with the call log in front of the application
                app: Any = DomainDispatcherApplication(create_backend_app)
                if call_log is not None:
                    own = frozenset({AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"]})  # local mode's own calls: not parsed
                    app = owner.call_log = CallLog(app, call_log, ACCOUNT, own)
                self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
                self._server_ready_event.set()
                self._server.serve_forever()

        self._server = _Server(ip_address=host, port=port, verbose=False)
        self.endpoint = ""

    def start(self) -> str:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        os.environ["MOTO_PORT"] = str(port)  # where moto's own service integrations (sns:publish …) call
        return self.endpoint

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def aws_environment(endpoint: str) -> dict[str, str]:
    """What a process needs to talk to the emulated account (boto3 honours AWS_ENDPOINT_URL)."""
    return {**AWS_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, restoring the previous values afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(service: str, endpoint: str | None = None) -> Any:
    """A boto3 client for the emulated account (`endpoint` None: the in-process `mock_aws`)."""
    import boto3

    return boto3.client(  # type: ignore[call-overload]
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=AWS_CREDENTIALS["AWS_SESSION_TOKEN"],
    )


# --- templates and fix-ups ------------------------------------------------------------------------


def load_template(path: Path) -> dict[str, Any]:
    """A CloudFormation/SAM template in YAML (short-form intrinsics expanded) or JSON, as plain data."""
    from samtranslator.yaml_helper import yaml_parse

    data: dict[str, Any] = json.loads(json.dumps(yaml_parse(path.read_text())))
    return data


def replace_network_outputs(node: Any, outputs: Mapping[str, str], stack_id: str) -> Any:
    """`GetAtt NetworkStack.Outputs.X` (and `${NetworkStack.Outputs.X}`) → the created network stack's output."""
    if isinstance(node, dict):
        if node.get("Fn::GetAtt", [None])[0] == "NetworkStack":
            return outputs[node["Fn::GetAtt"][1].removeprefix("Outputs.")]
        if node == {"Ref": "NetworkStack"}:
            return stack_id
        if "Fn::Sub" in node:
            sub = node["Fn::Sub"]
            text = sub if isinstance(sub, str) else sub[0]
            text = re.sub(r"\$\{NetworkStack\.Outputs\.(\w+)\}", lambda m: outputs[m[1]], text)
            if isinstance(sub, str):
                return {"Fn::Sub": text}
            return {"Fn::Sub": [text, replace_network_outputs(sub[1], outputs, stack_id)]}
        return {k: replace_network_outputs(v, outputs, stack_id) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_network_outputs(v, outputs, stack_id) for v in node]
    return node


def without_cidr_and_azs(node: Any, region: str = REGION, *, one_lan: bool = False) -> Any:
    """`Fn::Cidr` → 10.0.<i>.0/24 blocks and `Fn::GetAZs` → two zones (moto evaluates neither).

    `one_lan`: the blocks are /25 halves of 10.0.0.0/24 instead, the one LAN local hosts share."""
    if isinstance(node, dict):
        if "Fn::Cidr" in node:
            count = int(node["Fn::Cidr"][1])
            if one_lan:
                return [f"10.0.0.{128 * i}/25" for i in range(count)]
            return [f"10.0.{i}.0/24" for i in range(count)]
        if "Fn::GetAZs" in node:
            return [f"{region}a", f"{region}b"]
        return {k: without_cidr_and_azs(v, region, one_lan=one_lan) for k, v in node.items()}
    if isinstance(node, list):
        return [without_cidr_and_azs(v, region, one_lan=one_lan) for v in node]
    return node


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: CloudFormation reads a `DefinitionS3Location` definition with Jackson, which
    gives an alias as the anchor's name (a string), so a definition that uses one deploys broken."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.constructor.ConstructorError(
                None, None, "a state machine definition cannot use YAML aliases (CloudFormation does not resolve them)",
                event.start_mark,
            )  # fmt: skip
        return super().compose_node(parent, index)


def asl_document(text: str) -> Any:
    """A state machine definition (JSON or YAML) as the deployed state machine gets it; aliases are refused."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def state_machine_definition(path: Path) -> str:
    return json.dumps(asl_document(path.read_text()))


def root_template(root: Path, outputs: Mapping[str, str], network_id: str) -> dict[str, Any]:
    """`template.yaml` transformed offline with every fix-up moto needs (see the module docstring)."""
    from samtranslator.translator.transform import transform

    template = copy.deepcopy(load_template(root / "template.yaml"))
    resources = template["Resources"]
    definitions: dict[str, str] = {}
    resources.pop("NetworkStack")
    for name in [n for n, r in resources.items() if r["Type"] == "AWS::Scheduler::Schedule"]:
        del resources[name]
    for name in [n for n, r in resources.items() if r["Type"] == "AWS::CloudWatch::Dashboard"]:
        del resources[name]
    for res in resources.values():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Function":
            props["CodeUri"] = f"s3://{ARTIFACTS_BUCKET}/{CODE_KEY}"
        elif res["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = f"s3://{ARTIFACTS_BUCKET}/{CODE_KEY}"
        elif res["Type"] == "AWS::Serverless::StateMachine":
            definitions[json.dumps(props["Name"], sort_keys=True)] = state_machine_definition(
                root / props["DefinitionUri"]
            )
            props["DefinitionUri"] = f"s3://{ARTIFACTS_BUCKET}/{DEFINITION_KEY}"
    template = replace_network_outputs(template, outputs, network_id)

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    with environment({"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}):
        transformed: dict[str, Any] = transform(template, {}, NoManagedPolicies())
    for res in transformed["Resources"].values():
        if res["Type"] == "AWS::StepFunctions::StateMachine":
            props = res["Properties"]
            text = definitions[json.dumps(props["StateMachineName"], sort_keys=True)]
            props.pop("DefinitionS3Location", None)
            subs = props.pop("DefinitionSubstitutions", {})
            # moto's Fn::Sub runs string.Template once per substitution, and each run turns `$$` into `$`:
            # double the ASL's context references (`$$.Execution.Name`) once per run so they survive.
            text = text.replace("$$", "$" * 2 ** (len(subs) + 1))
            props["DefinitionString"] = {"Fn::Sub": [text, subs]}
    return transformed


def host_template(root: Path) -> dict[str, Any]:
    """`stacks/host.yaml` as moto can create it (it needs no fix-up today: this is the one place to add one)."""
    return load_template(root / "stacks" / "host.yaml")


def upload_artifacts(s3: Any) -> None:
    """The code and definition objects the transformed template points at (moto's Lambda needs a zip)."""
    s3.create_bucket(Bucket=ARTIFACTS_BUCKET)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("app.py", "def handler(event, context):\n    return event\n")
    s3.put_object(Bucket=ARTIFACTS_BUCKET, Key=CODE_KEY, Body=buffer.getvalue())
    s3.put_object(Bucket=ARTIFACTS_BUCKET, Key=DEFINITION_KEY, Body=b"{}")


_SAFE = string.ascii_letters + string.digits + "-_.+=@"


def generated_password(length: int = 32) -> str:
    return "".join(secrets.choice(_SAFE) for _ in range(length))


# --- the control plane ---------------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """What `create_control_plane` made: the root stack, its resources and the functions' environment."""

    stack_name: str
    stack_id: str
    network_stack_id: str
    network_outputs: dict[str, str]
    physical: dict[str, str]
    """Logical id → physical id of the root stack's resources."""
    functions: dict[str, dict[str, str]]
    """Function name → its Environment variables as created."""
    function_names: dict[str, str] = field(default_factory=dict)
    """Function name → the `functions/<dir>` it runs (from the template's CodeUri)."""
    template: dict[str, Any] = field(default_factory=dict)

    @property
    def provision_state_machine_arn(self) -> str:
        return self.physical["ProvisionStateMachine"]

    @property
    def failover_state_machine_arn(self) -> str:
        return self.physical["FailoverStateMachine"]

    def environment(self) -> dict[str, str]:
        """The environment every function shares (the template's Globals), from any created function."""
        common: dict[str, str] | None = None
        for env in self.functions.values():
            common = dict(env) if common is None else {k: v for k, v in common.items() if env.get(k) == v}
        return common or {}

    def to_json(self) -> dict[str, Any]:
        return {
            "stack_name": self.stack_name,
            "stack_id": self.stack_id,
            "network_stack_id": self.network_stack_id,
            "network_outputs": self.network_outputs,
            "physical": self.physical,
            "functions": self.functions,
            "function_names": self.function_names,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ControlPlane:
        return cls(
            stack_name=data["stack_name"],
            stack_id=data["stack_id"],
            network_stack_id=data["network_stack_id"],
            network_outputs=dict(data["network_outputs"]),
            physical=dict(data["physical"]),
            functions={k: dict(v) for k, v in data["functions"].items()},
            function_names=dict(data.get("function_names", {})),
        )


def _params(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def _wait_created(cfn: Any, stack_id: str) -> dict[str, Any]:
    stack: dict[str, Any] = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        events = cfn.describe_stack_events(StackName=stack_id).get("StackEvents", [])
        failed = [
            f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}"
            for e in events
            if "FAILED" in e.get("ResourceStatus", "")
        ]
        raise RuntimeError(f"{stack['StackName']} is {stack['StackStatus']}: {stack.get('StackStatusReason')} {failed}")
    return stack


def placeholder_key_arn() -> str:
    """A well-formed KMS key ARN for evaluating the network template where no key exists (it only names the
    flow-log group's key)."""
    return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000"


def network_parameters(root: Path, parameters: Mapping[str, str]) -> dict[str, str]:
    """The network stack's parameters as the root stack passes them (`NetworkStack`'s `Ref`s to root
    parameters), for the root parameters given; the rest keep their defaults."""
    forwarded = load_template(root / "template.yaml")["Resources"]["NetworkStack"]["Properties"]["Parameters"]
    return {
        name: parameters[node["Ref"]]
        for name, node in forwarded.items()
        if isinstance(node, dict) and node.get("Ref") in parameters
    }


def create_network(
    cfn: Any,
    kms: Any,
    root: Path,
    stack_name: str,
    *,
    one_lan: bool = False,
    parameters: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    key = kms.create_key(Description=f"{stack_name} logs")["KeyMetadata"]["Arn"]
    params = {**network_parameters(root, parameters or {}), "RootStackName": stack_name, "LogKmsKeyArn": key}
    template = without_cidr_and_azs(load_template(root / "stacks" / "network.yaml"), one_lan=one_lan)
    stack_id = str(
        cfn.create_stack(
            StackName=f"{stack_name}-NetworkStack", TemplateBody=json.dumps(template), Parameters=_params(params)
        )["StackId"]
    )
    stack = _wait_created(cfn, stack_id)
    return stack_id, {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def _resolve_secret_name(name: Any, stack_name: str) -> str | None:
    if isinstance(name, dict) and isinstance(name.get("Fn::Sub"), str):
        return str(name["Fn::Sub"]).replace("${AWS::StackName}", stack_name)
    return name if isinstance(name, str) else None


def condition_holds(template: Mapping[str, Any], name: str | None, parameters: Mapping[str, str]) -> bool:
    """Evaluate a template condition built from Fn::Equals/Not/And/Or, Condition and Ref to parameters."""
    if name is None:
        return True
    conditions = template.get("Conditions", {})
    declared = template.get("Parameters", {})

    def value(node: Any) -> Any:
        if isinstance(node, dict) and "Ref" in node:
            ref = node["Ref"]
            return parameters.get(ref, str(declared.get(ref, {}).get("Default", "")))
        return node

    def holds(node: Any) -> bool:
        if isinstance(node, dict):
            if "Condition" in node:
                return holds(conditions[node["Condition"]])
            if "Fn::Equals" in node:
                left, right = node["Fn::Equals"]
                return bool(value(left) == value(right))
            if "Fn::Not" in node:
                return not holds(node["Fn::Not"][0])
            if "Fn::And" in node:
                return all(holds(n) for n in node["Fn::And"])
            if "Fn::Or" in node:
                return any(holds(n) for n in node["Fn::Or"])
        raise ValueError(f"cannot evaluate condition {name}: {node!r}")

    return holds(conditions[name])


def create_declared_secrets(
    sm: Any, template: Mapping[str, Any], stack_name: str, parameters: Mapping[str, str]
) -> list[str]:
    """Create the template's Secrets Manager secrets that moto only recorded (see the module docstring)."""
    made: list[str] = []
    for res in template["Resources"].values():
        if res["Type"] != "AWS::SecretsManager::Secret":
            continue
        if not condition_holds(template, res.get("Condition"), parameters):
            continue
        props = res.get("Properties", {})
        name = _resolve_secret_name(props.get("Name"), stack_name)
        if name is None:
            continue
        value = props.get("SecretString")
        if isinstance(value, dict) and "Ref" in value:
            value = parameters.get(value["Ref"], "")
        if not isinstance(value, str) or not value:
            value = generated_password(int(props.get("GenerateSecretString", {}).get("PasswordLength", 32)))
        try:
            sm.create_secret(Name=name, SecretString=value)
        except sm.exceptions.ResourceExistsException:
            continue
        made.append(name)
    return made


def fix_host_parameters(ssm: Any, lam: Any, stack_name: str) -> None:
    """moto renders a layer's `Ref` inside `Fn::Sub` as a Python object's repr: put the layer's ARN back
    into the host stack's parameters document."""
    name = stack_parameter(stack_name, "host-parameters")
    try:
        document = json.loads(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except Exception:
        return
    if not str(document.get("LayerVersionArn", "")).startswith("<"):
        return
    layers = lam.list_layers().get("Layers", [])
    if not layers:
        return
    document["LayerVersionArn"] = layers[0]["LatestMatchingVersion"]["LayerVersionArn"]
    ssm.put_parameter(Name=name, Value=json.dumps(document, indent=2), Type="String", Overwrite=True)


def register_with_executor(endpoint: str | None) -> list[str]:
    """Copy the state machines CloudFormation created into the executing backend (see the module docstring)."""
    from moto.core.config import default_user_config
    from moto.stepfunctions.models import stepfunctions_backends

    if not default_user_config.get("stepfunctions", {}).get("execute_state_machine"):
        return []
    sfn = client("stepfunctions", endpoint)
    made: list[str] = []
    for machine in list(stepfunctions_backends[ACCOUNT][REGION].state_machines):
        arn = sfn.create_state_machine(name=machine.name, definition=machine.definition, roleArn=machine.roleArn)[
            "stateMachineArn"
        ]
        made.append(str(arn))
    return made


def create_control_plane(
    root: Path,
    stack_name: str,
    parameters: Mapping[str, str],
    endpoint: str | None = None,
    *,
    high_availability: bool = True,
    one_lan: bool = False,
) -> ControlPlane:
    """Create the network stack and the transformed root stack in moto; return what was made.

    `endpoint` is moto's server URL (local mode) or None for an active in-process `mock_aws` (tests).
    `one_lan`: both subnets inside 10.0.0.0/24, the LAN of local hosts.
    Parameters CloudFormation would refuse at CreateStack (missing, not allowed, a failed `Rules` assertion,
    which moto does not check) raise `ParametersRefused` before anything is created.
    """
    params = {**parameters, "HighAvailability": str(high_availability).lower()}
    problems = parameter_problems(load_template(root / "template.yaml"), params)
    if problems:
        raise ParametersRefused(stack_name, problems)
    cfn = client("cloudformation", endpoint)
    network_id, outputs = create_network(
        cfn, client("kms", endpoint), root, stack_name, one_lan=one_lan, parameters=parameters
    )
    upload_artifacts(client("s3", endpoint))
    template = root_template(root, outputs, network_id)
    stack_id = str(
        cfn.create_stack(
            StackName=stack_name,
            TemplateBody=json.dumps(template),
            Parameters=_params(params),
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )["StackId"]
    )
    _wait_created(cfn, stack_id)
    resources = cfn.describe_stack_resources(StackName=stack_id)["StackResources"]
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in resources
        if "LogicalResourceId" in r and "PhysicalResourceId" in r  # moto omits them for some types
    }
    create_declared_secrets(client("secretsmanager", endpoint), template, stack_name, params)
    register_with_executor(endpoint)
    fix_host_parameters(client("ssm", endpoint), client("lambda", endpoint), stack_name)
    lam = client("lambda", endpoint)
    functions: dict[str, dict[str, str]] = {}
    for page in lam.get_paginator("list_functions").paginate():
        for fn in page["Functions"]:
            functions[fn["FunctionName"]] = dict(fn.get("Environment", {}).get("Variables", {}))
    names: dict[str, str] = {}
    source = load_template(root / "template.yaml")["Resources"]
    for logical, res in source.items():
        if res["Type"] == "AWS::Serverless::Function" and logical in physical:
            names[physical[logical]] = Path(str(res["Properties"]["CodeUri"])).name
    return ControlPlane(
        stack_name=stack_name,
        stack_id=stack_id,
        network_stack_id=network_id,
        network_outputs=outputs,
        physical=physical,
        functions=functions,
        function_names=names,
        template=template,
    )
