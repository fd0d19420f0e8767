"""Fixtures of the incus-user mode tests (helpers live in usermode_harness.py)."""

from __future__ import annotations

import grp
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from usermode_harness import (
    HELPER_BIN,
    PREFIX,
    USERS,
    UnixUser,
    UserCoi,
    ensure_user,
    project_of,
    remove_leftovers,
    sh,
)


def _check_only_incus(user: UnixUser) -> None:
    groups = {g.gr_name for g in grp.getgrall() if user.name in g.gr_mem}
    assert "incus" in groups, f"{user.name} must be in group incus"
    forbidden = groups & {"incus-admin", "sudo", "wheel", "adm", "root"}
    assert not forbidden, f"{user.name} must not be in {sorted(forbidden)}"


@pytest.fixture(scope="session")
def provisioned() -> dict[str, UnixUser]:
    """coit-uma and coit-umb, group incus only, provisioned with `coi-helper provision-user`.

    Idempotent: a second run changes nothing and does not restart incus-user. The projects
    stay after the tests (no containers: each test checks for leftovers).
    """
    if sh("incus", "image", "info", "coi", check=False).returncode != 0:
        pytest.fail("image 'coi' missing in the default project: run `coi build` (scripts/test)")
    users: dict[str, UnixUser] = {}
    for name in USERS:
        user = ensure_user(name, ["incus"], delegate=True)
        _check_only_incus(user)
        result = sh(HELPER_BIN, "provision-user", name, check=False)
        assert result.returncode == 0, result.stderr
        users[name] = user
    return users


@pytest.fixture(scope="session")
def uma(provisioned: dict[str, UnixUser]) -> UnixUser:
    return provisioned["coit-uma"]


@pytest.fixture(scope="session")
def umb(provisioned: dict[str, UnixUser]) -> UnixUser:
    return provisioned["coit-umb"]


@pytest.fixture
def coi_a(uma: UnixUser) -> UserCoi:
    return UserCoi(uma)


@pytest.fixture
def coi_b(umb: UnixUser) -> UserCoi:
    return UserCoi(umb)


def _workspace(user: UnixUser) -> Path:
    path = user.home / f"um-ws-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    os.chown(path, user.uid, user.gid)
    return path


@pytest.fixture
def ws_a(uma: UnixUser) -> Iterator[Path]:
    """A fresh workspace under coit-uma's home."""
    path = _workspace(uma)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ws_b(umb: UnixUser) -> Iterator[Path]:
    """A fresh workspace under coit-umb's home."""
    path = _workspace(umb)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def no_leftovers(provisioned: dict[str, UnixUser]) -> Iterator[None]:
    """After the test, neither user's project may hold a container of these tests."""
    yield
    left = [n for u in provisioned.values() for n in remove_leftovers(project_of(u), PREFIX)]
    assert left == [], f"containers left behind: {left}"
