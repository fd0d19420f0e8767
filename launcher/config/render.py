"""Rendering a loaded configuration for `coi config show` (TOML-like text or stable JSON)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from coi.launcher.config.loader import LoadedConfig
from coi.launcher.config.model import SECTIONS


def to_plain(value: Any) -> Any:
    """A JSON-compatible form of a configuration value (tuples → lists, records → objects)."""
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def toml_value(value: Any) -> str:
    """A TOML literal for a plain value (inline tables and arrays on one line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {value!r}")


def show_text(loaded: LoadedConfig) -> str:
    """``[section]`` blocks of ``key = value  # source`` lines."""
    out: list[str] = []
    if loaded.profile:
        out.append(f"# profile: {loaded.profile}")
    for section in SECTIONS:
        out.append(f"[{section}]")
        keys = [k for k in loaded.values if k.split(".", 1)[0] == section]
        rows = [
            (
                f"{k.split('.', 1)[1]} = {toml_value(to_plain(loaded.values[k]))}",
                str(loaded.sources[k]),
            )
            for k in keys
        ]
        width = max((len(r[0]) for r in rows), default=0)
        out += [f"{text.ljust(width)}  # {source}" for text, source in rows]
        out.append("")
    return "\n".join(out)


def show_json(loaded: LoadedConfig) -> str:
    """``{"profile", "config": {section: {key: value}}, "sources": {"section.key": str},
    "warnings": [{key, source, message}]}``."""
    config: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in loaded.values.items():
        section, name = key.split(".", 1)
        config[section][name] = to_plain(value)
    document = {
        "profile": loaded.profile,
        "project_file": str(loaded.project_file) if loaded.project_file else None,
        "config": config,
        "sources": {k: str(s) for k, s in loaded.sources.items()},
        "warnings": [
            {"key": w.key, "source": str(w.source), "message": w.message} for w in loaded.warnings
        ],
    }
    return json.dumps(document, indent=2, sort_keys=False)
