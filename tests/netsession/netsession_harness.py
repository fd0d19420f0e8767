"""Test hosts, a test helper and `coi run` for the launcher's network-isolation tests.

Everything probed here is created here:
- `coit-ns-inet`: a namespace behind host veth `coitnsi0` (198.19.78.1/24) with the "internet"
  hosts 198.19.78.2 (echo listeners, the upstream DNS server of allowlist mode) and
  198.19.78.3 (`evil.test`, a raw address); containers reach it through Incus' NAT.
- `coit-ns-priv`: a private-range host 10.213.98.2 behind `coitnsp0` (10.213.98.1/24).
- a listener on the bridge gateway's own address (port 18091), the host's "other ports".
- a coi-helper started here in a private mount namespace whose /etc/resolv.conf names
  198.19.78.2, so allowlist resolvers forward allowed names only to our upstream. It shares
  the system helper's state directory and lock (one engine state per host), on its own socket.
DNS through the bridge gateway is only asked for `_gateway.incus`, which Incus' dnsmasq
answers itself (never forwarded).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from run_harness import COI, Coi, UnixUser, incus_names, sh

from coi.helper.network import ContainerKey
from coi.launcher.helper_client import HelperClient

HERE = Path(__file__).parent
ECHO = HERE.parent / "network" / "echo_server.py"
PREFIX = "coi-test-ns-"
BRIDGE = "coibr0"
INET_NS, PRIV_NS = "coit-ns-inet", "coit-ns-priv"
INET_IF, PRIV_IF = "coitnsi0", "coitnsp0"
INET_GW, PRIV_GW = "198.19.78.1", "10.213.98.1"
NET4, EVIL4, PRIV4 = "198.19.78.2", "198.19.78.3", "10.213.98.2"
TCP_PORT, UDP_PORT, GW_PORT = 8080, 9090, 18091
HELPER_SOCKET = "/run/coi/coit-ns-helper.sock"
STOPPED_SOCKET = "/run/coi/coit-ns-stopped.sock"
HELPER_BIN = str(Path(sys.executable).with_name("coi-helper"))
NFT_LIBS = (
    "libnftables.so.1",
    "libedit.so.2",
    "libmnl.so.0",
    "libnftnl.so.11",
    "libxtables.so.12",
    "libjansson.so.4",
    "libgmp.so.10",
    "libtinfo.so.6",
    "libbsd.so.0",
    "libmd.so.0",
)


def gateway() -> str:
    """The IPv4 address of coibr0 (the containers' gateway and DNS server)."""
    cidr = sh("incus", "network", "get", BRIDGE, "ipv4.address").stdout.strip()
    return cidr.split("/")[0]


class LabHosts:
    """The namespaces, listeners and upstream DNS server; `down` removes every trace."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pids: list[int] = []

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        log = open(self.workdir / f"proc-{len(self.pids)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            list(args), stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
        )
        log.close()
        self.pids.append(proc.pid)
        return proc

    def up(self) -> None:
        self.down()
        for ns, host_if, host_gw, addrs in (
            (INET_NS, INET_IF, INET_GW, [f"{NET4}/24", f"{EVIL4}/32"]),
            (PRIV_NS, PRIV_IF, PRIV_GW, [f"{PRIV4}/24"]),
        ):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "addr", "add", f"{host_gw}/24", "dev", host_if)
            sh("ip", "link", "set", host_if, "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            for addr in addrs:
                sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            sh("ip", "-n", ns, "route", "add", "default", "via", host_gw)
            echo = self.spawn(
                "ip", "netns", "exec", ns, sys.executable, str(ECHO), str(TCP_PORT), str(UDP_PORT)
            )
            assert echo.stdout is not None
            assert echo.stdout.readline().strip() == "ready", f"echo server in {ns}"
        self.spawn(
            "ip",
            "netns",
            "exec",
            INET_NS,
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
        gw = gateway()
        listener = self.spawn(
            sys.executable,
            "-c",
            "import socket\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('{gw}', {GW_PORT})); s.listen(8); print('ready', flush=True)\n"
            "while True:\n"
            "  c,_=s.accept(); c.sendall(c.recv(8)); c.close()\n",
        )
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"

    def down(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids.clear()
        for ns, host_if in ((INET_NS, INET_IF), (PRIV_NS, PRIV_IF)):
            sh("ip", "link", "del", host_if, check=False)
            if Path(f"/run/netns/{ns}").exists():
                for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGTERM)
                sh("ip", "netns", "del", ns, check=False)


class LabHelper:
    """A real coi-helper on `socket`, resolving allowlisted names through our upstream."""

    def __init__(self, workdir: Path, socket: str = HELPER_SOCKET) -> None:
        self.workdir = workdir
        self.socket = socket
        self.log = workdir / f"helper-{Path(socket).stem}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        resolv = self.workdir / "resolv.conf"
        resolv.write_text(f"nameserver {NET4}\n")
        script = 'mount --bind "$1" /etc/resolv.conf && exec "$2" serve --socket "$3"'
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                    "sh",
                    str(resolv),
                    HELPER_BIN,
                    self.socket,
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while "coi-helper ready" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"test helper did not start: {self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class NsCoi(Coi):
    """`coi` as the run user, with this area's container prefix and the test helper."""

    def __init__(self, user: UnixUser, helper_socket: str, extra: dict[str, str]) -> None:
        super().__init__(user)
        self.helper_socket = helper_socket
        self.extra = extra

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = super().env(extra)
        env["COI_CONTAINER_PREFIX"] = PREFIX
        env["COI_HELPER_SOCKET"] = self.helper_socket
        env.update(self.extra)
        return env


def install_nft(workspace: Path, uid: int, gid: int) -> None:
    """Copy the host's nft and its libraries into the workspace (the image has no nft; the
    container runs the same Debian release)."""
    dest = workspace / "nft"
    dest.mkdir()
    shutil.copy2("/usr/sbin/nft", dest / "nft")
    for lib in NFT_LIBS:
        shutil.copy2(Path("/lib/x86_64-linux-gnu") / lib, dest / lib)
    for path in [dest, *dest.iterdir()]:
        os.chown(path, uid, gid)


def policy_names(socket: str = HELPER_SOCKET) -> list[str]:
    """The instances that have a network policy (asked as root: every project's)."""
    with HelperClient(socket) as helper:
        return [e.instance for e in helper.list_network_policies()]


def nft_mentions(instance: str, project: str = "default") -> bool:
    """True if coi's nftables tables still name this container's id anywhere."""
    cid = ContainerKey(project, instance).cid
    out = sh("nft", "list", "ruleset", check=False).stdout
    return cid in out


def leftovers(prefix: str) -> list[str]:
    return incus_names(prefix)


__all__ = ["COI", "LabHelper", "LabHosts", "NsCoi", "UnixUser", "sh"]
