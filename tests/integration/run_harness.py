"""Helpers for end-to-end tests of the `coi` CLI against the real Incus of this host.

Tests run `coi` as a real, unprivileged Unix user created here (`coit-run`, in group
incus-admin for the admin socket), never as root, so file ownership and socket access are
checked the way users meet them. They need a host prepared by `packaging/host-setup` and the
`coi` image (`.ci/run` builds it); without them they fail, they do not skip silently.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Sequence
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
class UnixUser:
    name: str
    uid: int
    gid: int
    home: Path


def ensure_user(name: str, groups: Sequence[str], *, delegate: bool) -> UnixUser:
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
    return UnixUser(name, entry.pw_uid, entry.pw_gid, home)


class Coi:
    """Runs the real `coi` console script as a given user."""

    def __init__(self, user: UnixUser) -> None:
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
