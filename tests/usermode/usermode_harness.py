"""Helpers for the incus-user mode tests: `coi` run by users who are only in group `incus`.

The users (`coit-uma`, `coit-umb`) reach Incus through the incus-user socket and their own
restricted project `user-<uid>`, provisioned by `coi-helper provision-user`. They must already
be delegated for raw.idmap (`root:<uid>:1` in /etc/subuid and /etc/subgid, read by incusd at
start): scripts/test does that before any test runs, because adding a delegation later means
restarting incusd in the middle of other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

# Re-exported so that test modules import one harness (run_harness needs the path above).
from run_harness import COI, Coi, UnixUser, sh
from run_harness import ensure_user as ensure_user

PREFIX = "coi-test-um-"
# The console scripts next to the test interpreter; COI_TEST_BIN points elsewhere when the
# test venv is private (e.g. under /root, which the test users cannot enter).
COI_BIN = os.environ.get("COI_TEST_BIN") or COI
PYTHON = str(Path(COI_BIN).with_name("python"))
HELPER_BIN = str(Path(COI_BIN).with_name("coi-helper"))
USERS = ("coit-uma", "coit-umb")


def project_of(user: UnixUser) -> str:
    """The incus-user project of a user."""
    return f"user-{user.uid}"


class UserCoi(Coi):
    """`coi` as an incus-user user, with this area's container prefix."""

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # A helper on another socket (e.g. a newer one during development) reaches coi too.
        passed = {k: os.environ[k] for k in ("COI_HELPER_SOCKET",) if k in os.environ}
        return super().env({"COI_CONTAINER_PREFIX": PREFIX, **passed, **(extra or {})})

    def argv(self, args: Sequence[str]) -> list[str]:
        argv = super().argv(args)
        argv[argv.index(COI)] = COI_BIN
        return argv

    def as_user(
        self, argv: Sequence[str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Any command as this user (same identity and environment as `coi`)."""
        full = self.argv(["--"])
        cut = full.index(COI_BIN)
        return subprocess.run(
            [*full[:cut], *argv],
            text=True,
            capture_output=True,
            timeout=timeout,
            cwd=self.user.home,
        )

    def incus(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The `incus` CLI as this user (it falls back to the incus-user socket)."""
        return self.as_user(["incus", *args])

    def python(self, code: str, *args: str) -> dict[str, Any]:
        """Run a Python snippet as this user with coi importable; its last stdout line as JSON."""
        result = self.as_user([PYTHON, "-c", textwrap.dedent(code), *args])
        assert result.returncode == 0, result.stderr
        parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return parsed


def instance_names(project: str, prefix: str = PREFIX) -> list[str]:
    """Containers of `project` (seen as root) whose name starts with `prefix`."""
    out = sh(
        "incus", "list", "--project", project, "--format", "csv", "--columns", "n"
    ).stdout.split()
    return [n for n in out if n.startswith(prefix)]


def wait_for_instance(project: str, prefix: str, timeout: float = 90) -> str:
    """The first container of `project` starting with `prefix`, waiting until it is running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = sh(
            "incus", "list", "--project", project, "--format", "csv", "--columns", "ns"
        ).stdout.split()
        for row in running:
            name, _, status = row.partition(",")
            if name.startswith(prefix) and status == "RUNNING":
                return name
        time.sleep(0.2)
    raise AssertionError(f"no running container {prefix}* in {project} after {timeout} s")


def remove_leftovers(project: str, prefix: str = PREFIX) -> list[str]:
    """Delete (as root) containers of `project` starting with `prefix`; their names."""
    left = instance_names(project, prefix)
    for name in left:
        sh("incus", "delete", "--force", "--project", project, name, check=False)
    return left


def image_fingerprint(alias: str, project: str = "default") -> str:
    """Fingerprint behind an alias in a project, or '' if there is none."""
    result = sh(
        "incus", "image", "alias", "list", "--project", project, "--format", "json", check=False
    )
    if result.returncode != 0:
        return ""
    for entry in json.loads(result.stdout):
        if entry.get("name") == alias:
            return str(entry.get("target", ""))
    return ""


def has_image(fingerprint: str, project: str) -> bool:
    """True if `project` holds an image record with this fingerprint."""
    out = sh("incus", "image", "list", "--project", project, "--format", "json").stdout
    return any(i.get("fingerprint") == fingerprint for i in json.loads(out))


def tiny_image(directory: Path, tag: str) -> str:
    """Import (as root, default project) a minimal distinct image; its fingerprint."""
    root = directory / tag
    (root / "rootfs").mkdir(parents=True)
    (root / "metadata.yaml").write_text(
        "architecture: x86_64\n"
        f"creation_date: {int(time.time())}\n"
        f"properties:\n  description: coi usermode test image {tag} {os.urandom(4).hex()}\n"
    )
    sh("tar", "-C", str(root), "-czf", str(root / "meta.tar.gz"), "metadata.yaml")
    sh("tar", "-C", str(root / "rootfs"), "-czf", str(root / "rootfs.tar.gz"), ".")
    out = sh(
        "incus", "image", "import", str(root / "meta.tar.gz"), str(root / "rootfs.tar.gz")
    ).stdout
    # "Image imported with fingerprint: <fp>"
    return out.strip().rsplit(" ", 1)[-1]
