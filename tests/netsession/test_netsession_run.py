"""`coi run --network ...` end to end: real Incus, a real coi-helper, the real user coit-run.

Every address probed is one netsession_harness creates (198.19.78.0/24, 10.213.98.0/24, a
listener on the bridge gateway) plus `_gateway.incus`, which the bridge's dnsmasq answers
itself. Other names are only looked up in allowlist mode, where they reach nothing but the
test upstream.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from netsession_harness import (
    EVIL4,
    GW_PORT,
    HELPER_SOCKET,
    NET4,
    PREFIX,
    PRIV4,
    TCP_PORT,
    UDP_PORT,
    LabHelper,
    NsCoi,
    UnixUser,
    gateway,
    install_nft,
    nft_mentions,
    policy_names,
    sh,
)

from coi.helper.network import ContainerKey
from coi.launcher.health.checks import Status
from coi.launcher.helper_client import HelperClient, NetworkMode, NetworkPolicy
from coi.launcher.incus.client import IncusClient
from coi.launcher.session.naming import workspace_hash
from coi.launcher.session.network import (
    HEALTH_PREFIX,
    network_isolation_check,
    new_veth_name,
    remove_orphan_policies,
)

pytestmark = pytest.mark.integration

# Probes print "<label>=ok" or "<label>=no"; bash's /dev/tcp and /dev/udp need no tools.
PROBES = r"""
tcp() { timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3; printf ping >&3; head -c4 <&3" 2>/dev/null \
        | grep -q ping && echo "$1=ok" || echo "$1=no"; }
udp() { timeout 3 bash -c "exec 3<>/dev/udp/$2/$3; printf ping >&3; head -c4 <&3" 2>/dev/null \
        | grep -q ping && echo "$1=ok" || echo "$1=no"; }
name() { echo "$1=$(timeout 5 getent ahostsv4 "$2" | cut -d' ' -f1 | sort -u | tr '\n' ' ')"; }
"""


def results(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            out[key] = value.strip()
    return out


def run(coi: NsCoi, ws: Path, mode: str, script: str, *extra: str) -> dict[str, str]:
    proc = coi("run", "-w", str(ws), "--network", mode, *extra, "--", "bash", "-c", PROBES + script)
    assert proc.returncode == 0, proc.stderr
    return results(proc.stdout)


def test_restricted_session(ns_coi: NsCoi, ns_workspace: Path, ns_user: UnixUser) -> None:
    """Gateway DNS and the test internet work; private host and gateway ports are refused;
    root inside cannot undo it; the policy exists while the command runs and is gone after."""
    gw = gateway()
    install_nft(ns_workspace, ns_user.uid, ns_user.gid)
    script = f"""
echo "name=$COI_CONTAINER"
while [ ! -e /workspace/go ]; do sleep 0.1; done
# resolved may still be starting: a few tries (the answer must come from the gateway).
for i in $(seq 20); do gw=$(getent hosts _gateway.incus) && break; sleep 0.5; done
echo "gwdns=${{gw%% *}}"
tcp inet {NET4} {TCP_PORT}; udp inet_udp {NET4} {UDP_PORT}
tcp priv {PRIV4} {TCP_PORT}; udp priv_udp {PRIV4} {UDP_PORT}; tcp gwport {gw} {GW_PORT}
NFT="sudo env LD_LIBRARY_PATH=/workspace/nft /workspace/nft/nft"
$NFT add table inet mine && $NFT flush ruleset && echo "flushed=$($NFT list ruleset | wc -l)"
tcp priv_after_flush {PRIV4} {TCP_PORT}
sudo ip addr flush dev eth0 && sudo ip addr add {gw.rsplit(".", 1)[0]}.250/24 dev eth0 \
  && sudo ip route replace default via {gw} && echo "readdressed=yes"
sudo ip -6 addr add fd00:1:2::5/64 dev eth0 && echo "ipv6=yes"
tcp priv_after_ip {PRIV4} {TCP_PORT}; tcp gwport_after_ip {gw} {GW_PORT}
"""
    proc = ns_coi.popen(
        "run", "-w", str(ns_workspace), "--network", "restricted", "--",
        "bash", "-c", PROBES + script,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("name="), first + (proc.stderr.read() if proc.stderr else "")
        name = first.strip().split("=", 1)[1]
        assert name.startswith(PREFIX)
        # While the command runs, the helper holds the container's policy.
        with HelperClient(HELPER_SOCKET) as helper:
            entries = {e.instance: e for e in helper.list_network_policies()}
        assert entries[name].policy.mode is NetworkMode.RESTRICTED
        assert entries[name].installed
        assert nft_mentions(name)
        (ns_workspace / "go").touch()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    got = results(out)
    assert got["gwdns"] == gw
    assert got["inet"] == "ok" and got["inet_udp"] == "ok"
    assert got["priv"] == "no" and got["priv_udp"] == "no"
    assert got["gwport"] == "no"
    # root inside: its own ruleset is flushed (the nft tool works), the host's rules hold.
    assert got["flushed"] == "0"
    assert got["priv_after_flush"] == "no"
    assert got["readdressed"] == "yes" and got["ipv6"] == "yes"
    assert got["priv_after_ip"] == "no" and got["gwport_after_ip"] == "no"
    # After the run: container, policy and rules are gone.
    assert name not in policy_names()
    assert not nft_mentions(name)


def test_open_session_reaches_what_restricted_refuses(ns_coi: NsCoi, ns_workspace: Path) -> None:
    gw = gateway()
    got = run(
        ns_coi,
        ns_workspace,
        "open",
        f'echo "name=$COI_CONTAINER"; tcp priv {PRIV4} {TCP_PORT}; tcp gwport {gw} {GW_PORT};'
        f" tcp inet {NET4} {TCP_PORT}",
    )
    assert got["priv"] == "ok" and got["gwport"] == "ok" and got["inet"] == "ok"
    assert got["name"] not in policy_names()


def test_allowlist_session(ns_coi: NsCoi, ns_workspace: Path, ns_user: UnixUser) -> None:
    """Allowed names resolve (through the test upstream) and connect; other names do not
    resolve; addresses the resolver never answered are refused."""
    config = ns_user.home / f"coi-ns-allowlist-{os.getpid()}.toml"
    config.write_text('[network]\nmode = "allowlist"\nallowed_domains = ["a.allowed.test"]\n')
    os.chown(config, ns_user.uid, ns_user.gid)
    coi = NsCoi(ns_user, HELPER_SOCKET, {"COI_CONFIG": str(config)})
    try:
        got = run(
            coi,
            ns_workspace,
            "allowlist",
            f"""echo "name=$COI_CONTAINER"
name allowed a.allowed.test; name evil evil.test
tcp allowed_tcp {NET4} {TCP_PORT}; tcp evil_tcp {EVIL4} {TCP_PORT}; tcp priv {PRIV4} {TCP_PORT}
""",
        )
    finally:
        config.unlink()
    assert got["allowed"] == NET4
    assert got["evil"] == ""
    assert got["allowed_tcp"] == "ok"
    assert got["evil_tcp"] == "no" and got["priv"] == "no"
    assert got["name"] not in policy_names()
    assert not nft_mentions(got["name"])
    # Its resolver is gone too.
    cid = ContainerKey("default", got["name"]).cid
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"/run/coi/resolvers/{cid}" not in ps


def test_helper_stopped_refuses_restricted_and_leaves_nothing(
    ns_user: UnixUser, ns_workspace: Path, stopped_helper: str
) -> None:
    coi = NsCoi(ns_user, stopped_helper, {})
    proc = coi("run", "-w", str(ns_workspace), "--network", "restricted", "--", "true")
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("coi: ")]
    assert lines[0] == (
        "coi: error: network mode restricted cannot be enforced, so the session does not "
        f"start: helper not running: nothing listens on {stopped_helper}"
    ), proc.stderr
    assert lines[1].startswith("coi: hint: start it with") and "--network open" in lines[1]
    assert "Traceback" not in proc.stderr
    assert (
        sh("incus", "list", "--format", "csv", "-c", "n").stdout.count(
            PREFIX + workspace_hash(ns_workspace)
        )
        == 0
    )
    # open needs no helper.
    proc = coi("run", "-w", str(ns_workspace), "--network", "open", "--", "true")
    assert proc.returncode == 0, proc.stderr


def test_persistent_container_keeps_its_policy_and_gets_it_again(
    ns_coi: NsCoi, ns_workspace: Path
) -> None:
    script = f'echo "name=$COI_CONTAINER"; tcp priv {PRIV4} {TCP_PORT}; tcp inet {NET4} {TCP_PORT}'
    first = run(ns_coi, ns_workspace, "restricted", script, "--persistent")
    name = first["name"]
    try:
        assert first["priv"] == "no" and first["inet"] == "ok"
        with HelperClient(HELPER_SOCKET) as helper:
            kept = {e.instance: e for e in helper.list_network_policies()}[name]
        assert sh("incus", "list", name, "-c", "s", "-f", "csv").stdout.strip() == "RUNNING"
        # Stopped, it keeps its policy; the next session starts it and applies it again.
        sh("incus", "stop", "--force", name)
        assert name in policy_names()
        second = run(ns_coi, ns_workspace, "restricted", script, "--persistent")
        assert second["name"] == name
        assert second["priv"] == "no" and second["inet"] == "ok"
        with HelperClient(HELPER_SOCKET) as helper:
            again = {e.instance: e for e in helper.list_network_policies()}[name]
        assert again.generation > kept.generation
    finally:
        sh("incus", "delete", "--force", name, check=False)
        with HelperClient(HELPER_SOCKET) as helper:
            helper.remove_network_policy(name, "default")
    assert name not in policy_names()


def test_health_check_applies_and_removes_a_policy(
    test_helper: LabHelper, stopped_helper: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COI_HELPER_SOCKET", test_helper.socket)
    result = network_isolation_check()
    assert result.status is Status.OK, result
    assert "applies and removes" in result.message
    monkeypatch.setenv("COI_HELPER_SOCKET", stopped_helper)
    result = network_isolation_check()
    assert result.status is Status.FAIL
    assert "helper not running" in result.message
    assert "will refuse to start" in result.hint
    names = sh("incus", "list", "-f", "csv", "-c", "n").stdout.split()
    assert [n for n in names if n.startswith(HEALTH_PREFIX)] == []


def _orphan(tag: str) -> str:
    """A never-started container with a policy, then deleted behind the helper's back."""
    name = f"{PREFIX}{tag}-{os.getpid()}"
    sh("incus", "init", "--empty", name, "-q")
    try:
        sh("incus", "config", "device", "override", name, "eth0", f"host_name={new_veth_name()}")
        with HelperClient(HELPER_SOCKET) as helper:
            helper.apply_network_policy(name, "default", NetworkPolicy(NetworkMode.RESTRICTED))
    finally:
        sh("incus", "delete", "--force", name)
    assert name in policy_names() and nft_mentions(name)
    return name


def test_clean_and_helper_start_drop_policies_of_vanished_containers(
    test_helper: LabHelper, ns_workdir: Path
) -> None:
    # `coi clean`: remove_orphan_policies removes what belongs to no container any more.
    name = _orphan("orph")
    with HelperClient(HELPER_SOCKET) as helper:
        removed = remove_orphan_policies(IncusClient.connect(), helper)
    assert name in removed
    assert name not in policy_names() and not nft_mentions(name)
    # A helper that starts reconciles: the vanished container's state and rules are dropped.
    name = _orphan("rec")
    test_helper.stop()
    test_helper.start()
    assert name not in policy_names() and not nft_mentions(name)
