"""`coi-helper provision-user`: what incus-user does on a user's first contact, done ahead of
time and deterministically, without Incus' automatic subnet search.

Mirrors Incus' `cmd/incus-user` (serverSetupUser): a restricted project `user-<uid>` with the
same restrictions, a client certificate under /var/lib/incus/users/<uid>/ trusted (restricted)
for that project, a bridge `incusbr-<uid>` (here with an explicit IPv4 subnet), and the
project's default profile (root disk on the chosen pool, eth0 on that bridge, raw.idmap when
/etc/subuid and /etc/subgid delegate the user's ids to root). It also adds those `root:<id>:1`
delegations and makes the administrator's images (coi-base, coi) usable in the project, which
has images of its own (`copy_images`). Every step is idempotent.

Automatic subnets come from SUBNET_RANGE (10.218.0.0/16), one /24 per user, starting at
index uid % 256 and taking the first /24 that overlaps neither an Incus network nor a route in
the host's routing table. Nothing is probed on the network.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from coi.helper.incus import ADMIN_SOCKET

SUBNET_RANGE = ipaddress.IPv4Network("10.218.0.0/16")
# Images a user's project gets by default (those of them that exist in the default project).
DEFAULT_IMAGES = ("coi-base", "coi")
# Property marking an image that provision-user copied into a user's project.
COPIED_FROM = "coi.copied_from"
INCUS_DIR = "/var/lib/incus"
INCUS_USER_BIN = "/usr/libexec/incus/incus-user"
INCUS_USER_PIDFILE = "/run/coi-incus-user.pid"
INCUS_USER_LOG = "/var/log/coi/incus-user.log"
INCUS_USER_SOCKET = f"{INCUS_DIR}/unix.socket.user"


class ProvisionError(Exception):
    """Provisioning failed; the message says which step and why."""


@dataclass
class ProvisionResult:
    """What provision_user found and did."""

    user: str
    uid: int
    project: str
    network: str
    subnet: str
    certificate: str
    changed: bool = False
    restart_incus_user: bool = False
    actions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def did(self, what: str) -> None:
        """Record a change."""
        self.changed = True
        self.actions.append(what)

    def summary(self) -> list[str]:
        """Human-readable lines for the CLI."""
        head = (
            f"user {self.user} (uid {self.uid}): project {self.project}, "
            f"bridge {self.network} {self.subnet}, certificate {self.certificate[:12]}"
        )
        lines = [head]
        lines += [f"  - {a}" for a in self.actions] or ["  - already provisioned, nothing changed"]
        lines += [f"  note: {n}" for n in self.notes]
        return lines


# --------------------------------------------------------------------------- Incus access
class IncusAdmin:
    """Minimal synchronous access to Incus' REST API on the admin socket (pylxd underneath)."""

    def __init__(self, socket_path: str = ADMIN_SOCKET) -> None:
        import pylxd

        try:
            self.client = pylxd.Client(endpoint=socket_path)
        except Exception as exc:
            raise ProvisionError(f"cannot reach Incus at {socket_path}: {exc}") from exc

    def get(self, path: str, project: str | None = None) -> Any:
        """GET a /1.0 path; None on 404."""
        import pylxd.exceptions

        params = {"project": project} if project else None
        try:
            return self._node(path).get(params=params).json()["metadata"]
        except pylxd.exceptions.NotFound:
            return None
        except pylxd.exceptions.LXDAPIException as exc:
            if getattr(exc.response, "status_code", 0) == 404:
                return None
            raise ProvisionError(f"Incus refused GET {path}: {exc}") from exc

    def send(self, method: str, path: str, body: Any, project: str | None = None) -> None:
        """POST/PUT/PATCH/DELETE a /1.0 path; ProvisionError with Incus' message on failure."""
        import pylxd.exceptions

        params = {"project": project} if project else None
        node = self._node(path)
        try:
            if method == "delete":
                node.delete(params=params)
            else:
                getattr(node, method)(json=body, params=params)
        except pylxd.exceptions.LXDAPIException as exc:
            raise ProvisionError(f"Incus refused {method.upper()} {path}: {exc}") from exc

    def send_wait(
        self,
        method: str,
        path: str,
        body: Any,
        project: str | None = None,
        timeout: float = 600.0,
    ) -> dict[str, Any]:
        """POST/DELETE a /1.0 path that starts an operation and wait for it; its metadata."""
        import pylxd.exceptions

        params = {"project": project} if project else None
        node = self._node(path)
        try:
            if method == "delete":
                reply = node.delete(params=params).json()
            else:
                reply = getattr(node, method)(json=body, params=params).json()
            op = str(reply.get("operation") or "").rsplit("/", 1)[-1]
            if not op:
                return dict(reply.get("metadata") or {})
            meta: dict[str, Any] = (
                self.client.api.operations[op]
                .wait.get(params={"timeout": int(timeout)}, timeout=timeout + 10)
                .json()["metadata"]
            )
        except pylxd.exceptions.LXDAPIException as exc:
            raise ProvisionError(f"Incus refused {method.upper()} {path}: {exc}") from exc
        if meta.get("status") != "Success":
            raise ProvisionError(
                f"Incus failed {method.upper()} {path}: {meta.get('err') or meta.get('status')}"
            )
        return meta

    def _node(self, path: str) -> Any:
        node = self.client.api  # already at /1.0
        for part in path.strip("/").removeprefix("1.0").strip("/").split("/"):
            node = node[part]
        return node


# ------------------------------------------------------------------------------- subnets
def host_routes() -> list[ipaddress.IPv4Network]:
    """IPv4 destinations of the host's main routing table (/proc/net/route), default excluded."""
    nets: list[ipaddress.IPv4Network] = []
    try:
        with open("/proc/net/route", encoding="ascii") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) < 8:
                    continue
                dest = socket.inet_ntoa(int(cols[1], 16).to_bytes(4, "little"))
                mask = socket.inet_ntoa(int(cols[7], 16).to_bytes(4, "little"))
                net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
                if net.prefixlen > 0:
                    nets.append(net)
    except OSError:
        pass
    return nets


def incus_subnets(incus: IncusAdmin) -> dict[str, ipaddress.IPv4Network]:
    """IPv4 subnets of Incus' managed networks, by network name."""
    found: dict[str, ipaddress.IPv4Network] = {}
    for net in incus.get("/1.0/networks", None) or []:
        name = net.rsplit("/", 1)[-1] if isinstance(net, str) else net.get("name", "")
        info = incus.get(f"/1.0/networks/{name}") or {}
        addr = (info.get("config") or {}).get("ipv4.address", "")
        if addr and addr not in ("none", "auto"):
            try:
                found[name] = ipaddress.IPv4Interface(addr).network
            except ValueError:
                continue
    return found


def choose_subnet(
    uid: int, taken: list[ipaddress.IPv4Network], pool: ipaddress.IPv4Network = SUBNET_RANGE
) -> ipaddress.IPv4Interface:
    """The first free /24 of `pool`, starting at index uid % count; gateway is its .1."""
    candidates = list(pool.subnets(new_prefix=24))
    start = uid % len(candidates)
    for i in range(len(candidates)):
        net = candidates[(start + i) % len(candidates)]
        if not any(net.overlaps(t) for t in taken):
            return ipaddress.IPv4Interface(f"{net.network_address + 1}/24")
    raise ProvisionError(f"no free /24 left in {pool}; pass --subnet explicitly")


def parse_subnet(text: str) -> ipaddress.IPv4Interface:
    """Validate an explicit --subnet (gateway address with prefix, e.g. 10.218.7.1/24)."""
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise ProvisionError(f"--subnet {text!r} is not an IPv4 address/prefix") from exc
    if not 16 <= iface.network.prefixlen <= 29:
        raise ProvisionError("--subnet needs a prefix between /16 and /29")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise ProvisionError("--subnet must name the gateway address, e.g. 10.218.7.1/24")
    if not iface.ip.is_private:
        raise ProvisionError("--subnet must be a private range")
    return iface


# ---------------------------------------------------------------------------- id maps
def ensure_subid(path: str, line: str) -> bool:
    """Append `line` to a subuid/subgid file unless present; True if added."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    if line in lines:
        return False
    # Rewrite rather than append: tools like useradd leave the last line without a newline.
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{x}\n" for x in [*lines, line]))
    return True


def remove_subid(path: str, line: str) -> bool:
    """Remove `line` from a subuid/subgid file; True if it was there."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return False
    if line not in lines:
        return False
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{x}\n" for x in lines if x != line))
    return True


# ---------------------------------------------------------------------------- certificate
def ensure_client_cert(directory: str, username: str) -> tuple[bytes, bool]:
    """DER of the user's client certificate, generated (EC P-384, like Incus) if missing."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    crt_path = os.path.join(directory, "client.crt")
    key_path = os.path.join(directory, "client.key")
    if os.path.exists(crt_path) and os.path.exists(key_path):
        with open(crt_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        return cert.public_bytes(serialization.Encoding.DER), False
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Linux Containers"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{username}@{socket.gethostname()}"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    with open(crt_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER), True


def fingerprint(der: bytes) -> str:
    """Incus' certificate fingerprint: sha256 of the DER bytes, hex."""
    import hashlib

    return hashlib.sha256(der).hexdigest()


# ---------------------------------------------------------------------------- images
def copy_images(
    incus: IncusAdmin,
    project: str,
    aliases: Sequence[str],
    result: ProvisionResult,
    *,
    explicit: bool,
    source_project: str = "default",
) -> None:
    """Make the images behind `aliases` in `source_project` usable in `project` (idempotent).

    Images are per project in incus-user projects (features.images=true) and a restricted
    user can neither read another project nor import from a path it cannot read. Incus keeps
    one copy of an image's files for all projects, so the copy is only a new database record
    (`source.protocol=direct` with a full fingerprint never contacts a server). Copies carry
    the property COPIED_FROM; an alias the user pointed at an image of their own (e.g. built
    with `coi build` in their project) is left alone. A copy the alias no longer names is
    deleted from the project.
    """
    for alias in aliases:
        source = incus.get(f"/1.0/images/aliases/{alias}", source_project)
        if source is None:
            if explicit:
                raise ProvisionError(
                    f"image {alias!r} not found in project {source_project}; "
                    "build it first (`coi build` as an incus-admin member) or drop --image"
                )
            result.notes.append(f"image {alias!r} not in project {source_project}: not copied")
            continue
        fp = str(source["target"])
        current = incus.get(f"/1.0/images/aliases/{alias}", project)
        previous = str(current["target"]) if current else ""
        if previous == fp:
            continue
        if previous:
            mine = incus.get(f"/1.0/images/{previous}", project) or {}
            if COPIED_FROM not in (mine.get("properties") or {}):
                result.notes.append(
                    f"image {alias!r} in {project} was built there by the user: left as is"
                )
                continue
        if incus.get(f"/1.0/images/{fp}", project) is None:
            incus.send_wait(
                "post",
                "/1.0/images",
                {
                    "source": {
                        "type": "image",
                        "mode": "pull",
                        "protocol": "direct",
                        "fingerprint": fp,
                    },
                    "properties": {COPIED_FROM: source_project},
                },
                project,
            )
        description = f"copied from project {source_project} by coi-helper provision-user"
        if current is None:
            incus.send(
                "post",
                "/1.0/images/aliases",
                {"name": alias, "target": fp, "description": description},
                project,
            )
        else:
            incus.send(
                "put",
                f"/1.0/images/aliases/{alias}",
                {"target": fp, "description": description},
                project,
            )
        result.did(f"image {alias} ({fp[:12]}) available in {project}")
        if previous:
            old = incus.get(f"/1.0/images/{previous}", project) or {}
            if not old.get("aliases"):
                incus.send_wait("delete", f"/1.0/images/{previous}", None, project)
                result.did(f"removed the outdated copy {previous[:12]} from {project}")


def default_images(incus: IncusAdmin, source_project: str = "default") -> list[str]:
    """The images copied when no --image is given: DEFAULT_IMAGES that exist."""
    return [
        alias
        for alias in DEFAULT_IMAGES
        if incus.get(f"/1.0/images/aliases/{alias}", source_project) is not None
    ]


# ---------------------------------------------------------------------------- provisioning
def project_config(pw: pwd.struct_passwd, network: str) -> dict[str, str]:
    """The project configuration incus-user applies (cmd/incus-user/server.go)."""
    return {
        "features.images": "true",
        "features.networks": "false",
        "features.networks.zones": "true",
        "features.profiles": "true",
        "features.storage.volumes": "true",
        "features.storage.buckets": "true",
        "restricted": "true",
        "restricted.containers.nesting": "allow",
        "restricted.devices.disk": "allow",
        "restricted.devices.disk.paths": pw.pw_dir,
        "restricted.devices.gpu": "allow",
        "restricted.idmap.uid": str(pw.pw_uid),
        "restricted.idmap.gid": str(pw.pw_gid),
        "restricted.networks.access": network,
    }


def lookup_user(user: str) -> pwd.struct_passwd:
    """The passwd entry of a user name or numeric uid."""
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError as exc:
        raise ProvisionError(f"no such user: {user}") from exc


def provision_user(
    user: str,
    *,
    subnet: str | None = None,
    pool: str = "coi",
    images: Sequence[str] | None = None,
    incus_socket: str = ADMIN_SOCKET,
    incus_dir: str = INCUS_DIR,
    subuid: str = "/etc/subuid",
    subgid: str = "/etc/subgid",
) -> ProvisionResult:
    """Create (idempotently) everything incus-user would create for `user`.

    `images`: aliases of the default project to make usable in the user's project (see
    `copy_images`); None means DEFAULT_IMAGES where present, [] none.
    """
    if os.geteuid() != 0:
        raise ProvisionError("provision-user must run as root")
    pw = lookup_user(user)
    uid = pw.pw_uid
    project, network = f"user-{uid}", f"incusbr-{uid}"
    incus = IncusAdmin(incus_socket)
    if incus.get(f"/1.0/storage-pools/{pool}") is None:
        raise ProvisionError(f"storage pool '{pool}' does not exist; pass --pool")

    # 1. Bridge with an explicit subnet (never Incus' automatic search).
    existing = incus.get(f"/1.0/networks/{network}")
    result = ProvisionResult(pw.pw_name, uid, project, network, "", "")
    if existing is not None:
        result.subnet = (existing.get("config") or {}).get("ipv4.address", "")
        if subnet and result.subnet != str(parse_subnet(subnet)):
            result.notes.append(
                f"bridge {network} exists with {result.subnet}; --subnet {subnet} ignored"
            )
    else:
        taken = list(incus_subnets(incus).values()) + host_routes()
        if subnet:
            gw = parse_subnet(subnet)
            clash = [t for t in taken if gw.network.overlaps(t)]
            if clash:
                raise ProvisionError(f"--subnet {subnet} overlaps {clash[0]} already in use")
        else:
            gw = choose_subnet(uid, taken)
        incus.send(
            "post",
            "/1.0/networks",
            {
                "name": network,
                "type": "bridge",
                "description": f"Network for user restricted project {project}",
                "config": {"ipv4.address": str(gw), "ipv4.nat": "true", "ipv6.address": "none"},
            },
        )
        result.subnet = str(gw)
        result.did(f"created bridge {network} ({gw})")

    # 2. Restricted project.
    if incus.get(f"/1.0/projects/{project}") is None:
        incus.send(
            "post",
            "/1.0/projects",
            {
                "name": project,
                "description": f'User restricted project for "{pw.pw_name}" ({uid})',
                "config": project_config(pw, network),
            },
        )
        result.did(f"created project {project}")

    # 3. Client certificate, trusted (restricted) for that project only.
    userdir = os.path.join(incus_dir, "users", str(uid))
    os.makedirs(os.path.join(incus_dir, "users"), mode=0o700, exist_ok=True)
    os.makedirs(userdir, mode=0o700, exist_ok=True)
    der, created = ensure_client_cert(userdir, pw.pw_name)
    if created:
        result.did(f"generated {userdir}/client.crt")
    fp = fingerprint(der)
    result.certificate = fp
    trusted = incus.get(f"/1.0/certificates/{fp}")
    if trusted is None:
        incus.send(
            "post",
            "/1.0/certificates",
            {
                "name": f"incus-user-{uid}",
                "type": "client",
                "restricted": True,
                "projects": [project],
                "certificate": base64.b64encode(der).decode(),
            },
        )
        result.did(f"trusted certificate {fp[:12]} for {project}")
    elif not trusted.get("restricted") or project not in (trusted.get("projects") or []):
        incus.send("patch", f"/1.0/certificates/{fp}", {"restricted": True, "projects": [project]})
        result.did(f"restricted certificate {fp[:12]} to {project}")

    # 4. id delegation for raw.idmap (maps the user to itself / to `code` in containers).
    added = ensure_subid(subuid, f"root:{uid}:1")
    added = ensure_subid(subgid, f"root:{uid}:1") or added
    if pw.pw_gid != uid:
        added = ensure_subid(subgid, f"root:{pw.pw_gid}:1") or added
    if added:
        result.did(f"delegated uid/gid {uid} to root in {subuid} and {subgid}")
        result.notes.append("restart incusd so it reads the new /etc/subuid and /etc/subgid")

    # 5. The project's default profile.
    profile = {
        "description": "Default Incus profile",
        "config": {"raw.idmap": f"uid {uid} {uid}\ngid {pw.pw_gid} {pw.pw_gid}"},
        "devices": {
            "root": {"type": "disk", "path": "/", "pool": pool},
            "eth0": {"type": "nic", "name": "eth0", "network": network},
        },
    }
    current = incus.get("/1.0/profiles/default", project) or {}
    if current.get("devices") != profile["devices"] or current.get("config") != profile["config"]:
        incus.send("put", "/1.0/profiles/default", profile, project)
        result.did(f"set the default profile of {project} (pool {pool}, {network})")

    # incus-user reads projects and certificates only at start; images it need not know.
    result.restart_incus_user = result.changed
    if result.changed:
        result.notes.append("incus-user reads the project list only at start: restart it")

    # 6. Images (after the profile: an image record refers to the project's default profile).
    wanted = default_images(incus) if images is None else list(images)
    copy_images(incus, project, wanted, result, explicit=images is not None)
    return result


def deprovision_user(
    user: str,
    *,
    incus_socket: str = ADMIN_SOCKET,
    incus_dir: str = INCUS_DIR,
    subuid: str = "/etc/subuid",
    subgid: str = "/etc/subgid",
) -> list[str]:
    """Remove what provision_user created, images of the project included (the project must
    hold no instances)."""
    import shutil

    pw = lookup_user(user)
    uid = pw.pw_uid
    project, network = f"user-{uid}", f"incusbr-{uid}"
    incus = IncusAdmin(incus_socket)
    done: list[str] = []
    if incus.get(f"/1.0/projects/{project}") is not None:
        # Image records of the project (copies or the user's own builds) go with it; Incus
        # keeps the files while another project still uses the same image.
        for url in incus.get("/1.0/images", project) or []:
            fp = str(url).rsplit("/", 1)[-1].split("?", 1)[0]
            incus.send_wait("delete", f"/1.0/images/{fp}", None, project)
            done.append(f"deleted image {fp[:12]} of {project}")
        incus.send(
            "put",
            "/1.0/profiles/default",
            {"config": {}, "devices": {}, "description": ""},
            project,
        )
        incus.send("delete", f"/1.0/projects/{project}", None)
        done.append(f"deleted project {project}")
    if incus.get(f"/1.0/networks/{network}") is not None:
        incus.send("delete", f"/1.0/networks/{network}", None)
        done.append(f"deleted bridge {network}")
    userdir = os.path.join(incus_dir, "users", str(uid))
    crt = os.path.join(userdir, "client.crt")
    if os.path.exists(crt):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        with open(crt, "rb") as f:
            der = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)
        fp = fingerprint(der)
        if incus.get(f"/1.0/certificates/{fp}") is not None:
            incus.send("delete", f"/1.0/certificates/{fp}", None)
            done.append(f"removed certificate {fp[:12]}")
    if os.path.isdir(userdir):
        shutil.rmtree(userdir)
        done.append(f"removed {userdir}")
    for path, line in ((subuid, f"root:{uid}:1"), (subgid, f"root:{uid}:1")):
        if remove_subid(path, line):
            done.append(f"removed {line} from {path}")
    if pw.pw_gid != uid and remove_subid(subgid, f"root:{pw.pw_gid}:1"):
        done.append(f"removed root:{pw.pw_gid}:1 from {subgid}")
    return done


# ---------------------------------------------------------------------------- incus-user
def _pid_is_incus_user(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0]
    except OSError:
        return False
    return argv0.endswith(b"incus-user")


def restart_incus_user(
    pidfile: str = INCUS_USER_PIDFILE, group: str = "incus", timeout: float = 20.0
) -> str:
    """Restart incus-user so it reads the project list again; returns what was done.

    With systemd, `systemctl try-restart incus-user.service`. Without it, the detached daemon
    whose pid is in `pidfile` (started by the host setup) is stopped and started again the same
    way, and the new pid is written back.
    """
    if os.path.isdir("/run/systemd/system"):
        subprocess.run(["systemctl", "try-restart", "incus-user.service"], check=False)
        return "restarted incus-user.service (systemd)"
    old: int | None = None
    try:
        with open(pidfile, encoding="ascii") as f:
            old = int(f.read().strip())
    except (OSError, ValueError):
        old = None
    if old is not None and _pid_is_incus_user(old):
        os.kill(old, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_is_incus_user(old) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_is_incus_user(old):
            os.kill(old, signal.SIGKILL)
    os.makedirs(os.path.dirname(INCUS_USER_LOG), exist_ok=True)
    # start_new_session: detached like `setsid`, so it outlives this command.
    log = open(INCUS_USER_LOG, "ab")  # noqa: SIM115 - handed to the detached child
    started = time.time()
    try:
        proc = subprocess.Popen(
            [INCUS_USER_BIN, "--group", group],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    finally:
        log.close()
    with open(pidfile, "w", encoding="ascii") as f:
        f.write(f"{proc.pid}\n")
    # Wait for the socket file only: connecting as root would make incus-user set up a
    # project for uid 0 (with Incus' automatic subnet search).
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = os.stat(INCUS_USER_SOCKET)
            if stat.S_ISSOCK(st.st_mode) and st.st_ctime >= started - 1:
                return f"restarted incus-user (pid {proc.pid})"
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise ProvisionError(
        f"incus-user did not come back within {timeout:.0f} s (log {INCUS_USER_LOG})"
    )
