"""`sip-trunk push` and `sip-trunk pull`: the operator's settings document on a deployed stack (ADR-16);
`sip-trunk calls`: the stack's call records in S3 (ADR-37)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sip_trunk import callrecords
from sip_trunk.aws.operator import OperatorAws, operator_aws
from sip_trunk.push import (
    Plan,
    PushError,
    execution_console_url,
    find_target,
    plan_push,
    start_provision,
    store,
)
from sip_trunk.settings import SettingsError, parse_settings, read_document

EXIT_FAILED = 1
EXIT_INVALID = 2
FINISHED = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

AwsFactory = Callable[[str | None], OperatorAws]
aws_factory: AwsFactory = operator_aws
"""How the commands reach AWS (tests point it at moto)."""

StackOption = Annotated[str, typer.Option("--stack", help="the deployed stack's name", show_default=False)]
RegionOption = Annotated[str | None, typer.Option("--region", help="AWS region (default: your AWS configuration)")]


def _error(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _aws(region: str | None) -> OperatorAws:
    try:
        return aws_factory(region)
    except ValueError as exc:
        raise _error(str(exc), EXIT_FAILED) from None


def _show_plan(plan: Plan) -> None:
    t = plan.target
    out.print(f"stack [bold]{escape(t.stack)}[/] ({t.region}): operator settings in {escape(t.operator_parameter)}")
    for note in plan.effective.notes:
        out.print(f"[yellow]stack-owned:[/] {escape(note)}", highlight=False)
    for ref, state in plan.secrets.items():
        if state == "missing":
            err.print(f"[bold red]missing secret:[/] {escape(ref)}", highlight=False)
        elif state == "unknown":
            err.print(f"[yellow]warning:[/] cannot check {escape(ref)} (access denied)", highlight=False)
    if plan.current is None:
        out.print("[yellow]the stored operator document is no longer valid for this stack; it is replaced[/]")
    if not plan.diff:
        out.print("no change to the settings the deployment runs on")
        return
    for line in plan.diff:
        style = (
            "green" if line.startswith("+") else "red" if line.startswith("-") else "cyan" if line[:2] == "@@" else ""
        )
        text = escape(line.rstrip("\n"))
        out.print(f"[{style}]{text}[/]" if style else text, highlight=False)


def _wait(aws: OperatorAws, execution_arn: str, poll_s: float) -> int:
    seen = 0
    with out.status("provisioning…") as status:
        while True:
            state = aws.executions.describe(execution_arn)
            entered = aws.executions.entered_states(execution_arn)
            for name in entered[seen:]:
                out.print(f"  ▸ {escape(name)}", highlight=False)
            seen = len(entered)
            if entered:
                status.update(f"provisioning… {escape(entered[-1])}")
            if state.status in FINISHED:
                break
            time.sleep(poll_s)
    if state.status == "SUCCEEDED":
        out.print("[green]provisioned[/]")
        return 0
    err.print(f"[bold red]provision {state.status}[/]: {escape(state.error)} {escape(state.cause[:500])}")
    return EXIT_FAILED


def push(
    stack: StackOption,
    settings: Annotated[
        Path, typer.Option("--settings", "-s", help="the full settings document (YAML or JSON)", show_default=False)
    ],
    region: RegionOption = None,
    provision: Annotated[bool, typer.Option(help="start a Provision execution after storing")] = True,
    wait: Annotated[bool, typer.Option("--wait", help="follow the execution; exit 1 unless it succeeds")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="store without asking")] = False,
    poll_interval: Annotated[float, typer.Option(hidden=True)] = 5.0,
) -> None:
    """Deploy a full settings document: validate, show the change, store it, provision.

    Exit 2 (nothing stored) when it is invalid for this stack or a secret it references is missing."""
    try:
        document = read_document(settings)
        parse_settings(document, str(settings))
    except SettingsError as exc:
        raise _error(str(exc), EXIT_INVALID) from None
    aws = _aws(region)
    try:
        target = find_target(aws, stack)
        plan = plan_push(aws, target, document, str(settings))
    except SettingsError as exc:
        raise _error(str(exc), EXIT_INVALID) from None
    except (PushError, ClientError, BotoCoreError) as exc:
        raise _error(str(exc), EXIT_FAILED) from None
    _show_plan(plan)
    if plan.missing_secrets:
        raise _error(
            f"{len(plan.missing_secrets)} referenced secret(s) do not exist; create them first (nothing stored)",
            EXIT_INVALID,
        )
    if plan.unchanged:
        out.print(f"operator document v{plan.stored.version} already holds this document; nothing stored")
        return
    if not yes and not typer.confirm("store this document and provision?", default=False):
        raise _error("not confirmed; nothing stored", EXIT_FAILED)
    try:
        version = store(aws, plan)
        out.print(f"stored operator document v{version} in {escape(target.operator_parameter)}")
        if not provision:
            out.print("not provisioning (--no-provision): the next Provision execution uses it")
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        execution = start_provision(aws, target, version, plan.digest, stamp)
        out.print(f"Provision started: {escape(execution)}", highlight=False)
        out.print(execution_console_url(target.region, execution), highlight=False)
        if wait:
            code = _wait(aws, execution, poll_interval)
            if code:
                raise typer.Exit(code)
    except (ClientError, BotoCoreError) as exc:
        raise _error(str(exc), EXIT_FAILED) from None


def pull(
    stack: StackOption,
    region: RegionOption = None,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None,
    template: Annotated[
        bool, typer.Option("--template", help="the template's document instead (a starting point)")
    ] = False,
) -> None:
    """Print the stack's stored operator settings document as YAML (exit 1 when none is stored)."""
    aws = _aws(region)
    try:
        target = find_target(aws, stack)
        name = target.template_parameter if template else target.operator_parameter
        found = aws.parameters.get(name)
    except (PushError, ClientError, BotoCoreError) as exc:
        raise _error(str(exc), EXIT_FAILED) from None
    if found is None:
        raise _error(
            f"no operator document in {name}: the stack runs on its template document (pull --template)", EXIT_FAILED
        )
    document: Any = json.loads(found[0])
    text = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    if out_file is None:
        typer.echo(text, nl=False)
    else:
        out_file.write_text(text, encoding="utf-8")
        out.print(f"wrote {escape(str(out_file))} (v{found[1]})")


OUTPUT_BACKUP_BUCKET = "BackupBucketName"
"""The stack output naming the bucket the hosts ship call records to (template.yaml)."""

calls_app = typer.Typer(
    help="The deployed stack's call records (from S3): recent calls, or one call in full.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _since_seconds(since: str, now: float) -> float:
    """``--since`` as an epoch time, or the usage error that names what is wrong with it."""
    try:
        return callrecords.parse_since(since, now)
    except ValueError as exc:
        raise _error(str(exc), EXIT_INVALID) from None


def _records_bucket(aws: OperatorAws, stack: str) -> str:
    info = aws.stacks.describe(stack)
    if info is None:
        raise PushError(f"stack {stack} does not exist in {aws.region}")
    bucket = info.outputs.get(OUTPUT_BACKUP_BUCKET)
    if not bucket:
        raise PushError(f"stack {stack} ({info.status}) has no output {OUTPUT_BACKUP_BUCKET}: deploy template.yaml")
    return bucket


def _text(value: object) -> Text:
    """A cell shown as it is: record values never become rich markup."""
    return Text("" if value is None else str(value))


def _talk_s(record: dict[str, Any]) -> str:
    answer, end = record.get("answer_ms"), record.get("end_ms")
    return f"{(end - answer) / 1000:.1f}" if isinstance(answer, int) and isinstance(end, int) else ""


def _ended(record: dict[str, Any]) -> str:
    end = callrecords.end_ms(record)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(end / 1000)) if end else ""


def _transfer(record: dict[str, Any]) -> str:
    """``outcome target`` of the transfer the agent asked for; empty when it asked for none."""
    transfer = record.get("transfer")
    if not isinstance(transfer, dict) or transfer.get("outcome") in (None, callrecords.NO_TRANSFER):
        return ""
    return " ".join(str(part) for part in (transfer.get("outcome"), transfer.get("target")) if part)


def _calls_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(records)} call(s), newest first (UTC)", title_justify="left")
    for column in ("ended", "call id", "entry", "caller", "called", "route", "disposition", "talk s", "pdd ms",
                   "media", "hung up by", "conversation", "transfer"):  # fmt: skip
        table.add_column(column, overflow="fold")
    for r in records:
        media = r.get("media")
        table.add_row(
            _text(_ended(r)), _text(r.get("call_id")), _text(r.get("entry")), _text(r.get("caller")),
            _text(r.get("called")), _text(r.get("route")), _text(r.get("disposition")), _text(_talk_s(r)),
            _text(r.get("pdd_ms")),
            Text(str(media), style="green" if media == callrecords.MEDIA_OK else "bold red") if media else Text(""),
            _text(r.get("hangup_by")), _text(r.get("conversation_id")), _text(_transfer(r)),
        )  # fmt: skip
    return table


def _legs_table(record: dict[str, Any]) -> Table:
    table = Table(title="media per leg and direction (rx: received by the gateway, tx: sent)", title_justify="left")
    for column in ("leg", "endpoint", "codec", "dir", "packets", "lost", "jitter ms", "mes", "cause"):
        table.add_column(column)
    for name in ("caller_leg", "callee_leg"):
        leg = record.get(name)
        if not isinstance(leg, dict):
            continue
        for way in ("rx", "tx"):
            found = leg.get(way)
            d: dict[str, Any] = found if isinstance(found, dict) else {}
            jitter = d.get("jitter_s")
            table.add_row(
                _text(name), _text(leg.get("endpoint")), _text(leg.get("codec")), _text(way), _text(d.get("packets")),
                _text(d.get("lost")), _text(f"{1000 * jitter:.1f}" if isinstance(jitter, int | float) else ""),
                _text(d.get("mes")), _text(leg.get("hangup_cause")),
            )  # fmt: skip
    return table


SinceOption = Annotated[
    str, typer.Option("--since", help="calls that ended since: a duration (30m, 2h, 7d) or a UTC time")
]


@calls_app.callback()
def calls(
    ctx: typer.Context,
    stack: Annotated[str | None, typer.Option("--stack", help="the deployed stack's name", show_default=False)] = None,
    region: RegionOption = None,
    since: SinceOption = "24h",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10000, help="at most this many calls")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON record per line instead of a table")] = False,
    conversation: Annotated[
        str | None,
        typer.Option("--conversation", help="only the call(s) of this ElevenLabs conversation id", show_default=False),
    ] = None,
) -> None:
    """List the stack's recent calls from its call records in S3, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    if not stack:
        raise _error("give --stack (the deployed stack's name)", EXIT_INVALID)
    now = time.time()
    since_s = _since_seconds(since, now)
    aws = _aws(region)
    try:
        bucket = _records_bucket(aws, stack)
        records = callrecords.recent_calls(
            aws.objects, bucket, since_s=since_s, now_s=now, limit=limit, conversation_id=conversation
        )
    except (PushError, ClientError, BotoCoreError) as exc:
        raise _error(str(exc), EXIT_FAILED) from None
    if as_json:
        for record in records:
            typer.echo(json.dumps(record, sort_keys=True))
        return
    out.print(_calls_table(records))


@calls_app.command("show")
def show_call(
    call_id: Annotated[str, typer.Argument(help="the call's id (call_id, the gateway's CALL_ID)", show_default=False)],
    stack: StackOption,
    region: RegionOption = None,
    since: Annotated[
        str, typer.Option("--since", help="where to look when the id carries no time: a duration or a UTC time")
    ] = "7d",
) -> None:
    """Print one call's record in full (exit 1 when no record has this id)."""
    now = time.time()
    since_s = _since_seconds(since, now)
    aws = _aws(region)
    try:
        bucket = _records_bucket(aws, stack)
        found = callrecords.find_call(aws.objects, bucket, call_id, since_s=since_s, now_s=now)
    except (PushError, ClientError, BotoCoreError) as exc:
        raise _error(str(exc), EXIT_FAILED) from None
    if not found:
        raise _error(f"no call record with id {call_id} in s3://{bucket}/{callrecords.S3_PREFIX}/", EXIT_FAILED)
    for record in found:
        out.print_json(json.dumps(record, sort_keys=True))
        out.print(_legs_table(record))


def register(app: typer.Typer) -> None:
    app.command()(push)
    app.command()(pull)
    app.add_typer(calls_app, name="calls")
