"""Fixtures for end-to-end tests of the `coi` CLI against the real Incus of this host.

Tests run `coi` as a real, unprivileged Unix user created here (`coit-run`, in group
incus-admin for the admin socket), never as root, so file ownership and socket access are
checked the way users meet them. They need a host prepared by `packaging/host-setup` and the
`coi` image (`.ci/run` builds it); without them they fail, they do not skip silently.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COI = str(Path(sys.executable).with_name("coi"))
PREFIX = "coi-test-run-"


def sh(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, text=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def incus_names(prefix: str) -> list[str]:
    out = sh("incus", "list", "--format", "csv", "--columns", "n").stdout.split()
    return [n for n in out if n.startswith(prefix)]


@dataclass(frozen=True)
class TestUser:
    name: str
    uid: int
    gid: int
    home: Path


def ensure_user(name: str, groups: Sequence[str], *, delegate: bool) -> TestUser:
    """Create (once) a real Unix user; `delegate` lets Incus map it (host-setup --user)."""
    if os.geteuid() != 0:
        pytest.fail("integration tests run as root (they create Unix users); use `bash .ci/run`")
    try:
        pwd.getpwnam(name)
    except KeyError:
        sh("useradd", "--create-home", "--shell", "/bin/bash", name)
    for group in groups:
        sh("usermod", "-aG", group, name)
    entry = pwd.getpwnam(name)
    home = Path(entry.pw_dir)
    os.chmod(home, 0o755)
    if delegate:
        line_u = f"root:{entry.pw_uid}:1"
        line_g = f"root:{entry.pw_gid}:1"
        if (
            line_u not in Path("/etc/subuid").read_text().split()
            or line_g not in Path("/etc/subgid").read_text().split()
        ):
            # Delegation needs an incusd restart, which stops every container on the host:
            # .ci/run does it before any test starts (never in the middle of a run).
            pytest.fail(
                f"{name} is not delegated to Incus: run "
                f"`packaging/host-setup --no-image --admin --user {name}` before the tests"
            )
    return TestUser(name, entry.pw_uid, entry.pw_gid, home)


@pytest.fixture(scope="session")
def run_user() -> TestUser:
    """An unprivileged user in group incus-admin, delegated for raw.idmap."""
    return ensure_user("coit-run", ["incus-admin"], delegate=True)


@pytest.fixture(scope="session")
def outsider() -> TestUser:
    """A user in no incus group at all."""
    return ensure_user("coit-outsider", [], delegate=False)


@pytest.fixture(scope="session")
def coi_image() -> str:
    """The `coi` image must exist (built by `.ci/run` with `coi build`)."""
    if sh("incus", "image", "info", "coi", check=False).returncode != 0:
        pytest.fail("image 'coi' missing: run `coi build` (bash .ci/run does)")
    return "coi"


@pytest.fixture
def workspace(run_user: TestUser) -> Iterator[Path]:
    """A fresh workspace owned by the run user, under its home; checked for leftovers."""
    path = run_user.home / f"ws-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    os.chown(path, run_user.uid, run_user.gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Coi:
    """Runs the real `coi` console script as a given user."""

    def __init__(self, user: TestUser) -> None:
        self.user = user

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": f"{Path(COI).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.user.home),
            "USER": self.user.name,
            "LOGNAME": self.user.name,
            "LANG": "C.UTF-8",
            "COI_CONTAINER_PREFIX": PREFIX,
        }
        env.update(extra or {})
        return env

    def argv(self, args: Sequence[str]) -> list[str]:
        return [
            "setpriv",
            f"--reuid={self.user.uid}",
            f"--regid={self.user.gid}",
            "--init-groups",
            "--reset-env",
            "--",
            "/usr/bin/env",
            *[f"{k}={v}" for k, v in self.env().items()],
            COI,
            *args,
        ]

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 180, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args),
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            cwd=cwd or self.user.home,
        )

    def popen(self, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(args),
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd or self.user.home,
        )


@pytest.fixture
def coi(run_user: TestUser) -> Coi:
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
