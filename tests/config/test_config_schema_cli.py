"""JSON Schema from the model, `coi config show` and `coi config schema`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
import typer
from config_fixtures import Layers
from typer.testing import CliRunner

from coi.launcher.config import json_schema
from coi.launcher.config.loader import defaults_bytes
from coi.launcher.config.schema import all_fields


def _validator() -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_validates_the_shipped_defaults() -> None:
    _validator().validate(tomllib.loads(defaults_bytes().decode()))


def test_schema_covers_every_key() -> None:
    defs = json_schema()["$defs"]
    for key in all_fields():
        section, name = key.split(".")
        assert name in defs[section]["properties"], key
        assert defs[section]["properties"][name].get("description"), key


@pytest.mark.parametrize(
    "document",
    [
        {"netwrok": {}},
        {"network": {"mode": "wide"}},
        {"network": {"allowed_ports": ["80"]}},
        {"network": {"hosts": [{"ports": [22]}]}},
        {"limits": {"processes": -1}},
        {"ssh": {"forward_agent": "yes"}},
        {"profiles": {"x": {"inherit": "hardened"}}},
        {"mounts": {"default": ["no-colon"]}},
    ],
)
def test_schema_rejects_bad_documents(document: dict[str, object]) -> None:
    assert list(_validator().iter_errors(document))


def test_schema_accepts_both_mount_forms_and_profiles() -> None:
    _validator().validate(
        {
            "mounts": {
                "default": ["/a:/b:ro", {"host": "/a", "container": "/c", "readonly": True}]
            },
            "network": {"hosts": [{"host": "git.example", "ports": [22]}]},
            "profiles": {"p": {"inherits": "hardened", "limits": {"memory": "1GiB"}}},
        }
    )


def test_cli_schema_prints_the_schema(cli: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(cli, ["config", "schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json_schema()


def test_cli_show_text_has_values_and_sources(
    layers: Layers, cli: typer.Typer, runner: CliRunner
) -> None:
    path = layers.write("user", '[limits]\nmemory = "1GiB"\n')
    result = runner.invoke(cli, ["config", "show"], env={"COI_NETWORK_MODE": "allowlist"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(
        line.startswith('memory = "1GiB"') and line.endswith(f"# user ({path}:2)") for line in lines
    )
    assert any(
        line.startswith('mode = "allowlist"') and "env (COI_NETWORK_MODE)" in line for line in lines
    )
    assert "[network]" in lines


def test_cli_show_json_and_warnings(layers: Layers, cli: typer.Typer, runner: CliRunner) -> None:
    layers.write("project", '[network]\nmode = "open"\n')
    result = runner.invoke(cli, ["config", "show", "--format", "json", "--profile", "hardened"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["profile"] == "hardened"
    assert document["config"]["network"]["mode"] == "allowlist"
    assert document["sources"]["network.mode"] == "profile hardened"
    assert document["warnings"][0]["key"] == "network.mode"
    assert "coi: warning:" in result.stderr and "coi trust" in result.stderr


def test_cli_show_defaults_ignores_the_files(
    layers: Layers, cli: typer.Typer, runner: CliRunner
) -> None:
    layers.write("user", '[limits]\nmemory = "1GiB"\n')
    result = runner.invoke(cli, ["config", "show", "--defaults", "--format", "json"])
    document = json.loads(result.stdout)
    assert document["config"]["limits"]["memory"] == ""
    assert set(document["sources"].values()) == {"default"}
    # The defaults rendered as text are themselves valid TOML with the same values.
    text = runner.invoke(cli, ["config", "show", "--defaults"]).stdout
    parsed = tomllib.loads(text)
    assert parsed["network"] == document["config"]["network"]


def test_defaults_toml_is_package_data() -> None:
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "defaults.toml" in project["tool"]["setuptools"]["package-data"]["coi.launcher.config"]
    assert "coi.launcher.config" in project["tool"]["setuptools"]["packages"]
