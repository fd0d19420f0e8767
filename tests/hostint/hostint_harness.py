"""Helpers for host-integration tests (fixtures are in conftest.py).

In-process tests drive `open_sandbox` with a request built from `plan_host_integration`
(exactly what `coi run` does once wired), as root for the parts that need root on the host
(the locked workspace tree, which the helper builds in production).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from coi.launcher.config import Config, ConfigPaths, load_config
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.exec import ExecRequest, run_captured
from coi.launcher.progress import Progress
from coi.launcher.session.hostint import GitIdentity, HostIntegration, plan_for_client
from coi.launcher.session.phases import Teardown
from coi.launcher.session.sandbox import CODE_UID, Sandbox, SandboxRequest, open_sandbox

PREFIX = "coi-test-host-"
# The console script next to the test interpreter (CI: a venv every user may execute);
# COI_TEST_BIN points elsewhere when the test venv is private (e.g. under /root).
COI = os.environ.get("COI_TEST_BIN") or str(Path(sys.executable).with_name("coi"))


def isolated_paths(root: Path) -> ConfigPaths:
    """Config paths that read no file of the machine running the tests."""
    return ConfigPaths(
        system_file=root / "none" / "config.toml",
        user_files=(),
        profiles_dir=root / "none" / "profiles",
        trust_store=root / "none" / "trusted.toml",
        home=root,
    )


def config_for(workspace: Path, overrides: Mapping[str, object]) -> Config:
    """The defaults plus `overrides` (flag-style dotted keys), no files of this machine."""
    return load_config(
        workspace,
        profile=None,
        cli_overrides=overrides,
        env={},
        paths=isolated_paths(workspace.parent),
    ).config


@dataclass
class Started:
    client: IncusClient
    sandbox: Sandbox
    plan: HostIntegration
    warnings: list[str]

    @property
    def name(self) -> str:
        return str(self.sandbox.name)

    def as_code(
        self, script: str, timeout_env: Mapping[str, str] | None = None
    ) -> tuple[int, str, str]:
        env = self.sandbox.base_environment(self.plan.env)
        env.update(timeout_env or {})
        request = ExecRequest(
            command=["sh", "-c", script],
            environment=env,
            user=CODE_UID,
            group=CODE_UID,
            cwd="/workspace",
        )
        code, out, err = run_captured(self.client, self.name, request)
        return code, out.decode(), err.decode()

    def as_root(self, argv: list[str]) -> tuple[int, str, str]:
        request = ExecRequest(command=argv, environment={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        code, out, err = run_captured(self.client, self.name, request)
        return code, out.decode(), err.decode()


@contextmanager
def started_sandbox(
    client: IncusClient,
    workspace: Path,
    config: Config,
    *,
    stage_root: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Iterator[Started]:
    """A sandbox for `workspace` with the host integration of `config`; removed afterwards."""
    warnings: list[str] = []
    plan = plan_for_client(
        client,
        config,
        workspace,
        warnings=warnings,
        stage_root=stage_root,
        environ=environ if environ is not None else {},
        git_identity=GitIdentity(),
    )
    request = SandboxRequest(
        workspace=workspace,
        image="coi",
        env=plan.env,
        devices=plan.devices,
        config=plan.config,
        before_start=plan.before_start,
        after_start=plan.after_start,
        wait_for_network=0,
    )
    teardown = Teardown()
    try:
        sandbox = open_sandbox(client, request, teardown, Progress(enabled=False))
        yield Started(client, sandbox, plan, warnings)
    finally:
        failures = teardown.run()
        assert failures == [], failures


def wait_gone(client: IncusClient, name: str, timeout: float) -> float:
    """Seconds until `name` is stopped or deleted (raises if it is still running)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        info = client.instance(name)
        if info is None or not info.running:
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"{name} still running after {timeout} s")


def leftovers(client: IncusClient) -> list[str]:
    return [i.name for i in client.instances(PREFIX)]


@dataclass(frozen=True)
class UnixUser:
    name: str
    uid: int
    gid: int
    home: Path


def unix_user(name: str) -> UnixUser:
    """A real unprivileged user (created if missing) whose home others may enter."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
        entry = pwd.getpwnam(name)
    os.chmod(entry.pw_dir, 0o755)
    return UnixUser(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def as_user(user: UnixUser, extra_env: Mapping[str, str] | None = None) -> list[str]:
    """The argv prefix that runs a command as `user` with a clean environment (+ `extra_env`)."""
    env = {
        "PATH": f"{Path(COI).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(user.home),
        "USER": user.name,
        "LANG": "C.UTF-8",
        "COI_CONTAINER_PREFIX": PREFIX,
        **(extra_env or {}),
    }
    return [
        "setpriv",
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--init-groups",
        "--reset-env",
        "--",
        "/usr/bin/env",
        *[f"{k}={v}" for k, v in env.items()],
    ]


def coi_as(
    user: UnixUser, *args: str, cwd: Path, extra_env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `coi` console script as `user` with a clean environment (+ `extra_env`)."""
    argv = [*as_user(user, extra_env), COI, *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120)


# A real coi-helper started by a test (tests/hostint/test_helper_guard.py).
HELPER_BIN = str(Path(COI).with_name("coi-helper"))


def user_env(user: UnixUser, socket: str) -> list[str]:
    """`as_user` with the helper socket `socket`."""
    return as_user(user, {"COI_HELPER_SOCKET": socket})


class HelperProcess:
    """A real coi-helper on a temporary socket (ended by its pid at the end)."""

    def __init__(self, directory: Path, *extra: str) -> None:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(directory, 0o755)
        self.socket = str(directory / "helper.sock")
        self.log = directory / "helper.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [HELPER_BIN, "-v", "serve", "--socket", self.socket, *extra],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while "coi-helper ready" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    @property
    def stager_pid(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        pids = [int(p) for p in children.split()]
        assert len(pids) == 1, pids
        return pids[0]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.log.parent, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.log.parent.parent.rmdir()  # helper_dir(), once its last helper is gone


def helper_dir() -> Path:
    # The socket must be reachable by the test users: pytest's base temp is 0700 root.
    path = Path("/tmp") / f"coit-hostint-guard-{os.getpid()}"
    path.mkdir(mode=0o755, exist_ok=True)
    return path
