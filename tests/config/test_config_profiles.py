"""Profiles: built-in hardened, [profiles.NAME] tables, profile files, inherits and cycles."""

from __future__ import annotations

import pytest
from config_fixtures import Layers

from coi.launcher.config import ConfigError, validate_file


def test_hardened_profile_overrides_a_permissive_user_config(layers: Layers) -> None:
    layers.write(
        "user",
        """
        [network]
        mode = "open"
        [ssh]
        forward_agent = true
        [defaults]
        persistent = true
        [monitoring]
        enabled = false
        auto_kill_on_critical = false
        """,
    )
    cfg = layers.load(profile="hardened").config
    assert cfg.network.mode == "allowlist"
    assert cfg.ssh.forward_agent is False
    assert cfg.defaults.persistent is False
    assert (cfg.monitoring.enabled, cfg.monitoring.auto_pause_on_high) == (True, True)
    assert cfg.monitoring.auto_kill_on_critical is True
    # Without the profile the user's settings stand.
    assert layers.load().config.network.mode == "open"


def test_flags_still_adjust_a_profile(layers: Layers) -> None:
    loaded = layers.load(profile="hardened", cli={"limits.memory": "1GiB"})
    assert loaded.config.limits.memory == "1GiB"
    assert loaded.config.network.mode == "allowlist"
    assert loaded.sources["network.mode"].layer == "profile hardened"


def test_inherits_chain_applies_base_first(layers: Layers) -> None:
    path = layers.write(
        "user",
        """
        [profiles.base]
        [profiles.base.limits]
        memory = "1GiB"
        processes = 100
        [profiles.base.defaults]
        image = "base-image"

        [profiles.child]
        inherits = "base"
        [profiles.child.defaults]
        image = "child-image"
        """,
    )
    loaded = layers.load(profile="child")
    cfg = loaded.config
    assert (cfg.limits.memory, cfg.limits.processes, cfg.defaults.image) == (
        "1GiB",
        100,
        "child-image",
    )
    assert loaded.sources["limits.memory"].layer == "profile base"
    assert (loaded.sources["limits.memory"].path, loaded.sources["limits.memory"].line) == (path, 3)
    assert loaded.sources["defaults.image"].layer == "profile child"


def test_profile_file_can_inherit_the_builtin(layers: Layers) -> None:
    layers.write(
        "profile:ci",
        """
        inherits = "hardened"
        description = "for CI"
        [limits]
        duration = "30m"
        """,
    )
    cfg = layers.load(profile="ci").config
    assert cfg.limits.duration == "30m"
    assert cfg.network.mode == "allowlist"


@pytest.mark.parametrize(
    ("text", "cycle"),
    [
        ('[profiles.a]\ninherits = "b"\n[profiles.b]\ninherits = "a"\n', "a -> b -> a"),
        ('[profiles.a]\ninherits = "a"\n', "a -> a"),
        (
            '[profiles.a]\ninherits = "b"\n[profiles.b]\ninherits = "c"\n'
            '[profiles.c]\ninherits = "b"\n',
            "b -> c -> b",
        ),
    ],
)
def test_inheritance_cycles_are_refused_with_the_cycle_named(
    layers: Layers, text: str, cycle: str
) -> None:
    path = layers.write("user", text)
    with pytest.raises(ConfigError, match=f"profile inheritance cycle: {cycle}$"):
        layers.load(profile="a")
    [problem] = [p for p in validate_file(path) if p.key == "profiles.a"]
    assert "cycle" in problem.message


def test_unknown_profile_suggests(layers: Layers) -> None:
    with pytest.raises(ConfigError, match='profile "hardend" does not exist; did you mean'):
        layers.load(profile="hardend")


def test_unknown_inherited_profile_is_named(layers: Layers) -> None:
    layers.write("user", '[profiles.a]\ninherits = "nope"\n')
    with pytest.raises(ConfigError, match='profile "nope" \\(inherited by "a"\\) does not exist'):
        layers.load(profile="a")


def test_later_layer_redefines_a_profile_wholesale(layers: Layers) -> None:
    layers.write("system", '[profiles.p.limits]\nmemory = "1GiB"\nprocesses = 5\n')
    layers.write("user", '[profiles.p.limits]\nmemory = "2GiB"\n')
    cfg = layers.load(profile="p").config
    assert (cfg.limits.memory, cfg.limits.processes) == ("2GiB", 0)


def test_profile_values_are_validated_with_lines(layers: Layers) -> None:
    path = layers.write("user", '[profiles.p]\n[profiles.p.network]\nmode = "everything"\n')
    with pytest.raises(ConfigError) as info:
        layers.load()
    assert str(info.value).startswith(f"{path}:3: profiles.p.network.mode: ")


def test_validate_file_accepts_a_parent_profile_defined_elsewhere(layers: Layers) -> None:
    path = layers.write("user", '[profiles.child]\ninherits = "defined-in-system"\n')
    assert validate_file(path) == []
