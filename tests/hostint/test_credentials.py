"""Only what is asked for enters: forwarded variables, the SSH agent (never a key), git identity."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostint_harness import config_for, started_sandbox

from coi.launcher.incus.client import IncusClient
from coi.launcher.session.hostint import GitIdentity, plan_host_integration

pytestmark = pytest.mark.integration


def inside_env(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def test_env_inside_is_exactly_the_forwarded_variables(
    client: IncusClient, host_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COIT_FORWARDED", "from the host")
    monkeypatch.setenv("COIT_NOT_ASKED", "must stay outside")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "must stay outside")
    config = config_for(
        host_ws,
        {"env.forward": ["COIT_FORWARDED", "COIT_MISSING"], "env.set": ["COIT_SET=given"]},
    )
    with started_sandbox(client, host_ws, config, environ=os.environ) as box:
        code, out, err = box.as_code("env")
        base = box.sandbox.base_environment({})
    assert code == 0, err
    env = inside_env(out)
    assert env["COIT_FORWARDED"] == "from the host"
    assert env["COIT_SET"] == "given"
    # `container` comes from Incus itself, PWD/SHLVL/_ from the shell running `env`.
    added = set(env) - set(base) - {"container", "PWD", "SHLVL", "_"}
    assert added == {"COIT_FORWARDED", "COIT_SET"}, out
    assert "must stay outside" not in out
    for name, value in os.environ.items():
        if name not in base and name != "COIT_FORWARDED" and len(value) > 3:
            assert f"{name}={value}" not in out
    assert any("COIT_MISSING" in w for w in box.warnings)


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real ssh-agent holding a freshly generated key: (socket, key fingerprint)."""
    sock = str(tmp_path / "agent.sock")
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "coit-key", "-f", str(key)],
        check=True,
    )
    out = subprocess.run(
        ["ssh-agent", "-s", "-a", sock], check=True, capture_output=True, text=True
    ).stdout
    pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        env = {**os.environ, "SSH_AUTH_SOCK": sock}
        subprocess.run(["ssh-add", "-q", str(key)], check=True, env=env, capture_output=True)
        fingerprint = subprocess.run(
            ["ssh-keygen", "-lf", f"{key}.pub"], check=True, capture_output=True, text=True
        ).stdout.split()[1]
        yield sock, fingerprint
    finally:
        os.kill(pid, signal.SIGTERM)


def test_ssh_agent_keys_listed_but_no_key_file_inside(
    client: IncusClient, host_ws: Path, ssh_agent: tuple[str, str]
) -> None:
    sock, fingerprint = ssh_agent
    config = config_for(host_ws, {"ssh.forward_agent": True})
    with started_sandbox(client, host_ws, config, environ={"SSH_AUTH_SOCK": sock}) as box:
        code, out, err = box.as_code("ssh-add -l")
        assert code == 0, out + err
        assert fingerprint in out
        # No private key anywhere in the container's writable places.
        code, out, _ = box.as_root(
            [
                "sh",
                "-c",
                "grep -rlsI 'PRIVATE KEY' /home /root /tmp /var/tmp /run /workspace /etc; "
                "ls -la /home/code/.ssh 2>&1; true",
            ]
        )
        assert "PRIVATE KEY" not in out
        assert "id_ed25519" not in out
        assert "No such file" in out  # no ~/.ssh at all


def test_ssh_agent_not_forwarded_unless_asked(
    client: IncusClient, host_ws: Path, ssh_agent: tuple[str, str]
) -> None:
    sock, _ = ssh_agent
    config = config_for(host_ws, {})
    with started_sandbox(client, host_ws, config, environ={"SSH_AUTH_SOCK": sock}) as box:
        code, out, _ = box.as_code("ssh-add -l; echo sock=$SSH_AUTH_SOCK")
        assert code == 0
        assert "sock=\n" in out or out.rstrip().endswith("sock=")
        assert "coi-ssh-agent" not in str(box.plan.devices)


def test_git_identity_seeded_from_host_only(client: IncusClient, host_ws: Path) -> None:
    config = config_for(host_ws, {})
    warnings: list[str] = []
    plan = plan_host_integration(
        config,
        host_ws,
        host_uid=0,
        host_gid=0,
        warnings=warnings,
        environ={},
        git_identity=GitIdentity("Ada Lovelace", "ada@example.org"),
    )
    from coi.launcher.progress import Progress
    from coi.launcher.session.phases import Teardown
    from coi.launcher.session.sandbox import SandboxRequest, open_sandbox

    request = SandboxRequest(
        workspace=host_ws,
        devices=plan.devices,
        config=plan.config,
        before_start=plan.before_start,
        after_start=plan.after_start,
        wait_for_network=0,
    )
    teardown = Teardown()
    try:
        sandbox = open_sandbox(client, request, teardown, Progress(enabled=False))
        data = client.pull_file(sandbox.name, "/home/code/.gitconfig").decode()
    finally:
        assert teardown.run() == []
    assert data == '[user]\n\tname = "Ada Lovelace"\n\temail = "ada@example.org"\n'
