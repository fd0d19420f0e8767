"""One configuration layer: a TOML file (or the environment, or flags) read into settings.

A layer is a flat mapping of dotted keys (``network.mode``) to `Setting`s, each remembering
its `Source` (``file:line`` for files), plus the profiles the layer defines. Every problem in a
file is collected, so `coi config validate` can list them all at once.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coi.launcher.config.model import SECTIONS
from coi.launcher.config.schema import (
    PROFILE_META_KEYS,
    CoerceContext,
    Invalid,
    all_fields,
    coerce_field,
    suggest,
)
from coi.launcher.config.toml_lines import (
    KeyPath,
    format_path,
    key_lines,
    line_of,
    syntax_error_position,
)
from coi.launcher.config.values import check_name
from coi.launcher.errors import ConfigError


@dataclass(frozen=True)
class Source:
    """Where a setting came from: a layer name plus a file and line, or an env var / flag."""

    layer: str
    path: Path | None = None
    line: int | None = None
    detail: str | None = None

    def location(self) -> str:
        """``file:line``, ``file``, the env var / flag name, or the empty string."""
        if self.path is not None:
            return f"{self.path}:{self.line}" if self.line else str(self.path)
        return self.detail or ""

    def __str__(self) -> str:
        where = self.location()
        return f"{self.layer} ({where})" if where else self.layer


@dataclass(frozen=True)
class Setting:
    """A value and where it came from."""

    value: Any
    source: Source


@dataclass(frozen=True)
class ConfigProblem:
    """One invalid key or syntax error, rendered as ``file:line: key: message``."""

    message: str
    path: Path | None = None
    line: int | None = None
    column: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = str(self.path)
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
        parts = [p for p in (where, self.key) if p]
        return ": ".join([*parts, self.message])


class ConfigValidationError(ConfigError):
    """One or more configuration problems; `problems` lists each with its file and line."""

    def __init__(self, problems: list[ConfigProblem], hint: str | None = None) -> None:
        first = str(problems[0])
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__(
            first + more, hint=hint or "run `coi config validate` to list every problem"
        )
        self.problems = tuple(problems)


@dataclass(frozen=True)
class ProfileDef:
    """A named profile: its own settings and the profile it inherits from."""

    name: str
    inherits: str | None
    settings: Mapping[str, Setting]
    source: Source
    trusted: bool = True


@dataclass
class Layer:
    """The settings and profiles of one layer."""

    name: str
    path: Path | None = None
    settings: dict[str, Setting] = field(default_factory=dict)
    profiles: dict[str, ProfileDef] = field(default_factory=dict)
    sha256: str | None = None


class _Reader:
    """Walks one parsed TOML document, collecting settings and problems."""

    def __init__(self, layer: Layer, text: str, ctx: CoerceContext) -> None:
        self.layer = layer
        self.lines = key_lines(text)
        self.ctx = ctx
        self.problems: list[ConfigProblem] = []

    def problem(self, path: KeyPath, message: str) -> None:
        self.problems.append(
            ConfigProblem(
                message=message,
                path=self.layer.path,
                line=line_of(self.lines, path),
                key=format_path(path) or None,
            )
        )

    def source(self, path: KeyPath) -> Source:
        return Source(self.layer.name, self.layer.path, line_of(self.lines, path))

    def sections(
        self, table: Mapping[str, Any], prefix: KeyPath, *, meta: tuple[str, ...]
    ) -> dict[str, Setting]:
        """Read ``[section] key = value`` tables below `prefix`; `meta` keys are skipped."""
        fields = all_fields()
        settings: dict[str, Setting] = {}
        for name, body in table.items():
            if name in meta:
                continue
            path = (*prefix, name)
            if name not in SECTIONS:
                self.problem(path, f'unknown section "{name}"{suggest(name, [*SECTIONS, *meta])}')
                continue
            if not isinstance(body, dict):
                self.problem(path, f"must be a table ([{name}]), not a single value")
                continue
            for key, raw in body.items():
                info = fields.get(f"{name}.{key}")
                if info is None:
                    keys = [i.name for i in fields.values() if i.section == name]
                    self.problem((*path, key), f'unknown key "{key}"{suggest(key, keys)}')
                    continue
                try:
                    value = coerce_field(info, raw, self.ctx, (*path, key))
                except Invalid as err:
                    self.problem(err.path, err.message)
                    continue
                settings[info.key] = Setting(value, self.source((*path, key)))
        return settings

    def profile(self, name: str, body: Any, prefix: KeyPath, *, trusted: bool) -> ProfileDef | None:
        """Read one profile table (``[profiles.NAME]`` or a whole profile file)."""
        try:
            check_name(name)
        except ValueError as err:
            self.problem(prefix, str(err))
            return None
        if not isinstance(body, dict):
            self.problem(prefix, "a profile must be a table")
            return None
        inherits = body.get("inherits")
        if inherits is not None and not isinstance(inherits, str):
            self.problem((*prefix, "inherits"), "expected a profile name (a string)")
            inherits = None
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            self.problem((*prefix, "description"), "expected a string")
        settings = self.sections(body, prefix, meta=PROFILE_META_KEYS)
        return ProfileDef(name, inherits, settings, self.source(prefix), trusted)


def _decode(data: bytes, path: Path | None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigValidationError(
            [ConfigProblem(f"is not UTF-8 text ({err.reason} at byte {err.start})", path=path)]
        ) from None


def _parse_toml(text: str, path: Path | None) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line, column = syntax_error_position(str(err))
        message = str(err).split(" (at ")[0]
        raise ConfigValidationError(
            [ConfigProblem(f"TOML syntax error: {message}", path=path, line=line, column=column)]
        ) from None


def parse_config(
    data: bytes,
    *,
    layer: str,
    path: Path | None,
    ctx: CoerceContext,
    trusted: bool = True,
) -> Layer:
    """Read a configuration file's bytes (sections plus ``[profiles.NAME]`` tables).

    Raises `ConfigValidationError` listing every problem with its line.
    """
    text = _decode(data, path)
    document = _parse_toml(text, path)
    result = Layer(layer, path, sha256=hashlib.sha256(data).hexdigest())
    reader = _Reader(result, text, ctx)
    result.settings = reader.sections(document, (), meta=("profiles",))
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict):
        reader.problem(("profiles",), "must be a table of profiles ([profiles.NAME])")
        profiles = {}
    for name, body in profiles.items():
        profile = reader.profile(name, body, ("profiles", name), trusted=trusted)
        if profile is not None:
            result.profiles[name] = profile
    if reader.problems:
        raise ConfigValidationError(reader.problems)
    return result


def parse_profile_file(data: bytes, *, name: str, path: Path, ctx: CoerceContext) -> ProfileDef:
    """Read ``profiles/NAME.toml``: sections plus optional ``inherits``/``description``."""
    text = _decode(data, path)
    document = _parse_toml(text, path)
    reader = _Reader(Layer(f"profile {name}", path), text, ctx)
    profile = reader.profile(name, document, (), trusted=True)
    if reader.problems or profile is None:
        raise ConfigValidationError(reader.problems)
    return profile


def read_file(path: Path) -> bytes:
    """Read a configuration file, turning OS errors into one clear `ConfigError`."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(
            f"cannot read configuration file {str(path)!r}: {err.strerror or err}",
            hint="fix its permissions or remove it",
        ) from None
