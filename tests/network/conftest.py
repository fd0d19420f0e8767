"""Fixtures of the network engine tests: the namespace lab and an engine running inside it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import network_lab as L
import pytest
from network_lab import LabEngine, target_of

from coi.helper.network import (
    AppliedPolicy,
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
