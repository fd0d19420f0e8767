"""Harness of the session tests: the real `coi` on a real pseudo-terminal (pexpect),
run as the unprivileged test user `coit-run`, against the real Incus of this host.

The agent is `fakeagent` (tests/sessions/fakeagent-image.sh), baked into the image
`coi-test-fakeagent` by `coi build custom` once per test run, and declared to coi as a
user-defined tool spec in the test user's ~/.config/coi/tools/fakeagent.toml.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pexpect
import pytest

HERE = Path(__file__).resolve().parent


def _load_integration_harness() -> ModuleType:
    # The users and the workspace fixture of tests/integration (its conftest, loaded under a
    # name of its own so that it does not collide with pytest's `conftest` modules, and the
    # run_harness module it imports).
    if str(HERE.parent / "integration") not in sys.path:
        sys.path.insert(0, str(HERE.parent / "integration"))
    spec = importlib.util.spec_from_file_location(
        "coi_integration_harness", HERE.parent / "integration" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_harness = _load_integration_harness()
run_user = _harness.run_user
coi_image = _harness.coi_image
workspace = _harness.workspace
from run_harness import COI, UnixUser, incus_names, sh  # noqa: E402

PREFIX = "coi-test-sess-"
NO_HELPER = "/run/coi/coit-sess-no-helper.sock"
FAKE_IMAGE = "coi-test-fakeagent"
FAKE_SCRIPT = HERE / "fakeagent-image.sh"
CREDENTIAL = "fake-token-for-tests"
TOOL_SPEC = """\
binary = "fakeagent"
bypass_args = ["--yolo"]
interactive_args = ["--ask"]
resume_args = ["--resume"]
state_paths = [".fakeagent"]
credentials = [".fakeagent/credentials"]
context_file = ".fakeagent/CONTEXT.md"
context_mode = "inline"
"""


@pytest.fixture(scope="session")
def fake_image(coi_image: str) -> str:
    """The fakeagent test image, (re)built by `coi build custom` when missing or stale."""
    want = hashlib.sha256(FAKE_SCRIPT.read_bytes()).hexdigest()
    have = sh(
        "incus", "image", "get-property", FAKE_IMAGE, "coi.script_sha256", check=False
    ).stdout.strip()
    if have != want:
        result = subprocess.run(
            [COI, "build", "custom", FAKE_IMAGE, "--script", str(FAKE_SCRIPT), "--base", "coi"]
            + (["--force"] if have else []),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            pytest.fail(f"building {FAKE_IMAGE} failed: {result.stderr}")
    return FAKE_IMAGE


def _write_owned(user: UnixUser, path: Path, text: str, mode: int = 0o644) -> None:
    for parent in reversed(path.relative_to(user.home).parents):
        directory = user.home / parent
        if not directory.exists():
            directory.mkdir()
            os.chown(directory, user.uid, user.gid)
    path.write_text(text)
    os.chmod(path, mode)
    os.chown(path, user.uid, user.gid)


@pytest.fixture(scope="session")
def fake_tool(run_user: UnixUser, fake_image: str) -> str:
    """The user-defined tool spec `fakeagent` and a host credential for it."""
    _write_owned(run_user, run_user.home / ".config/coi/tools/fakeagent.toml", TOOL_SPEC)
    _write_owned(run_user, run_user.home / ".fakeagent/credentials", CREDENTIAL + "\n", 0o600)
    return "fakeagent"


class SessionCoi:
    """Runs the real `coi` as the test user, in a pipe or on a pseudo-terminal."""

    def __init__(self, user: UnixUser, workspace: Path) -> None:
        self.user = user
        self.workspace = workspace
        self.sync_seconds = "2"
        self.program = [COI]

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{Path(COI).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.user.home),
            "USER": self.user.name,
            "LOGNAME": self.user.name,
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
            "COI_CONTAINER_PREFIX": PREFIX,
            "COI_SESSION_SYNC_SECONDS": self.sync_seconds,
            "COI_PROGRESS": "1",
            # Sessions here run with --network open and no helper: network enforcement has
            # its own tests (tests/netsession), and these must not depend on a helper's state.
            "COI_HELPER_SOCKET": NO_HELPER,
        }

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
            *self.program,
            *args,
        ]

    def __call__(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args),
            stdin=subprocess.DEVNULL,
            text=True,
            capture_output=True,
            timeout=timeout,
            cwd=self.workspace,
        )

    def spawn(self, *args: str, rows: int = 30, cols: int = 100) -> pexpect.spawn:
        """`coi ARGS` on a fresh pseudo-terminal of the given size."""
        child = pexpect.spawn(
            self.argv(args)[0],
            self.argv(args)[1:],
            dimensions=(rows, cols),
            encoding="utf-8",
            codec_errors="replace",
            timeout=180,
            cwd=str(self.workspace),
        )
        child.logfile_read = _Log()
        return child

    def user_shell(self) -> pexpect.spawn:
        """A bash of the test user on a pseudo-terminal, prompt `READY$ `; `$COI` runs coi
        (to check the terminal modes that coi leaves behind)."""
        argv = self.argv([])[: -len(self.program)]
        argv += [f"COI={' '.join(self.program)}", "PS1=READY$ ", "bash", "--norc", "--noprofile"]
        child = pexpect.spawn(
            argv[0], argv[1:], encoding="utf-8", timeout=180, cwd=str(self.workspace)
        )
        child.logfile_read = _Log()
        child.expect_exact("READY$ ")
        return child

    def list_json(self) -> list[dict[str, object]]:
        result = self("list", "--format", "json")
        assert result.returncode == 0, result.stderr
        containers: list[dict[str, object]] = json.loads(result.stdout)["containers"]
        return [c for c in containers if c["workspace"] == str(self.workspace)]


class _Log:
    """Keeps what a pexpect child printed, for failure messages."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass

    def __str__(self) -> str:
        return "".join(self.parts)[-3000:]


@pytest.fixture
def scoi(run_user: UnixUser, workspace: Path, fake_tool: str) -> SessionCoi:
    return SessionCoi(run_user, workspace)


def ws_containers(workspace: Path) -> list[str]:
    from coi.launcher.session.naming import workspace_hash

    return incus_names(PREFIX + workspace_hash(workspace))


@pytest.fixture
def no_leftovers(workspace: Path) -> Iterator[None]:
    """After the test, no container of this workspace may remain."""
    yield
    left = ws_containers(workspace)
    for name in left:
        sh("incus", "delete", "--force", name, check=False)
    assert left == [], f"containers left behind: {left}"


def wait_for(predicate: object, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")
