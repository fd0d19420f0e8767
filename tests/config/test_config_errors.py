"""Malformed TOML, wrong types and unknown keys are reported as file:line: key: problem."""

from __future__ import annotations

import pytest
import typer
from config_fixtures import Layers
from typer.testing import CliRunner

from coi.launcher.config import ConfigError, ConfigValidationError, validate_file
from coi.launcher.errors import CoiError


def _problems(layers: Layers) -> list[str]:
    with pytest.raises(ConfigValidationError) as info:
        layers.load()
    assert isinstance(info.value, ConfigError) and isinstance(info.value, CoiError)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ('[network]\nmode = "open\n', 2, "TOML syntax error"),
        ("[network]\n\n\nmode = = 1\n", 4, "TOML syntax error"),
        ("[network\nmode = 1\n", 1, "TOML syntax error"),
        ("[a]\nx = 1\n[a]\ny = 2\n", 3, "TOML syntax error"),
    ],
)
def test_malformed_toml_gives_file_line_column(
    layers: Layers, text: str, line: int, expected: str
) -> None:
    path = layers.write("user", text)
    [problem] = _problems(layers)
    assert problem.startswith(f"{path}:{line}:")
    assert expected in problem


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("[network]\nmode = 5\n", 2, "network.mode", 'expected one of "restricted"'),
        ('# x\n[network]\nmode = "opne"\n', 3, "network.mode", 'did you mean "open"'),
        ('[ssh]\nforward_agent = "yes"\n', 2, "ssh.forward_agent", "expected true or false"),
        ("[limits]\ncpu = 2\n", 2, "limits.cpu", "expected a string, got an integer (2)"),
        ('[limits]\nmemory = "2 gigs"\n', 2, "limits.memory", "unknown unit"),
        ('[limits]\nduration = "2 hours"\n', 2, "limits.duration", "not a duration"),
        ('[limits]\ncpu = "3-1"\n', 2, "limits.cpu", "reversed"),
        ('[limits]\ncpu_allowance = "150%"\n', 2, "limits.cpu_allowance", "out of range"),
        ('[limits]\ndisk_read = "fast"\n', 2, "limits.disk_read", "not a disk rate"),
        ("[limits]\nprocesses = -1\n", 2, "limits.processes", "below the minimum 0"),
        ("[network]\nallowed_ports = [80, 70000]\n", 2, "network.allowed_ports[1]", "not a port"),
        (
            '[network]\nallowed_domains = ["ok.example", "bad domain"]\n',
            2,
            "network.allowed_domains[1]",
            "not a domain",
        ),
        ('[security]\nprotected_paths = ["../outside"]\n', 2, "security.protected_paths[0]", ".."),
        ('[security]\nsecret_paths = ["/etc/passwd"]\n', 2, "security.secret_paths[0]", "relative"),
        ('[env]\nforward = ["NOT-A-NAME"]\n', 2, "env.forward[0]", "not an environment variable"),
        ("[env]\nset = { A = 1 }\n", 2, "env.set.A", "expected a string"),
        ('[incus]\ncode_user = "Root User"\n', 2, "incus.code_user", "not a valid user name"),
        ("network = 3\n", 1, "network", "must be a table"),
        ('network.mode = "x"\n', 1, "network.mode", "is not one of"),
    ],
)
def test_wrong_type_or_value_gives_file_line_key(
    layers: Layers, text: str, line: int, key: str, fragment: str
) -> None:
    path = layers.write("system", text)
    [problem] = _problems(layers)
    assert problem.startswith(f"{path}:{line}: {key}: "), problem
    assert fragment in problem


def test_array_of_tables_entries_are_located(layers: Layers) -> None:
    path = layers.write(
        "user",
        """
        [[network.hosts]]
        host = "git.internal.example"
        ports = [22]

        [[network.hosts]]
        host = "10.0.0.0/8"
        ports = [443, 0]
        """,
    )
    [problem] = _problems(layers)
    assert problem.startswith(f"{path}:7: network.hosts[1].ports[1]: ")


def test_multiline_string_does_not_confuse_the_line_finder(layers: Layers) -> None:
    # The string's lines look like a key and a table header; they must not count as such.
    path = layers.write(
        "user",
        '''
        [defaults]
        model = """
        image = 1
        [limits]
        """
        image = 7
        ''',
    )
    [problem] = _problems(layers)
    assert problem.startswith(f"{path}:6: defaults.image: ")


@pytest.mark.parametrize(
    ("text", "line", "key", "suggestion"),
    [
        ('[netwrok]\nmode = "open"\n', 1, "netwrok", '"network"'),
        (
            '[network]\nallowed_domain = ["a.example"]\n',
            2,
            "network.allowed_domain",
            '"allowed_domains"',
        ),
        ('[limits]\nmemroy = "1GiB"\n', 2, "limits.memroy", '"memory"'),
        (
            '[[network.hosts]]\nhost = "a.example"\nprots = [1]\n',
            3,
            "network.hosts[0].prots",
            '"ports"',
        ),
        ('[profiles.x]\ninherit = "hardened"\n', 2, "profiles.x.inherit", '"inherits"'),
    ],
)
def test_unknown_keys_suggest_the_closest(
    layers: Layers, text: str, line: int, key: str, suggestion: str
) -> None:
    path = layers.write("user", text)
    [problem] = _problems(layers)
    assert problem.startswith(f"{path}:{line}: {key}: unknown ")
    assert f"did you mean {suggestion}?" in problem


def test_unknown_key_without_close_match_has_no_suggestion(layers: Layers) -> None:
    layers.write("user", "[network]\nzzzzqqq = 1\n")
    [problem] = _problems(layers)
    assert "did you mean" not in problem


def test_all_problems_of_a_file_are_listed(layers: Layers) -> None:
    path = layers.write(
        "user",
        """
        [network]
        mode = "wide"
        [limits]
        memory = "lots"
        [ssh]
        forward_agnet = true
        """,
    )
    problems = _problems(layers)
    assert [p.split(": ")[0] for p in problems] == [f"{path}:2", f"{path}:4", f"{path}:6"]


def test_missing_required_key_in_a_record(layers: Layers) -> None:
    path = layers.write("user", "[[network.hosts]]\nports = [22]\n")
    [problem] = _problems(layers)
    assert problem.startswith(f"{path}:1: network.hosts[0]: ")
    assert 'missing required key "host"' in problem


def test_non_utf8_file(layers: Layers) -> None:
    path = layers.path("user")
    path.parent.mkdir(parents=True)
    path.write_bytes(b'[defaults]\nimage = "\xff"\n')
    [problem] = _problems(layers)
    assert problem.startswith(f"{path}: ") and "UTF-8" in problem


def test_validate_file_returns_problems_without_raising(layers: Layers) -> None:
    good = layers.write("user", '[network]\nmode = "allowlist"\n')
    bad = layers.write("system", "[limits]\nmemory = 5\n")
    assert validate_file(good) == []
    [problem] = validate_file(bad)
    assert (problem.path, problem.line, problem.key) == (bad, 2, "limits.memory")


def test_cli_validate_lists_problems_and_exits_1(
    layers: Layers, cli: typer.Typer, runner: CliRunner
) -> None:
    good = layers.write("user", '[network]\nmode = "allowlist"\n')
    bad = layers.write("system", '[network]\nmode = "opne"\n[ssh]\nforward = true\n')
    result = runner.invoke(cli, ["config", "validate", str(good), str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:2: network.mode: " in result.stderr
    assert f"{bad}:4: ssh.forward: unknown key" in result.stderr
    assert str(good) not in result.stderr

    result = runner.invoke(cli, ["config", "validate", str(good)])
    assert result.exit_code == 0, result.output


def test_cli_validate_without_files_checks_every_layer(
    layers: Layers, cli: typer.Typer, runner: CliRunner
) -> None:
    assert runner.invoke(cli, ["config", "validate"]).exit_code == 0
    project = layers.write("project", "[limits]\nprocesses = true\n")
    result = runner.invoke(cli, ["config", "validate"])
    assert result.exit_code == 1
    assert f"{project}:2: limits.processes: expected an integer" in result.stderr


def test_cli_show_reports_an_invalid_file_as_one_sentence(
    layers: Layers, cli: typer.Typer, runner: CliRunner
) -> None:
    layers.write("user", "[network]\nmode = 1\n")
    result = runner.invoke(cli, ["config", "show"])
    assert result.exit_code == 1
    assert result.stderr.startswith("coi: error: ")
    assert "Traceback" not in result.output
