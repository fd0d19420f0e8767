"""coi.launcher.config: layered, validated configuration, profiles, trust, mounts and limits.

The launcher calls `load_config(workspace, profile=..., cli_overrides=...)` and uses the
returned `LoadedConfig.config` (typed), `.sources` (where each value came from) and
`.warnings` (to print). Errors are `ConfigError` (from `coi.launcher.errors`).
"""

from coi.launcher.config.flags import flag_overrides
from coi.launcher.config.layers import ConfigProblem, ConfigValidationError, Source
from coi.launcher.config.limits import IncusLimits, ResourceLimits, incus_limits, resource_limits
from coi.launcher.config.loader import (
    ConfigPaths,
    LoadedConfig,
    find_project_file,
    load_config,
    load_defaults,
    validate_file,
)
from coi.launcher.config.model import Config
from coi.launcher.config.mounts import MountSpec, parse_mount_spec, validate_mount
from coi.launcher.config.schema import json_schema
from coi.launcher.config.trust import ConfigWarning, TrustStore
from coi.launcher.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "ConfigPaths",
    "ConfigProblem",
    "ConfigValidationError",
    "ConfigWarning",
    "IncusLimits",
    "LoadedConfig",
    "MountSpec",
    "ResourceLimits",
    "Source",
    "TrustStore",
    "find_project_file",
    "flag_overrides",
    "incus_limits",
    "json_schema",
    "load_config",
    "load_defaults",
    "parse_mount_spec",
    "resource_limits",
    "validate_file",
    "validate_mount",
]
