"""Agent tools described by data: a `ToolSpec` per tool, built in or user-defined.

A spec says which binary runs, with which arguments per permission mode, which files of the
tool's home make up its state (saved on exit, restored on `--resume`), which host credential
files are copied in, and where the tool reads its user-level context file. Adding a tool is
adding a spec: `~/.config/coi/tools/NAME.toml` holds user-defined ones (same keys as the
built-ins below; see `USER_SPEC_KEYS`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from coi.launcher.errors import ConfigError, UsageError

ContextMode = Literal["inline", "import", "none"]
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_REL_RE = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$))[^\0]+$")


@dataclass(frozen=True)
class ToolSpec:
    """How one agent tool runs in the sandbox.

    Paths in `state_paths`, `credentials` and `context_file` are relative to the home
    directory (host home for credentials, /home/code inside). `model_args` may contain
    ``{model}``; it is used only when a model is configured.
    """

    name: str
    binary: str
    args: tuple[str, ...] = ()
    bypass_args: tuple[str, ...] = ()
    interactive_args: tuple[str, ...] = ()
    resume_args: tuple[str, ...] = ()
    model_args: tuple[str, ...] = ()
    state_paths: tuple[str, ...] = ()
    credentials: tuple[str, ...] = ()
    context_file: str = ""
    context_mode: ContextMode = "none"
    context_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def command(self, *, permission_mode: str, model: str = "", resume: bool = False) -> list[str]:
        """The argv that starts the tool."""
        argv = [self.binary, *self.args]
        argv += self.bypass_args if permission_mode == "bypass" else self.interactive_args
        if model and self.model_args:
            argv += [a.replace("{model}", model) for a in self.model_args]
        argv += self.context_args
        if resume:
            argv += self.resume_args
        return argv


BUILTIN_TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            name="claude",
            binary="claude",
            bypass_args=("--dangerously-skip-permissions",),
            resume_args=("--continue",),
            model_args=("--model", "{model}"),
            state_paths=(".claude", ".claude.json"),
            credentials=(".claude/.credentials.json",),
            # Claude Code's user memory supports `@path` imports.
            context_file=".claude/CLAUDE.md",
            context_mode="import",
            description="Claude Code (Anthropic)",
        ),
        ToolSpec(
            name="opencode",
            binary="opencode",
            resume_args=("--continue",),
            model_args=("--model", "{model}"),
            state_paths=(".local/share/opencode", ".config/opencode"),
            credentials=(".local/share/opencode/auth.json",),
            context_file=".config/opencode/AGENTS.md",
            context_mode="inline",
            description="opencode",
        ),
        ToolSpec(
            name="codex",
            binary="codex",
            bypass_args=("--dangerously-bypass-approvals-and-sandbox",),
            resume_args=("resume", "--last"),
            model_args=("--model", "{model}"),
            state_paths=(".codex",),
            credentials=(".codex/auth.json",),
            context_file=".codex/AGENTS.md",
            context_mode="inline",
            description="OpenAI Codex CLI",
        ),
        ToolSpec(
            name="aider",
            binary="aider",
            bypass_args=("--yes-always",),
            resume_args=("--restore-chat-history",),
            model_args=("--model", "{model}"),
            state_paths=(".aider",),
            context_args=("--read", "/home/code/SANDBOX_CONTEXT.md"),
            description="Aider (not in the default image: build a custom one)",
        ),
        ToolSpec(
            name="shell",
            binary="bash",
            args=("-l",),
            state_paths=(".bash_history",),
            description="a login shell, no agent",
        ),
    )
}

# Keys a user spec file may set (everything but `name`, which is the file's stem).
USER_SPEC_KEYS = tuple(f.name for f in fields(ToolSpec) if f.name != "name")


def user_tools_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where user-defined tool specs live: $XDG_CONFIG_HOME/coi/tools (~/.config/coi/tools)."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "coi" / "tools"


def _strings(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: {key} must be a list of strings")
    return tuple(value)


def _relative(path: Path, key: str, value: str) -> str:
    if not _REL_RE.match(value):
        raise ConfigError(
            f"{path}: {key} entry {value!r} must be a path relative to the home directory "
            "without '..'"
        )
    return value


def parse_user_spec(path: Path) -> ToolSpec:
    """Read one user tool spec file; raise `ConfigError` naming the file and key at fault."""
    name = path.stem
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{path}: tool name {name!r} must be lower-case letters, digits, '-' or '_'"
        )
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read tool spec {path}: {exc}") from exc
    unknown = sorted(set(data) - set(USER_SPEC_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}", hint="known keys: " + ", ".join(USER_SPEC_KEYS)
        )
    if not isinstance(data.get("binary"), str) or not data["binary"]:
        raise ConfigError(f"{path}: binary must be set to the tool's command name")
    kwargs: dict[str, Any] = {"name": name}
    for key, value in data.items():
        if key in ("binary", "context_file", "description", "context_mode"):
            if not isinstance(value, str):
                raise ConfigError(f"{path}: {key} must be a string")
            kwargs[key] = value
        elif key == "env":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ConfigError(f"{path}: env must be a table of strings")
            kwargs[key] = dict(value)
        else:
            kwargs[key] = _strings(path, key, value)
    if kwargs.get("context_mode", "none") not in ("inline", "import", "none"):
        raise ConfigError(f"{path}: context_mode must be inline, import or none")
    for key in ("state_paths", "credentials"):
        for item in kwargs.get(key, ()):
            _relative(path, key, item)
    if kwargs.get("context_file"):
        _relative(path, "context_file", kwargs["context_file"])
        kwargs.setdefault("context_mode", "inline")
    return ToolSpec(**kwargs)


def known_tools(env: Mapping[str, str] | None = None) -> dict[str, ToolSpec]:
    """Built-in specs, overridden or extended by the user's spec files."""
    tools = dict(BUILTIN_TOOLS)
    directory = user_tools_dir(env)
    if directory.is_dir():
        for file in sorted(directory.glob("*.toml")):
            spec = parse_user_spec(file)
            tools[spec.name] = spec
    return tools


def resolve_tool(name: str, env: Mapping[str, str] | None = None) -> ToolSpec:
    """The spec called `name`, or a `UsageError` listing the known ones."""
    tools = known_tools(env)
    if name not in tools:
        raise UsageError(
            f"unknown tool {name!r}; known tools: {', '.join(sorted(tools))}",
            hint=f"pick one with --tool, or add a spec file {user_tools_dir(env)}/{name}.toml",
        )
    return tools[name]
