"""Each layer overrides the one before it, and every value remembers where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from coi.launcher.config import ConfigError, ConfigValidationError, load_defaults
from coi.launcher.config.schema import all_fields
from config_fixtures import Layers

# The layers in precedence order, lowest first. "profile" is a profile defined in the user
# file and selected with profile="p"; it sits between COI_CONFIG and the environment.
ORDER = ["system", "user_legacy", "user", "project", "coi_config", "profile", "env", "cli"]
SOURCE_LAYER = {
    "system": "system",
    "user_legacy": "user",
    "user": "user",
    "project": "project",
    "coi_config": "COI_CONFIG",
    "profile": "profile p",
    "env": "env",
    "cli": "cli",
}


def _set_image(layers: Layers, layer: str, image: str) -> None:
    """Make `layer` set defaults.image (not a widening setting, so the project layer applies)."""
    if layer == "env":
        layers.env["COI_DEFAULTS_IMAGE"] = image
    elif layer == "profile":
        existing = layers.path("user").read_text() if layers.path("user").exists() else ""
        layers.write("user", existing + f'\n[profiles.p.defaults]\nimage = "{image}"\n')
    elif layer != "cli":
        layers.write(layer, f'# comment\n\n[defaults]\nimage = "{image}"\n')


@pytest.mark.parametrize("top", range(len(ORDER)))
def test_each_layer_overrides_the_ones_before(layers: Layers, top: int) -> None:
    for layer in ORDER[: top + 1]:
        _set_image(layers, layer, f"img-{layer}")
    cli = {"defaults.image": "img-cli"} if ORDER[top] == "cli" else {}
    loaded = layers.load(profile="p" if top >= ORDER.index("profile") else None, cli=cli)

    assert loaded.config.defaults.image == f"img-{ORDER[top]}"
    source = loaded.sources["defaults.image"]
    assert source.layer == SOURCE_LAYER[ORDER[top]]
    if ORDER[top] in ("system", "user_legacy", "user", "project", "coi_config"):
        assert source.path == layers.path(ORDER[top]).resolve() or source.path == layers.path(
            ORDER[top]
        )
        assert source.line == 4
    # Keys no layer touched still come from the built-in defaults.
    assert loaded.sources["tool.name"].layer == "default"


def test_nothing_configured_gives_the_builtin_defaults(layers: Layers) -> None:
    loaded = layers.load()
    assert loaded.config == load_defaults().config
    assert loaded.config.network.mode == "restricted"
    assert loaded.config.limits.memory == ""
    assert {s.layer for s in loaded.sources.values()} == {"default"}


def test_defaults_file_covers_every_key() -> None:
    loaded = load_defaults()
    assert set(loaded.values) == set(all_fields())


def test_profile_line_is_reported_for_user_defined_profile(layers: Layers) -> None:
    path = layers.write("user", '[profiles.p.limits]\n\nmemory = "1GiB"\n')
    source = layers.load(profile="p").sources["limits.memory"]
    assert (source.layer, source.path, source.line) == ("profile p", path, 3)


def test_project_dir_variant_is_read(layers: Layers) -> None:
    layers.write("project_dir", '[defaults]\nimage = "from-dir"\n')
    loaded = layers.load()
    assert loaded.config.defaults.image == "from-dir"
    assert loaded.project_file is not None and loaded.project_file.name == "config.toml"


def test_dot_coi_toml_wins_over_dot_coi_dir_with_a_warning(layers: Layers) -> None:
    layers.write("project_dir", '[defaults]\nimage = "from-dir"\n')
    layers.write("project", '[defaults]\nimage = "from-file"\n')
    loaded = layers.load()
    assert loaded.config.defaults.image == "from-file"
    assert any("takes precedence" in w.message for w in loaded.warnings)


@pytest.mark.parametrize(
    ("var", "text", "key", "expected"),
    [
        ("COI_NETWORK_MODE", "allowlist", "network.mode", "allowlist"),
        ("COI_SSH_FORWARD_AGENT", "yes", "ssh.forward_agent", True),
        ("COI_DEFAULTS_PERSISTENT", "0", "defaults.persistent", False),
        ("COI_LIMITS_PROCESSES", "200", "limits.processes", 200),
        ("COI_LIMITS_CPU_ALLOWANCE", "25ms/100ms", "limits.cpu_allowance", "25ms/100ms"),
        ("COI_NETWORK_ALLOWED_PORTS", "443, 22", "network.allowed_ports", (443, 22)),
        (
            "COI_NETWORK_ALLOWED_DOMAINS",
            '["a.example", "*.b.example"]',
            "network.allowed_domains",
            ("a.example", "*.b.example"),
        ),
        ("COI_ENV_FORWARD", "A,B", "env.forward", ("A", "B")),
    ],
)
def test_environment_values_are_parsed_by_type(
    layers: Layers, var: str, text: str, key: str, expected: object
) -> None:
    loaded = layers.load(**{var: text})
    assert loaded.values[key] == expected
    assert str(loaded.sources[key]) == f"env ({var})"


def test_environment_table_value(layers: Layers) -> None:
    loaded = layers.load(COI_ENV_SET="A=1,B=x=y")
    assert dict(loaded.config.env.set) == {"A": "1", "B": "x=y"}


@pytest.mark.parametrize(
    ("var", "text", "fragment"),
    [
        ("COI_SSH_FORWARD_AGENT", "maybe", "not a boolean"),
        ("COI_LIMITS_PROCESSES", "many", "not an integer"),
        ("COI_NETWORK_MODE", "opne", 'did you mean "open"'),
        ("COI_LIMITS_MEMORY", "2 gigs", "unknown unit"),
    ],
)
def test_bad_environment_values_name_the_variable(
    layers: Layers, var: str, text: str, fragment: str
) -> None:
    with pytest.raises(ConfigValidationError) as info:
        layers.load(**{var: text})
    assert str(info.value).startswith(f"{var}: ")
    assert fragment in str(info.value)


def test_unknown_environment_key_is_a_warning_with_suggestion(layers: Layers) -> None:
    loaded = layers.load(COI_NETWORK_MOOD="open", COI_CONTAINER_PREFIX="coi-test-")
    assert loaded.config.network.mode == "restricted"
    [warning] = loaded.warnings
    assert 'did you mean "COI_NETWORK_MODE"' in warning.message


def test_cli_lists_add_to_the_files(layers: Layers) -> None:
    data = layers.root / "data"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    layers.write(
        "user",
        f"""
        [mounts]
        default = [{{host = "{data / "a"}", container = "/mnt/a", readonly = true}}]
        [env]
        forward = ["TERM"]
        set = {{A = "1"}}
        """,
    )
    loaded = layers.load(
        cli={
            "mounts.default": [f"{data / 'b'}:/mnt/b"],
            "env.forward": ["LANG", "TERM"],
            "env.set": ["B=2"],
            "network.mode": None,  # a flag that was not given
        }
    )
    mounts = loaded.config.mounts.default
    assert [(str(m.container), m.readonly) for m in mounts] == [("/mnt/a", True), ("/mnt/b", False)]
    assert loaded.config.env.forward == ("TERM", "LANG")
    assert dict(loaded.config.env.set) == {"A": "1", "B": "2"}
    assert loaded.config.network.mode == "restricted"


def test_cli_scalar_strings_are_parsed(layers: Layers) -> None:
    loaded = layers.load(cli={"ssh.forward_agent": "true", "limits.processes": "50"})
    assert loaded.config.ssh.forward_agent is True
    assert loaded.config.limits.processes == 50


def test_unknown_cli_key_suggests(layers: Layers) -> None:
    with pytest.raises(ConfigError, match=r'did you mean "limits\.memory"'):
        layers.load(cli={"limits.memroy": "1GiB"})


def test_missing_coi_config_file_is_an_error(layers: Layers) -> None:
    with pytest.raises(ConfigError, match="COI_CONFIG"):
        layers.load(COI_CONFIG=str(layers.root / "nope.toml"))


def test_paths_come_from_the_environment_not_the_real_host(layers: Layers) -> None:
    # The system file named by COI_SYSTEM_CONFIG is read; /etc/coi is not consulted.
    layers.write("system", "[audit]\nretention_days = 7\n")
    loaded = layers.load()
    assert loaded.config.audit.retention_days == 7
    assert loaded.sources["audit.retention_days"].path == Path(layers.env["COI_SYSTEM_CONFIG"])
