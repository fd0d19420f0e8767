"""`plan_host_integration` without Incus: what the configuration turns into."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from hostint_harness import config_for, unix_user

from coi.launcher.errors import SessionError, WorkspaceError
from coi.launcher.session.hostint import (
    SSH_AGENT_PATH,
    GitIdentity,
    HostIntegration,
    describe_instance,
    plan_host_integration,
)
from coi.launcher.session.hostint_guard import stage_for_caller
from coi.launcher.session.hostint_watch import changes, save_originals, snapshot


def plan(
    ws: Path,
    overrides: dict[str, object],
    *,
    environ: dict[str, str] | None = None,
    host_uid: int = 1002,
    warnings: list[str] | None = None,
) -> HostIntegration:
    return plan_host_integration(
        config_for(ws, overrides),
        ws,
        host_uid=host_uid,
        host_gid=host_uid,
        warnings=[] if warnings is None else warnings,
        environ=environ or {},
        git_identity=GitIdentity(),
    )


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    (path / ".git/hooks").mkdir(parents=True)
    (path / ".git/config").write_text("[core]\n")
    return path


def test_mounts_follow_the_workspace_ownership_mapping(ws: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    raw = plan(ws, {"mounts.default": [f"{data}:/data:ro"]}, host_uid=1002)
    assert raw.devices["coi-mount-0"] == {
        "type": "disk",
        "source": str(data),
        "path": "/data",
        "readonly": "true",
    }
    shifted = plan(ws, {"mounts.default": [f"{data}:/data"]}, host_uid=1000)
    assert shifted.devices["coi-mount-0"]["shift"] == "true"
    assert "readonly" not in shifted.devices["coi-mount-0"]


def test_protected_paths_and_placeholders(ws: Path) -> None:
    result = plan(ws, {})
    # .husky and .vscode did not exist: created empty so the agent cannot plant them.
    assert (ws / ".husky").is_dir() and (ws / ".vscode").is_dir()
    # .git/commondir is read by git in every git directory: "." keeps git where it is.
    assert (ws / ".git/commondir").read_text() == ".\n"
    assert set(result.protected_paths) == {
        "/workspace/.git/hooks",
        "/workspace/.git/config",
        "/workspace/.git/commondir",
        "/workspace/.husky",
        "/workspace/.vscode",
    }
    ro = {d["path"] for d in result.devices.values() if d.get("readonly") == "true"}
    assert ro == set(result.protected_paths)
    # .git is a mountpoint too, so it cannot be renamed away with its protected children.
    anchors = {d["path"] for n, d in result.devices.items() if n.startswith("coi-anchor")}
    assert anchors == {"/workspace/.git"}
    assert len(result.before_start) == 2  # placeholder removal, tamper check at the end


def test_writable_git_hooks_opts_out(ws: Path) -> None:
    result = plan(ws, {"security.writable_git_hooks": True})
    assert result.devices == {}
    assert result.protected_paths == []
    assert not (ws / ".husky").exists()
    assert not (ws / ".git/commondir").exists()


def test_symlinked_protected_path_is_not_mounted(ws: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (ws / ".vscode").symlink_to(tmp_path / "elsewhere")
    result = plan(ws, {})
    assert all(str(tmp_path / "elsewhere") not in d["source"] for d in result.devices.values())


def test_secret_paths_hidden_by_empty_sources(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(ws.parent / "cache"))
    (ws / ".env").write_text("SECRET=1\n")
    (ws / "keys").mkdir()
    result = plan(ws, {"security.secret_paths": [".env", "keys", "*.pem"]})
    secrets = {d["path"]: d for n, d in result.devices.items() if n.startswith("coi-secret")}
    assert set(secrets) == {"/workspace/.env", "/workspace/keys"}
    file_src = Path(secrets["/workspace/.env"]["source"])
    dir_src = Path(secrets["/workspace/keys"]["source"])
    assert file_src.is_file() and file_src.stat().st_size == 0
    assert dir_src.is_dir() and list(dir_src.iterdir()) == []


def test_env_only_what_is_asked(ws: Path) -> None:
    warnings: list[str] = []
    result = plan(
        ws,
        {"env.forward": ["A", "MISSING"], "env.set": ["B=2"]},
        environ={"A": "1", "HOME": "/root", "SECRET": "x"},
        warnings=warnings,
    )
    assert result.env == {"A": "1", "B": "2"}
    assert any("MISSING" in w for w in warnings)


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "agent.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    yield path
    sock.close()


def test_ssh_agent_proxy_device(ws: Path, agent_socket: str) -> None:
    result = plan(ws, {"ssh.forward_agent": True}, environ={"SSH_AUTH_SOCK": agent_socket})
    device = result.devices["coi-ssh-agent"]
    assert device == {
        "type": "proxy",
        "bind": "container",
        "listen": f"unix:{SSH_AGENT_PATH}",
        "connect": f"unix:{agent_socket}",
        "security.uid": "1002",
        "security.gid": "1002",
        "uid": "1000",
        "gid": "1000",
        "mode": "0600",
    }
    assert result.env["SSH_AUTH_SOCK"] == str(SSH_AGENT_PATH)
    assert result.ssh_agent


def test_ssh_agent_without_socket_is_a_warning(ws: Path) -> None:
    warnings: list[str] = []
    result = plan(ws, {"ssh.forward_agent": True}, environ={}, warnings=warnings)
    assert "coi-ssh-agent" not in result.devices
    assert "SSH_AUTH_SOCK" not in result.env
    assert any("SSH_AUTH_SOCK" in w for w in warnings)


def test_limits(ws: Path) -> None:
    result = plan(
        ws,
        {"limits.memory": "1GiB", "limits.cpu": "2", "limits.duration": "20s"},
    )
    assert result.config == {"limits.memory": f"{2**30}B", "limits.cpu": "2"}
    assert result.limits["memory"] == "1024 MiB"
    assert result.limits["run time"] == "0:00:20"
    assert len(result.after_start) == 1  # the run-time timer
    assert any(line.startswith("limit: run time") for line in result.describe())


def test_stage_request_checks(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    hooks = PurePosixPath(".git/hooks")
    plan = stage_for_caller(
        Path("/run/coi/stage"),
        caller_uid=os.getuid(),
        container="coi-abc-1",
        workspace=ws,
        protected=[hooks],
        secrets=[],
    )
    assert plan.stage == Path(f"/run/coi/stage/{os.getuid()}/coi-abc-1")
    assert plan.anchors == (PurePosixPath(".git"),)

    def attempt(
        *,
        caller_uid: int = os.getuid(),
        container: str = "coi-abc-1",
        workspace: Path = ws,
        protected: tuple[PurePosixPath, ...] = (hooks,),
    ) -> None:
        stage_for_caller(
            Path("/run/coi/stage"),
            caller_uid=caller_uid,
            container=container,
            workspace=workspace,
            protected=protected,
            secrets=(),
        )

    (tmp_path / "link").symlink_to(ws)
    with pytest.raises(SessionError, match="owned by"):
        attempt(caller_uid=os.getuid() + 1)
    with pytest.raises(SessionError, match="container name"):
        attempt(container="../x")
    with pytest.raises(SessionError, match="without symlinks"):
        attempt(workspace=tmp_path / "ws" / ".." / "ws")
    with pytest.raises(SessionError, match="without symlinks"):
        attempt(workspace=tmp_path / "link")
    with pytest.raises(SessionError, match="inside the workspace"):
        attempt(protected=(PurePosixPath("../outside"),))


def test_describe_instance_reads_back_the_config() -> None:
    lines = describe_instance(
        {"limits.memory": "134217728B", "user.coi.deadline": "1100", "limits.cpu": "2"},
        {
            "root": {"type": "disk", "path": "/", "limits.write": "10MB"},
            "coi-mount-0": {"type": "disk", "path": "/data", "readonly": "true"},
            "coi-protect-0": {"type": "disk", "path": "/workspace/.git/hooks"},
            "coi-ssh-agent": {"type": "proxy"},
        },
        now=1000,
    )
    assert lines == [
        "limit: CPU: 2",
        "limit: memory: 134217728B",
        "limit: disk write: 10MB",
        "run time left: 100 s",
        "host mount: /data (read-only)",
        "read-only (protected): /workspace/.git/hooks",
        "SSH agent: forwarded",
    ]


def test_tamper_snapshot_sees_changes_without_following_links(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".git/hooks").mkdir(parents=True)
    (ws / ".git/hooks/pre-commit").write_text("orig\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_text("x")
    roots = [PurePosixPath(".git/hooks")]
    before = snapshot(ws, roots)
    assert changes(before, snapshot(ws, roots)) == []
    (ws / ".git/hooks/pre-commit").write_text("evil\n")
    (ws / ".git/hooks/link").symlink_to(outside)
    after = snapshot(ws, roots)
    assert changes(before, after) == [".git/hooks/link", ".git/hooks/pre-commit"]
    assert ".git/hooks/link/big" not in after  # the link is not followed
    saved = save_originals(before, changes(before, after), tmp_path / "saved")
    assert (saved / ".git/hooks/pre-commit").read_text() == "orig\n"
    assert not (saved / ".git/hooks/link").exists()


def test_restricted_projects_no_ssh_agent_and_mounts_under_home(
    agent_socket: str, tmp_path: Path
) -> None:
    user = unix_user("coit-run")
    ws = user.home / f"hostint-plan-{os.getpid()}"
    ws.mkdir()
    try:
        warnings: list[str] = []
        result = plan_host_integration(
            config_for(ws, {"ssh.forward_agent": True}),
            ws,
            host_uid=user.uid,
            host_gid=user.gid,
            warnings=warnings,
            restricted_project=True,
            environ={"SSH_AUTH_SOCK": agent_socket},
            git_identity=GitIdentity(),
        )
        assert "coi-ssh-agent" not in result.devices
        assert any("incus-user" in w for w in warnings)
        # A host mount outside the home is refused before Incus would refuse it.
        with pytest.raises(WorkspaceError, match="restricted"):
            plan_host_integration(
                config_for(ws, {"mounts.default": [f"{tmp_path}:/data"]}),
                ws,
                host_uid=user.uid,
                host_gid=user.gid,
                warnings=[],
                restricted_project=True,
                environ={},
                git_identity=GitIdentity(),
            )
    finally:
        shutil.rmtree(ws)


def test_hard_linked_protected_file_is_reported(ws: Path) -> None:
    (ws / ".git/hooks/pre-commit").write_text("x")
    os.link(ws / ".git/hooks/pre-commit", ws / "elsewhere")
    warnings: list[str] = []
    plan(ws, {}, warnings=warnings)
    assert any(".git/hooks/pre-commit has other hard links" in w for w in warnings)
