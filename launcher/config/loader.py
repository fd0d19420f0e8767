"""Merging the configuration layers into one typed `Config`.

Order (later wins): built-in defaults → system file → user files → project file (untrusted) →
``COI_CONFIG`` → the selected profile → ``COI_<SECTION>_<KEY>`` environment → CLI overrides.
The profile comes after the files so ``--profile hardened`` means what it says, and before the
environment and flags so a one-off flag still adjusts it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coi.launcher.config.layers import (
    ConfigProblem,
    ConfigValidationError,
    Layer,
    ProfileDef,
    Setting,
    Source,
    parse_config,
    parse_profile_file,
    read_file,
)
from coi.launcher.config.model import SECTIONS, Config
from coi.launcher.config.mounts import MountSpec, is_inside, validate_mount
from coi.launcher.config.schema import (
    CoerceContext,
    Invalid,
    all_fields,
    coerce_field,
    coerce_from_string,
    suggest,
)
from coi.launcher.config.trust import ConfigWarning, TrustStore, filter_untrusted
from coi.launcher.errors import ConfigError

PROJECT_FILES = (Path(".coi.toml"), Path(".coi") / "config.toml")
# CLI flags that add to what the files say instead of replacing it (--mount, --forward-env, -e).
ADDITIVE_CLI_KEYS = frozenset({"mounts.default", "env.forward", "env.set"})
DEFAULT_SYSTEM_CONFIG = Path("/etc/coi/config.toml")


@dataclass(frozen=True)
class ConfigPaths:
    """Where the layers and the trust store live (derived from the environment, so tests and
    unusual setups can point them elsewhere)."""

    system_file: Path
    user_files: tuple[Path, ...]
    profiles_dir: Path
    trust_store: Path
    home: Path

    @property
    def coi_dirs(self) -> tuple[Path, ...]:
        """Directories with coi's own configuration and state, never mounted into a sandbox."""
        return (*(f.parent for f in self.user_files), self.trust_store.parent)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConfigPaths:
        """Paths for this environment: ``COI_SYSTEM_CONFIG`` (default /etc/coi/config.toml),
        ``HOME`` and ``XDG_CONFIG_HOME``."""
        home = Path(env.get("HOME") or Path.home())
        xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "coi"
        return cls(
            system_file=Path(env.get("COI_SYSTEM_CONFIG") or DEFAULT_SYSTEM_CONFIG),
            # ~/.coi is where code-on-incus kept its config; the XDG file wins over it.
            user_files=(home / ".coi" / "config.toml", xdg / "config.toml"),
            profiles_dir=xdg / "profiles",
            trust_store=xdg / "trusted.toml",
            home=home,
        )


@dataclass(frozen=True)
class LoadedConfig:
    """The merged configuration, where each value came from, and warnings for the user."""

    config: Config
    sources: Mapping[str, Source]
    warnings: tuple[ConfigWarning, ...]
    values: Mapping[str, Any]
    profile: str | None = None
    project_file: Path | None = None


def defaults_bytes() -> bytes:
    """The shipped ``defaults.toml``."""
    return importlib.resources.files("coi.launcher.config").joinpath("defaults.toml").read_bytes()


def _defaults_layer() -> Layer:
    return parse_config(defaults_bytes(), layer="default", path=None, ctx=CoerceContext())


def find_project_file(workspace: Path) -> tuple[Path | None, list[ConfigWarning]]:
    """The workspace's project config file (``.coi.toml`` wins over ``.coi/config.toml``)."""
    found = [workspace / p for p in PROJECT_FILES if (workspace / p).is_file()]
    warnings = [
        ConfigWarning(
            "ignored-file",
            "",
            Source("project", extra),
            f"ignored because {found[0].name} takes precedence",
        )
        for extra in found[1:]
    ]
    return (found[0] if found else None), warnings


def _apply(merged: dict[str, Setting], settings: Mapping[str, Setting]) -> None:
    merged.update(settings)


def _env_layer(env: Mapping[str, str], warnings: list[ConfigWarning]) -> Layer:
    """``COI_<SECTION>_<KEY>`` variables; unknown keys in a known section are warned about
    (not refused: other COI_* variables exist and a typo must not break every command)."""
    layer = Layer("env")
    fields = all_fields()
    problems: list[ConfigProblem] = []
    for name, text in sorted(env.items()):
        if not name.startswith("COI_"):
            continue
        rest = name[4:]
        section = next((s for s in SECTIONS if rest.startswith(s.upper() + "_")), None)
        if section is None:
            continue
        key = f"{section}.{rest[len(section) + 1 :].lower()}"
        source = Source("env", detail=name)
        info = fields.get(key)
        if info is None:
            choices = [f"COI_{k.upper().replace('.', '_')}" for k in fields]
            warnings.append(
                ConfigWarning(
                    "unknown-env", key, source, f"unknown setting, ignored{suggest(name, choices)}"
                )
            )
            continue
        try:
            home = Path(env.get("HOME") or Path.home())
            ctx = CoerceContext(base_dir=Path.cwd(), home=home)
            value = coerce_field(info, coerce_from_string(info, text), ctx)
        except Invalid as err:
            problems.append(ConfigProblem(err.message, key=name))
            continue
        layer.settings[key] = Setting(value, source)
    if problems:
        raise ConfigValidationError(problems, hint="fix or unset the environment variable")
    return layer


def _cli_layer(overrides: Mapping[str, object], merged: Mapping[str, Setting], home: Path) -> Layer:
    """Flag values keyed by dotted config key; None means "flag not given"."""
    layer = Layer("cli")
    fields = all_fields()
    for key, raw in overrides.items():
        if raw is None:
            continue
        info = fields.get(key)
        if info is None:
            raise ConfigError(f'unknown configuration key "{key}"{suggest(key, fields)}')
        value: Any = raw
        if key == "env.set" and isinstance(raw, list | tuple):
            value = _key_values(key, raw)
        elif isinstance(raw, str) and info.hint is not str:
            try:
                value = coerce_from_string(info, raw)
            except Invalid as err:
                raise ConfigError(f"{key}: {err.message}") from None
        try:
            value = coerce_field(info, value, CoerceContext(base_dir=Path.cwd(), home=home))
        except Invalid as err:
            raise ConfigError(f"{key}: {err.message}") from None
        if key in ADDITIVE_CLI_KEYS:
            before = merged[key].value
            if isinstance(before, Mapping):
                value = {**before, **value}
            else:
                value = (*before, *(x for x in value if x not in before))
        layer.settings[key] = Setting(value, Source("cli", detail=key))
    return layer


def _key_values(key: str, items: list[Any] | tuple[Any, ...]) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` (repeated ``-e KEY=VALUE`` flags) as a table."""
    table: dict[str, str] = {}
    for item in items:
        name, sep, val = str(item).partition("=")
        if not sep:
            raise ConfigError(
                f"{key}: {item!r} is not KEY=VALUE", hint="write it like -e NAME=value"
            )
        table[name] = val
    return table


class ProfileCycleError(ConfigError):
    """Profiles inherit from each other in a loop."""


def profile_chain(profiles: Mapping[str, ProfileDef], name: str) -> list[ProfileDef]:
    """The profiles `name` is built from, base first; cycles and unknown names are errors."""
    chain: list[ProfileDef] = []
    seen: list[str] = []
    current: str | None = name
    while current is not None:
        if current in seen:
            cycle = " -> ".join([*seen[seen.index(current) :], current])
            raise ProfileCycleError(
                f"profile inheritance cycle: {cycle}",
                hint="remove one of the `inherits` settings",
            )
        seen.append(current)
        profile = profiles.get(current)
        if profile is None:
            what = f'profile "{current}"' + (
                f' (inherited by "{seen[-2]}")' if len(seen) > 1 else ""
            )
            raise ConfigError(
                f"{what} does not exist{suggest(current, profiles)}",
                hint="known profiles: " + ", ".join(sorted(profiles)),
            )
        chain.append(profile)
        current = profile.inherits
    return list(reversed(chain))


def _build(merged: Mapping[str, Setting]) -> Config:
    fields = all_fields()
    missing = [k for k in fields if k not in merged]
    if missing:  # defaults.toml must cover every key; a gap is a packaging bug
        raise ConfigError(f"the built-in defaults lack {', '.join(missing)}")
    sections = {
        section: cls(
            **{f.name: merged[f"{section}.{f.name}"].value for f in dataclasses.fields(cls)}
        )
        for section, cls in SECTIONS.items()
    }
    return Config(**sections)


def _pin_untrusted_mounts(settings: dict[str, Setting], pinned: set[MountSpec]) -> None:
    """Replace the host paths of untrusted mounts (already checked to lie in the workspace) by
    their resolved form and remember them, so `_resolve_mounts` can re-check them."""
    setting = settings.get("mounts.default")
    if setting is None:
        return
    specs = tuple(
        dataclasses.replace(m, host=Path(os.path.realpath(m.host))) for m in setting.value
    )
    pinned.update(specs)
    settings["mounts.default"] = Setting(specs, setting.source)


def _resolve_mounts(
    merged: dict[str, Setting], paths: ConfigPaths, workspace: Path, pinned: set[MountSpec]
) -> None:
    setting = merged["mounts.default"]
    where = setting.source.location() or setting.source.layer
    resolved: list[MountSpec] = []
    for spec in setting.value:
        try:
            checked = validate_mount(spec, home=paths.home, protected=paths.coi_dirs)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}", hint=err.hint) from None
        # A symlink swapped in the workspace since the trust check must not move the mount out.
        if spec in pinned and not is_inside(checked.host, workspace):
            raise ConfigError(
                f"{where}: mount source {str(spec.host)!r} changed while the configuration was read"
            )
        resolved.append(checked)
    merged["mounts.default"] = Setting(tuple(resolved), setting.source)


def _project_layer(
    project_file: Path,
    workspace: Path,
    paths: ConfigPaths,
    merged: Mapping[str, Setting],
    profiles: Mapping[str, ProfileDef],
    pinned: set[MountSpec],
    warnings: list[ConfigWarning],
) -> Layer:
    """Read the project file; unless it is trusted, drop what widens `merged` (warning)."""
    ctx = CoerceContext(base_dir=workspace, home=paths.home)
    layer = parse_config(
        read_file(project_file), layer="project", path=project_file, ctx=ctx, trusted=False
    )
    if TrustStore(paths.trust_store).is_trusted(project_file, layer.sha256 or ""):
        layer.profiles = {
            n: dataclasses.replace(p, trusted=True) for n, p in layer.profiles.items()
        }
        return layer
    layer.settings, dropped = filter_untrusted(
        layer.settings, merged, workspace, what=f"project file {project_file.name}"
    )
    warnings += dropped
    _pin_untrusted_mounts(layer.settings, pinned)
    # Redefining a profile the user has (e.g. "hardened") would silently drop its narrowing
    # settings, so an untrusted file may only add new profile names.
    for name in [n for n in layer.profiles if n in profiles]:
        shadow = layer.profiles.pop(name)
        warnings.append(
            ConfigWarning(
                "untrusted",
                f"profiles.{name}",
                shadow.source,
                f"ignored: the untrusted project file may not redefine the existing "
                f'profile "{name}"; run `coi trust` to allow it',
            )
        )
    return layer


def _apply_profile(
    name: str,
    profiles: Mapping[str, ProfileDef],
    workspace: Path,
    merged: dict[str, Setting],
    pinned: set[MountSpec],
    warnings: list[ConfigWarning],
) -> None:
    """Apply profile `name` and its ancestors (base first) onto `merged`."""
    for definition in profile_chain(profiles, name):
        label = f"profile {definition.name}"
        settings = {
            k: Setting(s.value, dataclasses.replace(s.source, layer=label))
            for k, s in definition.settings.items()
        }
        if not definition.trusted:
            settings, dropped = filter_untrusted(
                settings, merged, workspace, what=f'profile "{definition.name}" of the project file'
            )
            warnings += dropped
            _pin_untrusted_mounts(settings, pinned)
        _apply(merged, settings)


def load_config(
    workspace: Path,
    *,
    profile: str | None,
    cli_overrides: Mapping[str, object],
    env: Mapping[str, str] | None = None,
    paths: ConfigPaths | None = None,
) -> LoadedConfig:
    """Merge every layer for `workspace` into a validated `LoadedConfig`.

    `cli_overrides` maps dotted keys (``"network.mode"``, ``"limits.memory"``) to flag values;
    None values are ignored, strings are parsed like environment variables, and
    ``mounts.default``/``env.forward``/``env.set`` add to the files' values. `env` defaults to
    ``os.environ``; `paths` defaults to `ConfigPaths.from_env(env)`. Raises `ConfigError`.
    """
    env = os.environ if env is None else env
    paths = paths or ConfigPaths.from_env(env)
    workspace = Path(os.path.realpath(workspace))
    warnings: list[ConfigWarning] = []
    merged: dict[str, Setting] = {}
    profiles: dict[str, ProfileDef] = {}
    pinned: set[MountSpec] = set()  # untrusted mounts, resolved when they were checked

    def add(layer: Layer) -> None:
        _apply(merged, layer.settings)
        profiles.update(layer.profiles)

    add(_defaults_layer())
    for name, file in [("system", paths.system_file), *(("user", f) for f in paths.user_files)]:
        if file.is_file():
            base = CoerceContext(base_dir=file.parent, home=paths.home)
            add(parse_config(read_file(file), layer=name, path=file, ctx=base))
    if paths.profiles_dir.is_dir():
        for file in sorted(paths.profiles_dir.glob("*.toml")):
            ctx = CoerceContext(base_dir=file.parent, home=paths.home)
            profiles[file.stem] = parse_profile_file(
                read_file(file), name=file.stem, path=file, ctx=ctx
            )

    project_file, project_warnings = find_project_file(workspace)
    warnings += project_warnings
    if project_file is not None:
        add(_project_layer(project_file, workspace, paths, merged, profiles, pinned, warnings))

    coi_config = env.get("COI_CONFIG")
    if coi_config:
        file = Path(coi_config)
        if not file.is_file():
            raise ConfigError(f"COI_CONFIG points to {coi_config!r}, which is not a file")
        ctx = CoerceContext(base_dir=file.parent, home=paths.home)
        add(parse_config(read_file(file), layer="COI_CONFIG", path=file, ctx=ctx))

    if profile:
        _apply_profile(profile, profiles, workspace, merged, pinned, warnings)

    _apply(merged, _env_layer(env, warnings).settings)
    _apply(merged, _cli_layer(cli_overrides, merged, paths.home).settings)
    _resolve_mounts(merged, paths, workspace, pinned)
    return LoadedConfig(
        config=_build(merged),
        sources={k: s.source for k, s in merged.items()},
        warnings=tuple(warnings),
        values={k: s.value for k, s in merged.items()},
        profile=profile,
        project_file=project_file,
    )


def load_defaults() -> LoadedConfig:
    """Only the built-in defaults (for ``coi config show --defaults``)."""
    layer = _defaults_layer()
    return LoadedConfig(
        config=_build(layer.settings),
        sources={k: s.source for k, s in layer.settings.items()},
        warnings=(),
        values={k: s.value for k, s in layer.settings.items()},
    )


def builtin_profiles() -> Mapping[str, ProfileDef]:
    """The profiles shipped in ``defaults.toml`` (e.g. ``hardened``)."""
    profiles: Mapping[str, ProfileDef] = _defaults_layer().profiles
    return profiles


def validate_file(path: Path, *, paths: ConfigPaths | None = None) -> list[ConfigProblem]:
    """Every problem in one configuration file (empty when it is valid).

    A file under a ``profiles`` directory is read as a profile file. Mounts are checked too
    (their host paths must exist), since a mount that `load_config` would refuse is a problem.
    `paths` (default: from ``os.environ``) gives the home and coi directories for that check.
    """
    paths = paths or ConfigPaths.from_env(os.environ)
    home = paths.home
    try:
        data = read_file(path)
        ctx = CoerceContext(base_dir=path.parent, home=home)
        if path.parent.name == "profiles":
            settings = dict(parse_profile_file(data, name=path.stem, path=path, ctx=ctx).settings)
            profiles: dict[str, ProfileDef] = {}
        else:
            layer = parse_config(data, layer="file", path=path, ctx=ctx)
            settings, profiles = layer.settings, layer.profiles
    except ConfigValidationError as err:
        return list(err.problems)
    except ConfigError as err:
        return [ConfigProblem(str(err), path=path)]
    problems: list[ConfigProblem] = []
    all_settings = [settings, *(p.settings for p in profiles.values())]
    for group in all_settings:
        mounts = group.get("mounts.default")
        if mounts is None:
            continue
        for spec in mounts.value:
            try:
                validate_mount(spec, home=home, protected=paths.coi_dirs)
            except ConfigError as err:
                problems.append(
                    ConfigProblem(
                        str(err), path=path, line=mounts.source.line, key="mounts.default"
                    )
                )
    # Only cycles are checked: an inherited profile may live in another layer or file.
    known = {**builtin_profiles(), **profiles}
    for name in profiles:
        try:
            profile_chain(known, name)
        except ProfileCycleError as err:
            problems.append(
                ConfigProblem(
                    str(err), path=path, line=profiles[name].source.line, key=f"profiles.{name}"
                )
            )
        except ConfigError:
            continue  # inherits a profile defined in another file
    return problems
