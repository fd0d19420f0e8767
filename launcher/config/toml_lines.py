"""Find the line on which a TOML key is written, for `file:line: key: problem` messages.

`tomllib` reports lines only for syntax errors, so for a value of the wrong type we look the key
up in the text ourselves. This is a line scanner, not a second parser: it understands table
headers, arrays of tables, dotted and quoted keys and skips multi-line strings, which is what
config files use. A key it cannot place falls back to its nearest enclosing table.
"""

from __future__ import annotations

import re

KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SYNTAX_POS = re.compile(r"\(at line (\d+), column (\d+)\)")


def _split_key(text: str) -> tuple[str, ...] | None:
    """Split a dotted TOML key (``a."b.c".d``) into its parts; None if it is not a key."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] in "\"'":
            quote = text[i]
            end = text.find(quote, i + 1)
            if end < 0:
                return None
            parts.append(text[i + 1 : end])
            i = end + 1
        else:
            match = _BARE_KEY.match(text, i)
            if not match:
                return None
            parts.append(match.group())
            i = match.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n:
            if text[i] != ".":
                return None
            i += 1
    return tuple(parts) if parts else None


def _key_and_rest(line: str) -> tuple[str, str] | None:
    """Split ``key = value`` at the first ``=`` outside quotes."""
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "=":
            return line[:i], line[i + 1 :]
        elif ch in "[{,#":
            return None
    return None


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key path (tables, keys, array-of-table entries by index) to its 1-based line."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    aot_index: dict[KeyPath, int] = {}
    in_multiline: str | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_multiline:
            if raw.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            name = _split_key(line[2 : line.find("]]")]) if "]]" in line else None
            if name is not None:
                index = aot_index.get(name, -1) + 1
                aot_index[name] = index
                table = (*name, index)
                lines.setdefault(name, lineno)
                lines[table] = lineno
            continue
        if line.startswith("["):
            name = _split_key(line[1 : line.find("]")]) if "]" in line else None
            if name is not None:
                table = name
                lines.setdefault(name, lineno)
            continue
        split = _key_and_rest(line)
        if split is None:
            continue
        key = _split_key(split[0])
        if key is None:
            continue
        for depth in range(1, len(key) + 1):
            lines.setdefault((*table, *key[:depth]), lineno)
        lines[(*table, *key)] = lineno
        for quote in ('"""', "'''"):
            if split[1].count(quote) % 2 == 1:
                in_multiline = quote
    return lines


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of `path`, or of its nearest enclosing key or table that has one."""
    for end in range(len(path), 0, -1):
        found = lines.get(path[:end])
        if found is not None:
            return found
    return None


def syntax_error_position(message: str) -> tuple[int | None, int | None]:
    """Line and column from a `tomllib.TOMLDecodeError` message (Python 3.11 has no attributes)."""
    match = _SYNTAX_POS.search(message)
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2))


def format_path(path: KeyPath) -> str:
    """Render a key path the way users write it: ``network.hosts[1].ports``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
