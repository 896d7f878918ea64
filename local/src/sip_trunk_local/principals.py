"""Who calls the emulated account: each principal gets its own credentials, and moto's server logs every call.

On AWS a Lambda function runs with its execution role's credentials (in its environment), a state machine's
service integrations with its role's, an instance with its instance profile's (IMDS, here the host's
`agent.env`). Local mode does the same: `Principals.credentials(role_arn)` issues the role's credentials from
moto's STS (`AssumeRole`, as the services do); the handlers, which all run in the controller, sign with their
invocation's through `InvocationCredentials`. `Principals` remembers which role each access key belongs to in
`principals.json` in the run directory, with the names the role's policy is instantiated with (the function's
environment, the agent's settings). Local mode's own calls (creating the stacks, arranging the settings,
inspecting the account) keep the account's credentials (`AWS_CREDENTIALS`).

`CallLog` sits in front of moto's server and writes one line per request to `aws-calls.jsonl`: the access
key that signed it, the service and operation, the parameters parsed back from the wire with botocore's
models, and the tags of the EC2 resources it names. The permission proof of the e2e tests reads both files
(tests/support/iam_proof.py, docs/TESTING.md); the caller is what its credentials say, never guessed.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CALLS = "aws-calls.jsonl"
PRINCIPALS = "principals.json"
SERVICES = (
    "cloudformation", "cloudwatch", "dynamodb", "ec2", "iam", "kms", "lambda", "logs", "s3", "secretsmanager",
    "sns", "sqs", "ssm", "stepfunctions", "sts", "events", "scheduler",
)  # fmt: skip
"""The services whose requests the log parses (the rest are logged with their signing name, unparsed)."""

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")


@cache
def _by_signing_name() -> dict[str, str]:
    """SigV4 signing name (`states`, `monitoring`) → boto3 service name (`stepfunctions`, `cloudwatch`)."""
    from moto.core.utils import get_service_model

    out: dict[str, str] = {}
    for name in SERVICES:
        model = get_service_model(name)
        out[model.signing_name] = name
    return out


def _plain(value: Any) -> Any:
    """JSON-safe parameters (bytes and timestamps as text; bodies are dropped by the caller)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value[:64]).decode()
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return value


_DROPPED = (
    "Body", "MessageBody", "Message", "SecretString", "SecretBinary", "Payload", "ZipFile", "TemplateBody",
    "Value", "Plaintext", "CiphertextBlob",
)  # fmt: skip
"""Never logged: values (a parameter's may be a SecureString, a config with credentials), bodies, payloads."""


def parse_request(environ: Mapping[str, Any], body: bytes, unparsed: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The call a signed request makes: access key, region, service, operation and parameters (botocore's
    names, parsed with the service's model by moto's request parsers); a request signed with a key in
    `unparsed` (the account's own) is logged with its key and service only."""
    from moto.core.parse import PROTOCOL_PARSERS
    from moto.core.request import Request, determine_request_protocol
    from moto.core.routing import get_service_router
    from moto.core.utils import get_service_model

    request = Request({**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})
    auth = request.headers.get("Authorization", "") or request.args.get("X-Amz-Credential", "")
    match = _CREDENTIAL.search(auth) or _CREDENTIAL.search(f"Credential={auth}")
    if not match:
        return {"key": "", "service": "", "operation": "", "params": {}, "region": "", "error": "unsigned"}
    key, region, signing = match.groups()
    service = _by_signing_name().get(signing, signing)
    call: dict[str, Any] = {"key": key, "service": service, "region": region, "operation": "", "params": {}}
    if key in unparsed:
        return call
    if service not in SERVICES:
        call["error"] = f"service {signing} is not parsed"
        return call
    try:
        model = get_service_model(service)
        target = request.headers.get("X-Amz-Target", "")
        action = request.values.get("Action") if request.method == "POST" or "Action" in request.args else None
        uri_params: dict[str, Any] = {}
        if target:
            operation = model.operation_model(target.rsplit(".", 1)[-1])
        elif action:
            operation = model.operation_model(action)
        else:
            found, uri_params = get_service_router(service).match(request)
            operation = model.operation_model(found.name)
        protocol = determine_request_protocol(model, request.content_type)
        parser = PROTOCOL_PARSERS[protocol](operation)
        params = parser.parse(
            {
                "method": request.method,
                "values": request.values,
                "headers": request.headers,
                "body": body,
                "url_path": request.path,
                "url_params": uri_params,
            }
        )
        call["operation"] = operation.name
        call["params"] = _plain({k: v for k, v in dict(params).items() if k not in _DROPPED})
    except Exception as exc:  # a request the log cannot read is logged as such, never dropped
        call["error"] = f"{type(exc).__name__}: {exc}"
    return call


def _ec2_tags(call: Mapping[str, Any], account: str) -> dict[str, dict[str, str]]:
    """Tags of the instances and addresses a call names (the conditions of SendCommand/AssociateAddress)."""
    params = call.get("params") or {}
    ids = [*params.get("InstanceIds", []), params.get("InstanceId"), params.get("AllocationId")]
    ids = [i for i in ids if isinstance(i, str)]
    if not ids:
        return {}
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[account][call.get("region") or "us-east-1"]
    return {i: dict(backend.tags.get(i, {})) for i in ids}


class CallLog:
    """WSGI middleware in front of moto's server: every request, one JSON line in `path`, before moto
    answers it (an authorization happens whether or not the call then succeeds)."""

    def __init__(
        self, app: Callable[..., Iterable[bytes]], path: Path, account: str, unparsed: frozenset[str] = frozenset()
    ) -> None:
        """`unparsed`: access keys whose calls are logged without parsing them (the account's own)."""
        self.app = app
        self.path = path
        self.account = account
        self.unparsed = unparsed
        self.lock = threading.Lock()
        self.seconds = 0.0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        import time

        started = time.perf_counter()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        try:
            call = parse_request(environ, body, self.unparsed)
            call["tags"] = _ec2_tags(call, self.account) if call.get("service") in ("ec2", "ssm") else {}
        except Exception as exc:  # logged for the proof to fail on; the request is served
            call = {"key": "", "service": "", "operation": "", "params": {}, "error": f"{type(exc).__name__}: {exc}"}
        call["log_s"] = round(time.perf_counter() - started, 6)  # the log's own cost, for the proof's summary
        line = json.dumps(call, default=str) + "\n"
        with self.lock:
            with self.path.open("a") as fh:
                fh.write(line)
            self.seconds += time.perf_counter() - started
        environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)


class Principals:
    """The credentials local mode hands each emulated principal, and the record of whose key is whose."""

    def __init__(self, run_dir: Path, sts: Any, resolve_role: Callable[[str], tuple[str, str]]) -> None:
        """`sts` is a client of the emulated account; `resolve_role(role_arn)` → (logical id, stack name)."""
        self.path = run_dir / PRINCIPALS
        self.sts = sts
        self.resolve_role = resolve_role
        self.lock = threading.Lock()
        self._issued: dict[tuple[str, str], dict[str, str]] = {}
        self._record: dict[str, dict[str, Any]] = {}

    def credentials(self, role_arn: str, session: str, names: Mapping[str, str] | None = None) -> dict[str, str]:
        """The role's credentials as environment variables (what Lambda puts in a function's environment);
        `names` are the values the role's policy is bound with (the caller's configuration)."""
        bound = dict(names or {})
        cache_key = (role_arn, json.dumps(bound, sort_keys=True))
        with self.lock:
            if cache_key in self._issued:
                return dict(self._issued[cache_key])
        issued = self.sts.assume_role(RoleArn=role_arn, RoleSessionName=session[:64])["Credentials"]
        env = {
            "AWS_ACCESS_KEY_ID": issued["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": issued["SecretAccessKey"],
            "AWS_SESSION_TOKEN": issued["SessionToken"],
        }
        with self.lock:
            self._issued[cache_key] = env
            self._record[issued["AccessKeyId"]] = {"principal": "", "stack": "", "role_arn": role_arn, "names": bound}
            self._write()
        return dict(env)

    def save(self) -> None:
        """Write `principals.json` with each role named by its logical id (resolved here, not when the
        credentials are issued: a host stack is still being created when its instances get theirs)."""
        with self.lock:
            pending = [e for e in self._record.values() if not e["principal"]]
        for entry in pending:
            try:
                entry["principal"], entry["stack"] = self.resolve_role(entry["role_arn"])
            except LookupError:
                log.warning("no stack owns role %s", entry["role_arn"])
        with self.lock:
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._record, indent=1, sort_keys=True))
        tmp.replace(self.path)


def _botocore_credentials() -> type:
    from botocore.credentials import Credentials

    return Credentials


UNATTRIBUTED = {
    "AWS_ACCESS_KEY_ID": "ASIALOCALUNATTRIBUTED",
    "AWS_SECRET_ACCESS_KEY": "unattributed",
    "AWS_SESSION_TOKEN": "unattributed",
}
"""What a default-session client in the controller signs with outside any function's invocation (a thread a
handler started, say): a key no role owns, which the permission proof reports instead of guessing."""


class InvocationCredentials(_botocore_credentials()):  # type: ignore[misc]
    """The credentials of boto3's default session in the controller, resolved per request from the thread
    that signs it: the handlers all run in this one process (each invocation on the server thread that
    received it, a function may invoke another synchronously), so one process environment cannot carry
    each function's role. `using(env)` sets them for the invocation running on this thread."""

    method = "local-invocation"
    account_id = None

    def __init__(self) -> None:  # botocore's __init__ would assign the per-thread properties below
        self._local = threading.local()

    def _current(self) -> Mapping[str, str]:
        current: Mapping[str, str] | None = getattr(self._local, "env", None)
        return current or UNATTRIBUTED

    def using(self, env: Mapping[str, str]) -> Any:
        import contextlib

        @contextlib.contextmanager
        def scope() -> Any:
            previous = getattr(self._local, "env", None)
            self._local.env = dict(env)
            try:
                yield
            finally:
                self._local.env = previous

        return scope()

    def get_frozen_credentials(self) -> Any:
        from botocore.credentials import ReadOnlyCredentials

        env = self._current()
        return ReadOnlyCredentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_SESSION_TOKEN"])

    @property
    def access_key(self) -> str:
        return str(self._current()["AWS_ACCESS_KEY_ID"])

    @property
    def secret_key(self) -> str:
        return str(self._current()["AWS_SECRET_ACCESS_KEY"])

    @property
    def token(self) -> str:
        return str(self._current()["AWS_SESSION_TOKEN"])


def install_invocation_credentials() -> tuple[InvocationCredentials, Callable[[], None]]:
    """Every botocore session made in this process from now on (boto3's default one, and the ones Powertools'
    parameter and idempotency utilities make) resolves `InvocationCredentials` ahead of every other source;
    clients given explicit keys (local mode's own, moto's) are unaffected. Returns them and the undo."""
    import boto3
    import botocore.credentials
    from botocore.credentials import CredentialProvider

    credentials = InvocationCredentials()

    class _Provider(CredentialProvider):
        METHOD = credentials.method

        def load(self) -> Any:
            return credentials

    original = botocore.credentials.create_credential_resolver

    def create_credential_resolver(*args: Any, **kwargs: Any) -> Any:
        resolver = original(*args, **kwargs)
        resolver.insert_before("env", _Provider())
        return resolver

    botocore.credentials.create_credential_resolver = create_credential_resolver
    boto3.DEFAULT_SESSION = None  # made again, with the resolver above

    def undo() -> None:
        botocore.credentials.create_credential_resolver = original
        boto3.DEFAULT_SESSION = None

    return credentials, undo


def role_resolver(cfn: Any) -> Callable[[str], tuple[str, str]]:
    """role ARN → (its logical id, its stack), from the stacks' resources (the role's physical name)."""

    def resolve(role_arn: str) -> tuple[str, str]:
        name = role_arn.rsplit("/", 1)[-1]
        for stack in cfn.describe_stacks()["Stacks"]:
            for resource in cfn.describe_stack_resources(StackName=stack["StackName"])["StackResources"]:
                kind, physical = resource.get("ResourceType"), resource.get("PhysicalResourceId")
                if kind == "AWS::IAM::Role" and physical in (name, role_arn):
                    return str(resource["LogicalResourceId"]), str(stack["StackName"])
        raise LookupError(f"no stack owns role {role_arn}")

    return resolve


def install_state_machine_credentials(
    principals: Principals, names: Callable[[], Mapping[str, str]]
) -> Callable[[], None]:
    """moto's Step Functions executor calls its service integrations (lambda:invoke, sns:publish) with the
    fixed key "ak"; on AWS they run with the state machine's role. Give them that role's credentials, bound
    to `names()`. Returns the undo."""
    import importlib
    import pkgutil
    import sys

    import boto3
    from botocore.config import Config
    from moto.stepfunctions.parser.asl.component.state.exec import state_task
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils, service
    from moto.stepfunctions.parser.asl.utils import boto_client as module

    for info in pkgutil.iter_modules(service.__path__, service.__name__ + "."):
        importlib.import_module(info.name)  # every integration, so each one's imported name is replaced
    del state_task, lambda_eval_utils
    original = module.boto_client_for

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        client: Any = original(region, service, state_credentials)
        role_arn = getattr(state_credentials, "role_arn", "")
        if not role_arn:
            return client
        creds = principals.credentials(role_arn, "states", names())
        return boto3.client(  # type: ignore[call-overload]
            service,
            region_name=region,
            endpoint_url=client.meta.endpoint_url,
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=creds["AWS_SESSION_TOKEN"],
            config=Config(
                parameter_validation=False,
                retries={"max_attempts": 0, "total_max_attempts": 1},
                connect_timeout=client.meta.config.connect_timeout,
                read_timeout=client.meta.config.read_timeout,
            ),
        )

    patched = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("moto.stepfunctions.parser") and getattr(mod, "boto_client_for", None) is original:
            setattr(mod, "boto_client_for", boto_client_for)  # noqa: B010
            patched.append(mod)

    def undo() -> None:
        for mod in patched:
            setattr(mod, "boto_client_for", original)  # noqa: B010

    return undo
