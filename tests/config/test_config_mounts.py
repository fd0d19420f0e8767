"""Mount specs: parsing, and refusing mounts that would expose the host (symlinks resolved)."""

from __future__ import annotations

import os
import socket
from pathlib import Path, PurePosixPath

import pytest
from config_fixtures import Layers

from coi.launcher.config import ConfigError, MountSpec, parse_mount_spec, validate_mount


@pytest.mark.parametrize(
    ("text", "host", "container", "readonly"),
    [
        ("/srv/data:/mnt/data", "/srv/data", "/mnt/data", False),
        ("/srv/data:/mnt/data:ro", "/srv/data", "/mnt/data", True),
        ("/srv/data:/mnt/data:rw", "/srv/data", "/mnt/data", False),
        ("rel/dir:/mnt/x", "/base/rel/dir", "/mnt/x", False),
        ("~/notes:/mnt/notes:ro", "/home/u/notes", "/mnt/notes", True),
    ],
)
def test_parse_mount_spec(text: str, host: str, container: str, readonly: bool) -> None:
    spec = parse_mount_spec(text, base=Path("/base"), home=Path("/home/u"))
    assert spec == MountSpec(Path(host), PurePosixPath(container), readonly)


@pytest.mark.parametrize("text", ["/srv", "/a:/b:rx:1", ":/b", "/a:", "/a:/b:ro:x", ""])
def test_malformed_mount_specs(text: str) -> None:
    with pytest.raises(ConfigError, match="is not HOST:CONTAINER"):
        parse_mount_spec(text)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home" / "u"
    (path / "project").mkdir(parents=True)
    return path


def _check(host: Path, home: Path, container: str = "/mnt/x") -> MountSpec:
    return validate_mount(parse_mount_spec(f"{host}:{container}"), home=home)


def test_plain_directory_and_file_are_accepted(home: Path) -> None:
    (home / "project" / "f.txt").write_text("x")
    assert _check(home / "project", home).host == home / "project"
    assert _check(home / "project" / "f.txt", home, "/mnt/f.txt").host == home / "project" / "f.txt"


def test_symlink_is_resolved_to_its_target(home: Path) -> None:
    (home / "link").symlink_to(home / "project")
    assert _check(home / "link", home).host == home / "project"


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("/", "whole host filesystem"),
        ("/etc", "system directory '/etc'"),
        ("/etc/ssl", "system directory '/etc'"),
        ("/proc/self", "system directory '/proc'"),
        ("/sys", "system directory '/sys'"),
        ("/dev", "system directory '/dev'"),
    ],
)
def test_system_paths_are_refused(home: Path, target: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        _check(Path(target), home)


@pytest.mark.parametrize("target", ["/", "/etc", "/etc/ssl"])
def test_symlinks_to_system_paths_are_refused_and_named(
    home: Path, tmp_path: Path, target: str
) -> None:
    link = home / "project" / "innocent"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="through a symlink to") as info:
        _check(link, home)
    assert str(link) in str(info.value)


def test_home_wholesale_and_its_parents_are_refused(home: Path) -> None:
    with pytest.raises(ConfigError, match="whole home directory"):
        _check(home, home)
    with pytest.raises(ConfigError, match="whole host filesystem"):
        _check(home.parent, home)
    (home / "project" / "h").symlink_to(home)
    with pytest.raises(ConfigError, match="whole home directory"):
        _check(home / "project" / "h", home)
    # A symlink to the project's parent directory is the home directory too.
    (home / "project" / "dots").symlink_to(home / "project" / "..")
    with pytest.raises(ConfigError, match="whole home directory"):
        _check(home / "project" / "dots", home)


def test_symlink_chain_to_home_is_refused(home: Path, tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    b.symlink_to(home)
    a.symlink_to(b)
    with pytest.raises(ConfigError, match="whole home directory"):
        _check(a, home)


def test_missing_source_is_refused(home: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be resolved"):
        _check(home / "nope", home)
    (home / "dangling").symlink_to(home / "nope")
    with pytest.raises(ConfigError, match="cannot be resolved"):
        _check(home / "dangling", home)


def test_sockets_and_fifos_are_refused(home: Path) -> None:
    sock_path = home / "agent.sock"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        with pytest.raises(ConfigError, match="is a socket") as info:
            _check(sock_path, home)
        assert info.value.hint is not None and "--ssh-agent" in info.value.hint
    finally:
        sock.close()
    fifo = home / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="device or FIFO"):
        _check(fifo, home)


def test_device_node_is_refused_even_through_a_symlink(home: Path) -> None:
    (home / "null").symlink_to("/dev/null")
    with pytest.raises(ConfigError, match="/dev"):
        _check(home / "null", home)


@pytest.mark.parametrize(
    ("container", "fragment"),
    [
        ("relative/path", "must be absolute"),
        ("/mnt/../etc", "normal form"),
        ("/mnt//x", "normal form"),
        ("/mnt/x/", "normal form"),
        ("/mnt/./x", "normal form"),
        ("/", "system directory"),
        ("/etc", "system directory"),
        ("/usr", "system directory"),
        ("/proc/sys", "system directory"),
        ("/dev/shm", "system directory"),
        ("/workspace", "system directory"),
        ("/home/code", "system directory"),
    ],
)
def test_bad_container_paths(home: Path, container: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        _check(home / "project", home, container)


@pytest.mark.parametrize(
    "container", ["/mnt/data", "/home/code/data", "/workspace/vendor", "/opt/x"]
)
def test_good_container_paths(home: Path, container: str) -> None:
    assert str(_check(home / "project", home, container).container) == container


def test_bad_mount_in_a_file_names_the_file_and_line(layers: Layers) -> None:
    (layers.root / "link").symlink_to(layers.home)
    path = layers.write(
        "user", f'# mounts\n[mounts]\ndefault = ["{layers.root / "link"}:/mnt/home"]\n'
    )
    with pytest.raises(ConfigError) as info:
        layers.load()
    assert str(info.value).startswith(f"{path}:3: ")
    assert "whole home directory" in str(info.value)


def test_bad_container_path_in_a_file_is_a_validation_problem(layers: Layers) -> None:
    path = layers.write(
        "user", '[mounts]\ndefault = [{host = "/srv", container = "/mnt/../etc"}]\n'
    )
    with pytest.raises(ConfigError) as info:
        layers.load()
    assert str(info.value).startswith(f"{path}:2: mounts.default[0].container: ")


def test_relative_and_home_paths_in_files_are_anchored(layers: Layers) -> None:
    (layers.home / "notes").mkdir()
    config_dir = layers.system.parent
    (config_dir / "shared").mkdir(parents=True)
    layers.write("system", '[mounts]\ndefault = ["~/notes:/mnt/notes:ro", "shared:/mnt/shared"]\n')
    mounts = layers.load().config.mounts.default
    assert [m.host for m in mounts] == [layers.home / "notes", config_dir / "shared"]


def test_cli_mount_is_validated(layers: Layers) -> None:
    with pytest.raises(ConfigError, match="system directory '/etc'"):
        layers.load(cli={"mounts.default": ["/etc:/mnt/etc:ro"]})


@pytest.mark.parametrize("target", [".config", ".config/coi", ".config/coi/profiles", ".coi"])
def test_coi_own_directories_are_never_mounted(layers: Layers, target: str) -> None:
    (layers.home / target).mkdir(parents=True, exist_ok=True)
    (layers.home / ".config" / "coi").mkdir(parents=True, exist_ok=True)
    (layers.home / ".coi").mkdir(exist_ok=True)
    with pytest.raises(ConfigError, match="overlaps coi's own files"):
        layers.load(cli={"mounts.default": [f"{layers.home / target}:/mnt/x:ro"]})
    # A sibling directory is fine.
    (layers.home / ".config" / "nvim").mkdir()
    layers.load(cli={"mounts.default": [f"{layers.home / '.config' / 'nvim'}:/mnt/nvim:ro"]})
