"""Property: whatever the layout of a file, a wrong value is reported on its own line."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from coi.launcher.config import load_defaults, validate_file
from coi.launcher.config.render import to_plain, toml_value
from coi.launcher.config.schema import all_fields

KEYS = sorted(all_fields())
DEFAULTS = {k: to_plain(v) for k, v in load_defaults().values.items()}
FILLER = st.sampled_from(["", "# a comment", "   ", "# [network]", "#mode = 1"])


def _wrong_value(value: object) -> object:
    """A value of another TOML type than `value` (never valid for the key)."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, str):
        return 7
    return True


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, int, str]:
    chosen = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=12, unique=True))
    bad = draw(st.sampled_from(chosen))
    dotted = draw(st.booleans())  # write `section.key = v` at top level instead of tables
    lines: list[str] = []
    bad_line = -1
    by_section: dict[str, list[str]] = {}
    for key in chosen:
        by_section.setdefault(key.split(".")[0], []).append(key)
    for section, keys in by_section.items():
        if not dotted:
            lines.append(f"[{section}]")
        for key in keys:
            lines += draw(st.lists(FILLER, max_size=2))
            value = _wrong_value(DEFAULTS[key]) if key == bad else DEFAULTS[key]
            name = key if dotted else key.split(".", 1)[1]
            lines.append(f"{name} = {toml_value(value)}")
            if key == bad:
                bad_line = len(lines)
    return "\n".join(lines) + "\n", bad_line, bad


@settings(max_examples=150, deadline=None)
@given(documents())
def test_a_wrong_value_is_reported_on_its_line(document: tuple[str, int, str]) -> None:
    text, line, key = document
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(text)
        [problem] = validate_file(path)
    assert (problem.line, problem.key) == (line, key), text
