"""coi-helper end to end: a real helper process, real users, real dbus+polkitd, real Incus."""

# ruff: noqa: E402  (helper_env must be registered for assertion rewriting before its import)

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("helper_env")

# Imported here, before any fork: the forked clients run as test users who cannot read this
# interpreter's files (it may live under /root), so they must not import anything new.
import varlink
import varlink.scanner
from helper_env import (
    HelperEnv,
    User,
    as_user,
    run,
    start_helper,
    start_private_bus,
    wait_for,
)

from coi.helper.hardening import read_caps
from coi.helper.interface import Err
from coi.helper.ipc.client import VarlinkConnection
from coi.helper.ipc.wire import encode
from coi.helper.main import main as helper_main
from coi.launcher.helper_client import (
    HelperClient,
    HelperNotOwner,
    HelperNotRunning,
    helper_health,
)

pytestmark = pytest.mark.integration
# The session fixture `helper_env` lives in helper_env.py (not a conftest.py: several test
# folders import helpers from their conftest, and two modules named `conftest` collide).
pytest_plugins = ["helper_env"]

H = "org.codeonincus.Helper."
NET_ADMIN = 1 << 12


def call(sock: str, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One call on a fresh connection; errors come back as {"error": name, ...}."""
    from coi.helper.ipc.errors import VarlinkError

    with VarlinkConnection(sock, timeout=30) as conn:
        try:
            return {"parameters": conn.call(method, params)}
        except VarlinkError as exc:
            return {"error": exc.name, "parameters": exc.parameters}


def call_as(user: User, sock: str, method: str, params: dict[str, Any] | None = None) -> Any:
    return as_user(user, lambda: call(sock, method, params))["value"]


def describe(env: HelperEnv, user: User | None, instance: str, project: str) -> dict[str, Any]:
    params = {"instance": instance, "project": project}
    if user is None:
        return call(env.helper.socket, H + "DescribeInstance", params)
    result: dict[str, Any] = call_as(user, env.helper.socket, H + "DescribeInstance", params)
    return result


# ---------------------------------------------------------------------------- hardening
def test_helper_keeps_only_cap_net_admin_and_no_new_privs(helper_env: HelperEnv) -> None:
    caps = read_caps(helper_env.helper.pid)
    assert caps.effective == caps.permitted == NET_ADMIN
    assert caps.bounding == NET_ADMIN
    # Ambient (and so inheritable) CAP_NET_ADMIN only: the allowlist resolvers need it.
    assert caps.inheritable == caps.ambient == NET_ADMIN
    assert caps.no_new_privs
    # Non-dumpable: /proc/<pid> of the helper belongs to root and is not ptrace-able.
    status = Path(f"/proc/{helper_env.helper.pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status
    info = call(helper_env.helper.socket, H + "GetInfo")["parameters"]
    assert info["features"]["capabilities"] == ["cap_net_admin"]
    assert info["features"]["no_new_privs"] is True
    assert info["features"]["polkit"] is True
    assert info["features"]["kernel"] == os.uname().release
    assert info["features"]["peer_pidfd"] is True  # this host's kernel is >= 6.5


def test_helper_refuses_to_serve_without_root(helper_env: HelperEnv) -> None:
    sock = str(helper_env.root_dir / "nonroot.sock")

    def start() -> Any:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = helper_main(["serve", "--socket", sock, "--no-polkit"])
        return [rc, err.getvalue()]

    rc, err = as_user(helper_env.alice, start)["value"]
    assert rc == 1
    assert "refusing to serve" in err and "root" in err
    assert not os.path.exists(sock)


# ------------------------------------------------------------------------ authorisation
def test_alice_is_served_for_her_container(helper_env: HelperEnv) -> None:
    env = helper_env
    reply = describe(env, env.alice, env.alice_container, env.alice.project)
    assert "error" not in reply, reply
    inst = reply["parameters"]["instance"]
    assert inst["name"] == env.alice_container
    assert inst["project"] == env.alice.project
    assert inst["status"] == "Stopped" and inst["pid"] == 0 and inst["cgroup"] == ""
    assert [n["name"] for n in inst["nics"]] == ["eth0"]


def test_alice_is_refused_for_bobs_container(helper_env: HelperEnv) -> None:
    env = helper_env
    reply = describe(env, env.alice, env.bob_container, env.bob.project)
    assert reply["error"] == Err.NOT_OWNER
    assert reply["parameters"]["uid"] == env.alice.uid
    reply = describe(env, env.alice, env.root_container, "default")
    assert reply["error"] == Err.NOT_OWNER
    # The refusal is in the helper's log for the administrator.
    log = env.helper.log.read_text()
    assert f"uid {env.alice.uid} " in log and "DescribeInstance refused: NotOwner" in log


def test_bob_is_served_for_his_own(helper_env: HelperEnv) -> None:
    env = helper_env
    assert "error" not in describe(env, env.bob, env.bob_container, env.bob.project)


def test_user_outside_the_grant_is_refused(helper_env: HelperEnv) -> None:
    env = helper_env
    # carol is not in `incus`: the shipped policy asks for admin authentication (no session).
    reply = describe(env, env.carol, "c1", env.carol.project)
    assert reply["error"] == Err.INTERACTIVE_AUTH
    assert reply["parameters"]["action"] == "org.codeonincus.helper.monitor"
    # mallory is in `incus` but a rule says no: a plain refusal.
    reply = describe(env, env.mallory, "c1", env.mallory.project)
    assert reply["error"] == Err.PERMISSION_DENIED


def test_getinfo_reports_the_callers_authorisation(helper_env: HelperEnv) -> None:
    env = helper_env
    info = call_as(env.alice, env.helper.socket, H + "GetInfo")["parameters"]
    assert info["caller"]["uid"] == env.alice.uid
    assert info["caller"]["admin"] is False
    assert info["caller"]["project"] == env.alice.project
    auth = info["caller"]["authorization"]
    assert auth["org.codeonincus.helper.network"] == "allowed"
    assert auth["org.codeonincus.helper.monitor"] == "allowed"
    assert auth["org.codeonincus.helper.admin"] == "challenge"
    carol = call_as(env.carol, env.helper.socket, H + "GetInfo")["parameters"]
    assert set(carol["caller"]["authorization"].values()) == {"challenge"}


def test_root_is_served_everywhere(helper_env: HelperEnv) -> None:
    env = helper_env
    assert "error" not in describe(env, None, env.alice_container, env.alice.project)

    def running() -> bool:
        inst = describe(env, None, env.root_container, "default")["parameters"]["instance"]
        return bool(inst["nics"] and inst["nics"][0]["addresses"])

    wait_for(running, 60, "the root test container to get an address")
    inst = describe(env, None, env.root_container, "default")["parameters"]["instance"]
    assert inst["status"] == "Running" and inst["pid"] > 0
    veth = inst["nics"][0]["host_name"]
    assert veth and Path(f"/sys/class/net/{veth}").exists()
    assert inst["cgroup"] and Path(f"{cgroup2_mount()}{inst['cgroup']}").is_dir()
    assert any(a.startswith("10.211.47.") for a in inst["nics"][0]["addresses"])


def cgroup2_mount() -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrids)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return fields[1]
    raise AssertionError("no cgroup2 mount")


def test_no_such_instance(helper_env: HelperEnv) -> None:
    env = helper_env
    reply = describe(env, env.alice, "coi-test-helper-missing", env.alice.project)
    assert reply["error"] == Err.NO_SUCH_INSTANCE


def test_without_polkit_only_root_is_served(helper_env: HelperEnv, tmp_path: Path) -> None:
    env = helper_env
    directory = env.root_dir / "nopolkit"
    directory.mkdir(exist_ok=True)
    os.chmod(directory, 0o755)
    bus = start_private_bus(directory, with_polkit=True)
    helper = start_helper(directory, bus)
    try:
        params = {"instance": env.alice_container, "project": env.alice.project}
        before = call_as(env.alice, helper.socket, H + "DescribeInstance", params)
        assert "error" not in before
        bus.stop_polkitd()
        after = call_as(env.alice, helper.socket, H + "DescribeInstance", params)
        assert after["error"] == Err.PERMISSION_DENIED
        assert "only root" in after["parameters"]["reason"]
        assert "error" not in call(helper.socket, H + "DescribeInstance", params)
    finally:
        helper.stop()
        bus.close()


def test_a_reused_pid_does_not_inherit_authorisation(helper_env: HelperEnv) -> None:
    """Alice's process connects, is served, hands the socket to root and exits; a new process
    of alice gets the same pid; the old socket must not be served any more."""
    env = helper_env
    params = {"instance": env.alice_container, "project": env.alice.project}
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            parent_end.close()
            os.setgroups(list(env.alice.groups))
            os.setgid(env.alice.gid)
            os.setuid(env.alice.uid)
            conn = VarlinkConnection(env.helper.socket, timeout=30)
            conn.call(H + "DescribeInstance", params)  # served while alive
            socket.send_fds(child_end, [b"x"], [conn._sock.fileno()])
            code = 0
        finally:
            os._exit(code)
    child_end.close()
    _, fds, _, _ = socket.recv_fds(parent_end, 1, 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    inherited = socket.socket(fileno=fds[0])

    # Reuse the pid for a new process of alice (ns_last_pid needs root; retry on races).
    sleeper: int | None = None
    for _ in range(20):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        candidate = os.fork()
        if candidate == 0:
            os.setgroups(list(env.alice.groups))
            os.setgid(env.alice.gid)
            os.setuid(env.alice.uid)
            time.sleep(30)
            os._exit(0)
        if candidate == pid:
            sleeper = candidate
            break
        os.kill(candidate, 9)
        os.waitpid(candidate, 0)
    assert sleeper is not None, "could not reuse the pid"
    try:
        from coi.helper.ipc.wire import Call

        inherited.sendall(encode(Call(H + "DescribeInstance", params).to_wire()))
        reply = _read_reply(inherited)
        assert reply["error"] == Err.PERMISSION_DENIED
        assert "exited" in reply["parameters"]["reason"]
    finally:
        os.kill(sleeper, 9)
        os.waitpid(sleeper, 0)
        inherited.close()
        parent_end.close()


# ------------------------------------------------------------------------ malformed input
def _read_reply(sock: socket.socket, timeout: float = 10) -> dict[str, Any]:
    import json

    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\0"):
        chunk = sock.recv(65536)
        if not chunk:
            return {"closed": True, "partial": data.decode(errors="replace")}
        data += chunk
    reply: dict[str, Any] = json.loads(data[:-1].split(b"\0")[0])
    return reply


def _read_replies(sock: socket.socket, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    import json

    sock.settimeout(timeout)
    data = b""
    while data.count(b"\0") < count:
        chunk = sock.recv(65536)
        assert chunk, "the helper closed the connection"
        data += chunk
    return [json.loads(f) for f in data.split(b"\0")[:count]]


def _raw(sock_path: str, payload: bytes, *, shutdown: bool = False) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        try:
            s.sendall(payload)
        except BrokenPipeError:
            return {"closed": True}
        if shutdown:
            s.shutdown(socket.SHUT_WR)
        try:
            return _read_reply(s)
        except ConnectionResetError:
            return {"closed": True}


def _still_serving(sock: str) -> None:
    assert call(sock, H + "Ping", {"ping": "still here"})["parameters"] == {"pong": "still here"}


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b"\x00", Err.PROTOCOL_VIOLATION),
        (b"\xde\xad\xbe\xef garbage\x00", Err.PROTOCOL_VIOLATION),
        (b"[1,2,3]\x00", Err.PROTOCOL_VIOLATION),
        (b'{"method":"x"}\x00', Err.PROTOCOL_VIOLATION),
        (
            b'{"method":"' + H.encode() + b'Ping","parameters":' + b"[" * 40 + b"]" * 40 + b"}\x00",
            Err.PROTOCOL_VIOLATION,
        ),
        (
            b'{"method":"' + H.encode() + b'Ping","parameters":{"ping":' + b"9" * 6000 + b"}}\x00",
            Err.PROTOCOL_VIOLATION,
        ),
        (b"x" * (300 * 1024), Err.PROTOCOL_VIOLATION),
        (
            b'{"method":"' + H.encode() + b'Ping","parameters":{"ping":5}}\x00',
            Err.INVALID_PARAMETER,
        ),
        (
            b'{"method":"' + H.encode() + b'Ping","parameters":{"ping":"a","x":1}}\x00',
            Err.INVALID_PARAMETER,
        ),
        (b'{"method":"' + H.encode() + b'Nope"}\x00', Err.METHOD_NOT_FOUND),
        (b'{"method":"org.nope.Iface.Call"}\x00', Err.INTERFACE_NOT_FOUND),
        (
            b'{"method":"' + H.encode() + b'Ping","parameters":{"ping":"a"},"bogus":1}\x00',
            Err.PROTOCOL_VIOLATION,
        ),
        (
            b'{"method":"' + H.encode() + b'DescribeInstance","parameters":'
            b'{"instance":"../../x","project":"default"}}\x00',
            Err.INVALID_NAME,
        ),
    ],
)
def test_malformed_input_gets_a_typed_error(
    helper_env: HelperEnv, payload: bytes, expect: str
) -> None:
    reply = _raw(helper_env.helper.socket, payload)
    assert reply.get("error") == expect or (
        reply.get("closed") and expect == Err.PROTOCOL_VIOLATION
    )
    _still_serving(helper_env.helper.socket)


def test_missing_nul_then_hangup_closes_quietly(helper_env: HelperEnv) -> None:
    reply = _raw(helper_env.helper.socket, b'{"method":"' + H.encode() + b'Ping"', shutdown=True)
    assert reply == {"closed": True, "partial": ""}
    _still_serving(helper_env.helper.socket)


def test_rate_limit(helper_env: HelperEnv) -> None:
    from coi.helper.ipc.wire import Call

    frame = encode(Call(H + "Ping", {"ping": "p"}).to_wire())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(helper_env.helper.socket)
        s.sendall(frame * 300)
        replies = _read_replies(s, 300)
    limited = [r for r in replies if r.get("error") == Err.RATE_LIMITED]
    served = [r for r in replies if r.get("parameters") == {"pong": "p"}]
    assert limited and served and len(limited) + len(served) == 300


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _connect_with_retry(path: str) -> socket.socket:
    """Connect; a full listen backlog (EAGAIN on Unix sockets) is retried like a client would."""
    deadline = time.monotonic() + 10
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_a_thousand_connections_opened_and_dropped(helper_env: HelperEnv) -> None:
    env = helper_env
    _still_serving(env.helper.socket)
    baseline = _fd_count(env.helper.pid)
    for _ in range(5):
        batch = []
        for _ in range(200):
            batch.append(_connect_with_retry(env.helper.socket))
        for s in batch:
            s.close()
    _still_serving(env.helper.socket)
    wait_for(lambda: _fd_count(env.helper.pid) <= baseline + 2, 30, "the helper to release fds")
    assert env.helper.proc.poll() is None


def test_standard_varlink_client_introspects_and_calls(helper_env: HelperEnv) -> None:
    env = helper_env

    def use_reference_client() -> Any:
        with varlink.Client(address=f"unix:{env.helper.socket}") as client:
            names = client.get_interfaces()
            with client.open("org.codeonincus.Helper") as helper:
                pong = helper.Ping("hi")
                info = helper.DescribeInstance(env.alice_container, env.alice.project)
                try:
                    helper.DescribeInstance(env.bob_container, env.bob.project)
                    refused = None
                except varlink.VarlinkError as exc:
                    refused = exc.error()
        return [names, dict(pong), info["instance"]["name"], refused]

    names, pong, name, refused = as_user(env.alice, use_reference_client)["value"]
    assert "org.codeonincus.Helper" in names and "org.varlink.service" in names
    assert pong == {"pong": "hi"}
    assert name == env.alice_container
    assert refused == Err.NOT_OWNER


# ------------------------------------------------------------------------- launcher side
def test_helper_client_for_alice(helper_env: HelperEnv) -> None:
    env = helper_env

    def use_client() -> Any:
        with HelperClient(env.helper.socket) as client:
            client.verify_server_contract()
            inst = client.describe_instance(env.alice_container, env.alice.project)
            try:
                client.describe_instance(env.bob_container, env.bob.project)
                refused = ""
            except HelperNotOwner as exc:
                refused = str(exc)
        health = helper_health(env.helper.socket)
        return [inst.project, refused, health.reachable, health.authorised, health.project]

    project, refused, reachable, authorised, health_project = as_user(env.alice, use_client)[
        "value"
    ]
    assert project == env.alice.project
    assert env.bob.project in refused
    assert reachable and authorised and health_project == env.alice.project


def test_helper_client_reports_a_missing_helper(helper_env: HelperEnv) -> None:
    health = helper_health(str(helper_env.root_dir / "absent.sock"))
    assert not health.reachable and "helper not running" in health.error
    assert "coi-helper serve" in health.hint
    with pytest.raises(HelperNotRunning):
        HelperClient(str(helper_env.root_dir / "absent.sock")).ping()


# ------------------------------------------------------------------ policy and lifecycle
def test_admin_policy_is_reported(helper_env: HelperEnv) -> None:
    directory = helper_env.root_dir / "policy"
    directory.mkdir(exist_ok=True)
    policy = directory / "policy.toml"
    policy.write_text('allowed_modes = ["restricted", "allowlist"]\nmonitoring = "required"\n')
    helper = start_helper(directory, None, "--policy", str(policy))
    try:
        info = call(helper.socket, H + "GetInfo")["parameters"]
        assert info["policy"] == {
            "path": str(policy),
            "loaded": True,
            "allowed_modes": ["restricted", "allowlist"],
            "monitoring": "required",
            "max_allowlist_entries": 256,
        }
        # --no-polkit: alice is refused, root is served.
        reply = call_as(
            helper_env.alice,
            helper.socket,
            H + "DescribeInstance",
            {"instance": "x", "project": helper_env.alice.project},
        )
        assert reply["error"] == Err.PERMISSION_DENIED
    finally:
        helper.stop()


def test_invalid_admin_policy_stops_the_helper(helper_env: HelperEnv) -> None:
    from helper_env import HELPER

    policy = helper_env.root_dir / "bad-policy.toml"
    policy.write_text('allowed_modes = ["everything"]\n')
    proc = run(
        HELPER,
        "serve",
        "--socket",
        str(helper_env.root_dir / "bad.sock"),
        "--no-polkit",
        "--policy",
        str(policy),
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1
    assert str(policy) in proc.stderr and "allowed_modes" in proc.stderr


def test_socket_activation(helper_env: HelperEnv) -> None:
    """The systemd protocol (LISTEN_PID/LISTEN_FDS, fd 3) without systemd: the test binds the
    socket, hands it over as fd 3 and execs the helper with the environment systemd sets."""
    from helper_env import HELPER

    path = str(helper_env.root_dir / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o666)
    listener.listen(16)
    script = 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" serve --no-polkit --idle-timeout 2'
    fd = listener.fileno()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script, HELPER],
        pass_fds=sorted({fd, 3}),
        preexec_fn=lambda: os.dup2(fd, 3),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    listener.close()
    try:
        if not _pings(path, 20):
            proc.kill()
            pytest.fail(f"socket-activated helper did not answer: {proc.communicate()[1]}")
        assert proc.wait(timeout=20) == 0  # idle exit after the last connection
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _pings(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _still_serving(path)
            return True
        except OSError:
            time.sleep(0.05)
    return False


def test_idle_exit(helper_env: HelperEnv) -> None:
    directory = helper_env.root_dir / "idle"
    directory.mkdir(exist_ok=True)
    helper = start_helper(directory, None, "--idle-timeout", "1")
    _still_serving(helper.socket)
    assert helper.proc.wait(timeout=15) == 0


def test_provisioning_is_idempotent_and_deterministic(helper_env: HelperEnv) -> None:
    from coi.helper.provision import ProvisionError, provision_user

    again = provision_user(helper_env.alice.name)
    assert not again.changed, again.actions
    assert again.project == helper_env.alice.project
    assert again.network == f"incusbr-{helper_env.alice.uid}"
    listing = run("incus", "network", "get", again.network, "ipv4.address").stdout.strip()
    assert listing == again.subnet
    with pytest.raises(ProvisionError, match="overlaps"):
        provision_user(helper_env.carol.name, subnet="10.211.47.1/24")
    assert Path(f"/var/lib/incus/users/{helper_env.alice.uid}/client.crt").exists()
    # The user reaches Incus through incus-user with neither incus-admin nor a subnet search.
    home = pwd.getpwnam(helper_env.alice.name).pw_dir

    def incus_list() -> list[str]:
        proc = subprocess.run(
            ["incus", "list", "--format", "csv", "--columns", "n"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"HOME": home, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        return [proc.stdout, proc.stderr]

    out, err = as_user(helper_env.alice, incus_list)["value"]
    assert helper_env.alice_container in out, err


def _caps_after_drop(keep: tuple[int, ...], ambient: tuple[int, ...]) -> list[int]:
    """Drop in a forked child; return [own effective, own bounding, exec'd child's effective]."""
    from coi.helper.hardening import drop_privileges

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            caps = drop_privileges(keep, ambient)
            out = subprocess.run(
                ["grep", "^CapEff", "/proc/self/status"], capture_output=True, text=True
            ).stdout
            child = int(out.split()[1], 16)
            os.write(w, f"{caps.effective} {caps.bounding} {child}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return [int(x) for x in data.split()]


def test_privilege_drop_and_what_executed_programs_inherit() -> None:
    from coi.helper.hardening import CAP_NAMES, KEEP

    bind = CAP_NAMES.index("net_bind_service")
    eff, bnd, child = _caps_after_drop(KEEP, ())
    assert eff == bnd == NET_ADMIN and child == 0  # nothing survives an exec by default
    eff, bnd, child = _caps_after_drop((*KEEP, bind), (bind,))
    assert eff == bnd == NET_ADMIN | 1 << bind
    assert child == 1 << bind  # only the ambient capability is handed on


def test_attachment_is_read_from_incus(helper_env: HelperEnv) -> None:
    from coi.helper.incus import PylxdInstances
    from coi.helper.ipc.errors import VarlinkError

    env = helper_env
    source = PylxdInstances()
    wait_for(
        lambda: bool(source.describe("default", env.root_container).nics[0].host_name),
        30,
        "the root test container's veth",
    )
    att = source.attachment("default", env.root_container)
    assert att.bridge == "coibr0" and att.gateway4 == "10.211.47.1" and att.gateway6 is None
    assert Path(f"/sys/class/net/{att.veth}/master").resolve().name == "coibr0"
    # alice's container is stopped and its veth name is not pinned: no answer, not a guess.
    with pytest.raises(VarlinkError, match="host_name"):
        source.attachment(env.alice.project, env.alice_container)
    # Her bridge is her own, with the subnet provision-user chose.
    nic = source.describe(env.alice.project, env.alice_container).nics[0]
    assert nic.network == f"incusbr-{env.alice.uid}" and nic.host_name == ""


def test_one_user_cannot_hold_every_connection(helper_env: HelperEnv) -> None:
    env = helper_env
    frame = encode({"method": H + "Ping", "parameters": {"ping": "p"}})

    def hog() -> list[int]:
        held = [_connect_with_retry(env.helper.socket) for _ in range(40)]
        served = closed = 0
        for s in held:
            try:
                s.sendall(frame)
                reply = _read_reply(s)
            except OSError:
                reply = {"closed": True}
            if reply.get("parameters") == {"pong": "p"}:
                served += 1
            else:
                closed += 1
        # One more connection of hers, while she holds 32, is refused too.
        other = _raw(env.helper.socket, frame).get("parameters") == {"pong": "p"}
        for s in held:
            s.close()
        return [served, closed, other]

    served, closed, other = as_user(env.alice, hog)["value"]
    assert (served, closed) == (32, 8)
    assert not other  # alice's 33rd connection, even later, is refused while she holds 32
    _still_serving(env.helper.socket)  # root (another uid) is served


def test_an_incomplete_drop_is_refused() -> None:
    """Without CAP_SETPCAP and without locked securebits the drop cannot be completed: the
    helper's drop function must raise rather than serve half-hardened."""
    import ctypes

    from coi.helper.hardening import CAP_NAMES, HardeningError, _capset, _libc, drop_privileges

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            libc = _libc()
            setpcap = CAP_NAMES.index("setpcap")
            keep = (1 << CAP_NAMES.index("net_admin")) | (1 << CAP_NAMES.index("sys_admin"))
            _capset(libc, keep)  # CAP_SETPCAP gone before the helper's own drop runs
            assert libc.prctl(24, ctypes.c_ulong(setpcap), 0, 0, 0) != 0  # cannot drop bset
            try:
                drop_privileges()
                os.write(w, b"served")
            except HardeningError as exc:
                os.write(w, f"refused: {exc}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    assert out.startswith("refused:"), out


def test_polkit_subject_with_pidfd_is_transported(helper_env: HelperEnv) -> None:
    """The pidfd travels over D-Bus (fd passing) next to pid+start-time; polkit 122 ignores it,
    >= 124 pins the process by it. Both subjects must get the same answer for alice."""
    from coi.helper.identity import PeerIdentity
    from coi.helper.polkit import PolkitClient

    env = helper_env
    path = str(env.root_dir / "identity.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o666)
    listener.listen(1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups(list(env.alice.groups))
            os.setgid(env.alice.gid)
            os.setuid(env.alice.uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            os.read(r, 1)  # stay alive until the parent is done
        finally:
            os._exit(0)
    try:
        conn, _ = listener.accept()
        peer = PeerIdentity.from_socket(conn)
        assert peer.uid == env.alice.uid and peer.pidfd is not None
        client = PolkitClient(env.bus.address, autostart=False)
        try:
            for action, want in (
                ("org.codeonincus.helper.network", "allowed"),
                ("org.codeonincus.helper.admin", "challenge"),
            ):
                assert client.check(peer, action, use_pidfd=False).result.value == want
                assert client.check(peer, action, use_pidfd=True).result.value == want
        finally:
            client.close()
            peer.close()
            conn.close()
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)
        listener.close()
