"""Lifecycle: replace, remove, reconcile, crash consistency and leaks, on both nft backends."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import network_lab as L
import pytest
from network_lab import LabEngine, key_of, target_of

from coi.helper.network import (
    ContainerKey,
    FirewallError,
    InvalidTarget,
    NetworkTarget,
    parse_policy,
)
from coi.helper.network.nft import LibNftables, NftCommand

pytestmark = pytest.mark.integration

Apply = Callable[[str, dict[str, Any]], Any]
ALLOW = {"mode": "allowlist", "allowlist": [{"target": "a.allowed.test"}]}


def coi_tables() -> list[str]:
    """The coi tables in the lab's router namespace."""
    out = L.nsexec(L.RTR, "nft", "-j", "list", "tables").stdout
    items = json.loads(out)["nftables"]
    return [
        f"{i['table']['family']} {i['table']['name']}"
        for i in items
        if "table" in i and i["table"]["name"] == "coi"
    ]


def resolver_pids(run_dir: Path) -> list[int]:
    """Processes running a dnsmasq configuration from `run_dir`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"dnsmasq" in cmdline and str(run_dir).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def temp_veth(lab: L.Lab) -> Iterator[Callable[[str], None]]:
    """Create throwaway bridge ports in the router namespace; all deleted afterwards."""
    made: list[str] = []

    def make(name: str) -> None:
        L.sh("ip", "-n", L.RTR, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        L.sh("ip", "-n", L.RTR, "link", "set", name, "master", "br0", "up")
        made.append(name)

    yield make
    for name in made:
        L.sh("ip", "-n", L.RTR, "link", "del", name, check=False)


@pytest.mark.parametrize("backend", [LibNftables, NftCommand])
def test_both_backends_apply_replace_and_remove(
    lab: L.Lab, engine: LabEngine, backend: type, apply: Apply
) -> None:
    with L.in_netns(L.RTR):
        engine.engine.nft = backend()
    apply("c1", {"mode": "restricted"})
    assert not L.reachable(L.C1, "tcp", L.PRIV4)
    apply("c1", {"mode": "open"})
    assert L.reachable(L.C1, "tcp", L.PRIV4)
    entry = engine.get(key_of("c1"))
    assert entry is not None and entry.generation == 2 and entry.installed
    assert engine.remove(key_of("c1"))
    assert not engine.remove(key_of("c1"))  # idempotent
    assert coi_tables() == []


def test_policy_can_be_applied_before_the_veth_exists(
    lab: L.Lab, engine: LabEngine, temp_veth: Callable[[str], None]
) -> None:
    """Fail closed: the rules wait for the container's veth (Incus creates it at start)."""
    target = target_of("c1", veth="vlate")
    engine.apply(target, parse_policy({"mode": "blocked"}))
    temp_veth("vlate")
    L.sh("ip", "-n", L.RTR, "link", "set", "vlate", "master", "br0", "up")
    # Frames from the new port hit the container's chain from the first one on.
    L.sh("ip", "-n", L.RTR, "link", "set", "vlatep", "up")
    L.sh("ip", "-n", L.RTR, "addr", "add", "fd77::55/64", "dev", "vlatep", "nodad")
    deadline = time.monotonic() + 5
    while engine.read_counters(key_of("c1")).packets_out == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.read_counters(key_of("c1")).packets_out > 0


def test_targets_are_checked_against_the_kernel(lab: L.Lab, engine: LabEngine) -> None:
    policy = parse_policy({"mode": "restricted"})
    cases = [
        NetworkTarget(key_of("c1"), "vc1", "nosuchbr", ipaddress.IPv4Address(L.GW4)),
        NetworkTarget(key_of("c1"), "vc1", "up0", ipaddress.IPv4Address("198.18.0.1")),
        NetworkTarget(key_of("c1"), "vc1", "br0", ipaddress.IPv4Address("10.77.0.99")),
        NetworkTarget(key_of("c1"), "up0", "br0", ipaddress.IPv4Address(L.GW4)),
    ]
    for target in cases:
        with pytest.raises(InvalidTarget):
            engine.apply(target, policy)
    assert coi_tables() == []
    assert engine.list_policies() == []


def test_quarantine_and_counters_need_a_policy(lab: L.Lab, engine: LabEngine) -> None:
    with pytest.raises(InvalidTarget):
        engine.quarantine(key_of("c1"))
    with pytest.raises(InvalidTarget):
        engine.read_counters(key_of("c1"))


def test_reconcile_drops_vanished_keeps_and_repairs_owned(
    lab: L.Lab, engine: LabEngine, apply: Apply
) -> None:
    apply("c1", ALLOW)
    apply("c2", {"mode": "restricted"})
    # Damage c1: its resolver dies, and someone deletes its dispatch element.
    pid = engine.get(key_of("c1")).resolver_pid
    os.kill(pid, signal.SIGKILL)
    mark = key_of("c1").mark
    L.nsexec(L.RTR, "nft", "delete", "element", "inet", "coi", "marks", "{", hex(mark), "}")
    assert not engine.get(key_of("c1")).installed
    # And leave an orphan: rules of a container no state file knows.
    with L.in_netns(L.RTR):
        engine.engine._state_path(key_of("c2").cid).rename(engine.state_dir / "c2.saved")
    report = engine.reconcile([key_of("c1")])
    assert report.reapplied == (key_of("c1"),)
    assert report.orphan_ids == (key_of("c2").cid,)
    assert [p.key for p in engine.list_policies()] == [key_of("c1")]
    entry = engine.get(key_of("c1"))
    assert entry.installed and entry.resolver_pid is not None
    assert L.probe(L.C1, "dns", L.GW4, "a.allowed.test")["answers"] == [L.NET4]
    assert L.reachable(L.C1, "tcp", L.NET4)
    assert not L.reachable(L.C1, "tcp", L.PRIV4)
    assert L.reachable(L.C2, "tcp", L.PRIV4)  # c2's orphaned rules are gone
    # A container that vanished entirely.
    report = engine.reconcile([])
    assert report.removed == (key_of("c1"),)
    assert coi_tables() == [] and resolver_pids(engine.run_dir) == []


def test_a_hundred_create_apply_delete_cycles_leave_nothing(
    lab: L.Lab, engine: LabEngine, temp_veth: Callable[[str], None]
) -> None:
    policies = [
        {"mode": "restricted"},
        ALLOW,
        {"mode": "open"},
        {"mode": "blocked"},
        {"mode": "allowlist", "allowlist": [{"target": "*.sub.allowed.test", "ports": [443]}]},
    ]
    # A long-lived neighbour keeps the tables alive, so per-container removal is exercised too.
    engine.apply(target_of("c2"), parse_policy({"mode": "restricted"}))
    base = target_of("c2")
    for i in range(100):
        veth = f"vcyc{i}"
        temp_veth(veth)
        target = NetworkTarget(
            ContainerKey("coit-net", f"cycle-{i}"), veth, "br0", base.gateway4, base.gateway6
        )
        engine.apply(target, parse_policy(policies[i % len(policies)]))
        assert engine.remove(target.key)
        L.sh("ip", "-n", L.RTR, "link", "del", veth)
    assert [p.key for p in engine.list_policies()] == [key_of("c2")]
    assert resolver_pids(engine.run_dir) == []
    ruleset = L.nsexec(L.RTR, "nft", "list", "ruleset").stdout
    assert "cycle" not in ruleset
    c2 = key_of("c2").cid
    leftovers = [
        w
        for w in ruleset.split()
        if "_" in w
        and c2 not in w
        and w.split("_")[0] in ("l", "f", "r", "d", "n4", "n6", "out", "rej", "l2")
    ]
    assert leftovers == []
    assert engine.remove(key_of("c2"))
    assert coi_tables() == []
    assert sorted(p.name for p in engine.state_dir.iterdir()) == [".lock"]
    assert list(engine.run_dir.iterdir()) == []


APPLY_LOOP = """
import ipaddress, sys
from pathlib import Path
from coi.helper.network import NetworkEngine, NetworkTarget, ContainerKey, Upstream, parse_policy
upstream = Upstream(ipaddress.IPv4Address(sys.argv[3]))
engine = NetworkEngine(Path(sys.argv[1]), Path(sys.argv[2]), upstreams=(upstream,))
target = NetworkTarget(ContainerKey("coit-net", "coit-net-c1"), "vc1", "br0",
                       ipaddress.IPv4Address("10.77.0.1"), ipaddress.IPv6Address("fd77::1"))
policies = [{"mode": "allowlist", "allowlist": [{"target": "a.allowed.test"}]},
            {"mode": "restricted"}]
i = 0
print("go", flush=True)
while True:
    engine.apply(target, parse_policy(policies[i % 2]))
    i += 1
"""


def test_sigkill_mid_apply_then_reconcile_is_consistent(lab: L.Lab, engine: LabEngine) -> None:
    rng = random.Random(5)
    for _round in range(8):
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                L.RTR,
                sys.executable,
                "-c",
                APPLY_LOOP,
                str(engine.state_dir),
                str(engine.run_dir),
                L.NET4,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The restarted helper reconciles with the containers that still exist.
        engine.reconcile([key_of("c1")])
        entry = engine.get(key_of("c1"))
        assert entry is not None and entry.installed
        pids = resolver_pids(engine.run_dir)
        if entry.policy.mode.value == "allowlist":
            assert pids == [entry.resolver_pid]
            assert L.probe(L.C1, "dns", L.GW4, "a.allowed.test")["answers"] == [L.NET4]
        else:
            assert pids == []
        assert not L.reachable(L.C1, "tcp", L.PRIV4)
    # Re-applying after all that gives exactly one clean copy of the rules.
    engine.apply(target_of("c1"), parse_policy({"mode": "restricted"}))
    ruleset = L.nsexec(L.RTR, "nft", "list", "ruleset").stdout
    assert ruleset.count(f"chain f_{key_of('c1').cid} ") == 1
    assert ruleset.count("meta mark vmap @marks") == 1
    assert resolver_pids(engine.run_dir) == []


def test_replace_never_opens_a_window(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    """While the policy is replaced in a loop, a private host is never reachable."""
    apply("c1", {"mode": "restricted"})
    stop = time.monotonic() + 4
    flood = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            L.C1,
            sys.executable,
            "-c",
            "import socket,time,sys\n"
            "ok=0\n"
            f"end=time.monotonic()+4\n"
            "while time.monotonic()<end:\n"
            "  s=socket.socket(); s.settimeout(0.2)\n"
            f"  ok+= s.connect_ex(('{L.PRIV4}', {L.TCP_PORT}))==0\n"
            "  s.close()\n"
            "print(ok)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    modes = [{"mode": "restricted"}, {"mode": "restricted", "allowed_ports": [443]}, ALLOW]
    i = 0
    while time.monotonic() < stop:
        apply("c1", modes[i % len(modes)])
        i += 1
    out, _ = flood.communicate(timeout=30)
    assert i > 5
    assert int(out.strip()) == 0


def test_firewall_errors_leave_the_old_policy(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    apply("c1", {"mode": "restricted"})

    class Refusing:
        name = "refusing"

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def run(self, commands: list[Any], terse: bool = False) -> list[Any]:
            if any("add" in c and "rule" in c["add"] for c in commands):
                raise FirewallError("nftables refused the transaction: test")
            result: list[Any] = self.inner.run(commands, terse)
            return result

    real = engine.engine.nft
    engine.engine.nft = Refusing(real)
    try:
        with pytest.raises(FirewallError):
            apply("c1", {"mode": "open"})
    finally:
        engine.engine.nft = real
    entry = engine.get(key_of("c1"))
    assert entry is not None and entry.policy.mode.value == "restricted" and entry.generation == 1
    assert not L.reachable(L.C1, "tcp", L.PRIV4)


APPLY_ONCE = """
import ipaddress, sys
from pathlib import Path
from coi.helper.network import NetworkEngine, NetworkTarget, ContainerKey, Upstream, parse_policy
upstream = Upstream(ipaddress.IPv4Address(sys.argv[3]))
engine = NetworkEngine(Path(sys.argv[1]), Path(sys.argv[2]), upstreams=(upstream,))
target = NetworkTarget(ContainerKey("coit-net", "coit-net-c1"), "vc1", "br0",
                       ipaddress.IPv4Address("10.77.0.1"), ipaddress.IPv6Address("fd77::1"))
policy = {"mode": "allowlist", "allowlist": [{"target": "a.allowed.test"}]}
engine.apply(target, parse_policy(policy))
"""


def test_works_with_only_cap_net_admin(lab: L.Lab, engine: LabEngine) -> None:
    """The hardened helper keeps only CAP_NET_ADMIN; so do the resolvers it starts."""
    L.nsexec(
        L.RTR,
        "setpriv",
        "--bounding-set",
        "-all,+net_admin",
        "--inh-caps",
        "-all",
        "--",
        sys.executable,
        "-c",
        APPLY_ONCE,
        str(engine.state_dir),
        str(engine.run_dir),
        L.NET4,
    )
    entry = engine.get(key_of("c1"))
    assert entry is not None and entry.installed and entry.resolver_pid is not None
    status = Path(f"/proc/{entry.resolver_pid}/status").read_text()
    caps = {
        line.split(":")[0]: line.split()[1]
        for line in status.splitlines()
        if line.startswith("Cap")
    }
    assert int(caps["CapEff"], 16) == 1 << 12  # CAP_NET_ADMIN, nothing else
    assert L.probe(L.C1, "dns", L.GW4, "a.allowed.test")["answers"] == [L.NET4]
    assert L.reachable(L.C1, "tcp", L.NET4)
    assert not L.reachable(L.C1, "tcp", L.PRIV4)


def test_resolver_ports_skip_ports_in_use(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    """A port someone else holds on the gateway is not handed to a resolver."""
    import socket

    from coi.helper.network.resolver import PORT_FIRST

    with L.in_netns(L.RTR):
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter.bind((L.GW4, PORT_FIRST))
    try:
        entry = apply("c1", ALLOW)
        assert entry.dns_port == PORT_FIRST + 1
        assert L.probe(L.C1, "dns", L.GW4, "a.allowed.test")["answers"] == [L.NET4]
    finally:
        squatter.close()
