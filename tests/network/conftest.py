"""Fixtures of the network engine tests: the namespace lab and an engine running inside it."""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import network_lab as L
import pytest

from coi.helper.network import (
    AppliedPolicy,
    ContainerKey,
    NetworkEngine,
    NetworkTarget,
    Upstream,
    parse_policy,
)


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    for tool in ("ip", "nft", "dnsmasq"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"needs {tool}"
    return None


@pytest.fixture(scope="session")
def lab() -> Iterator[L.Lab]:
    """The namespace topology of tests/network/lab.py, built once per session."""
    missing = _requirements()
    if missing:
        pytest.skip(missing)
    the_lab = L.Lab()
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


class LabEngine:
    """A NetworkEngine living in the lab's router namespace; every call runs there."""

    def __init__(self, state_dir: Path, run_dir: Path) -> None:
        self.state_dir, self.run_dir = state_dir, run_dir
        with L.in_netns(L.RTR):
            self.engine = NetworkEngine(
                state_dir=state_dir,
                run_dir=run_dir,
                upstreams=(Upstream(ipaddress.IPv4Address(L.NET4)),),
            )

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.engine, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with L.in_netns(L.RTR):
                return method(*args, **kwargs)

        return call


def key_of(container: str) -> ContainerKey:
    """The ContainerKey of stand-in container c1 or c2."""
    return ContainerKey(project="coit-net", instance=f"coit-net-{container}")


def target_of(container: str, veth: str | None = None) -> NetworkTarget:
    """The NetworkTarget of stand-in container c1 or c2, as the IPC layer would build it."""
    return NetworkTarget(
        key=key_of(container),
        veth=veth or f"v{container}",
        bridge="br0",
        gateway4=ipaddress.IPv4Address(L.GW4),
        gateway6=ipaddress.IPv6Address(L.GW6),
    )


@pytest.fixture
def engine(lab: L.Lab, tmp_path: Path) -> Iterator[LabEngine]:
    """A fresh engine (own state and run directories); removes everything it made afterwards."""
    eng = LabEngine(tmp_path / "state", tmp_path / "run")
    try:
        yield eng
    finally:
        eng.remove_all()


@pytest.fixture
def apply(engine: LabEngine) -> Callable[..., AppliedPolicy]:
    """apply("c1", {"mode": ...}) for the stand-in containers."""

    def _apply(container: str, raw: dict[str, Any]) -> AppliedPolicy:
        result: AppliedPolicy = engine.apply(target_of(container), parse_policy(raw))
        return result

    return _apply
