"""Validation of raw TOML values against the model, and the JSON Schema derived from it.

Both walk the same type hints and field metadata of `coi.launcher.config.model`, so what
`coi config schema` publishes is what the loader enforces (the loader additionally runs the
value checks that JSON Schema cannot express, such as ``"2GiB"`` being a size).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from coi.launcher.config.model import SECTIONS
from coi.launcher.config.mounts import MountSpec, anchor_host_path, check_container_path
from coi.launcher.config.toml_lines import KeyPath
from coi.launcher.errors import ConfigError

# Keys a profile table may hold besides sections.
PROFILE_META_KEYS = ("inherits", "description")


@dataclass(frozen=True)
class FieldInfo:
    """One configuration key: ``section.name``, its type and its checks."""

    section: str
    name: str
    hint: Any
    doc: str
    check: Callable[[Any], object] | None
    bounds: Mapping[str, Any]

    @property
    def key(self) -> str:
        """The dotted key, e.g. ``network.mode``."""
        return f"{self.section}.{self.name}"


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """Resolved type hints of a model dataclass (cached: resolution is slow)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


@functools.cache
def all_fields() -> dict[str, FieldInfo]:
    """Every configuration key, in section order, keyed by dotted name."""
    result: dict[str, FieldInfo] = {}
    for section, cls in SECTIONS.items():
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            info = FieldInfo(
                section=section,
                name=f.name,
                hint=hints[f.name],
                doc=f.metadata.get("doc", ""),
                check=f.metadata.get("check"),
                bounds=f.metadata.get("schema", {}),
            )
            result[info.key] = info
    return result


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the closest choice, or the empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


class Invalid(Exception):
    """A value does not fit its key; `path` is relative to the key being coerced."""

    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class CoerceContext:
    """Where relative host paths in mount entries are anchored."""

    base_dir: Path | None = None
    home: Path | None = None


def _describe(value: object) -> str:
    """``an integer (5)``; long arrays and tables are named without their content."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    name = names.get(type(value))
    if name is None:
        if isinstance(value, dict):
            name = "a table"
        elif isinstance(value, list):
            name = "an array"
        else:
            name = type(value).__name__
    shown = repr(value)
    return f"{name} ({shown})" if len(shown) < 40 else name


def _type_name(hint: Any) -> str:
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint in (str, Path, PurePosixPath):
        return "a string"
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(f'"{a}"' for a in typing.get_args(hint))
    if origin is tuple:
        return "an array"
    return "a table"


def _run_check(check: Callable[[Any], object] | None, value: Any, path: KeyPath) -> None:
    if check is None:
        return
    try:
        check(value)
    except (ValueError, ConfigError) as err:
        raise Invalid(path, str(err)) from None


def coerce(
    hint: Any,
    value: Any,
    *,
    check: Callable[[Any], object] | None = None,
    bounds: Mapping[str, Any] | None = None,
    ctx: CoerceContext | None = None,
    path: KeyPath = (),
) -> Any:
    """Turn a raw TOML value into the model's type for `hint`, or raise `Invalid`."""
    ctx = ctx or CoerceContext()
    origin = typing.get_origin(hint)
    wrong = Invalid(path, f"expected {_type_name(hint)}, got {_describe(value)}")
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong
        bounds = bounds or {}
        if "minimum" in bounds and value < bounds["minimum"]:
            raise Invalid(path, f"{value} is below the minimum {bounds['minimum']}")
        if "maximum" in bounds and value > bounds["maximum"]:
            raise Invalid(path, f"{value} is above the maximum {bounds['maximum']}")
        _run_check(check, value, path)
        return value
    if hint is str:
        if not isinstance(value, str):
            raise wrong
        _run_check(check, value, path)
        return value
    if origin is Literal:
        if value not in typing.get_args(hint):
            if not isinstance(value, str):
                raise wrong
            choices = typing.get_args(hint)
            raise Invalid(path, f'"{value}" is not {_type_name(hint)}{suggest(value, choices)}')
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise wrong
        return anchor_host_path(value, base=ctx.base_dir, home=ctx.home)
    if hint is PurePosixPath:
        if not isinstance(value, str):
            raise wrong
        _run_check(check_container_path, value, path)
        return PurePosixPath(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise wrong
        item_hint = typing.get_args(hint)[0]
        return tuple(
            coerce(item_hint, item, check=check, bounds=bounds, ctx=ctx, path=(*path, i))
            for i, item in enumerate(value)
        )
    if origin in (Mapping, dict, types.MappingProxyType) or hint is Mapping:
        if not isinstance(value, Mapping):
            raise wrong
        out: dict[str, str] = {}
        for k, item in value.items():
            _run_check(check, k, (*path, k))
            if not isinstance(item, str):
                raise Invalid((*path, k), f"expected a string, got {_describe(item)}")
            out[k] = item
        return types.MappingProxyType(out)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _coerce_record(hint, value, ctx, path, wrong)
    raise TypeError(f"no coercion for {hint!r}")  # a model type without support: a bug


def coerce_field(info: FieldInfo, value: Any, ctx: CoerceContext, path: KeyPath = ()) -> Any:
    """`coerce` a raw value for the configuration key `info`."""
    return coerce(info.hint, value, check=info.check, bounds=info.bounds, ctx=ctx, path=path)


def _coerce_record(
    cls: type[Any], value: Any, ctx: CoerceContext, path: KeyPath, wrong: Invalid
) -> Any:
    if isinstance(value, cls):
        return value
    if cls is MountSpec and isinstance(value, str):
        from coi.launcher.config.mounts import parse_mount_spec

        try:
            spec = parse_mount_spec(value, base=ctx.base_dir, home=ctx.home)
        except ConfigError as err:
            raise Invalid(path, str(err)) from None
        return spec
    if not isinstance(value, Mapping):
        raise wrong
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, item in value.items():
        if k not in fields:
            raise Invalid((*path, k), f'unknown key "{k}"{suggest(k, fields)}')
        f = fields[k]
        kwargs[k] = coerce(
            hints[k],
            item,
            check=f.metadata.get("check"),
            bounds=f.metadata.get("schema"),
            ctx=ctx,
            path=(*path, k),
        )
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in kwargs and no_default:
            raise Invalid(path, f'missing required key "{name}"')
    return cls(**kwargs)


def coerce_from_string(info: FieldInfo, text: str) -> Any:
    """Read an environment variable's text as the value of `info` (then `coerce` it).

    Booleans take true/false/1/0/yes/no/on/off; arrays take ``a,b,c`` or a TOML array; tables
    take ``K=V,K=V`` or a TOML inline table.
    """
    hint = info.hint
    origin = typing.get_origin(hint)
    stripped = text.strip()
    if hint is bool:
        lowered = stripped.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise Invalid((), f"{text!r} is not a boolean; use true or false")
    if hint is int:
        try:
            return int(stripped)
        except ValueError:
            raise Invalid((), f"{text!r} is not an integer") from None
    if origin is tuple or origin is Mapping or hint is Mapping:
        if stripped.startswith(("[", "{")):
            try:
                return tomllib.loads(f"v = {stripped}")["v"]
            except tomllib.TOMLDecodeError as err:
                raise Invalid((), f"{text!r} is not a TOML value: {err}") from None
        items = [part.strip() for part in stripped.split(",") if part.strip()]
        if origin is tuple:
            item_hint = typing.get_args(hint)[0]
            if item_hint is int:
                try:
                    return [int(i) for i in items]
                except ValueError:
                    raise Invalid(
                        (), f"{text!r} is not a comma-separated list of integers"
                    ) from None
            return items
        table: dict[str, str] = {}
        for item in items:
            k, sep, val = item.partition("=")
            if not sep:
                raise Invalid((), f"{item!r} is not KEY=VALUE")
            table[k.strip()] = val
        return table
    return text


# --- JSON Schema -------------------------------------------------------------------------


def _json_schema(
    hint: Any, bounds: Mapping[str, Any] | None = None, doc: str = ""
) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    out: dict[str, Any]
    if hint is bool:
        out = {"type": "boolean"}
    elif hint is int:
        out = {"type": "integer", **(bounds or {})}
    elif hint in (str, Path, PurePosixPath):
        out = {"type": "string"}
    elif origin is Literal:
        out = {"type": "string", "enum": list(typing.get_args(hint))}
    elif origin is tuple:
        out = {"type": "array", "items": _json_schema(typing.get_args(hint)[0], bounds)}
    elif origin is Mapping or hint is Mapping:
        out = {"type": "object", "additionalProperties": {"type": "string"}}
    elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = _hints(hint)
        props: dict[str, Any] = {}
        required: list[str] = []
        for f in dataclasses.fields(hint):
            props[f.name] = _json_schema(
                hints[f.name], f.metadata.get("schema"), f.metadata.get("doc", "")
            )
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        out = {
            "type": "object",
            "additionalProperties": False,
            "properties": props,
            "required": required,
        }
        if hint is MountSpec:
            out = {"oneOf": [out, {"type": "string", "pattern": "^[^:]+:[^:]+(:(ro|rw))?$"}]}
    else:
        raise TypeError(f"no schema for {hint!r}")
    if doc:
        out["description"] = doc
    return out


def _sections_schema() -> dict[str, Any]:
    fields = all_fields()
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        sections[section] = {
            "type": "object",
            "description": (cls.__doc__ or "").strip(),
            "additionalProperties": False,
            "properties": {
                info.name: _json_schema(info.hint, info.bounds, info.doc)
                for info in fields.values()
                if info.section == section
            },
        }
    return sections


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a coi configuration file."""
    sections = _sections_schema()
    profile = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "inherits": {
                "type": "string",
                "description": "profile whose settings this one starts from",
            },
            "description": {"type": "string"},
            **{name: {"$ref": f"#/$defs/{name}"} for name in sections},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://coi.invalid/schema/config.json",
        "title": "coi configuration file",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **{name: {"$ref": f"#/$defs/{name}"} for name in sections},
            "profiles": {
                "type": "object",
                "description": "named sets of settings selected with --profile",
                "additionalProperties": {"$ref": "#/$defs/profile"},
            },
        },
        "$defs": {**sections, "profile": profile},
    }
