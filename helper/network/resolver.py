"""Per-container DNS resolvers for allowlist mode (one dnsmasq each).

Each resolver listens on the bridge gateway on a port of its own (the container's DNS is
redirected there by its nat chain), forwards only the allowlisted names to the upstream servers
and answers every other name NXDOMAIN itself (`address=/#/`), so those never leave the host.
Every address it answers for an allowed name lands in the container's nft set (`nftset=`), which
is what the filter chain accepts. dnsmasq daemonises; its pid file and configuration live in
the run directory under the container id, so a restarted helper finds, checks and stops it.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from coi.helper.network.errors import ResolverError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PORT_FIRST = 30053
PORT_COUNT = 4096
CACHE_SIZE = 1000
STOP_TIMEOUT = 5.0
CAP_SETGID, CAP_SETUID = 6, 7


@dataclass(frozen=True)
class Upstream:
    """An upstream DNS server the resolver forwards allowed names to."""

    address: IPAddress
    port: int = 53

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ResolverError(f"upstream DNS port {self.port} is not a port number")

    def __str__(self) -> str:
        return f"{self.address}#{self.port}"


@dataclass(frozen=True)
class ResolverSpec:
    """Everything one container's resolver needs."""

    cid: str
    listen: tuple[IPAddress, ...]
    port: int
    # (nft set v4, nft set v6, names) per port group.
    name_sets: tuple[tuple[str, str, tuple[str, ...]], ...]
    upstreams: tuple[Upstream, ...]
    nft_family: str = "inet"
    nft_table: str = "coi"


def host_upstreams(resolv_conf: str = "/etc/resolv.conf") -> tuple[Upstream, ...]:
    """The host's own name servers, read from resolv.conf."""
    found: list[Upstream] = []
    try:
        text = Path(resolv_conf).read_text()
    except OSError as exc:
        raise ResolverError(
            f"cannot read {resolv_conf} to find an upstream DNS server: {exc}"
        ) from exc
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.append(Upstream(ipaddress.ip_address(parts[1].split("%")[0])))
    if not found:
        raise ResolverError(f"{resolv_conf} names no DNS server to forward allowed names to")
    return tuple(found)


def resolver_identity() -> tuple[str, str]:
    """The user and group the resolvers run as.

    With CAP_SETUID and CAP_SETGID, dnsmasq drops to `nobody` (keeping CAP_NET_ADMIN for its
    nft sets). The hardened helper keeps only CAP_NET_ADMIN, so a resolver it starts cannot
    change ids at all; then it stays root with the helper's single capability (empty values
    make dnsmasq skip the change instead of failing on it).
    """
    try:
        status = Path("/proc/self/status").read_text()
        eff = int(next(x for x in status.splitlines() if x.startswith("CapEff:")).split()[1], 16)
    except (OSError, StopIteration, ValueError):
        eff = 0
    if eff & (1 << CAP_SETGID) and eff & (1 << CAP_SETUID):
        with contextlib.suppress(KeyError):
            nobody = pwd.getpwnam("nobody")
            return nobody.pw_name, grp.getgrgid(nobody.pw_gid).gr_name
    return "", ""


def render_config(spec: ResolverSpec, pid_file: Path, user: str, group: str) -> str:
    """The dnsmasq configuration file of one resolver (`user`/`group` empty: no change)."""
    lines = [
        "# Written by coi-helper; the resolver of one allowlist-mode container.",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "bind-interfaces",
        *(f"listen-address={a}" for a in spec.listen),
        f"port={spec.port}",
        f"pid-file={pid_file}",
        f"user={user}",
        f"group={group}",
        f"cache-size={CACHE_SIZE}",
        "domain-needed",
        "bogus-priv",
        # An allowed name must not open private ranges (rebinding).
        "stop-dns-rebind",
        # Every name not allowed below: NXDOMAIN, answered here, never forwarded.
        "address=/#/",
    ]
    for s4, s6, names in spec.name_sets:
        for name in names:
            for upstream in spec.upstreams:
                lines.append(f"server=/{name}/{upstream}")
            # dnsmasq 2.90 matches nftset= domains without the `*.` form; the bare base domain
            # is equivalent here because server= above forwards only the subdomains.
            base = name.removeprefix("*.")
            fam, tbl = spec.nft_family, spec.nft_table
            lines.append(f"nftset=/{base}/4#{fam}#{tbl}#{s4},6#{fam}#{tbl}#{s6}")
    return "\n".join(lines) + "\n"


class ResolverManager:
    """Starts, finds and stops the per-container dnsmasq processes."""

    def __init__(
        self, run_dir: Path, dnsmasq: str | None = None, identity: tuple[str, str] | None = None
    ) -> None:
        """`identity` (user, group) defaults to `resolver_identity()`."""
        self.run_dir = run_dir
        self.user, self.group = identity if identity is not None else resolver_identity()
        found = dnsmasq or shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        self.dnsmasq = found

    def _paths(self, cid: str) -> tuple[Path, Path]:
        return self.run_dir / f"{cid}.pid", self.run_dir / f"{cid}.conf"

    def start(self, spec: ResolverSpec) -> int:
        """(Re)start the resolver of `spec.cid`; return its pid. Raises ResolverError."""
        if not os.access(self.dnsmasq, os.X_OK):
            raise ResolverError("dnsmasq is not installed; install dnsmasq-base for allowlist mode")
        self.stop(spec.cid)
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        pid_file, conf = self._paths(spec.cid)
        conf.write_text(render_config(spec, pid_file, self.user, self.group))
        proc = subprocess.run(
            [self.dnsmasq, f"--conf-file={conf}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            start_new_session=True,
        )
        if proc.returncode != 0:
            conf.unlink(missing_ok=True)
            raise ResolverError(
                f"the resolver for container {spec.cid} did not start: "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        pid = self._pid(spec.cid)
        if pid is None:
            raise ResolverError(f"the resolver for container {spec.cid} started but left no pid")
        return pid

    def _pid(self, cid: str) -> int | None:
        """The pid of cid's resolver if that process is alive and really is it."""
        pid_file, conf = self._paths(cid)
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        # Guards against a recycled pid: the process must run our configuration file.
        return pid if f"--conf-file={conf}".encode() in cmdline else None

    def pid(self, cid: str) -> int | None:
        """The pid of the container's resolver, or None when it does not run."""
        return self._pid(cid)

    def stop(self, cid: str) -> bool:
        """Stop cid's resolver and remove its files; True if a process was stopped."""
        pids = set(self.processes().get(cid, []))
        pid = self._pid(cid)
        if pid is not None:
            pids.add(pid)
        stopped = False
        for each in sorted(pids):
            stopped = _terminate(each) or stopped
        for path in self._paths(cid):
            path.unlink(missing_ok=True)
        return stopped

    def processes(self) -> dict[str, list[int]]:
        """Every live dnsmasq running a configuration of this run directory, by container id.

        Found through /proc rather than pid files, so a helper killed between starting a
        resolver and recording it cannot leak the process.
        """
        marker = f"--conf-file={self.run_dir}/".encode()
        found: dict[str, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for arg in args:
                if arg.startswith(marker) and arg.endswith(b".conf"):
                    cid = arg[len(marker) : -len(b".conf")].decode(errors="replace")
                    found.setdefault(cid, []).append(int(entry.name))
        return found

    def known(self) -> set[str]:
        """Container ids that have resolver files (running or stale)."""
        if not self.run_dir.is_dir():
            return set()
        return {p.stem for p in self.run_dir.iterdir() if p.suffix in (".pid", ".conf")}

    def reconcile(self, keep: Iterable[str]) -> list[str]:
        """Stop every resolver whose container id is not in `keep`; return the ids stopped."""
        wanted = set(keep)
        gone = sorted((self.known() | set(self.processes())) - wanted)
        for cid in gone:
            self.stop(cid)
        return gone


def _terminate(pid: int) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        if not _wait_fd(fd, STOP_TIMEOUT):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            _wait_fd(fd, STOP_TIMEOUT)
        return True
    except ProcessLookupError:
        return True
    finally:
        os.close(fd)


def _wait_fd(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if poller.poll(left * 1000):
            return True
    return False


def allocate_port(used: Sequence[int], listen: Sequence[IPAddress] = ()) -> int:
    """The first resolver port not in `used` and free (UDP and TCP) on every `listen` address."""
    taken = set(used)
    for port in range(PORT_FIRST, PORT_FIRST + PORT_COUNT):
        if port not in taken and all(_bindable(a, port) for a in listen):
            return port
    raise ResolverError(f"no free resolver port in {PORT_FIRST}-{PORT_FIRST + PORT_COUNT - 1}")


def _bindable(address: IPAddress, port: int) -> bool:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as sock:
            try:
                sock.bind((str(address), port))
            except OSError:
                return False
    return True
