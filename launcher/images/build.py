"""`coi build`: images built by running a script in a container from a base image.

A build is phases with teardown (see `coi.launcher.session.phases`): the build container is
always removed, and a published image is discarded unless its alias was set, so a failed or
interrupted build leaves neither a half image nor a stray container.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from coi.launcher.errors import ImageError, IncusError, UsageError
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.exec import ExecRequest, ExecSession
from coi.launcher.incus.types import ImageInfo, InstanceSpec
from coi.launcher.progress import Progress
from coi.launcher.session.phases import Teardown, phased

DEFAULT_ALIAS = "coi"
DEFAULT_BASE = "coi-base"
_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def builtin_script(name: str = "coi.sh") -> str:
    """The text of a build script shipped in the package."""
    return (resources.files("coi.launcher.images") / "scripts" / name).read_text()


@dataclass(frozen=True)
class BuildRequest:
    """An image to build: alias, base image, script text."""

    alias: str
    base: str
    script: str
    script_name: str
    force: bool = False
    verbose: bool = False
    host_cas: bool = True

    def __post_init__(self) -> None:
        for what, value in (("image name", self.alias), ("base image", self.base)):
            if not _ALIAS_RE.match(value):
                raise UsageError(
                    f"invalid {what} {value!r}",
                    hint="use letters, digits, '.', '_' and '-' (at most 63 characters)",
                )


@dataclass(frozen=True)
class BuildResult:
    """What a build produced (or found already present)."""

    alias: str
    fingerprint: str
    built: bool
    seconds: float
    log_path: str


def build_log_path(alias: str) -> Path:
    """Where the full output of a build goes (~/.cache/coi/build-<alias>.log)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "coi"
    base.mkdir(parents=True, exist_ok=True)
    return base / f"build-{alias}.log"


class _BuildOutput:
    """Writes build output to the log; shows `==>` steps (or everything when verbose)."""

    def __init__(self, log: Path, progress: Progress, verbose: bool) -> None:
        self._log = log.open("wb")
        self._progress = progress
        self._verbose = verbose
        self._partial = b""

    def write(self, data: bytes) -> None:
        self._log.write(data)
        self._log.flush()
        if self._verbose:
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(b"==> "):
                self._progress.step(line[4:].decode(errors="replace"))

    def close(self) -> None:
        self._log.close()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def build_image(client: IncusClient, request: BuildRequest, progress: Progress) -> BuildResult:
    """Build `request.alias` from `request.base` by running the script as root inside."""
    started = time.monotonic()
    existing = client.image_by_alias(request.alias)
    log_path = build_log_path(request.alias)
    if existing is not None and not request.force:
        return BuildResult(request.alias, existing.fingerprint, False, 0.0, "")
    if client.image_by_alias(request.base) is None:
        hint = (
            "run `sudo packaging/host-setup` to create it"
            if request.base == DEFAULT_BASE
            else f"build it first, or pick another with --base (have: {_aliases(client)})"
        )
        raise ImageError(f"base image {request.base!r} not found", hint=hint)

    teardown = Teardown()
    with phased(teardown):
        builder = f"coi-build-{request.alias.replace('.', '-').replace('_', '-')[:30]}-"
        builder += secrets.token_hex(3)
        progress.step(f"creating build container {builder} from {request.base}")
        teardown.push("remove build container", lambda: client.remove_instance(builder))
        client.create_instance(InstanceSpec(name=builder, image=request.base, ephemeral=False))
        client.set_state(builder, "start")
        progress.step("waiting for the build container's network")
        if not client.wait_for_ipv4(builder, 60):
            raise ImageError(
                f"build container {builder} got no IPv4 address within 60 s",
                hint="check the bridge in the default profile (`coi health`)",
            )
        _run_script(client, builder, request, log_path, progress)
        progress.step("stopping the build container")
        _stop(client, builder)
        fingerprint = _publish(client, builder, request, teardown, progress)
        return BuildResult(
            request.alias, fingerprint, True, time.monotonic() - started, str(log_path)
        )
    raise AssertionError("unreachable")  # pragma: no cover  (phased re-raises)


def _aliases(client: IncusClient) -> str:
    names = sorted(a for image in client.images() for a in image.aliases)
    return ", ".join(names) or "none"


HOST_CA_DIR = Path("/usr/local/share/ca-certificates")


def host_ca_certificates(directory: Path = HOST_CA_DIR) -> list[Path]:
    """CA certificates the host administrator added locally (corporate / TLS-inspecting proxies).

    They are public certificates, not secrets; builds behind such proxies fail without them.
    """
    try:
        return sorted(p for p in directory.rglob("*.crt") if p.is_file())
    except OSError:
        return []


def _push_host_cas(client: IncusClient, builder: str, progress: Progress) -> bool:
    certs = host_ca_certificates()
    for cert in certs:
        try:
            data = cert.read_bytes()
        except OSError:
            continue
        client.push_file(builder, f"/usr/local/share/ca-certificates/coi-host-{cert.name}", data)
    if certs:
        progress.step(f"trusting {len(certs)} CA certificate(s) added on the host")
    return bool(certs)


def _run_script(
    client: IncusClient, builder: str, request: BuildRequest, log_path: Path, progress: Progress
) -> None:
    script_path = "/root/coi-build.sh"
    client.push_file(builder, script_path, request.script.encode(), mode=0o755)
    prelude = ""
    if request.host_cas and _push_host_cas(client, builder, progress):
        prelude = "update-ca-certificates >/dev/null && "
    progress.step(f"running {request.script_name} (log: {log_path})")
    output = _BuildOutput(log_path, progress, request.verbose)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "NODE_EXTRA_CA_CERTS": "/etc/ssl/certs/ca-certificates.crt",
    }
    command = f"{prelude}{script_path} 2>&1"
    session = ExecSession.start(
        client, builder, ExecRequest(["/bin/sh", "-c", command], env, cwd="/root")
    )
    try:
        session.pump(None, output.write, output.write)
        code = session.wait()
    finally:
        session.close()
        output.close()
    if code != 0:
        raise ImageError(
            f"build script {request.script_name} failed with exit code {code}; last lines:\n"
            + _tail(log_path),
            hint=f"full log: {log_path}",
        )
    client.push_file(builder, script_path, b"", mode=0o600)
    session = ExecSession.start(
        client,
        builder,
        ExecRequest(["/bin/sh", "-c", f"rm -f {script_path}; truncate -s0 /etc/machine-id"], env),
    )
    session.pump(None, output.write)
    session.wait()


def _stop(client: IncusClient, name: str) -> None:
    try:
        client.set_state(name, "stop", timeout=30)
    except IncusError:
        client.set_state(name, "stop", force=True)


def _publish(
    client: IncusClient, builder: str, request: BuildRequest, teardown: Teardown, progress: Progress
) -> str:
    previous = client.image_by_alias(request.alias)
    properties = {
        "description": f"coi image {request.alias} (from {request.base}, {request.script_name})",
        "coi.image": request.alias,
        "coi.base": request.base,
        "coi.script_sha256": hashlib.sha256(request.script.encode()).hexdigest(),
        "coi.built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "os": "debian",
    }
    progress.step(f"publishing image {request.alias}")
    op = client.publish_instance_async(builder, properties)
    state: dict[str, str] = {}

    def discard() -> None:
        fingerprint = state.get("fingerprint") or _fingerprint_after(client, op)
        if fingerprint and not state.get("aliased"):
            client.delete_image(fingerprint)

    teardown.push("discard the unfinished image", discard)
    state["fingerprint"] = client.publish_result(op)
    client.set_alias(request.alias, state["fingerprint"], properties["description"])
    state["aliased"] = "yes"
    if previous is not None and previous.fingerprint != state["fingerprint"]:
        others = [a for a in previous.aliases if a != request.alias]
        if not others:
            client.delete_image(previous.fingerprint)
    return state["fingerprint"]


def _fingerprint_after(client: IncusClient, op: str) -> str:
    try:
        return client.publish_result(op, timeout=600)
    except IncusError:
        return ""


def existing_image(client: IncusClient, alias: str) -> ImageInfo | None:
    """The image behind `alias`, if any (used by `coi image exists` and health)."""
    return client.image_by_alias(alias)
