"""A real test network in network namespaces, standing in for a host with containers.

Topology (every namespace is named `coit-net-*`; nothing touches the host's own network)::

    coit-net-c1  eth0 10.77.0.11 fd77::11 ─┐
    coit-net-c2  eth0 10.77.0.12 fd77::12 ─┤ veth vc1 / vc2
                                           │
    coit-net-rtr  "the host": bridge br0 10.77.0.1/24 fd77::1/64 (the gateway), forwarding on,
                  a DNS server on the gateway (like Incus' dnsmasq), echo listeners on its own
                  ports, and the engine under test with its tables, resolvers and state.
        ├─ up0 198.18.0.1 2001:2::1 ── coit-net-inet   "the internet": 198.18.0.2-.6, 2001:2::2,
        │                                              echo listeners, the upstream DNS server
        ├─ pv0 10.99.0.1 fd99::1   ── coit-net-priv   a private host 10.99.0.2 / fd99::2
        └─ md0 169.254.169.1/16    ── coit-net-meta   a "metadata" listener on 169.254.169.254

The engine runs in coit-net-rtr: `in_netns` moves the calling thread there (setns), and every
process the engine starts (dnsmasq) inherits it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from coi.helper.network import ContainerKey, NetworkEngine, NetworkTarget, Upstream

HERE = Path(__file__).parent
PREFIX = "coit-net-"
RTR, INET, PRIV, META, C1, C2 = (PREFIX + n for n in ("rtr", "inet", "priv", "meta", "c1", "c2"))
NAMESPACES = (RTR, INET, PRIV, META, C1, C2)

GW4, GW6 = "10.77.0.1", "fd77::1"
C1_4, C1_6, C2_4, C2_6 = "10.77.0.11", "fd77::11", "10.77.0.12", "fd77::12"
NET4, NET6 = "198.18.0.2", "2001:2::2"
SUB4, EVIL4, RAW4, STATIC4 = "198.18.0.3", "198.18.0.4", "198.18.0.5", "198.18.0.6"
PRIV4, PRIV6 = "10.99.0.2", "fd99::2"
META4 = "169.254.169.254"
TCP_PORT, UDP_PORT, OTHER_PORT = 8080, 9090, 8081
UPSTREAM_LOG = Path("/tmp/coit-net-upstream.log")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command on the host, raising with its stderr on failure."""
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def nsexec(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace `ns`."""
    return sh("ip", "netns", "exec", ns, *args, check=check)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Move this thread into network namespace `ns` for the duration of the block."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(f"/run/netns/{ns}")
        try:
            yield
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "could not return to the original netns")
    finally:
        os.close(home)


def probe(ns: str, *args: str) -> dict[str, Any]:
    """Run tests/network/probe.py inside `ns` and return its JSON answer."""
    proc = nsexec(ns, sys.executable, str(HERE / "probe.py"), *args, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"probe {args} in {ns} crashed: {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def probe_host(*args: str) -> dict[str, Any]:
    """Run tests/network/probe.py on the host itself."""
    proc = sh(sys.executable, str(HERE / "probe.py"), *args)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def reachable(ns: str, kind: str, addr: str) -> bool:
    """Whether `kind` (tcp/udp/icmp) from `ns` to `addr` gets through."""
    if kind == "tcp":
        return bool(probe(ns, "tcp", addr, str(TCP_PORT))["ok"])
    if kind == "udp":
        return bool(probe(ns, "udp", addr, str(UDP_PORT))["ok"])
    return bool(probe(ns, "icmp", addr)["ok"])


class Lab:
    """Creates and destroys the topology; tracks the processes it started."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def _spawn(self, ns: str, *args: str) -> subprocess.Popen[str]:
        log = open(f"/tmp/{ns}-{len(self.pids)}.log", "w")  # noqa: SIM115 (child keeps it)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        log.close()
        self.pids.append(proc.pid)
        return proc

    def _link(self, a_ns: str, a: str, b_ns: str, b: str) -> None:
        sh("ip", "-n", a_ns, "link", "add", a, "type", "veth", "peer", "name", b, "netns", b_ns)
        sh("ip", "-n", a_ns, "link", "set", a, "up")
        sh("ip", "-n", b_ns, "link", "set", b, "up")

    def _addr(self, ns: str, dev: str, *cidrs: str) -> None:
        for cidr in cidrs:
            extra = ["nodad"] if ":" in cidr else []
            sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev, *extra)

    def _route(self, ns: str, *spec: str) -> None:
        sh("ip", "-n", ns, "route", "add", *spec)

    def up(self) -> None:
        """Build everything (tears down leftovers of an earlier run first)."""
        self.down()
        for ns in NAMESPACES:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # No duplicate address detection: link-local addresses are usable at once.
            nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
            nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
        nsexec(RTR, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        nsexec(RTR, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        sh("ip", "-n", RTR, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", RTR, "link", "set", "br0", "up")
        self._addr(RTR, "br0", f"{GW4}/24", f"{GW6}/64")
        for ns, veth, v4, v6 in ((C1, "vc1", C1_4, C1_6), (C2, "vc2", C2_4, C2_6)):
            self._link(RTR, veth, ns, "eth0")
            sh("ip", "-n", RTR, "link", "set", veth, "master", "br0")
            self._addr(ns, "eth0", f"{v4}/24", f"{v6}/64")
            self._route(ns, "default", "via", GW4)
            self._route(ns, "default", "via", GW6)
        self._link(RTR, "up0", INET, "eth0")
        self._addr(RTR, "up0", "198.18.0.1/24", "2001:2::1/64")
        self._addr(INET, "eth0", f"{NET4}/24", f"{NET6}/64")
        for extra in (SUB4, EVIL4, RAW4, STATIC4):
            self._addr(INET, "eth0", f"{extra}/32")
        self._route(INET, "default", "via", "198.18.0.1")
        self._route(INET, "default", "via", "2001:2::1")
        self._link(RTR, "pv0", PRIV, "eth0")
        self._addr(RTR, "pv0", "10.99.0.1/24", "fd99::1/64")
        self._addr(PRIV, "eth0", f"{PRIV4}/24", f"{PRIV6}/64")
        self._route(PRIV, "default", "via", "10.99.0.1")
        self._route(PRIV, "default", "via", "fd99::1")
        self._link(RTR, "md0", META, "eth0")
        self._addr(RTR, "md0", "169.254.169.1/16")
        self._addr(META, "eth0", f"{META4}/16")
        self._route(META, "default", "via", "169.254.169.1")
        echo = (
            sys.executable,
            str(HERE / "echo_server.py"),
            str(TCP_PORT),
            str(UDP_PORT),
            str(OTHER_PORT),
        )
        for ns in (INET, PRIV, META, C2, RTR):
            proc = self._spawn(ns, *echo)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"echo server in {ns} did not start")
        UPSTREAM_LOG.unlink(missing_ok=True)
        dnsmasq = (
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            # No pid file: the default one (/run/dnsmasq.pid) is shared, and refused if present.
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
        )
        self._spawn(
            INET,
            *dnsmasq,
            f"--listen-address={NET4}",
            "--bind-interfaces",
            f"--address=/a.allowed.test/{NET4}",
            f"--address=/a.allowed.test/{NET6}",
            f"--address=/sub.allowed.test/{SUB4}",
            f"--address=/evil.test/{EVIL4}",
            f"--address=/gw.test/{NET4}",
            "--log-queries",
            f"--log-facility={UPSTREAM_LOG}",
        )
        # The bridge's own DNS server, as Incus runs it on the gateway.
        self._spawn(
            RTR,
            *dnsmasq,
            f"--listen-address={GW4}",
            "--bind-interfaces",
            f"--address=/gw.test/{NET4}",
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (
                probe(RTR, "dns", NET4, "gw.test")["ok"]
                and probe(RTR, "dns", GW4, "gw.test")["ok"]
                and probe(C1, "tcp", NET6, str(TCP_PORT))["ok"]
            ):
                return
            time.sleep(0.2)
        logs = {p.name: p.read_text()[-300:] for p in Path("/tmp").glob(f"{PREFIX}*.log")}
        raise RuntimeError(f"the test DNS servers did not come up: {logs}")

    def down(self) -> None:
        """Stop what this lab started and delete its namespaces (idempotent).

        Besides the processes it remembers, it stops whatever still runs inside its own
        namespaces (leftovers of an interrupted run, resolvers of a crashed engine).
        """
        for ns in NAMESPACES:
            if Path(f"/run/netns/{ns}").exists():
                for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGTERM)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids.clear()
        for ns in NAMESPACES:
            if Path(f"/run/netns/{ns}").exists():
                sh("ip", "netns", "del", ns, check=False)
        for log in Path("/tmp").glob(f"{PREFIX}*.log"):
            log.unlink(missing_ok=True)

    def upstream_queries(self) -> list[str]:
        """The names the upstream DNS server was asked for."""
        if not UPSTREAM_LOG.exists():
            return []
        out = []
        for line in UPSTREAM_LOG.read_text().splitlines():
            if "query[" in line:
                out.append(line.split("]", 1)[1].split()[0])
        return out


class LabEngine:
    """A NetworkEngine living in the lab's router namespace; every call runs there."""

    def __init__(self, state_dir: Path, run_dir: Path) -> None:
        self.state_dir, self.run_dir = state_dir, run_dir
        with in_netns(RTR):
            self.engine = NetworkEngine(
                state_dir=state_dir,
                run_dir=run_dir,
                upstreams=(Upstream(ipaddress.IPv4Address(NET4)),),
            )

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.engine, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with in_netns(RTR):
                return method(*args, **kwargs)

        return call


def key_of(container: str) -> ContainerKey:
    """The ContainerKey of stand-in container c1 or c2."""
    return ContainerKey(project="coit-net", instance=f"coit-net-{container}")


def target_of(container: str, veth: str | None = None) -> NetworkTarget:
    """The NetworkTarget of stand-in container c1 or c2, as the IPC layer would build it."""
    return NetworkTarget(
        key=key_of(container),
        veth=veth or f"v{container}",
        bridge="br0",
        gateway4=ipaddress.IPv4Address(GW4),
        gateway6=ipaddress.IPv6Address(GW6),
    )
