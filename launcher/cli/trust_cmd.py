"""``coi trust [PATH]``, ``coi trust --list``, ``coi untrust [PATH]``.

Register with ``app.command("trust")(trust)`` and ``app.command("untrust")(untrust)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from coi.launcher.cli.config_cmd import OutputFormat, fail
from coi.launcher.config.layers import ConfigValidationError, parse_config, read_file
from coi.launcher.config.loader import ConfigPaths, find_project_file
from coi.launcher.config.schema import CoerceContext
from coi.launcher.config.trust import TrustStore, file_sha256
from coi.launcher.errors import CoiError, ConfigError

PathArgument = Annotated[
    Path | None,
    typer.Argument(help="A project config file, or a workspace (default: the current directory)."),
]


def _project_file(path: Path | None) -> Path:
    """The project file named by `path`, spelled as `load_config` looks it up."""
    target = Path(path or ".")
    if target.is_dir():
        found: Path | None = find_project_file(Path(os.path.realpath(target)))[0]
        if found is None:
            raise ConfigError(
                f"{str(target)!r} has no .coi.toml or .coi/config.toml to trust",
                hint="pass the config file's path",
            )
        return found
    if not target.is_file():
        raise ConfigError(f"{str(target)!r} is not a file or a workspace directory")
    return Path(os.path.realpath(target.parent)) / target.name


def _store() -> TrustStore:
    return TrustStore(ConfigPaths.from_env(os.environ).trust_store)


def trust(
    path: PathArgument = None,
    list_: Annotated[bool, typer.Option("--list", help="List trusted files.")] = False,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="text or json (with --list)")
    ] = OutputFormat.text,
) -> None:
    """Trust a project config file as it is now: its settings that widen the sandbox then apply
    (until the file changes)."""
    try:
        store = _store()
        if list_:
            _list(store, output)
            return
        file = _project_file(path)
        data = read_file(file)
        try:
            layer = parse_config(
                data, layer="project", path=file, ctx=CoerceContext(base_dir=file.parent)
            )
        except ConfigValidationError as err:
            raise ConfigError(f"not trusting an invalid file: {err}", hint=err.hint) from None
        digest = layer.sha256 or ""
        store.trust(file, digest)
    except CoiError as err:
        fail(err)
    typer.echo(f"trusted {file} (sha256 {digest[:16]}…); editing it revokes the trust", err=True)


def _list(store: TrustStore, output: OutputFormat) -> None:
    rows = []
    for name, digest in sorted(store.entries().items()):
        file = Path(name)
        try:
            state = "trusted" if file_sha256(file) == digest else "changed"
        except FileNotFoundError:
            state = "missing"
        except OSError:
            state = "unreadable"
        rows.append({"path": name, "sha256": digest, "state": state})
    if output is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['state']:<10} {row['sha256'][:16]}  {row['path']}")


def untrust(path: PathArgument = None) -> None:
    """Stop trusting a project config file."""
    try:
        target = Path(path or ".")
        file = _project_file(target) if target.exists() else Path(os.path.abspath(target))
        removed = _store().untrust(file)
    except CoiError as err:
        fail(err)
    if not removed:
        typer.echo(f"{file} was not trusted", err=True)
        raise typer.Exit(1)
    typer.echo(f"no longer trusting {file}", err=True)
