"""Protected paths stay read-only and secret paths hidden against root in a real container."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path, PurePosixPath

import pytest
from hostint_harness import config_for, started_sandbox, unix_user

from coi.launcher.cli.run_options import HostFlags, sandbox_request
from coi.launcher.errors import SessionError
from coi.launcher.incus.client import IncusClient
from coi.launcher.progress import Progress
from coi.launcher.session.hostint_guard import StagePlan, anchors_of, build_stage, remove_stage
from coi.launcher.session.run import run_command

pytestmark = pytest.mark.integration

ATTACKS = Path(__file__).with_name("attacks.sh")


def snapshot(root: Path) -> dict[str, str]:
    """Every path below `root` (also directories, so new entries show) with its content hash."""
    result = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel == ".git/index" or rel.startswith((".git/objects", ".git/logs", ".git/refs")):
            continue
        result[rel] = (
            hashlib.sha256(path.read_bytes()).hexdigest()
            if path.is_file()
            else f"dir {path.stat().st_mode:o}"
        )
    return result


PROTECTED = (
    ".git/hooks",
    ".git/config",
    ".git/commondir",
    ".git/worktrees",
    ".git/modules",
    ".vscode",
    ".husky",
    ".env",
    "secrets",
)


def protected_changes(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Paths below the protected and secret paths of `make_repo` that differ in the snapshots."""
    return {
        k
        for k in set(before) | set(after)
        if before.get(k) != after.get(k)
        if any(k == p or k.startswith(p + "/") for p in PROTECTED)
    }


def make_repo(ws: Path, owner: int = 1000) -> None:
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / ".git/hooks/pre-commit").write_text("#!/bin/sh\nexit 0\n")
    (ws / ".git/hooks/pre-commit").chmod(0o755)
    (ws / ".vscode").mkdir()
    (ws / ".vscode/settings.json").write_text("{}\n")
    (ws / ".env").write_text("SECRET=hunter2\n")
    (ws / "secrets").mkdir()
    (ws / "secrets/key.pem").write_text("SECRET KEY\n")
    (ws / "README").write_text("hello\n")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(
        ["git", "-C", str(ws), "commit", "-q", "--allow-empty", "-m", "init"], check=True, env=env
    )
    # A linked worktree outside the workspace and a submodule's git directory inside .git.
    subprocess.run(
        ["git", "-C", str(ws), "worktree", "add", "-q", str(ws.parent / "wt")], check=True, env=env
    )
    (ws / ".git/modules/sub/hooks").mkdir(parents=True)
    (ws / ".git/modules/sub/config").write_text("[core]\n")
    # Run as root, the workspace is mounted with shift=true (host uid 1000 is `code`); as a
    # user, raw.idmap maps the owner onto `code`.
    subprocess.run(["chown", "-R", f"{owner}:{owner}", str(ws)], check=True)


def attack(client: IncusClient, ws: Path, tmp_path: Path, ownership: str) -> dict[str, str]:
    config = config_for(ws, {"security.secret_paths": [".env", "secrets"]})
    with started_sandbox(client, ws, config, stage_root=tmp_path / "stage") as box:
        meta = client.get(f"instances/{box.name}")
        assert ("raw.idmap" in meta["config"]) == (ownership == "raw.idmap")
        assert meta["devices"]["workspace"]["recursive"] == "true"
        # The workspace itself stays usable: git works and ordinary files are writable.
        code, out, err = box.as_code(
            "git config --global user.email a@b.c && git config --global user.name A && "
            "echo more >> README && git add README && git commit -qm inside && "
            "git log --oneline | wc -l && cat .env && ls secrets | wc -l"
        )
        assert code == 0, out + err
        assert out.split() == ["2", "0"], out + err  # two commits; .env empty; secrets/ empty
        box.client.push_file(box.name, "/root/attacks.sh", ATTACKS.read_bytes(), mode=0o755)
        code, out, err = box.as_root(["/root/attacks.sh"])
        assert code == 0, err
    results = {}
    for line in out.splitlines():
        if line.startswith("ATTACK "):
            name, _, verdict = line[len("ATTACK ") :].partition(": ")
            results[name] = verdict
    return results


@pytest.mark.parametrize("ownership", ["shift", "raw.idmap"])
def test_root_in_the_container_cannot_change_protected_paths(
    client: IncusClient,
    host_ws: Path,
    tmp_path: Path,
    ownership: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = 1000
    if ownership == "raw.idmap":
        # The helper's case: root builds the stage, the container maps the user (coit-run,
        # delegated to Incus by host setup) onto `code`.
        user = unix_user("coit-run")
        owner = user.uid
        monkeypatch.setattr(os, "getuid", lambda: user.uid)
        monkeypatch.setattr(os, "getgid", lambda: user.gid)
    make_repo(host_ws, owner)
    before = snapshot(host_ws)
    results = attack(client, host_ws, tmp_path, ownership)
    assert len(results) >= 40, results
    succeeded = sorted(name for name, verdict in results.items() if verdict != "failed")
    assert succeeded == [], f"bypasses that worked: {succeeded}"
    changed = protected_changes(before, snapshot(host_ws))
    assert changed == set(), f"protected files changed on the host: {changed}"
    assert (host_ws / ".git/hooks/pre-commit").read_text() == "#!/bin/sh\nexit 0\n"
    assert (host_ws / ".env").read_text() == "SECRET=hunter2\n"
    # The agent's ordinary work did reach the host.
    assert (host_ws / "README").read_text() == "hello\nmore\n"
    # The placeholders for the missing .husky and .git/commondir are removed again.
    assert not (host_ws / ".husky").exists()
    assert not (host_ws / ".git/commondir").exists()
    # No mount of the stage is left on the host.
    assert str(tmp_path / "stage") not in Path("/proc/self/mountinfo").read_text()


def test_stage_refuses_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    """root builds the stage: a protected path swapped for a symlink to a host directory must
    not make root bind that directory into the sandbox."""
    ws = tmp_path / "ws"
    (ws / ".git").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / ".git/hooks").symlink_to(outside)
    plan = StagePlan(
        workspace=ws,
        stage=tmp_path / "stage",
        anchors=anchors_of([PurePosixPath(".git/hooks")]),
        protected=(PurePosixPath(".git/hooks"),),
        secrets=(),
    )
    with pytest.raises(SessionError, match="symbolic link"):
        build_stage(plan)
    assert str(tmp_path / "stage") not in Path("/proc/self/mountinfo").read_text()


def test_plain_read_only_devices_are_what_root_can_undo(
    client: IncusClient,
    host_ws: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Without the locked tree (unprivileged launcher alone) the guard is weaker, and says so:
    this documents the kernel behaviour that makes the locked tree necessary. The change is
    reported at the end of the session, with the original saved."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_repo(host_ws)
    config = config_for(host_ws, {})
    with started_sandbox(client, host_ws, config) as box:
        assert any("root in the sandbox" in line for line in box.plan.describe())
        code, _, _ = box.as_code("echo pwn > /workspace/.git/hooks/pre-commit")
        assert code != 0  # read-only for the agent itself
        code, out, err = box.as_root(
            [
                "sh",
                "-c",
                "umount -l /workspace/.git/hooks && echo pwn > /workspace/.git/hooks/pre-commit",
            ]
        )
        capfd.readouterr()
    # If this ever fails, Incus or the kernel started locking device mounts: good news, the
    # plain mode then suffices.
    assert code == 0, out + err
    assert (host_ws / ".git/hooks/pre-commit").read_text() == "pwn\n"
    err = capfd.readouterr().err
    assert "protected paths" in err and ".git/hooks/pre-commit" in err, err
    saved = list((tmp_path / "cache/coi/protected").glob("*/*/.git/hooks/pre-commit"))
    assert [p.read_text() for p in saved] == ["#!/bin/sh\nexit 0\n"]


def test_coi_run_as_root_builds_the_locked_workspace_itself(
    client: IncusClient, host_ws: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`coi run` as root (run_options + run_command): the agent's sudo cannot undo it."""
    make_repo(host_ws)
    request, plan = sandbox_request(client, host_ws, HostFlags(), wait_for_network=0)
    assert any("locked mounts" in line for line in plan.describe())
    code = run_command(
        client,
        request,
        [
            "sh",
            "-c",
            "sudo umount -l /workspace/.git/hooks; "
            "sudo sh -c 'echo pwn > /workspace/.git/hooks/pre-commit' && echo WROTE",
        ],
        progress=Progress(enabled=False),
        stdin_fd=None,
    )
    assert code != 0
    assert "WROTE" not in capfd.readouterr().out
    assert (host_ws / ".git/hooks/pre-commit").read_text() == "#!/bin/sh\nexit 0\n"


def test_stage_is_closed_to_other_users(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".git/hooks").mkdir(parents=True)
    base = tmp_path / "stage"
    base.mkdir(mode=0o755)
    plan = StagePlan(
        ws, base / "coi-x-1", (PurePosixPath(".git"),), (PurePosixPath(".git/hooks"),), ()
    )
    build_stage(plan)
    try:
        assert base.stat().st_mode & 0o777 == 0o700
    finally:
        remove_stage(plan.stage)
    assert not plan.stage.exists()
