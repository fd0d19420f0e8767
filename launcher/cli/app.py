"""The `coi` command line: parses, calls into the launcher packages, prints.

No logic lives here beyond argument handling and rendering; errors are `CoiError`s rendered
as one sentence plus a hint, never a traceback.
"""

from __future__ import annotations

import errno
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from coi.launcher import __version__
from coi.launcher.cli import run_options as ro
from coi.launcher.cli.config_cmd import config_app
from coi.launcher.cli.session_cmds import default_to_shell
from coi.launcher.cli.session_cmds import register as register_sessions
from coi.launcher.cli.trust_cmd import trust, untrust
from coi.launcher.errors import CoiError
from coi.launcher.health.checks import Status, run_checks
from coi.launcher.images.build import (
    DEFAULT_ALIAS,
    DEFAULT_BASE,
    BuildRequest,
    BuildResult,
    build_image,
    builtin_script,
)
from coi.launcher.incus.client import IncusClient
from coi.launcher.progress import Progress
from coi.launcher.session.naming import check_slot
from coi.launcher.session.network import network_isolation_check
from coi.launcher.session.run import run_command


class OutputFormat(StrEnum):
    """Output formats of listing and status commands."""

    text = "text"
    json = "json"


app = typer.Typer(
    name="coi",
    help="Run AI coding agents in Incus system containers: the agent may do anything inside "
    "its sandbox and nothing outside it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=True,
)

WorkspaceOpt = Annotated[
    Path,
    typer.Option(
        "--workspace",
        "-w",
        help="Project directory mounted at /workspace (default: current).",
        file_okay=True,
        dir_okay=True,
    ),
]
SlotOpt = Annotated[
    int,
    typer.Option(
        "--slot", help="Slot 1..10 for parallel sandboxes of one workspace; 0 = first free."
    ),
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", help="Set KEY=VALUE inside the sandbox (repeatable)."),
]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


@app.command(
    context_settings={"allow_interspersed_args": False},
    epilog="Examples:\n\n  coi run -- npm test\n\n  coi run -w ~/src/app -e CI=1 -- make check"
    "\n\n  coi run --limit-memory 2GiB --limit-duration 30m -- ./long-job.sh",
)
def run(
    command: Annotated[
        list[str] | None, typer.Argument(help="Command and arguments (after --); default: bash -l.")
    ] = None,
    workspace: WorkspaceOpt = Path("."),
    slot: SlotOpt = 0,
    persistent: Annotated[
        bool, typer.Option("--persistent", help="Keep the container after the command.")
    ] = False,
    image: Annotated[
        str | None, typer.Option("--image", help="Image alias to start from (default: coi).")
    ] = None,
    env: EnvOpt = None,
    no_wait_network: Annotated[
        bool,
        typer.Option("--no-wait-network", help="Do not wait for the container's IPv4 address."),
    ] = False,
    profile: ro.ProfileOpt = None,
    mount: ro.MountOpt = None,
    forward_env: ro.ForwardEnvOpt = None,
    ssh_agent: ro.SshAgentOpt = False,
    writable_git_hooks: ro.WritableHooksOpt = False,
    limit_cpu: ro.LimitCpuOpt = None,
    limit_cpu_allowance: ro.LimitCpuAllowanceOpt = None,
    limit_memory: ro.LimitMemoryOpt = None,
    limit_swap: ro.LimitSwapOpt = None,
    limit_disk_read: ro.LimitDiskReadOpt = None,
    limit_disk_write: ro.LimitDiskWriteOpt = None,
    limit_disk_max: ro.LimitDiskMaxOpt = None,
    limit_processes: ro.LimitProcessesOpt = None,
    limit_duration: ro.LimitDurationOpt = None,
    network: ro.NetworkOpt = None,
) -> None:
    """Run one command in a fresh sandbox and exit with its exit code.

    The workspace is mounted at /workspace; the command runs there as user `code` (uid 1000),
    and files it creates belong to you on the host. stdout and stderr are streamed separately,
    stdin is passed through. The container is deleted afterwards, also on Ctrl-C, unless
    --persistent. Configuration layers (`coi config show`) apply, flags last.
    """
    flags = ro.HostFlags(
        profile=profile,
        mounts=mount or [],
        forward_env=forward_env or [],
        env=env or [],
        ssh_agent=ssh_agent,
        writable_git_hooks=writable_git_hooks,
        persistent=persistent,
        image=image,
        limit_cpu=limit_cpu,
        limit_cpu_allowance=limit_cpu_allowance,
        limit_memory=limit_memory,
        limit_swap=limit_swap,
        limit_disk_read=limit_disk_read,
        limit_disk_write=limit_disk_write,
        limit_disk_max=limit_disk_max,
        limit_processes=limit_processes,
        limit_duration=limit_duration,
        network=network,
    )
    check_slot(slot)
    client = IncusClient.connect()
    request, _host = ro.sandbox_request(
        client, workspace, flags, slot=slot, wait_for_network=0 if no_wait_network else 20
    )
    code = run_command(client, request, command or [], progress=Progress())
    raise typer.Exit(code)


build_app = typer.Typer(
    help="Build the `coi` sandbox image, or a custom image with `build custom`.",
    invoke_without_command=True,
)
app.add_typer(build_app, name="build")

ForceOpt = Annotated[bool, typer.Option("--force", help="Rebuild even if the image exists.")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show the build script's full output.")
]
HostCaOpt = Annotated[
    bool,
    typer.Option(
        "--host-ca/--no-host-ca",
        help="Trust the CA certificates added on the host (/usr/local/share/ca-certificates), "
        "for builds behind TLS-inspecting proxies.",
    ),
]


def _report_build(result: BuildResult, fmt: OutputFormat) -> None:
    if fmt is OutputFormat.json:
        print(
            json.dumps(
                {
                    "alias": result.alias,
                    "fingerprint": result.fingerprint,
                    "built": result.built,
                    "seconds": round(result.seconds, 1),
                    "log": result.log_path,
                }
            )
        )
    elif result.built:
        print(f"built image {result.alias} ({result.fingerprint[:12]}) in {result.seconds:.0f} s")
    else:
        print(
            f"image {result.alias} already exists ({result.fingerprint[:12]}); "
            "use --force to rebuild"
        )


@build_app.callback()
def build(
    ctx: typer.Context,
    force: ForceOpt = False,
    base: Annotated[str, typer.Option("--base", help="Base image alias.")] = DEFAULT_BASE,
    verbose: VerboseOpt = False,
    host_ca: HostCaOpt = True,
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Build the `coi` image: user `code` (uid 1000, passwordless sudo), tmux, git, Node.js,
    build tools and the agent CLIs (Claude Code, opencode, Codex).

    A failed or interrupted build leaves no image and no build container behind.
    """
    if ctx.invoked_subcommand is not None:
        return
    request = BuildRequest(DEFAULT_ALIAS, base, builtin_script(), "coi.sh", force, verbose, host_ca)
    _report_build(build_image(IncusClient.connect(), request, Progress()), fmt)


@build_app.command("custom")
def build_custom(
    name: Annotated[str, typer.Argument(help="Alias of the new image.")],
    script: Annotated[
        Path, typer.Option("--script", help="Shell script run as root in the build container.")
    ],
    base: Annotated[str, typer.Option("--base", help="Base image alias.")] = DEFAULT_ALIAS,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
    host_ca: HostCaOpt = True,
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Build a custom image NAME by running SCRIPT (as root) on top of BASE (default `coi`)."""
    try:
        text = script.read_text()
    except OSError as exc:
        raise CoiError(f"cannot read build script {script}: {exc.strerror}") from exc
    request = BuildRequest(name, base, text, script.name, force, verbose, host_ca)
    _report_build(build_image(IncusClient.connect(), request, Progress()), fmt)


@app.command()
def health(
    fmt: FormatOpt = OutputFormat.text,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show details.")] = False,
) -> None:
    """Check the host: Incus access and version, storage, bridge, image, nftables.

    Exit code: 0 healthy, 1 degraded (warnings), 2 unhealthy.
    """
    report = run_checks(extra=[network_isolation_check])
    if fmt is OutputFormat.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        marks = {Status.OK: "ok  ", Status.WARN: "WARN", Status.FAIL: "FAIL"}
        for check in report.checks:
            print(f"[{marks[check.status]}] {check.name:10} {check.message}")
            if check.hint and check.status is not Status.OK:
                print(f"       {'':10} fix: {check.hint}")
            if verbose and check.details:
                for key, value in check.details.items():
                    print(f"       {'':10} {key}: {value}")
        print(report.to_json()["status"])
    raise typer.Exit(report.exit_code)


@app.command()
def version(fmt: FormatOpt = OutputFormat.text) -> None:
    """Print the version of coi."""
    if fmt is OutputFormat.json:
        print(json.dumps({"version": __version__, "python": sys.version.split()[0]}))
    else:
        print(f"coi {__version__}")


register_sessions(app)
app.add_typer(config_app, name="config")
app.command("trust")(trust)
app.command("untrust")(untrust)


def _render_error(err: CoiError) -> None:
    print(f"coi: error: {err}", file=sys.stderr)
    if err.hint:
        print(f"coi: hint: {err.hint}", file=sys.stderr)


def main() -> None:
    """Console-script entry point: run the app and map errors to exit codes.

    Typer (standalone mode) handles usage errors (exit 2) and `typer.Exit`; launcher errors
    arrive here as `CoiError` and become one sentence plus a hint.
    """
    sys.argv[1:] = default_to_shell(sys.argv[1:])  # bare `coi` (or only options) = `coi shell`
    try:
        app()
    except CoiError as err:
        _render_error(err)
        sys.exit(err.exit_code)
    except OSError as exc:
        # E.g. a full disk while writing a log or session data: one sentence, not a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        hint = "free some space and retry" if exc.errno == errno.ENOSPC else None
        _render_error(CoiError(f"{exc.strerror or exc}{where}", hint=hint))
        sys.exit(1)
    except SystemExit as exc:
        # Typer turns a Ctrl-C outside coi's own phases (nothing set up yet) into a silent
        # exit 130; say what happened.
        if exc.code == 130:
            print("coi: interrupted", file=sys.stderr)
        raise
