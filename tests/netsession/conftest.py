"""Fixtures of the launcher's network-isolation tests (helpers live in netsession_harness)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netsession_harness import (
    HELPER_SOCKET,
    PREFIX,
    STOPPED_SOCKET,
    LabHelper,
    LabHosts,
    NsCoi,
    leftovers,
    sh,
)
from run_harness import UnixUser, ensure_user

from coi.launcher.session.naming import workspace_hash


@pytest.fixture(scope="session")
def ns_user() -> UnixUser:
    """The unprivileged run user of the CLI tests (group incus-admin, delegated)."""
    return ensure_user("coit-run", ["incus-admin"], delegate=True)


@pytest.fixture(scope="session")
def ns_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("netsession")


@pytest.fixture(scope="session")
def test_hosts(ns_workdir: Path) -> Iterator[LabHosts]:
    """The test internet, private host, gateway listener and upstream DNS server."""
    if os.geteuid() != 0:
        pytest.fail("network session tests run as root (namespaces, users); use `bash .ci/run`")
    for tool in ("incus", "ip", "dnsmasq", "nft", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run packaging/host-setup")
    if sh("incus", "image", "info", "coi", check=False).returncode != 0:
        pytest.fail("image 'coi' missing: run `coi build` (bash .ci/run does)")
    hosts = LabHosts(ns_workdir)
    try:
        hosts.up()
        yield hosts
    finally:
        hosts.down()


@pytest.fixture(scope="session")
def test_helper(ns_workdir: Path, test_hosts: LabHosts) -> Iterator[LabHelper]:
    helper = LabHelper(ns_workdir)
    helper.start()
    try:
        yield helper
    finally:
        helper.stop()


@pytest.fixture
def stopped_helper(ns_workdir: Path) -> str:
    """The socket of a helper that ran and was stopped."""
    helper = LabHelper(ns_workdir, STOPPED_SOCKET)
    helper.start()
    helper.stop()
    return STOPPED_SOCKET


@pytest.fixture
def ns_workspace(ns_user: UnixUser) -> Iterator[Path]:
    """A fresh workspace of the run user; no container of it may remain afterwards."""
    path = ns_user.home / f"ns-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    os.chown(path, ns_user.uid, ns_user.gid)
    yield path
    left = leftovers(PREFIX + workspace_hash(path))
    for name in left:
        sh("incus", "delete", "--force", name, check=False)
    shutil.rmtree(path, ignore_errors=True)
    assert left == [], f"containers left behind: {left}"


@pytest.fixture
def ns_coi(ns_user: UnixUser, test_helper: LabHelper) -> NsCoi:
    return NsCoi(ns_user, HELPER_SOCKET, {})


__all__ = ["HELPER_SOCKET"]
