"""``coi config show|validate|schema``: print and check the configuration.

Register with ``app.add_typer(config_app, name="config")``.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from coi.launcher.config.layers import ConfigValidationError
from coi.launcher.config.loader import (
    ConfigPaths,
    LoadedConfig,
    load_config,
    load_defaults,
    validate_file,
)
from coi.launcher.config.render import show_json, show_text
from coi.launcher.config.schema import json_schema
from coi.launcher.errors import CoiError

config_app = typer.Typer(
    name="config",
    help="Show the merged configuration, validate files, print the JSON Schema.",
    no_args_is_help=True,
)


class OutputFormat(StrEnum):
    """Output formats of listing commands."""

    text = "text"
    json = "json"


WorkspaceOption = Annotated[
    Path, typer.Option("--workspace", "-w", help="Workspace whose project config is read.")
]
ProfileOption = Annotated[str | None, typer.Option("--profile", help="Apply this profile.")]


def fail(err: CoiError) -> NoReturn:
    """Print a `CoiError` as one sentence (plus hint) on stderr and exit with its code."""
    typer.echo(f"coi: error: {err}", err=True)
    if err.hint:
        typer.echo(f"hint: {err.hint}", err=True)
    raise typer.Exit(err.exit_code)


def print_warnings(loaded: LoadedConfig) -> None:
    """Configuration warnings go to stderr, one per line."""
    for warning in loaded.warnings:
        typer.echo(f"coi: warning: {warning}", err=True)


@config_app.command("show")
def show(
    workspace: WorkspaceOption = Path("."),
    profile: ProfileOption = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="text or json")
    ] = OutputFormat.text,
    defaults: Annotated[
        bool, typer.Option("--defaults", help="Only the built-in defaults.")
    ] = False,
) -> None:
    """Print the merged configuration and where each value comes from."""
    try:
        loaded = (
            load_defaults()
            if defaults
            else load_config(workspace, profile=profile, cli_overrides={}, env=os.environ)
        )
    except CoiError as err:
        fail(err)
    print_warnings(loaded)
    typer.echo(show_json(loaded) if output is OutputFormat.json else show_text(loaded))


@config_app.command("validate")
def validate(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Files to check; none: every layer that applies to the workspace."),
    ] = None,
    workspace: WorkspaceOption = Path("."),
    profile: ProfileOption = None,
) -> None:
    """Check configuration files; prints file:line: key: problem and exits 1 on any problem."""
    if files:
        paths = ConfigPaths.from_env(os.environ)
        problems = [p for f in files for p in validate_file(f, paths=paths)]
        for problem in problems:
            typer.echo(str(problem), err=True)
        if problems:
            raise typer.Exit(1)
        typer.echo(f"{len(files)} file(s) valid", err=True)
        return
    try:
        loaded = load_config(workspace, profile=profile, cli_overrides={}, env=os.environ)
    except ConfigValidationError as err:
        for problem in err.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None
    except CoiError as err:
        fail(err)
    print_warnings(loaded)
    typer.echo("configuration valid", err=True)


@config_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of a configuration file."""
    typer.echo(json.dumps(json_schema(), indent=2))
