"""The locked workspace built BY coi-helper for unprivileged users (privilege separation).

A real `coi-helper serve` on a temporary socket (its stager child holds CAP_SYS_ADMIN only,
the serving process CAP_NET_ADMIN only). The real users `coit-run` (group incus-admin) and
`coit-uma` (group incus only, restricted project `user-<uid>`) open a sandbox through
`run_options.sandbox_request` + `open_sandbox` (what `coi run` does) as themselves; root then
runs tests/hostint/attacks.sh inside the container while the user's session holds it open.
Every attack must fail and no protected file may change on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostint_harness import COI, PREFIX, HelperProcess, UnixUser, helper_dir, unix_user, user_env
from test_protected_paths import ATTACKS, make_repo, protected_changes, snapshot

from coi.helper.hardening import read_caps
from coi.launcher.helper_client import HelperClient
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.endpoint import IncusEndpoint
from coi.launcher.incus.exec import ExecRequest, run_captured
from coi.launcher.incus.types import InstanceSpec
from coi.launcher.session.sandbox import CODE_UID

pytestmark = pytest.mark.integration

HELPER_BIN = str(Path(COI).with_name("coi-helper"))
PYTHON = str(Path(COI).with_name("python3"))
ADMIN_SOCKET = "/var/lib/incus/unix.socket"
CAP_NET_ADMIN = 1 << 12
CAP_SYS_ADMIN = 1 << 21

# Opens the sandbox as the user, reports its name, holds it until a line arrives on stdin.
DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from coi.launcher.cli.run_options import HostFlags, sandbox_request
    from coi.launcher.incus.client import IncusClient
    from coi.launcher.progress import Progress
    from coi.launcher.session.phases import Teardown
    from coi.launcher.session.sandbox import open_sandbox

    client = IncusClient.connect()
    request, plan = sandbox_request(client, Path(sys.argv[1]), HostFlags(), wait_for_network=0)
    teardown = Teardown()
    try:
        sandbox = open_sandbox(client, request, teardown, Progress(enabled=False))
        for line in plan.describe():
            print("DESCRIBE " + line, flush=True)
        print("NAME " + sandbox.name + " " + client.project, flush=True)
        sys.stdin.readline()
    finally:
        print("TEARDOWN " + repr(teardown.run()), flush=True)
    """
)

# Calls the helper directly as the user: {"ok": ...} or {"error": class, "message": ...}.
CALLER = textwrap.dedent(
    """
    import json, sys
    from coi.launcher.errors import HelperError
    from coi.launcher.helper_client import HelperClient
    method, args = sys.argv[1], json.loads(sys.argv[2])
    try:
        with HelperClient() as helper:
            print(json.dumps({"ok": getattr(helper, method)(*args)}))
    except HelperError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    """
)


@pytest.fixture(scope="module")
def helper() -> Iterator[HelperProcess]:
    if os.geteuid() != 0:
        pytest.fail("host-integration tests run as root (bash .ci/run)")
    h = HelperProcess(helper_dir() / "guard-helper")
    try:
        yield h
    finally:
        h.stop()


def call_as(user: UnixUser, socket: str, method: str, *args: object) -> dict[str, object]:
    argv = [*user_env(user, socket), PYTHON, "-c", CALLER, method, json.dumps(list(args))]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    reply: dict[str, object] = json.loads(result.stdout)
    return reply


def incus_user(name: str) -> UnixUser:
    """coit-uma: group incus only, project user-<uid> (provisioned like tests/usermode does)."""
    user = unix_user(name)
    groups = subprocess.run(["id", "-nG", name], capture_output=True, text=True).stdout.split()
    if "incus" not in groups:
        subprocess.run(["usermod", "-aG", "incus", name], check=True)
    assert "incus-admin" not in groups
    result = subprocess.run(
        [HELPER_BIN, "provision-user", name], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return user


@pytest.fixture
def owned_ws(request: pytest.FixtureRequest) -> Iterator[tuple[UnixUser, Path]]:
    name = request.param
    user = unix_user(name) if name == "coit-run" else incus_user(name)
    base = user.home / f"hostint-guard-{os.getpid()}-{os.urandom(3).hex()}"
    base.mkdir()
    ws = base / "ws"
    ws.mkdir()
    make_repo(ws, user.uid)
    (ws / ".coi.toml").write_text('[security]\nsecret_paths = [".env", "secrets"]\n')
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(base)], check=True)
    try:
        yield user, ws
    finally:
        shutil.rmtree(base, ignore_errors=True)


def exec_in(client: IncusClient, name: str, argv: list[str], *, code: bool) -> tuple[int, str]:
    request = ExecRequest(
        command=argv,
        environment={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/home/code"},
        user=CODE_UID if code else 0,
        group=CODE_UID if code else 0,
        cwd="/workspace",
    )
    rc, out, err = run_captured(client, name, request)
    return rc, out.decode() + err.decode()


@dataclass
class Session:
    name: str
    client: IncusClient
    lines: list[str]
    stderr: str = ""


@contextmanager
def user_session(user: UnixUser, ws: Path, socket: str) -> Iterator[Session]:
    """`DRIVER` as `user`: the open sandbox until the block ends, then its teardown (checked)."""
    argv = [*user_env(user, socket), PYTHON, "-c", DRIVER, str(ws)]
    proc = subprocess.Popen(
        argv,
        cwd=ws,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    lines: list[str] = []
    session: Session | None = None
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("NAME "):
                break
        assert lines and lines[-1].startswith("NAME "), "\n".join(lines) + (
            proc.stderr.read() if proc.stderr else ""
        )
        _, name, project = lines[-1].split()
        session = Session(name, IncusClient(IncusEndpoint(ADMIN_SOCKET, project, "admin")), lines)
        yield session
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        rest, err = proc.communicate(timeout=120)
    if session is not None:
        session.stderr = err
    assert proc.returncode == 0, rest + err
    assert "TEARDOWN []" in rest, rest + err


@pytest.mark.parametrize("owned_ws", ["coit-run", "coit-uma"], indirect=True)
def test_attacks_fail_on_a_workspace_staged_by_the_helper(
    helper: HelperProcess, owned_ws: tuple[UnixUser, Path]
) -> None:
    user, ws = owned_ws
    before = snapshot(ws)
    with user_session(user, ws, helper.socket) as session:
        name, client, lines = session.name, session.client, session.lines
        meta = client.get(f"instances/{name}")
        device = meta["devices"]["workspace"]
        assert device["recursive"] == "true", device
        assert not any(k.startswith(("coi-protect-", "coi-secret-")) for k in meta["devices"])
        expected = (
            f"/run/coi/stage/{user.uid}/{name}"
            if user.name == "coit-run"
            else f"{user.home}/.coi-stage/{name}"
        )
        assert device["source"] == expected
        assert "DESCRIBE protection: locked mounts built by coi-helper" in "\n".join(lines)
        rc, out = exec_in(
            client,
            name,
            [
                "sh",
                "-c",
                "git config --global user.email a@b.c && git config --global user.name A && "
                "echo more >> README && git add README && git commit -qm inside && "
                "git log --oneline | wc -l && cat .env && ls secrets | wc -l",
            ],
            code=True,
        )
        assert rc == 0, out
        assert out.split() == ["2", "0"], out
        client.push_file(name, "/root/attacks.sh", ATTACKS.read_bytes(), mode=0o755)
        rc, out = exec_in(client, name, ["/root/attacks.sh"], code=False)
        assert rc == 0, out
    results = {}
    for line in out.splitlines():
        if line.startswith("ATTACK "):
            attack, _, verdict = line[len("ATTACK ") :].partition(": ")
            results[attack] = verdict
    assert len(results) >= 40, out
    succeeded = sorted(a for a, verdict in results.items() if verdict != "failed")
    assert succeeded == [], f"bypasses that worked: {succeeded}"
    changed = protected_changes(before, snapshot(ws))
    assert changed == set(), f"protected files changed on the host: {changed}"
    assert (ws / "README").read_text() == "hello\nmore\n"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f"/{name} " not in mounts and f"/stage/{user.uid}/" not in mounts
    assert not (user.home / ".coi-stage" / name).exists()
    assert not Path(f"/run/coi/stage/{user.uid}/{name}.json").exists()


def test_a_user_cannot_stage_another_users_directory(helper: HelperProcess, tmp_path: Path) -> None:
    run = unix_user("coit-run")
    other = unix_user("coit-guard-other")
    victim = other.home / f"victim-{os.getpid()}"
    victim.mkdir(exist_ok=True)
    os.chown(victim, other.uid, other.gid)
    link = run.home / f"link-{os.getpid()}"
    link.symlink_to(victim)
    os.lchown(link, run.uid, run.gid)
    client = IncusClient(IncusEndpoint(ADMIN_SOCKET, "default", "admin"))
    name = f"{PREFIX}guard-{os.getpid()}"
    client.create_instance(InstanceSpec(name=name, image="coi", ephemeral=False))
    try:
        # Another user's directory, through a symlink, and paths leaving the workspace.
        for workspace, protected in (
            (str(victim), []),
            (str(link), []),
            (str(run.home), ["../x"]),
            (str(run.home), ["/etc"]),
        ):
            reply = call_as(
                run, helper.socket, "stage_workspace", name, "default", workspace, protected, []
            )
            assert reply.get("error") == "HelperWorkspaceRefused", reply
        # An incus-group user and a container of the default project: NotOwner.
        uma = incus_user("coit-uma")
        reply = call_as(
            uma, helper.socket, "stage_workspace", name, "default", str(uma.home), [], []
        )
        assert reply.get("error") == "HelperNotOwner", reply
        assert f"/stage/{run.uid}/{name}" not in Path("/proc/self/mountinfo").read_text()
    finally:
        client.remove_instance(name)
        link.unlink()
        shutil.rmtree(victim, ignore_errors=True)


def test_only_the_stager_holds_cap_sys_admin(helper: HelperProcess) -> None:
    serving = read_caps(helper.proc.pid)
    assert serving.effective == serving.permitted == serving.bounding == CAP_NET_ADMIN
    assert serving.no_new_privs
    stager = read_caps(helper.stager_pid)
    assert stager.effective == stager.permitted == stager.bounding == CAP_SYS_ADMIN
    assert stager.inheritable == stager.ambient == 0
    assert stager.no_new_privs
    # The stager talks to nobody but its parent: one socket, besides stdio.
    fds = {
        int(fd): os.readlink(f"/proc/{helper.stager_pid}/fd/{fd}")
        for fd in os.listdir(f"/proc/{helper.stager_pid}/fd")
    }
    sockets = [fd for fd, target in fds.items() if target.startswith("socket:")]
    assert len([fd for fd in fds if fd > 2]) == 1 and len(sockets) == 1, fds
    status = Path(f"/proc/{helper.stager_pid}/status").read_text()
    assert "Uid:\t0" in status
    with HelperClient(helper.socket) as client:
        features = client.get_info().features
    assert features.workspace_guard
    assert features.capabilities == ["cap_net_admin"]
    assert features.stager_capabilities == ["cap_sys_admin"]


def test_without_the_stager_the_helper_serves_and_says_so() -> None:
    h = HelperProcess(helper_dir() / "no-stager", "--no-stager")
    try:
        with HelperClient(h.socket) as client:
            features = client.get_info().features
        assert not features.workspace_guard and features.stager_capabilities == []
        assert Path(f"/proc/{h.proc.pid}/task/{h.proc.pid}/children").read_text().strip() == ""
        run = unix_user("coit-run")
        reply = call_as(run, h.socket, "stage_workspace", "c1", "default", str(run.home), [], [])
        assert reply.get("error") == "HelperGuardUnavailable", reply
    finally:
        h.stop()


def test_stale_stages_are_removed_when_the_helper_starts(helper: HelperProcess) -> None:
    run = unix_user("coit-run")
    ws = run.home / f"hostint-stale-{os.getpid()}"
    (ws / ".git/hooks").mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{run.uid}:{run.gid}", str(ws)], check=True)
    client = IncusClient(IncusEndpoint(ADMIN_SOCKET, "default", "admin"))
    name = f"{PREFIX}stale-{os.getpid()}"
    client.create_instance(InstanceSpec(name=name, image="coi", ephemeral=False))
    stage = f"/run/coi/stage/{run.uid}/{name}"
    try:
        reply = call_as(
            run, helper.socket, "stage_workspace", name, "default", str(ws), [".git/hooks"], []
        )
        assert reply == {"ok": stage}, reply
        assert f" {stage}/.git/hooks " in Path("/proc/self/mountinfo").read_text()
    finally:
        client.remove_instance(name)
    # The container is gone while the stage stays (as after a crash); a new helper drops it.
    assert f" {stage} " in Path("/proc/self/mountinfo").read_text()
    second = HelperProcess(helper_dir() / "second")
    try:
        assert f" {stage}" not in Path("/proc/self/mountinfo").read_text()
        assert not Path(f"{stage}.json").exists()
        assert "stage reconcile: removed default/" + name in second.log.read_text()
    finally:
        second.stop()
        shutil.rmtree(ws, ignore_errors=True)


def test_a_workspace_the_stager_cannot_reach_falls_back_to_read_only_devices(
    helper: HelperProcess,
) -> None:
    """A workspace below a directory only its owner may search (a 0700 home): the helper
    refuses, the session still starts, with the plain read-only devices and a warning."""
    run = unix_user("coit-run")
    private = run.home / f"hostint-private-{os.getpid()}"
    ws = private / "ws"
    (ws / ".git/hooks").mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{run.uid}:{run.gid}", str(private)], check=True)
    private.chmod(0o700)
    try:
        with user_session(run, ws, helper.socket) as session:
            devices = session.client.get(f"instances/{session.name}")["devices"]
            assert "recursive" not in devices["workspace"], devices
            assert devices["workspace"]["source"] == str(ws)
            assert devices["coi-protect-0"]["path"] == "/workspace/.git/hooks", devices
            weak = "DESCRIBE protection: read-only mounts; root in the sandbox"
            assert any(line.startswith(weak) for line in session.lines), session.lines
        assert "the helper refused to build the locked workspace" in session.stderr
    finally:
        shutil.rmtree(private, ignore_errors=True)
