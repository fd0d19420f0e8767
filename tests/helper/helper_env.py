"""Session fixture and tools for the helper's integration tests: real users, a private
D-Bus system bus with a real polkitd, the polkit files, provisioned incus-user projects, real
containers and a real `coi-helper serve` process on a temporary socket. Everything is created
here and removed at the end; nothing of the host's own dbus/polkitd/incusd is stopped.

The private bus (not the host's) lets the tests stop *their* polkitd to check that only root is
served without polkit, and has no service activation, so nothing restarts it behind our back.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPER = str(Path(sys.executable).with_name("coi-helper"))
POLKITD = "/usr/lib/polkit-1/polkitd"
ACTIONS_DIR = Path("/usr/share/polkit-1/actions")
RULES_DIR = Path("/etc/polkit-1/rules.d")
PREFIX = "coi-test-helper-"

DENY_RULES = """// coi-helper tests: coit-mallory is refused outright (a real polkit "no").
polkit.addRule(function (action, subject) {
    if (action.id.indexOf("org.codeonincus.helper.") == 0 && subject.user == "coit-mallory") {
        return polkit.Result.NO;
    }
});
"""

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""


def run(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output."""
    return subprocess.run(list(args), check=check, text=True, capture_output=True, **kw)


def require_root_host() -> None:
    """Fail (not skip) when the integration prerequisites are missing."""
    if os.geteuid() != 0:
        pytest.fail("helper integration tests run as root: use `bash .ci/run`")
    for path in (POLKITD, "/var/lib/incus/unix.socket", HELPER):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: run packaging/host-setup first")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until true or fail the test naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------- processes
def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Terminate a process we started (by its pid), then kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@dataclass
class PrivateBus:
    """A dbus-daemon of type system on a temporary socket, with or without a polkitd."""

    address: str
    daemon: subprocess.Popen[str]
    polkitd: subprocess.Popen[str] | None = None

    def polkit_running(self) -> bool:
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        dbus = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")
        try:
            with open_dbus_connection(self.address) as conn:
                msg = new_method_call(dbus, "NameHasOwner", "s", ("org.freedesktop.PolicyKit1",))
                return bool(conn.send_and_get_reply(msg, timeout=5).body[0])
        except OSError:
            return False

    def start_polkitd(self) -> None:
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}
        self.polkitd = subprocess.Popen(
            [POLKITD, "--no-debug"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        wait_for(self.polkit_running, 20, "polkitd on the private bus")

    def stop_polkitd(self) -> None:
        if self.polkitd is not None:
            stop_process(self.polkitd)
            self.polkitd = None
        wait_for(lambda: not self.polkit_running(), 10, "polkitd to leave the private bus")

    def close(self) -> None:
        if self.polkitd is not None:
            stop_process(self.polkitd)
        stop_process(self.daemon)


def start_private_bus(directory: Path, with_polkit: bool) -> PrivateBus:
    """Start a private system-type bus in `directory` (and a polkitd on it)."""
    sock = directory / "bus"
    conf = directory / "bus.conf"
    conf.write_text(BUS_CONFIG.format(path=sock))
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    wait_for(sock.exists, 10, "the private dbus-daemon socket")
    os.chmod(sock, 0o777)
    bus = PrivateBus(f"unix:path={sock}", daemon)
    if with_polkit:
        bus.start_polkitd()
    return bus


@dataclass
class HelperProcess:
    """A running `coi-helper serve`."""

    proc: subprocess.Popen[str]
    socket: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)


def start_helper(
    directory: Path, bus: PrivateBus | None, *extra: str, name: str = "helper.sock"
) -> HelperProcess:
    """Start `coi-helper serve` on a socket in `directory`; wait until it is ready."""
    sock = str(directory / name)
    log = directory / f"{name}.log"
    args = [HELPER, "-v", "serve", "--socket", sock, "--no-polkit-autostart"]
    args += ["--bus", bus.address] if bus is not None else ["--no-polkit"]
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [*args, *extra], stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, text=True
        )
    helper = HelperProcess(proc, sock, log)
    deadline = time.monotonic() + 30
    while "ready on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            pytest.fail(f"coi-helper did not start: {log.read_text()}")
        time.sleep(0.05)
    return helper


# ------------------------------------------------------------------------------- users
@dataclass(frozen=True)
class User:
    """A real Unix user of the tests."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @property
    def project(self) -> str:
        return f"user-{self.uid}"


def ensure_user(name: str, groups: list[str]) -> User:
    """Create `name` (home, shell) in exactly `groups`."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        run("useradd", "--create-home", "--shell", "/bin/bash", name)
    run("usermod", "-G", ",".join(groups), name)
    pw = pwd.getpwnam(name)
    gids = tuple(os.getgrouplist(name, pw.pw_gid))
    return User(name, pw.pw_uid, pw.pw_gid, gids)


def as_user(user: User, fn: Callable[[], Any], timeout: float = 60) -> Any:
    """Run `fn` in a forked child with the user's uid, gid and groups; return its JSON result.

    Exceptions in the child come back as {"exception": type, "message": ...}.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
            try:
                result: Any = {"value": fn()}
            except Exception as exc:
                result = {
                    "exception": type(exc).__name__,
                    "message": str(exc),
                    "name": getattr(exc, "name", None),
                    "parameters": getattr(exc, "parameters", None),
                }
            os.write(w, json.dumps(result, default=str).encode())
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("client child timed out")
        time.sleep(0.01)
    data = b"".join(chunks)
    if not data:
        pytest.fail(f"client child as {user.name} failed (status {status})")
    result = json.loads(data)
    if "exception" in result:
        pytest.fail(f"client child as {user.name} raised {result}")
    return result


# ------------------------------------------------------------------------------ fixtures
@dataclass
class HelperEnv:
    """Everything the integration tests use."""

    root_dir: Path
    bus: PrivateBus
    helper: HelperProcess
    alice: User
    bob: User
    carol: User
    mallory: User
    alice_container: str
    bob_container: str
    root_container: str


def _install(src: Path, dest: Path, undo: list[Callable[[], None]]) -> None:
    old = dest.read_bytes() if dest.exists() else None
    if old == src.read_bytes():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o644)
    if old is None:
        undo.append(lambda: dest.unlink(missing_ok=True))
    else:
        undo.append(lambda: dest.write_bytes(old))


def _create_container(name: str, project: str, source: dict[str, Any], start: bool) -> None:
    import pylxd

    client = pylxd.Client(endpoint="/var/lib/incus/unix.socket", project=project)
    if client.instances.exists(name):
        _force_delete(client, name)  # left over from an interrupted run
    inst = client.instances.create({"name": name, "source": source}, wait=True)
    if start:
        inst.start(wait=True)


def _force_delete(client: Any, name: str) -> None:
    inst = client.instances.get(name)
    with contextlib.suppress(Exception):
        inst.stop(force=True, wait=True)
    inst.delete(wait=True)


def _delete_container(name: str, project: str) -> None:
    import pylxd

    client = pylxd.Client(endpoint="/var/lib/incus/unix.socket", project=project)
    if client.instances.exists(name):
        _force_delete(client, name)


@pytest.fixture(scope="session")
def helper_env() -> Iterator[HelperEnv]:
    """Users, polkit files, a private bus with polkitd, provisioned projects, containers and a
    running helper; all torn down afterwards."""
    require_root_host()
    from coi.helper.provision import deprovision_user, provision_user, restart_incus_user

    undo: list[Callable[[], None]] = []
    root_dir = Path(tempfile.mkdtemp(prefix="coit-helper-", dir="/run"))
    os.chmod(root_dir, 0o755)
    bus: PrivateBus | None = None
    helper: HelperProcess | None = None
    users: list[User] = []
    containers: list[tuple[str, str]] = []
    try:
        _install(
            ROOT / "polkit/org.codeonincus.helper.policy",
            ACTIONS_DIR / "org.codeonincus.helper.policy",
            undo,
        )
        _install(
            ROOT / "polkit/50-coi-incus-group.rules", RULES_DIR / "50-coi-incus-group.rules", undo
        )
        deny = root_dir / "deny.rules"
        deny.write_text(DENY_RULES)
        _install(deny, RULES_DIR / "49-coit-helper-deny.rules", undo)

        alice = ensure_user("coit-alice", ["incus"])
        bob = ensure_user("coit-bob", ["incus"])
        carol = ensure_user("coit-carol", ["users"])
        mallory = ensure_user("coit-mallory", ["incus"])
        users = [alice, bob, carol, mallory]
        for user in (alice, bob):
            provision_user(user.name)
        restart_incus_user()

        a1, b1, r1 = PREFIX + "a1", PREFIX + "b1", PREFIX + "r1"
        containers = [(a1, alice.project), (b1, bob.project), (r1, "default")]
        _create_container(a1, alice.project, {"type": "none"}, start=False)
        _create_container(b1, bob.project, {"type": "none"}, start=False)
        _create_container(r1, "default", {"type": "image", "alias": "coi-base"}, start=True)

        bus = start_private_bus(root_dir, with_polkit=True)
        helper = start_helper(root_dir, bus)
        yield HelperEnv(root_dir, bus, helper, alice, bob, carol, mallory, a1, b1, r1)
    finally:
        if helper is not None:
            helper.stop()
        if bus is not None:
            bus.close()
        for name, project in containers:
            with contextlib.suppress(Exception):
                _delete_container(name, project)
        for user in users:
            with contextlib.suppress(Exception):
                deprovision_user(user.name)
            run("userdel", "--remove", user.name, check=False)
        if users:
            with contextlib.suppress(Exception):
                restart_incus_user()
        for step in reversed(undo):
            step()
        shutil.rmtree(root_dir, ignore_errors=True)
