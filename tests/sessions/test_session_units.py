"""Unit tests of the session pieces that need no Incus: tool specs, the session store, the
context file block, the CLI's optional-value flags and the bare-`coi` default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from coi.launcher.cli.session_cmds import OptionalValueCommand, default_to_shell
from coi.launcher.errors import ConfigError, SessionError, UsageError
from coi.launcher.session.context import SandboxContext, _with_block
from coi.launcher.session.store import SessionMeta, SessionStore, check_session_id
from coi.launcher.session.tools import BUILTIN_TOOLS, known_tools, parse_user_spec, resolve_tool


def test_builtin_commands_per_permission_mode() -> None:
    claude = BUILTIN_TOOLS["claude"]
    assert claude.command(permission_mode="bypass") == ["claude", "--dangerously-skip-permissions"]
    assert claude.command(permission_mode="interactive") == ["claude"]
    assert claude.command(permission_mode="bypass", model="opus", resume=True) == [
        "claude", "--dangerously-skip-permissions", "--model", "opus", "--continue",
    ]  # fmt: skip
    assert BUILTIN_TOOLS["codex"].command(permission_mode="interactive", resume=True) == [
        "codex", "resume", "--last",
    ]  # fmt: skip
    assert BUILTIN_TOOLS["aider"].command(permission_mode="bypass")[-2:] == [
        "--read", "/home/code/SANDBOX_CONTEXT.md",
    ]  # fmt: skip
    assert set(BUILTIN_TOOLS) == {"claude", "opencode", "codex", "aider", "shell"}


def _env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def _spec_file(tmp_path: Path, name: str, text: str) -> Path:
    directory = tmp_path / "xdg" / "coi" / "tools"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def test_user_spec_adds_and_overrides(tmp_path: Path) -> None:
    _spec_file(tmp_path, "mine", 'binary = "mine-cli"\nbypass_args = ["--go"]\nenv = {A = "1"}\n')
    _spec_file(tmp_path, "shell", 'binary = "zsh"\n')
    tools = known_tools(_env(tmp_path))
    assert tools["mine"].command(permission_mode="bypass") == ["mine-cli", "--go"]
    assert tools["mine"].env == {"A": "1"}
    assert tools["shell"].binary == "zsh"
    assert resolve_tool("mine", _env(tmp_path)).name == "mine"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('binary = "x"\nbinry = "y"\n', "unknown key 'binry'"),
        ("args = []\n", "binary must be set"),
        ('binary = "x"\nargs = "--a"\n', "args must be a list of strings"),
        ('binary = "x"\nstate_paths = ["../escape"]\n', "relative to the home directory"),
        ('binary = "x"\ncredentials = ["/etc/shadow"]\n', "relative to the home directory"),
        ('binary = "x"\ncontext_mode = "magic"\n', "context_mode must be"),
        ('binary = "x"\nenv = {A = 1}\n', "env must be a table of strings"),
        ("binary = \n", "cannot read tool spec"),
    ],
)
def test_user_spec_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _spec_file(tmp_path, "bad", text)
    with pytest.raises(ConfigError) as err:
        parse_user_spec(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_tool_lists_known(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="known tools: aider, claude, codex, opencode, shell"):
        resolve_tool("nope", _env(tmp_path))


def _meta(store: SessionStore, sid: str, workspace: str, tool: str = "claude") -> SessionMeta:
    meta = SessionMeta(
        id=sid, tool=tool, workspace=workspace, slot=1, container="c", image="coi",
        persistent=False, started_at=sid, saved_at=sid,
    )  # fmt: skip
    store.write_meta(meta)
    return meta


def test_store_resume_is_workspace_and_tool_scoped(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    _meta(store, "2026-01", "/ws/a")
    latest = _meta(store, "2026-02", "/ws/a")
    _meta(store, "2026-03", "/ws/b")
    _meta(store, "2026-04", "/ws/a", tool="codex")
    assert store.resolve_resume(Path("/ws/a"), "claude", "") == latest
    assert store.resolve_resume(Path("/ws/a"), "claude", "2026-01").id == "2026-01"
    with pytest.raises(SessionError, match="belongs to workspace /ws/b"):
        store.resolve_resume(Path("/ws/a"), "claude", "2026-03")
    with pytest.raises(SessionError, match="is a codex session"):
        store.resolve_resume(Path("/ws/a"), "claude", "2026-04")
    with pytest.raises(SessionError, match="no saved session 'nope'") as err:
        store.resolve_resume(Path("/ws/a"), "claude", "nope")
    assert err.value.hint is not None and "2026-01" in err.value.hint
    with pytest.raises(SessionError, match="no saved opencode session"):
        store.resolve_resume(Path("/ws/a"), "opencode", "")


def test_store_files_are_private_and_state_roundtrips(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    meta = _meta(store, "s1", "/ws")
    store.write_state(meta, b"archive")
    directory = store.directory("claude", "s1")
    assert (directory / "state.tar").stat().st_mode & 0o777 == 0o600
    assert json.loads((directory / "metadata.json").read_text())["workspace"] == "/ws"
    assert store.read_state(meta) == b"archive"
    store.remove(meta)
    assert list(store.sessions()) == []


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "x" * 65])
def test_session_ids_cannot_escape(bad: str) -> None:
    with pytest.raises(UsageError):
        check_session_id(bad)


def test_context_block_is_replaced_not_duplicated() -> None:
    once = _with_block("# my notes\n", "first")
    twice = _with_block(once, "second")
    assert twice.startswith("# my notes\n")
    assert "second" in twice and "first" not in twice
    assert twice.count("coi:sandbox-context begin") == 1
    assert _with_block("", "x").startswith("<!-- coi:sandbox-context begin -->")


def test_context_text_tells_the_situation() -> None:
    text = SandboxContext(
        container="coi-1", workspace="/home/u/p", slot=2, tool="claude", persistent=False,
        network_mode="allowlist", limits={"memory": "2GiB", "cpu": ""},
        protected_paths=(".git/hooks",), ssh_agent=True,
    ).render()  # fmt: skip
    for needle in (
        "/home/u/p",
        "/workspace",
        "ephemeral",
        "allowlist",
        "memory 2GiB",
        ".git/hooks",
    ):
        assert needle in text
    assert "cpu" not in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], None),
        (["--resume"], ""),
        (["--resume", "--slot", "2"], ""),
        (["--continue"], ""),
        (["--resume=20260101-000000-abcdef"], "20260101-000000-abcdef"),
    ],
)
def test_resume_takes_an_optional_value(args: list[str], expected: str | None) -> None:
    seen: list[str | None] = []
    app = typer.Typer()

    @app.command(cls=OptionalValueCommand)
    def shell(
        resume: Annotated[str | None, typer.Option("--resume", "--continue")] = None,
        slot: Annotated[int, typer.Option("--slot")] = 0,
    ) -> None:
        seen.append(resume)

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen == [expected]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["shell"]),
        (["-w", "x"], ["shell", "-w", "x"]),
        (["--help"], ["--help"]),
        (["list"], ["list"]),
    ],
)
def test_bare_coi_means_shell(argv: list[str], expected: list[str]) -> None:
    assert default_to_shell(argv) == expected


def test_raw_mode_restores_the_terminal_on_error() -> None:
    import os
    import pty
    import termios

    from coi.launcher.terminal import raw_mode, terminal_size

    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError), raw_mode(slave):
            inside = termios.tcgetattr(slave)
            assert not inside[3] & termios.ICANON and not inside[3] & termios.ECHO
            assert not inside[3] & termios.ISIG  # Ctrl-C travels as a byte
            raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before
        assert terminal_size(slave) >= (1, 1)
    finally:
        os.close(master)
        os.close(slave)


def test_last_screen_of_a_failed_tool_carries_no_escape_sequences(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from coi.launcher.session.shell import _show_last_screen

    class ScreenFile:  # the IncusClient seam: only pull_file is used
        def pull_file(self, name: str, path: str) -> bytes:
            assert path == "/tmp/coi-tool-screen"
            return b"error: no network\n\x1b]52;c;cGF5bG9hZA==\x07\x1b[2Jgone\n\n"

    _show_last_screen(ScreenFile(), "c", "claude", 1)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "claude exited with code 1" in err
    assert "  | error: no network" in err
    assert "\x1b" not in err and "\x07" not in err
