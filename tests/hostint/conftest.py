"""Fixtures for host-integration tests: real Incus, real `coi` image (see hostint_harness)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostint_harness import PREFIX, leftovers

from coi.launcher.incus.client import IncusClient


@pytest.fixture(autouse=True)
def _container_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COI_CONTAINER_PREFIX", PREFIX)


@pytest.fixture(scope="session")
def client() -> IncusClient:
    if os.geteuid() != 0:
        pytest.fail("host-integration tests run as root (bash .ci/run)")
    client = IncusClient.connect()
    if client.image_by_alias("coi") is None:
        pytest.fail("image 'coi' missing: run `coi build` (bash .ci/run does)")
    return client


@pytest.fixture
def host_ws(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _no_leftover_containers(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "client" not in request.fixturenames:
        return
    client: IncusClient = request.getfixturevalue("client")
    left = leftovers(client)
    for name in left:
        client.remove_instance(name)
    assert left == [], f"containers left behind: {left}"
