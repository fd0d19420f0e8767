"""What a session puts into its container and takes back out.

In: `~/SANDBOX_CONTEXT.md` (the agent's situation), wired into the tool's own context file;
the tool's host credentials (copied, never mounted); a saved session's state on `--resume`.
Out: the tool's state as a tar archive (see `coi.launcher.session.store`).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coi.launcher.errors import IncusError, SessionError
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.exec import ExecRequest, ExecSession
from coi.launcher.session.phases import signals_blocked
from coi.launcher.session.sandbox import CODE_HOME, CODE_UID
from coi.launcher.session.tools import ToolSpec

CONTEXT_PATH = f"{CODE_HOME}/SANDBOX_CONTEXT.md"
_BEGIN = "<!-- coi:sandbox-context begin -->"
_END = "<!-- coi:sandbox-context end -->"
# Credential files larger than this are not credentials; refuse rather than copy a big file.
_MAX_CREDENTIAL_BYTES = 1 << 20


@dataclass(frozen=True)
class SandboxContext:
    """The facts `~/SANDBOX_CONTEXT.md` tells the agent."""

    container: str
    workspace: str
    slot: int
    tool: str
    persistent: bool
    network_mode: str = "restricted"
    limits: Mapping[str, str] = field(default_factory=dict)
    protected_paths: Sequence[str] = ()
    ssh_agent: bool = False
    notes: Sequence[str] = ()  # further lines from the host integration (mounts, identity)
    network_lines: Sequence[str] = ()  # Markdown list lines of the network engine, if any

    def render(self) -> str:
        """The Markdown text of the context file."""
        persistence = (
            "persistent: the container and everything installed in it are kept after the "
            "session ends"
            if self.persistent
            else "ephemeral: the container is deleted when the session ends; only /workspace "
            "(the user's project) and the tool's saved session data remain"
        )
        network = {
            "restricted": "internet access, but private networks and the host are blocked",
            "allowlist": "only allow-listed domains are reachable",
            "open": "unrestricted network access",
        }.get(self.network_mode, self.network_mode)
        limits = ", ".join(f"{k} {v}" for k, v in sorted(self.limits.items()) if v) or "none set"
        protected = ", ".join(self.protected_paths) or "none"
        network_text = (
            "".join(f"{line}\n" for line in self.network_lines)
            if self.network_lines
            else f"- Network: {self.network_mode} ({network}).\n"
        )
        return (
            "# Sandbox context\n\n"
            f"You are running inside an isolated Incus container ({self.container}, slot "
            f"{self.slot}) started by coi for the tool `{self.tool}`.\n\n"
            f"- Workspace: the user's project {self.workspace} is mounted at /workspace; "
            "changes there are the user's real files.\n"
            "- User: `code` (uid 1000) with passwordless sudo inside the container; install "
            "what you need with `sudo apt-get install`, `npm`, `pip`.\n"
            f"- Persistence: {persistence}.\n" + network_text + f"- Resource limits: {limits}.\n"
            f"- Protected (read-only) workspace paths: {protected}.\n"
            f"- SSH agent: {'forwarded (keys stay on the host)' if self.ssh_agent else 'none'}.\n"
            "- Nothing else from the user's host home directory is available here.\n"
            + "".join(f"- {note}\n" for note in self.notes)
        )


def code_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment of `code` for short commands and tmux clients."""
    env = {
        "HOME": CODE_HOME,
        "USER": "code",
        "LOGNAME": "code",
        "LANG": "C.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "TERM": os.environ.get("TERM", "xterm-256color"),
    }
    env.update(extra or {})
    return env


def exec_as_code(
    client: IncusClient,
    name: str,
    argv: Sequence[str],
    *,
    stdin: bytes = b"",
    environment: Mapping[str, str] | None = None,
    cwd: str = CODE_HOME,
) -> tuple[int, bytes, bytes]:
    """Run a command as `code` (in its home by default); (exit code, stdout, stderr)."""
    request = ExecRequest(
        command=list(argv),
        user=CODE_UID,
        group=CODE_UID,
        cwd=cwd,
        environment=code_environment() if environment is None else environment,
    )
    # stdin always goes through a pipe (empty or not): the end-of-input of a command that
    # has already exited is then sent by the pump thread, which tolerates a closed stream.
    out: list[bytes] = []
    err: list[bytes] = []
    # Ctrl-C/SIGTERM wait until this short command is done: an interrupt in the middle of
    # an exec's websocket setup left Incus' operations API blocked until coi exited, which
    # hung the teardown that follows an interrupt.
    with signals_blocked():
        session = ExecSession.start(client, name, request)
        read_fd, write_fd = os.pipe()
        try:
            with os.fdopen(write_fd, "wb") as feed:
                session.pump(read_fd, out.append, err.append)
                feed.write(stdin)
            code = session.wait()
        finally:
            session.close()
    # read_fd stays open: the pump thread may not have read its end-of-input yet, and a
    # closed number could be reused by another thread's file. It is freed when coi exits.
    return code, b"".join(out), b"".join(err)


def _run(client: IncusClient, name: str, argv: Sequence[str], *, stdin: bytes = b"") -> bytes:
    code, out, err = exec_as_code(client, name, argv, stdin=stdin)
    if code != 0:
        raise SessionError(
            f"{' '.join(argv[:2])} failed in {name} (exit {code}): "
            f"{err.decode(errors='replace').strip()[:300]}"
        )
    return out


def _write_home_file(client: IncusClient, name: str, rel: str, data: bytes, mode: int) -> None:
    parent = str(Path(CODE_HOME, rel).parent)
    _run(client, name, ["mkdir", "-p", "--", parent])
    client.push_file(name, f"{CODE_HOME}/{rel}", data, uid=CODE_UID, gid=CODE_UID, mode=mode)


def _read_home_file(client: IncusClient, name: str, rel: str) -> str:
    try:
        return client.pull_file(name, f"{CODE_HOME}/{rel}").decode(errors="replace")
    except IncusError:
        return ""


def _with_block(existing: str, block: str) -> str:
    """`existing` with coi's marked block replaced (or appended), other text untouched."""
    marked = f"{_BEGIN}\n{block.rstrip()}\n{_END}\n"
    start, end = existing.find(_BEGIN), existing.find(_END)
    if start != -1 and end > start:
        return existing[:start] + marked + existing[end + len(_END) :].lstrip("\n")
    separator = "\n" if existing and not existing.endswith("\n\n") else ""
    return existing + separator + marked


def install_context(client: IncusClient, name: str, spec: ToolSpec, ctx: SandboxContext) -> None:
    """Write ~/SANDBOX_CONTEXT.md and reference it from the tool's native context file."""
    text = ctx.render()
    _write_home_file(client, name, "SANDBOX_CONTEXT.md", text.encode(), 0o644)
    if spec.context_mode == "none" or not spec.context_file:
        return
    block = "@~/SANDBOX_CONTEXT.md" if spec.context_mode == "import" else text
    current = _read_home_file(client, name, spec.context_file)
    _write_home_file(client, name, spec.context_file, _with_block(current, block).encode(), 0o644)


def copy_credentials(client: IncusClient, name: str, spec: ToolSpec, host_home: Path) -> list[str]:
    """Copy the tool's credential files from the host home (mode 0600); returns those copied."""
    copied = []
    for rel in spec.credentials:
        source = host_home / rel
        if not source.is_file():
            continue
        try:
            if source.stat().st_size > _MAX_CREDENTIAL_BYTES:
                raise SessionError(f"credential file {source} is larger than 1 MiB; not copied")
            data = source.read_bytes()
        except OSError as exc:
            raise SessionError(f"cannot read credential file {source}: {exc.strerror}") from exc
        _write_home_file(client, name, rel, data, 0o600)
        copied.append(rel)
    return copied


def capture_state(client: IncusClient, name: str, spec: ToolSpec) -> bytes:
    """The tool's state paths (those that exist) as a tar archive made in the container.

    Credential files are left out: they come from the host on every start, and the session
    store should not hold another copy of them.
    """
    excludes = " ".join(f"--exclude={shlex.quote(c)}" for c in spec.credentials)
    script = (
        "cd ~ && for p in " + " ".join(shlex.quote(p) for p in spec.state_paths) + "; do "
        '[ -e "$p" ] || [ -L "$p" ] && printf "%s\\n" "$p"; done | '
        f"tar --create --file=- {excludes} --files-from=- --warning=no-file-changed "
        "--ignore-failed-read; rc=$?; [ $rc -le 1 ] || exit $rc"
    )
    return _run(client, name, ["bash", "-c", script])


def restore_state(client: IncusClient, name: str, archive: bytes) -> None:
    """Unpack a saved state archive into /home/code (as code: it cannot escape the home)."""
    if archive:
        _run(
            client, name, ["tar", "--extract", "--file=-", "--directory", CODE_HOME], stdin=archive
        )


def binary_present(client: IncusClient, name: str, binary: str) -> bool:
    """Whether the tool's binary is on code's login PATH in the container."""
    code, _, _ = exec_as_code(client, name, ["bash", "-lc", f"command -v {shlex.quote(binary)}"])
    return code == 0
