"""Entry point of `coi-helper`.

coi-helper serve [--socket PATH] [--policy PATH] ...   serve (foreground, or socket-activated)
coi-helper provision-user USER [--subnet CIDR] [--image ALIAS]...  prepare an incus-user project
coi-helper --version
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import struct
import sys
from types import FrameType
from typing import TYPE_CHECKING

from coi.helper import __version__
from coi.helper.authz import Authorizer
from coi.helper.hardening import HardeningError, cap_names, drop_privileges
from coi.helper.identity import SO_PEERPIDFD
from coi.helper.incus import ADMIN_SOCKET, PylxdInstances
from coi.helper.interface import DEFAULT_SOCKET, Features, check_contract
from coi.helper.policy import DEFAULT_PATH, PolicyFileError, load_policy
from coi.helper.polkit import PIDFD_SUBJECT_VERSION, PolkitClient
from coi.helper.server import Server, ServerLimits

if TYPE_CHECKING:
    from coi.helper.app import HelperApp
    from coi.helper.stager import Stager

log = logging.getLogger("coi.helper")

SD_LISTEN_FDS_START = 3


class StartupError(Exception):
    """The helper cannot start; the message says why and what to do."""


def kernel_has_peer_pidfd() -> bool:
    """True if this kernel hands out pidfds for socket peers (SO_PEERPIDFD, Linux >= 6.5)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        raw = a.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, struct.calcsize("i"))
        os.close(struct.unpack("i", raw)[0])
        return True
    except OSError:
        return False
    finally:
        a.close()
        b.close()


def kernel_at_least(major: int, minor: int, release: str | None = None) -> bool:
    """True if the running kernel (or `release`) is at least major.minor."""
    parts = (release or os.uname().release).split(".")
    try:
        have = (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0))
    except (IndexError, ValueError):
        return False
    return have >= (major, minor)


def activated_socket() -> socket.socket | None:
    """The listening socket passed by systemd socket activation, if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if os.environ.get("LISTEN_FDS") != "1":
        raise StartupError("coi-helper expects exactly one socket from systemd (LISTEN_FDS=1)")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def bind_socket(path: str, mode: int = 0o666) -> socket.socket:
    """Create the listening socket at `path` (replacing a stale one); mode 0666: authorisation
    happens per call inside the helper, not by file permissions."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"{path} exists and is not a socket; remove it or pick another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            raise StartupError(f"another helper already serves {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)
        finally:
            probe.close()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(512)
    return sock


def reconcile_network(app: HelperApp) -> None:
    """Once at start: drop the network state of vanished containers, repair the rest.

    A failure is logged, not fatal: the rules already in the kernel stay, and every later
    ApplyNetworkPolicy still works (and `Reconcile` can be called again).
    """
    try:
        from coi.helper.network.ipc import NetworkMethods
    except ModuleNotFoundError as exc:
        if exc.name is not None and "coi.helper.network".startswith(exc.name):
            return  # this build has no network engine
        raise
    try:
        report = NetworkMethods(app).reconcile()
    except Exception as exc:  # any failure here must not stop the helper
        log.warning("network reconcile at start failed: %s", exc)
        return
    if report.removed or report.reapplied:
        log.info(
            "network reconcile: removed %s; re-applied %s",
            ", ".join(report.removed) or "nothing",
            ", ".join(report.reapplied) or "nothing",
        )


def start_guard(disabled: bool, incus_socket: str) -> tuple[Stager | None, str]:
    """Start the stager (see coi.helper.stager); (None, why) if it cannot run: the helper
    then serves everything else and reports workspace_guard false."""
    if disabled:
        return None, "disabled with --no-stager"
    from coi.helper.stager import StagerError, start_stager

    try:
        return start_stager(incus_socket=incus_socket), ""
    except StagerError as exc:
        log.warning("locked workspaces unavailable: %s", exc)
        return None, str(exc)


def reconcile_guard(app: HelperApp) -> None:
    """Once at start: remove the stages of containers that no longer exist (logged, not fatal)."""
    from coi.helper.guard_ipc import reconcile_stages

    try:
        removed = reconcile_stages(app)
    except Exception as exc:  # any failure here must not stop the helper
        log.warning("stage reconcile at start failed: %s", exc)
        return
    if removed:
        log.info("stage reconcile: removed %s", ", ".join(removed))


def serve(args: argparse.Namespace) -> int:
    """Run the helper until idle or signalled."""
    if os.geteuid() != 0:
        raise StartupError(
            "refusing to serve: coi-helper must start as root (it then keeps only CAP_NET_ADMIN)"
        )
    from coi.helper.app import HelperApp

    check_contract()
    try:
        policy = load_policy(args.policy)
    except PolicyFileError as exc:
        raise StartupError(f"{exc}; fix the file or remove it") from exc
    listener = activated_socket()
    idle = args.idle_timeout
    if listener is None:
        listener = bind_socket(args.socket)
    elif idle is None:
        idle = 60.0  # socket-activated: systemd starts us again on the next connection
    if idle is not None and idle <= 0:
        idle = None

    polkit: PolkitClient | None = None
    if not args.no_polkit:
        polkit = PolkitClient(args.bus, autostart=not args.no_polkit_autostart)
    polkit_up = polkit is not None and polkit.available()
    peer_pidfd = kernel_has_peer_pidfd()

    # Privilege separation: the stager child keeps CAP_SYS_ADMIN for locked workspace mounts
    # (coi.helper.stager); this process never holds it. Forked before any thread exists.
    stager, stager_error = start_guard(args.no_stager, args.incus_socket)

    # From here on: CAP_NET_ADMIN only. Everything needing more is done above.
    try:
        caps = drop_privileges()
    except HardeningError as exc:
        raise StartupError(f"refusing to serve: {exc}") from exc

    features = Features(
        kernel=os.uname().release,
        peer_pidfd=peer_pidfd,
        proc_connector_unprivileged=kernel_at_least(6, 6),
        polkit=polkit_up,
        polkit_version=polkit.version_text if polkit is not None else "",
        polkit_pidfd_subject=polkit_up
        and polkit is not None
        and polkit.version >= PIDFD_SUBJECT_VERSION,
        capabilities=cap_names(caps.effective),
        no_new_privs=caps.no_new_privs,
        workspace_guard=stager is not None,
        stager_capabilities=stager.capabilities if stager is not None else [],
    )
    app = HelperApp(
        policy=policy,
        authorizer=Authorizer(polkit),
        instances=PylxdInstances(args.incus_socket),
        features=features,
        limits=ServerLimits(),
        stager=stager,
        stager_error=stager_error,
    )
    server = Server(listener, app.service(), app.context, app.limits, idle, use_pidfd=peer_pidfd)
    reconcile_network(app)
    reconcile_guard(app)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    where = listener.getsockname() or args.socket
    log.info(
        "serving on %s (polkit %s, capabilities %s, policy %s)",
        where,
        features.polkit_version or "unavailable",
        ",".join(features.capabilities),
        policy.path if policy.loaded else "defaults",
    )
    print(f"coi-helper ready on {where}", file=sys.stderr, flush=True)
    server.serve_forever()
    if polkit is not None:
        polkit.close()
    return 0


def provision(args: argparse.Namespace) -> int:
    """Provision an incus-user project for a user (see coi.helper.provision)."""
    from coi.helper.provision import ProvisionError, provision_user, restart_incus_user

    try:
        result = provision_user(
            args.user,
            subnet=args.subnet,
            pool=args.pool,
            images=None if args.images is None else [i for i in args.images if i],
            incus_socket=args.incus_socket,
        )
    except ProvisionError as exc:
        raise StartupError(str(exc)) from exc
    for line in result.summary():
        print(line)
    if args.restart_incus_user and result.restart_incus_user:
        print(restart_incus_user())
    return 0


def deprovision(args: argparse.Namespace) -> int:
    """Remove what provision-user created for a user."""
    from coi.helper.provision import ProvisionError, deprovision_user, restart_incus_user

    try:
        done = deprovision_user(args.user, incus_socket=args.incus_socket)
    except ProvisionError as exc:
        raise StartupError(str(exc)) from exc
    for line in done or ["nothing to remove"]:
        print(line)
    if args.restart_incus_user and done:
        print(restart_incus_user())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="coi-helper",
        description="The privileged helper of coi: varlink on a Unix socket, polkit per call.",
    )
    parser.add_argument("--version", action="version", version=f"coi-helper {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the varlink interface (foreground)")
    s.add_argument("--socket", default=DEFAULT_SOCKET, help=f"socket (default {DEFAULT_SOCKET})")
    s.add_argument("--policy", default=DEFAULT_PATH, help=f"admin policy (default {DEFAULT_PATH})")
    s.add_argument("--incus-socket", default=ADMIN_SOCKET, help="Incus admin socket")
    s.add_argument(
        "--bus", default="SYSTEM", help="D-Bus address of polkit's bus (default: the system bus)"
    )
    s.add_argument("--no-polkit", action="store_true", help="serve only root (no polkit)")
    s.add_argument(
        "--no-stager",
        action="store_true",
        help="do not start the stager (no locked workspaces: StageWorkspace is unavailable)",
    )
    s.add_argument(
        "--no-polkit-autostart",
        action="store_true",
        help="do not let the bus start polkitd on demand (hosts without bus activation)",
    )
    s.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="exit after this many idle seconds (default: 60 when socket-activated, else never)",
    )
    s.set_defaults(func=serve)

    p = sub.add_parser("provision-user", help="create a user's Incus project, bridge and cert")
    p.add_argument("user", help="user name or uid")
    p.add_argument(
        "--subnet", help="IPv4 gateway address/24 of the user's bridge, e.g. 10.218.7.1/24"
    )
    p.add_argument("--pool", default="coi", help="storage pool of the root disk (default coi)")
    p.add_argument(
        "--image",
        dest="images",
        action="append",
        metavar="ALIAS",
        help="image of the default project to make usable in the user's project (repeatable; "
        "default: coi-base and coi where present; --image '' copies none)",
    )
    p.add_argument("--incus-socket", default=ADMIN_SOCKET, help="Incus admin socket")
    p.add_argument(
        "--no-restart-incus-user",
        dest="restart_incus_user",
        action="store_false",
        help="do not restart incus-user (it reads the project list only at start)",
    )
    p.set_defaults(func=provision)

    d = sub.add_parser("deprovision-user", help="remove what provision-user created")
    d.add_argument("user", help="user name or uid")
    d.add_argument("--incus-socket", default=ADMIN_SOCKET, help="Incus admin socket")
    d.add_argument(
        "--no-restart-incus-user",
        dest="restart_incus_user",
        action="store_false",
        help="do not restart incus-user afterwards",
    )
    d.set_defaults(func=deprovision)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run coi-helper; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="coi-helper: %(levelname)s %(message)s",
    )
    try:
        result: int = args.func(args)
        return result
    except StartupError as exc:
        print(f"coi-helper: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
