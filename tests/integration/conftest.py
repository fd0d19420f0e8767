"""Fixtures for end-to-end tests of the `coi` CLI (helpers live in run_harness.py)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from run_harness import PREFIX, Coi, UnixUser, ensure_user, incus_names, sh


@pytest.fixture(scope="session")
def run_user() -> UnixUser:
    """An unprivileged user in group incus-admin, delegated for raw.idmap."""
    return ensure_user("coit-run", ["incus-admin"], delegate=True)


@pytest.fixture(scope="session")
def outsider() -> UnixUser:
    """A user in no incus group at all."""
    return ensure_user("coit-outsider", [], delegate=False)


@pytest.fixture(scope="session")
def coi_image() -> str:
    """The `coi` image must exist (built by `.ci/run` with `coi build`)."""
    if sh("incus", "image", "info", "coi", check=False).returncode != 0:
        pytest.fail("image 'coi' missing: run `coi build` (bash .ci/run does)")
    return "coi"


@pytest.fixture
def workspace(run_user: UnixUser) -> Iterator[Path]:
    """A fresh workspace owned by the run user, under its home; checked for leftovers."""
    path = run_user.home / f"ws-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    os.chown(path, run_user.uid, run_user.gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def coi(run_user: UnixUser) -> Coi:
    return Coi(run_user)


@pytest.fixture
def no_leftovers(workspace: Path) -> Iterator[None]:
    """After the test, no container of this workspace may remain."""
    from coi.launcher.session.naming import workspace_hash

    yield
    left = incus_names(PREFIX + workspace_hash(workspace))
    for name in left:
        sh("incus", "delete", "--force", name, check=False)
    assert left == [], f"containers left behind: {left}"
