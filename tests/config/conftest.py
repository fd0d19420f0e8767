"""Fixtures: every configuration layer in its own temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from config_fixtures import Layers
from typer.testing import CliRunner

from coi.launcher.cli.config_cmd import config_app
from coi.launcher.cli.trust_cmd import trust, untrust


@pytest.fixture
def layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layers:
    """Empty layers under tmp_path; os.environ is pointed at them too (for CLI tests)."""
    home = tmp_path / "home" / "user"
    workspace = home / "src" / "project"
    workspace.mkdir(parents=True)
    result = Layers(
        root=tmp_path,
        home=home,
        workspace=workspace,
        system=tmp_path / "etc" / "coi" / "config.toml",
    )
    result.env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "COI_SYSTEM_CONFIG": str(result.system),
    }
    for name in list(os.environ):
        if name.startswith("COI_"):
            monkeypatch.delenv(name)
    for name, value in result.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(workspace)
    return result


@pytest.fixture
def cli() -> typer.Typer:
    """A root app with the commands registered the way the lead's app.py does."""
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """coi (test root)."""

    app.add_typer(config_app, name="config")
    app.command("trust")(trust)
    app.command("untrust")(untrust)
    return app


@pytest.fixture
def runner() -> CliRunner:
    """A Click runner (stderr kept separate)."""
    return CliRunner()
