"""The `sip-trunk` command: validate settings and render configs, for operators and CI.

Other installed distributions add sub-commands through the `sip_trunk.cli` entry-point group: each entry point
names a Typer app, registered under the entry point's name (`sip-trunk-local` adds `sip-trunk local`, the whole
product on one machine, in development checkouts only)."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from sip_trunk import operator_cli
from sip_trunk.render import UnsafeValueError, render_configs, write_rendered
from sip_trunk.settings import SettingsError, load_secrets, load_settings

app = typer.Typer(
    help="aws-sip-trunk: an Asterisk gateway between phone networks and the ElevenLabs Agents SIP trunk.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_INVALID = 2
PLUGIN_GROUP = "sip_trunk.cli"

SettingsOption = Annotated[
    Path, typer.Option("--settings", "-s", help="settings document (YAML or JSON)", show_default=False)
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    return typer.Exit(EXIT_INVALID)


@app.command()
def validate(settings: SettingsOption) -> None:
    """Check a settings document; exit 2 with field-pointing errors when it is invalid."""
    try:
        doc = load_settings(settings)
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    routes = doc.agent_routes()
    out.print(f"[green]valid[/]: deployment '{doc.name}', {len(routes)} ElevenLabs agent(s)", highlight=False)
    for route in routes:
        default = " (default)" if route.is_default else ""
        cap = f", at most {route.max_calls} calls" if route.max_calls else ""
        out.print(f"  {route.name}{default}: {route.phone_number}{cap}", highlight=False, markup=False)


@app.command()
def render(
    settings: SettingsOption,
    secrets: Annotated[
        Path, typer.Option("--secrets", help="secret values by reference (YAML or JSON)", show_default=False)
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output directory (replaced as a whole)")],
    public_address: Annotated[str | None, typer.Option(help="override network.public_address (the Elastic IP)")] = None,
) -> None:
    """Render the Asterisk and fail2ban configs and their manifest; prints the config version."""
    try:
        doc = load_settings(settings)
        resolved = load_secrets(secrets)
        rendered = render_configs(doc, resolved, public_address=public_address)
    except (SettingsError, UnsafeValueError) as exc:
        raise _fail(str(exc)) from None
    write_rendered(rendered, out_dir)
    for name in rendered.files:
        out.print(f"  {name}", highlight=False)
    out.print(f"config version [bold]{rendered.version}[/] written to {out_dir}")


operator_cli.register(app)  # push, pull: the operator's settings document on a deployed stack


def _add_plugins() -> None:
    """Register the sub-apps that installed distributions contribute (none in a product install)."""
    for entry_point in entry_points(group=PLUGIN_GROUP):
        sub_app = entry_point.load()
        if not isinstance(sub_app, typer.Typer):
            raise TypeError(f"entry point {entry_point.value} ({PLUGIN_GROUP}) is not a typer.Typer")
        app.add_typer(sub_app, name=entry_point.name)


_add_plugins()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":
    main()
