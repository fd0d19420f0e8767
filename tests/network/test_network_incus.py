"""The engine against real Incus containers on bridge coibr0, from inside the containers.

The policy is applied *before* the container starts, on the host-side veth name pinned through
the NIC's `host_name` (how the launcher and helper do it), so it holds from the first packet.
Test hosts are namespaces this module creates: an "internet" host on 198.19.77.2 (reached
through Incus' NAT), a private host on 10.213.99.2, an upstream DNS server; plus a listener on
the bridge gateway's own address. Containers are `coi-test-net-*`, deleted afterwards.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import network_lab as L
import pytest

from coi.helper.network import (
    ContainerKey,
    NetworkEngine,
    NetworkTarget,
    Upstream,
    parse_policy,
)
from coi.helper.network.incus import target_from_incus

pytestmark = pytest.mark.integration

BRIDGE = "coibr0"
XINET, XPRIV = "coit-net-xinet", "coit-net-xpriv"
NET4, EVIL4, PRIV4 = "198.19.77.2", "198.19.77.3", "10.213.99.2"
HOST_PORT = 18080


def incus(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["incus", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"incus {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def gateway() -> ipaddress.IPv4Address:
    cidr = incus("network", "get", BRIDGE, "ipv4.address").strip()
    return ipaddress.IPv4Interface(cidr).ip


class HostLab:
    """Test hosts in namespaces reachable from coibr0 containers, and their processes."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def spawn(self, *args: str) -> None:
        proc = subprocess.Popen(
            list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.pids.append(proc.pid)

    def up(self, gw: ipaddress.IPv4Address) -> None:
        self.down()
        for ns, host_if, host_addr, addrs in (
            (XINET, "coitnx0", "198.19.77.1/24", [f"{NET4}/24", f"{EVIL4}/32"]),
            (XPRIV, "coitnp0", "10.213.99.1/24", [f"{PRIV4}/24"]),
        ):
            L.sh("ip", "netns", "add", ns)
            L.sh("ip", "-n", ns, "link", "set", "lo", "up")
            L.sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
            L.sh("ip", "addr", "add", host_addr, "dev", host_if)
            L.sh("ip", "link", "set", host_if, "up")
            L.sh("ip", "-n", ns, "link", "set", "eth0", "up")
            for addr in addrs:
                L.sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            L.sh("ip", "-n", ns, "route", "add", "default", "via", host_addr.split("/")[0])
            self.spawn(
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                str(L.HERE / "echo_server.py"),
                str(L.TCP_PORT),
                str(L.UDP_PORT),
            )
        self.spawn(
            "ip",
            "netns",
            "exec",
            XINET,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            f"--listen-address={NET4}",
            "--bind-interfaces",
            f"--address=/a.allowed.test/{NET4}",
            f"--address=/evil.test/{EVIL4}",
        )
        # A service on the host's own bridge address (only there, not on every address).
        self.spawn(
            sys.executable,
            "-c",
            (
                "import socket\n"
                f"s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                f"s.bind(('{gw}', {HOST_PORT})); s.listen(8)\n"
                "while True:\n"
                "  c,_=s.accept(); c.sendall(c.recv(8)); c.close()\n"
            ),
        )
        time.sleep(1)

    def down(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids.clear()
        for ns, host_if in ((XINET, "coitnx0"), (XPRIV, "coitnp0")):
            L.sh("ip", "link", "del", host_if, check=False)
            if Path(f"/run/netns/{ns}").exists():
                L.sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def hosts() -> Iterator[ipaddress.IPv4Address]:
    if os.geteuid() != 0 or shutil.which("incus") is None:
        pytest.skip("needs root and Incus")
    if "coi-base" not in incus("image", "list", "-f", "csv", "-c", "l", check=False):
        pytest.skip("needs the coi-base image (packaging/host-setup)")
    gw = gateway()
    lab = HostLab()
    try:
        lab.up(gw)
        yield gw
    finally:
        lab.down()


@pytest.fixture
def engine(tmp_path: Path) -> NetworkEngine:
    return NetworkEngine(
        tmp_path / "state", tmp_path / "run", upstreams=(Upstream(ipaddress.IPv4Address(NET4)),)
    )


class Container:
    """A coi-test-net-* container whose veth name is pinned before it starts."""

    def __init__(self, tag: str) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.name = f"coi-test-net-{suffix}-{tag}"
        self.veth = f"coitn{suffix}{tag}"[:15]
        incus("init", "coi-base", self.name, "-q")
        incus("config", "device", "override", self.name, "eth0", f"host_name={self.veth}")

    def target(self, gw: ipaddress.IPv4Address) -> NetworkTarget:
        """The target as the IPC layer derives it from Incus' own records."""
        record = json.loads(incus("query", f"/1.0/instances/{self.name}"))
        network = json.loads(incus("query", f"/1.0/networks/{BRIDGE}"))
        target = target_from_incus(
            "default", self.name, record["expanded_devices"], record["config"], network["config"]
        )
        assert target == NetworkTarget(ContainerKey("default", self.name), self.veth, BRIDGE, gw)
        return target

    def start(self) -> None:
        incus("start", self.name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = json.loads(incus("query", f"/1.0/instances/{self.name}/state"))
            eth0 = state["network"]["eth0"]
            assert eth0["host_name"] == self.veth
            if any(a["family"] == "inet" for a in eth0["addresses"]):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} got no IPv4 address")

    def address(self) -> str:
        state = json.loads(incus("query", f"/1.0/instances/{self.name}/state"))
        return next(
            a["address"] for a in state["network"]["eth0"]["addresses"] if a["family"] == "inet"
        )

    def sh(self, script: str) -> str:
        proc = subprocess.run(
            ["incus", "exec", self.name, "--", "bash", "-c", script],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        return proc.stdout.strip()

    def tcp(self, addr: str, port: int = L.TCP_PORT) -> bool:
        script = (
            f"timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}; printf ping >&3; head -c4 <&3'"
        )
        return self.sh(script) == "ping"

    def udp(self, addr: str, port: int = L.UDP_PORT) -> bool:
        script = (
            f"timeout 3 bash -c 'exec 3<>/dev/udp/{addr}/{port}; printf ping >&3; head -c4 <&3'"
        )
        return self.sh(script) == "ping"

    def resolve(self, name: str) -> list[str]:
        return self.sh(f"timeout 5 getent ahostsv4 {name} | cut -d' ' -f1 | sort -u").split()

    def listen(self, port: int = L.TCP_PORT) -> None:
        """A TCP echo listener inside the container (perl-base is in every Debian image)."""
        perl = (
            f"$s=IO::Socket::INET->new(LocalPort=>{port},Listen=>5,ReuseAddr=>1) or die;"
            "while($c=$s->accept){$c->recv($d,8);$c->send($d);close $c}"
        )
        subprocess.Popen(
            ["incus", "exec", self.name, "--", "perl", "-MIO::Socket::INET", "-e", perl],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def delete(self) -> None:
        incus("delete", "-f", self.name, check=False)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in made:
        c.delete()


def test_real_containers_in_every_mode(
    hosts: ipaddress.IPv4Address, engine: NetworkEngine, containers: list[Container]
) -> None:
    gw = str(hosts)
    a, b = Container("a"), Container("b")
    containers += [a, b]
    # Fail closed: the policy is in place before the first packet.
    engine.apply(a.target(hosts), parse_policy({"mode": "restricted"}))
    a.start()
    b.start()
    neighbour = b.address()
    b.listen()
    try:
        # The baseline: the neighbour has no policy and reaches everything, and its own
        # listener answers (checked from the host).
        assert b.tcp(NET4) and b.tcp(PRIV4) and b.tcp(gw, HOST_PORT)
        deadline = time.monotonic() + 10
        while L.probe_host("tcp", neighbour, str(L.TCP_PORT))["ok"] is False:
            assert time.monotonic() < deadline, "the neighbour's listener did not come up"
            time.sleep(0.3)

        # restricted
        assert a.tcp(NET4) and a.udp(NET4)
        assert not a.tcp(PRIV4) and not a.udp(PRIV4)
        assert not a.tcp(gw, HOST_PORT)
        assert not a.tcp(neighbour)
        assert engine.read_counters(a.target(hosts).key).packets_rejected > 0

        # open
        engine.apply(a.target(hosts), parse_policy({"mode": "open"}))
        assert a.tcp(NET4) and a.tcp(PRIV4) and a.tcp(gw, HOST_PORT)

        # allowlist: resolved through systemd-resolved -> DHCP's DNS -> our resolver
        engine.apply(
            a.target(hosts),
            parse_policy({"mode": "allowlist", "allowlist": [{"target": "a.allowed.test"}]}),
        )
        assert a.resolve("evil.test") == []
        assert not a.tcp(EVIL4)
        assert a.resolve("a.allowed.test") == [NET4]
        assert a.tcp(NET4)
        assert not a.tcp(PRIV4)

        # blocked
        engine.quarantine(a.target(hosts).key)
        assert not a.tcp(NET4) and not a.tcp(PRIV4) and not a.tcp(gw, HOST_PORT)
        assert b.tcp(NET4)  # the neighbour is untouched
    finally:
        assert engine.remove(a.target(hosts).key)
    assert a.tcp(PRIV4)  # policy gone, container free again
