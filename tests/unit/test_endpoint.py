"""Which Incus socket a user gets, and the sentence when there is none."""

import socket
from pathlib import Path

import pytest

from coi.launcher.errors import IncusUnavailable
from coi.launcher.incus import endpoint


@pytest.fixture
def sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    admin = tmp_path / "unix.socket"
    user = tmp_path / "unix.socket.user"
    monkeypatch.setattr(endpoint, "ADMIN_SOCKET", str(admin))
    monkeypatch.setattr(endpoint, "USER_SOCKET", str(user))
    monkeypatch.delenv("COI_INCUS_SOCKET", raising=False)
    return admin, user


def listen(path: Path, mode: int = 0o660) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    path.chmod(mode)
    return sock


def test_admin_socket_preferred(sockets: tuple[Path, Path]) -> None:
    admin, user = sockets
    with listen(admin), listen(user):
        ep = endpoint.discover_endpoint()
    assert (ep.socket_path, ep.project, ep.mode) == (str(admin), "default", "admin")


def test_user_socket_gives_the_users_project(
    sockets: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _admin, user = sockets
    monkeypatch.setattr(endpoint.os, "getuid", lambda: 4242)
    with listen(user):
        ep = endpoint.discover_endpoint()
    assert (ep.socket_path, ep.project, ep.mode) == (str(user), "user-4242", "user")


def test_not_installed(sockets: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint.shutil, "which", lambda _name: None)
    monkeypatch.setattr(endpoint.os.path, "exists", lambda _p: False)
    with pytest.raises(IncusUnavailable, match="Incus is not installed") as err:
        endpoint.discover_endpoint()
    assert "host-setup" in (err.value.hint or "")


def test_installed_but_not_running(
    sockets: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint.shutil, "which", lambda _name: "/usr/bin/incus")
    with pytest.raises(IncusUnavailable, match="not running") as err:
        endpoint.discover_endpoint()
    assert "systemctl start incus" in (err.value.hint or "")


def test_socket_without_access(sockets: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    admin, user = sockets
    monkeypatch.setattr(endpoint.shutil, "which", lambda _name: "/usr/bin/incus")
    monkeypatch.setattr(endpoint.os, "access", lambda _p, _m: False)
    monkeypatch.setattr(endpoint, "_in_group", lambda _g: False)
    monkeypatch.setattr(endpoint, "_configured_member", lambda _g: False)
    with listen(admin), listen(user):
        with pytest.raises(IncusUnavailable, match="not in the group incus"):
            endpoint.discover_endpoint()
        monkeypatch.setattr(endpoint, "_configured_member", lambda g: g == "incus")
        with pytest.raises(IncusUnavailable, match="login session does not have it yet") as err:
            endpoint.discover_endpoint()
    assert "newgrp incus" in (err.value.hint or "")


def test_explicit_socket_must_be_usable(
    sockets: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COI_INCUS_SOCKET", str(tmp_path / "missing.sock"))
    with pytest.raises(IncusUnavailable, match="COI_INCUS_SOCKET"):
        endpoint.discover_endpoint()
