"""The project file is untrusted: widening settings are dropped until `coi trust` pins it."""

from __future__ import annotations

import stat
from pathlib import Path, PurePosixPath

import pytest
import typer
from config_fixtures import Layers
from typer.testing import CliRunner

from coi.launcher.config import ConfigError, ConfigPaths, MountSpec, Source, TrustStore
from coi.launcher.config.layers import Setting
from coi.launcher.config.loader import _resolve_mounts
from coi.launcher.config.trust import file_sha256


def _trust(layers: Layers, path: Path) -> None:
    paths = ConfigPaths.from_env(layers.env)
    TrustStore(paths.trust_store).trust(path, file_sha256(path))


def _ignored(layers: Layers, key: str) -> bool:
    return any(w.key == key and "untrusted" in w.message for w in layers.load().warnings)


def test_open_network_from_project_is_ignored_until_trusted(layers: Layers) -> None:
    path = layers.write("project", '[network]\nmode = "open"\n')
    loaded = layers.load()
    assert loaded.config.network.mode == "restricted"
    [warning] = loaded.warnings
    assert warning.key == "network.mode"
    assert (warning.source.path, warning.source.line) == (path, 2)
    assert "coi trust" in warning.message and '"open"' in warning.message

    _trust(layers, path)
    loaded = layers.load()
    assert loaded.config.network.mode == "open"
    assert loaded.warnings == ()
    assert loaded.sources["network.mode"].layer == "project"


def test_host_mount_from_project_is_ignored_until_trusted(layers: Layers) -> None:
    outside = layers.root / "secrets"
    outside.mkdir()
    path = layers.write(
        "project", f'[mounts]\ndefault = [{{host = "{outside}", container = "/mnt/s"}}]\n'
    )
    loaded = layers.load()
    assert loaded.config.mounts.default == ()
    assert "outside the workspace" in loaded.warnings[0].message

    _trust(layers, path)
    [mount] = layers.load().config.mounts.default
    assert mount.host == outside and str(mount.container) == "/mnt/s"


def test_mount_inside_the_workspace_is_allowed_untrusted(layers: Layers) -> None:
    (layers.workspace / "data").mkdir()
    layers.write("project", '[mounts]\ndefault = ["data:/mnt/data:ro"]\n')
    loaded = layers.load()
    [mount] = loaded.config.mounts.default
    assert mount.host == layers.workspace / "data" and mount.readonly
    assert loaded.warnings == ()


def test_symlink_in_the_workspace_to_outside_counts_as_outside(layers: Layers) -> None:
    outside = layers.root / "elsewhere"
    outside.mkdir()
    (layers.workspace / "link").symlink_to(outside)
    layers.write("project", '[mounts]\ndefault = ["link:/mnt/x"]\n')
    loaded = layers.load()
    assert loaded.config.mounts.default == ()
    assert _ignored(layers, "mounts.default")


def test_editing_a_trusted_file_revokes_trust(layers: Layers) -> None:
    path = layers.write("project", '[network]\nmode = "open"\n')
    _trust(layers, path)
    assert layers.load().config.network.mode == "open"
    path.write_text('[network]\nmode = "open"\n# harmless-looking edit\n')
    assert layers.load().config.network.mode == "restricted"
    assert _ignored(layers, "network.mode")


# (user config, project config, key): each project setting widens what the user has.
WIDENING = [
    ("", '[network]\nmode = "open"', "network.mode"),
    ('[network]\nmode = "allowlist"', '[network]\nmode = "restricted"', "network.mode"),
    ("", '[network]\nallowed_domains = ["evil.example"]', "network.allowed_domains"),
    ("[network]\nallowed_ports = [443]", "[network]\nallowed_ports = []", "network.allowed_ports"),
    (
        "[network]\nallowed_ports = [443]",
        "[network]\nallowed_ports = [443, 22]",
        "network.allowed_ports",
    ),
    ("", "[network]\nblock_private_networks = false", "network.block_private_networks"),
    ("", "[network]\nblock_metadata_endpoint = false", "network.block_metadata_endpoint"),
    ("", '[[network.hosts]]\nhost = "10.0.0.1"', "network.hosts"),
    ("", '[env]\nforward = ["AWS_SECRET_ACCESS_KEY"]', "env.forward"),
    ("", "[ssh]\nforward_agent = true", "ssh.forward_agent"),
    ("", "[security]\nwritable_git_hooks = true", "security.writable_git_hooks"),
    ("", '[security]\nprotected_paths = [".vscode"]', "security.protected_paths"),
    (
        '[security]\nsecret_paths = [".env"]',
        "[security]\nsecret_paths = []",
        "security.secret_paths",
    ),
    ("[monitoring]\nenabled = true", "[monitoring]\nenabled = false", "monitoring.enabled"),
    ("", "[monitoring]\nauto_kill_on_critical = false", "monitoring.auto_kill_on_critical"),
    ('[limits]\nmemory = "1GiB"', '[limits]\nmemory = "4GiB"', "limits.memory"),
    ('[limits]\nmemory = "1GiB"', '[limits]\nmemory = ""', "limits.memory"),
    ('[limits]\nmemory = "1GiB"', '[limits]\nmemory = "50%"', "limits.memory"),
    ('[limits]\ncpu = "2"', '[limits]\ncpu = "0-3"', "limits.cpu"),
    (
        '[limits]\ncpu_allowance = "25%"',
        '[limits]\ncpu_allowance = "50ms/100ms"',
        "limits.cpu_allowance",
    ),
    ('[limits]\ndisk_write = "10MiB"', '[limits]\ndisk_write = "100iops"', "limits.disk_write"),
    ('[limits]\ndisk_size = "10GiB"', '[limits]\ndisk_size = "20GiB"', "limits.disk_size"),
    ("[limits]\nprocesses = 100", "[limits]\nprocesses = 0", "limits.processes"),
    ('[limits]\nduration = "1h"', '[limits]\nduration = "2h"', "limits.duration"),
    ("[limits]\nmemory_swap = false", "[limits]\nmemory_swap = true", "limits.memory_swap"),
    ("", '[incus]\nproject = "default"', "incus.project"),
    ("", '[incus]\nremote = "elsewhere"', "incus.remote"),
]


@pytest.mark.parametrize(("user", "project", "key"), WIDENING)
def test_widening_settings_are_dropped(layers: Layers, user: str, project: str, key: str) -> None:
    if user:
        layers.write("user", user + "\n")
    baseline = layers.load().values[key]
    path = layers.write("project", project + "\n")
    loaded = layers.load()
    assert loaded.values[key] == baseline
    assert [w.key for w in loaded.warnings] == [key]
    _trust(layers, path)
    trusted = layers.load()
    assert trusted.values[key] != baseline
    assert trusted.warnings == ()


NARROWING = [
    ("", '[network]\nmode = "allowlist"', "network.mode", "allowlist"),
    ('[network]\nmode = "open"', '[network]\nmode = "restricted"', "network.mode", "restricted"),
    ("", '[network]\nallowed_domains = ["github.com"]', "network.allowed_domains", ("github.com",)),
    ("", "[network]\nallowed_ports = [443]", "network.allowed_ports", (443,)),
    (
        "",
        '[security]\nprotected_paths = [".git/hooks", ".git/config", ".husky", ".vscode", ".idea"]',
        "security.protected_paths",
        (".git/hooks", ".git/config", ".husky", ".vscode", ".idea"),
    ),
    ("", '[security]\nsecret_paths = [".env*"]', "security.secret_paths", (".env*",)),
    ("[ssh]\nforward_agent = true", "[ssh]\nforward_agent = false", "ssh.forward_agent", False),
    ("", "[monitoring]\nenabled = true", "monitoring.enabled", True),
    ("", '[limits]\nmemory = "4GiB"', "limits.memory", "4GiB"),
    ('[limits]\nmemory = "4GiB"', '[limits]\nmemory = "1GiB"', "limits.memory", "1GiB"),
    ('[limits]\ncpu = "4"', '[limits]\ncpu = "0-1"', "limits.cpu", "0-1"),
    ("", '[limits]\nduration = "2h"', "limits.duration", "2h"),
    ("", "[limits]\nmemory_swap = false", "limits.memory_swap", False),
    ('[env]\nforward = ["A", "B"]', '[env]\nforward = ["A"]', "env.forward", ("A",)),
    ("", '[tool]\nname = "aider"', "tool.name", "aider"),
    ("", '[env]\nset = { DEBUG = "1" }', "env.set", {"DEBUG": "1"}),
]


@pytest.mark.parametrize(("user", "project", "key", "expected"), NARROWING)
def test_narrowing_settings_apply_untrusted(
    layers: Layers, user: str, project: str, key: str, expected: object
) -> None:
    if user:
        layers.write("user", user + "\n")
    layers.write("project", project + "\n")
    loaded = layers.load()
    assert loaded.values[key] == expected
    assert loaded.sources[key].layer == "project"
    assert loaded.warnings == ()


def test_only_the_widening_part_of_a_file_is_dropped(layers: Layers) -> None:
    layers.write(
        "project",
        '[network]\nmode = "allowlist"\nallowed_domains = ["exfil.example"]\n'
        '[limits]\nmemory = "1GiB"\n',
    )
    loaded = layers.load()
    assert loaded.config.network.mode == "allowlist"
    assert loaded.config.limits.memory == "1GiB"
    assert "exfil.example" not in loaded.config.network.allowed_domains
    assert [w.key for w in loaded.warnings] == ["network.allowed_domains"]


def test_project_profiles_are_untrusted_too(layers: Layers) -> None:
    path = layers.write("project", '[profiles.yolo.network]\nmode = "open"\n')
    loaded = layers.load(profile="yolo")
    assert loaded.config.network.mode == "restricted"
    assert [w.key for w in loaded.warnings] == ["network.mode"]
    _trust(layers, path)
    assert layers.load(profile="yolo").config.network.mode == "open"


def test_flags_and_trusted_layers_are_never_filtered(layers: Layers) -> None:
    layers.write("user", "[ssh]\nforward_agent = true\n")
    layers.write("coi_config", '[network]\nmode = "open"\n')
    loaded = layers.load(cli={"security.writable_git_hooks": True})
    assert loaded.config.ssh.forward_agent and loaded.config.network.mode == "open"
    assert loaded.config.security.writable_git_hooks
    assert loaded.warnings == ()


def test_cli_trust_list_untrust(layers: Layers, cli: typer.Typer, runner: CliRunner) -> None:
    path = layers.write("project", '[network]\nmode = "open"\n')
    assert layers.load().config.network.mode == "restricted"

    result = runner.invoke(cli, ["trust"])  # the current directory is the workspace
    assert result.exit_code == 0, result.output
    assert layers.load().config.network.mode == "open"
    store = ConfigPaths.from_env(layers.env).trust_store
    assert stat.S_IMODE(store.stat().st_mode) == 0o600

    result = runner.invoke(cli, ["trust", "--list", "--format", "json"])
    assert result.exit_code == 0
    assert '"state": "trusted"' in result.stdout and str(path) in result.stdout
    path.write_text('[network]\nmode = "open"\n\n')
    result = runner.invoke(cli, ["trust", "--list"])
    assert result.stdout.startswith("changed")

    runner.invoke(cli, ["trust", str(path)])
    assert layers.load().config.network.mode == "open"
    result = runner.invoke(cli, ["untrust", str(layers.workspace)])
    assert result.exit_code == 0, result.output
    assert layers.load().config.network.mode == "restricted"
    assert runner.invoke(cli, ["untrust"]).exit_code == 1  # nothing left to untrust


def test_cli_trust_refuses_invalid_files_and_empty_workspaces(
    layers: Layers, cli: typer.Typer, runner: CliRunner
) -> None:
    result = runner.invoke(cli, ["trust"])
    assert result.exit_code == 1 and "no .coi.toml" in result.stderr
    layers.write("project", "[network]\nmode = 1\n")
    result = runner.invoke(cli, ["trust"])
    assert result.exit_code == 1 and "invalid" in result.stderr
    assert TrustStore(ConfigPaths.from_env(layers.env).trust_store).entries() == {}


def test_untrusted_file_cannot_redefine_an_existing_profile(layers: Layers) -> None:
    path = layers.write("project", '[profiles.hardened.defaults]\nimage = "mine"\n')
    loaded = layers.load(profile="hardened")
    assert loaded.config.network.mode == "allowlist"  # the built-in definition still applies
    assert loaded.config.defaults.image == "coi"
    assert [(w.kind, w.key) for w in loaded.warnings] == [("untrusted", "profiles.hardened")]
    _trust(layers, path)
    loaded = layers.load(profile="hardened")
    assert loaded.config.defaults.image == "mine"
    assert loaded.config.network.mode == "restricted"  # the trusted redefinition replaces it


def test_mount_swapped_for_a_symlink_after_the_trust_check_is_refused(layers: Layers) -> None:
    outside = layers.root / "outside"
    outside.mkdir()
    inside = layers.workspace / "data"
    inside.mkdir()
    spec = MountSpec(inside, PurePosixPath("/mnt/data"))
    merged = {"mounts.default": Setting((spec,), Source("project"))}
    # The agent replaces the checked directory by a symlink before the mount is resolved.
    inside.rmdir()
    inside.symlink_to(outside)
    with pytest.raises(ConfigError, match="changed while the configuration was read"):
        _resolve_mounts(merged, ConfigPaths.from_env(layers.env), layers.workspace, {spec})
    # Not pinned (a trusted layer's mount): the outside target is allowed.
    _resolve_mounts(merged, ConfigPaths.from_env(layers.env), layers.workspace, set())
    assert merged["mounts.default"].value[0].host == outside
