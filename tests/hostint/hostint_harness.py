"""Helpers for host-integration tests (fixtures are in conftest.py).

In-process tests drive `open_sandbox` with a request built from `plan_host_integration`
(exactly what `coi run` does once wired), as root for the parts that need root on the host
(the locked workspace tree, which the helper builds in production).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from coi.launcher.config import Config, ConfigPaths, load_config
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.exec import ExecRequest, run_captured
from coi.launcher.progress import Progress
from coi.launcher.session.hostint import GitIdentity, HostIntegration, plan_host_integration
from coi.launcher.session.phases import Teardown
from coi.launcher.session.sandbox import CODE_UID, Sandbox, SandboxRequest, open_sandbox

PREFIX = "coi-test-host-"


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
    plan = plan_host_integration(
        config,
        workspace,
        host_uid=os.getuid(),
        host_gid=os.getgid(),
        warnings=warnings,
        idmapped_mounts=client.server_info().idmapped_mounts,
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
