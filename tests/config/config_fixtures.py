"""The `Layers` helper shared by the configuration tests (imported by conftest)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from coi.launcher.config import LoadedConfig, load_config


@dataclass
class Layers:
    """A fake host: home, system config, workspace and the environment pointing at them."""

    root: Path
    home: Path
    workspace: Path
    system: Path
    env: dict[str, str] = field(default_factory=dict)

    def path(self, layer: str) -> Path:
        """Where a layer's file lives."""
        return {
            "system": self.system,
            "user_legacy": self.home / ".coi" / "config.toml",
            "user": self.home / ".config" / "coi" / "config.toml",
            "project": self.workspace / ".coi.toml",
            "project_dir": self.workspace / ".coi" / "config.toml",
            "coi_config": self.root / "extra" / "coi-config.toml",
        }.get(
            layer
        ) or self.home / ".config" / "coi" / "profiles" / f"{layer.split(':', 1)[1]}.toml"

    def write(self, layer: str, text: str) -> Path:
        """Write a layer's file (dedented); COI_CONFIG is pointed at it for that layer."""
        path = self.path(layer)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        if layer == "coi_config":
            self.env["COI_CONFIG"] = str(path)
        return path

    def load(
        self, profile: str | None = None, cli: Mapping[str, object] | None = None, **env: str
    ) -> LoadedConfig:
        """`load_config` on the workspace with this environment (plus `env`)."""
        return load_config(
            self.workspace, profile=profile, cli_overrides=cli or {}, env={**self.env, **env}
        )
