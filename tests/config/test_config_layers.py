"""Each layer overrides the one before it, and every value remembers where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_fixtures import Layers

from coi.launcher.config import ConfigError, ConfigValidationError, flag_overrides, load_defaults
from coi.launcher.config.schema import all_fields

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


def test_flag_overrides_map_every_flag_to_its_key(layers: Layers) -> None:
    data = layers.root / "data"
    data.mkdir()
    overrides = flag_overrides(
        network="allowlist",
        ssh_agent=True,
        forward_env=["LANG,TERM", "EDITOR"],
        env=["A=1"],
        mounts=[f"{data}:/mnt/data:ro"],
        monitor=True,
        writable_git_hooks=True,
        persistent=True,
        tool="aider",
        image="custom",
        limit_cpu="2",
        limit_cpu_allowance="50%",
        limit_memory="2GiB",
        limit_memory_swap=False,
        limit_disk_read="10MiB",
        limit_disk_write="10MiB",
        limit_disk_max="20MiB",
        limit_disk_size="20GiB",
        limit_processes=100,
        limit_duration="20s",
    )
    assert set(overrides) <= set(all_fields())
    loaded = layers.load(cli=overrides)
    cfg = loaded.config
    assert cfg.network.mode == "allowlist" and cfg.ssh.forward_agent
    assert cfg.env.forward == ("LANG", "TERM", "EDITOR") and dict(cfg.env.set) == {"A": "1"}
    assert cfg.mounts.default[0].readonly and cfg.monitoring.enabled
    assert cfg.security.writable_git_hooks and cfg.defaults.persistent
    assert (cfg.tool.name, cfg.defaults.image) == ("aider", "custom")
    assert (cfg.limits.duration, cfg.limits.processes, cfg.limits.memory_swap) == (
        "20s",
        100,
        False,
    )
    assert all(loaded.sources[k].layer == "cli" for k in overrides)


def test_flags_not_given_leave_the_files_alone(layers: Layers) -> None:
    layers.write("user", '[ssh]\nforward_agent = true\n[network]\nmode = "open"\n')
    assert flag_overrides() == {}
    cfg = layers.load(cli=flag_overrides(ssh_agent=False)).config
    assert cfg.ssh.forward_agent and cfg.network.mode == "open"


def test_bad_flag_value_is_one_sentence(layers: Layers) -> None:
    with pytest.raises(ConfigError, match=r"^limits\.duration: '20 seconds' is not a duration"):
        layers.load(cli=flag_overrides(limit_duration="20 seconds"))
