"""Local mode's call attribution (sip_trunk_local.principals), which the e2e layer's permission proof reads.

A moto server with the call log in front of it, a role created by a CloudFormation stack, and that role's
credentials from `Principals`: a call signed with them is attributed to the role's logical id with the
parameters botocore sent, whatever code makes it; the account's own calls are not the role's; a key local
mode never handed out is reported, never dropped or guessed. The state machines' service integrations get
their execution role's credentials instead of moto's fixed key.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from sip_trunk_local import controlplane as cp
from sip_trunk_local.principals import CALLS, Principals, install_state_machine_credentials, role_resolver
from support.iam_proof import Proof, e2e_calls, unique

pytestmark = pytest.mark.integration

ROLE_STACK = {
    "Resources": {
        "ProbeFunctionRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}]},
            },
        }
    }
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[cp.MotoServer, Path]]:
    """Local mode's moto server, in this process: its process-wide moto settings are put back afterwards, so
    later tests get moto as they configure it (e.g. its AMI catalogue)."""
    from moto.core.config import default_user_config

    saved_config = copy.deepcopy(default_user_config)
    saved_amis = os.environ.get("MOTO_EC2_LOAD_DEFAULT_AMIS")
    run_dir = tmp_path_factory.mktemp("run")
    moto = cp.MotoServer(call_log=run_dir / CALLS)
    moto.start()
    try:
        yield moto, run_dir
    finally:
        moto.stop()
        default_user_config.clear()
        default_user_config.update(saved_config)
        if saved_amis is None:
            os.environ.pop("MOTO_EC2_LOAD_DEFAULT_AMIS", None)
        else:
            os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = saved_amis


def _role(endpoint: str) -> str:
    cfn = cp.client("cloudformation", endpoint)
    cfn.create_stack(StackName="calllog", TemplateBody=json.dumps(ROLE_STACK))
    name = cfn.describe_stack_resources(StackName="calllog")["StackResources"][0]["PhysicalResourceId"]
    return f"arn:aws:iam::{cp.ACCOUNT}:role/{name}"


def _client(service: str, endpoint: str, creds: dict[str, str]) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        region_name=cp.REGION,
        endpoint_url=endpoint,
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=creds["AWS_SESSION_TOKEN"],
    )


def test_calls_are_attributed_by_the_credentials_that_signed_them(server: tuple[cp.MotoServer, Path]) -> None:
    moto, run_dir = server
    endpoint = moto.endpoint
    # Given a role of a stack and the credentials local mode hands to the code that runs as it
    principals = Principals(run_dir, cp.client("sts", endpoint), role_resolver(cp.client("cloudformation", endpoint)))
    role = _role(endpoint)
    creds = principals.credentials(role, "probe", {"STACK_NAME": "calllog", "STATE_TABLE": "calllog-state"})
    assert creds["AWS_ACCESS_KEY_ID"] != cp.AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"]
    principals.save()
    account = cp.client("dynamodb", endpoint)
    account.create_table(
        TableName="calllog-state",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    # When code running with them writes an item, and the account writes one too
    _client("dynamodb", endpoint, creds).put_item(TableName="calllog-state", Item={"pk": {"S": "host#i-1"}})
    account.put_item(TableName="calllog-state", Item={"pk": {"S": "account#1"}})

    # Then the proof gets exactly the role's call, named by its logical id, with botocore's parameters
    calls, unattributed, seconds = e2e_calls(run_dir)
    assert unattributed == []
    assert [(c.principal, c.service, c.operation) for c in calls] == [("ProbeFunctionRole", "dynamodb", "PutItem")]
    assert calls[0].params == {"TableName": "calllog-state", "Item": {"pk": {"S": "host#i-1"}}}
    assert calls[0].names["StateTable"] == "calllog-state"
    assert seconds > 0
    # and a role the template does not have is refused by name, not waved through
    with pytest.raises(KeyError, match="ProbeFunctionRole"):
        unique(Proof().check(calls))

    # When a key local mode never handed out signs a call
    stranger = {"AWS_ACCESS_KEY_ID": "AKIASTRANGER", "AWS_SECRET_ACCESS_KEY": "x", "AWS_SESSION_TOKEN": "x"}
    _client("ssm", endpoint, stranger).put_parameter(Name="/calllog/x", Value="s3cr3t-value", Type="SecureString")
    # Then the proof reports it as unattributed
    _, unattributed, _ = e2e_calls(run_dir)
    assert unattributed == ["ssm:PutParameter signed with 'AKIASTRANGER', a key local mode gave no known role ()"]
    # and the log keeps the parameter's name, never its value
    logged = (run_dir / CALLS).read_text()
    assert "/calllog/x" in logged
    assert "s3cr3t-value" not in logged


def test_state_machine_integrations_run_with_the_execution_role(server: tuple[cp.MotoServer, Path]) -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.credentials import StateCredentials

    moto, run_dir = server
    principals = Principals(run_dir, cp.client("sts", moto.endpoint), lambda arn: ("MachineRole", "calllog"))
    role = f"arn:aws:iam::{cp.ACCOUNT}:role/calllog-MachineRole"
    undo = install_state_machine_credentials(principals, lambda: {"STACK_NAME": "calllog"})
    try:
        client = lambda_eval_utils.boto_client_for(cp.REGION, "lambda", StateCredentials(role_arn=role))
    finally:
        undo()
    issued = principals.credentials(role, "states", {"STACK_NAME": "calllog"})
    assert client.meta.region_name == cp.REGION
    assert client._request_signer._credentials.access_key == issued["AWS_ACCESS_KEY_ID"]
    # and after the undo moto's own key is back
    plain = lambda_eval_utils.boto_client_for(cp.REGION, "lambda", StateCredentials(role_arn=role))
    assert plain._request_signer._credentials.access_key == "ak"


def test_functions_running_at_once_each_sign_with_their_own_role() -> None:
    """The handlers share the controller process: while one waits (on a function it invoked, say), another
    runs, and each request is signed with the credentials of the invocation on the thread making it, in
    boto3's default session and in the new sessions Powertools makes alike."""
    import threading

    from sip_trunk_local.executor import Dispatcher
    from sip_trunk_local.principals import UNATTRIBUTED, install_invocation_credentials

    seen: dict[str, list[str]] = {"a": [], "b": []}
    a_running, release_a = threading.Event(), threading.Event()

    def signing_key(session: Any) -> str:
        client = session.client("sts", region_name=cp.REGION)
        return str(client._request_signer._credentials.get_frozen_credentials().access_key)

    def handler(name: str) -> Any:
        def run(event: dict[str, Any], context: Any) -> dict[str, str]:
            seen[name].append(signing_key(boto3))
            if name == "a":
                a_running.set()
                release_a.wait(5)
            seen[name].append(signing_key(boto3.session.Session()))
            return {}

        return run

    credentials, undo = install_invocation_credentials()
    keys = {"a": "ASIAFUNCTIONA", "b": "ASIAFUNCTIONB"}
    try:
        dispatcher = Dispatcher(
            {"a": handler("a"), "b": handler("b")},
            around=lambda name: credentials.using(
                {"AWS_ACCESS_KEY_ID": keys[name], "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"}
            ),
        )
        first = threading.Thread(target=dispatcher.invoke, args=("a", b"{}", {}))
        first.start()
        assert a_running.wait(5)
        dispatcher.invoke("b", b"{}", {})  # while a is still running
        release_a.set()
        first.join(5)
        outside = signing_key(boto3.session.Session())
    finally:
        undo()
    assert seen == {"a": ["ASIAFUNCTIONA"] * 2, "b": ["ASIAFUNCTIONB"] * 2}
    # and outside any invocation the key is one no role owns, which the proof reports
    assert outside == UNATTRIBUTED["AWS_ACCESS_KEY_ID"]
