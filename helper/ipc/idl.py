"""Parser of varlink interface descriptions and validator of values against their types.

The grammar is the one of https://varlink.org/Interface-Definition: an `interface` line, then
`type`, `method` and `error` members; types are `bool`, `int`, `float`, `string`, `object`,
named types, anonymous structs `(a: T, ...)`, enums `(a, b)`, maybes `?T`, arrays `[]T` and
maps `[string]T`. Validation is strict on purpose: unknown fields, wrong types, over-long
strings and over-large containers are errors, never silently accepted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from coi.helper.ipc.errors import InterfaceSyntaxError, ValidationError

INTERFACE_NAME = re.compile(r"^[A-Za-z]([-]*[A-Za-z0-9])*(\.[A-Za-z0-9]([-]*[A-Za-z0-9])*)+$")
MEMBER_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
FIELD_NAME = re.compile(r"^[A-Za-z]([_]?[A-Za-z0-9])*$")

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Bounds:
    """Size limits applied while validating values (strings, arrays, maps)."""

    max_string: int = 4096
    max_items: int = 1024


# ---------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class Primitive:
    """`bool`, `int`, `float`, `string` or `object`."""

    kind: str


@dataclass(frozen=True)
class Named:
    """A reference to a `type` member of the interface."""

    name: str


@dataclass(frozen=True)
class Field:
    """One field of a struct."""

    name: str
    type: VType
    doc: str = ""


@dataclass(frozen=True)
class Struct:
    """An anonymous struct `(a: T, b: U)`."""

    fields: tuple[Field, ...]

    def names(self) -> list[str]:
        """The field names, in declaration order."""
        return [f.name for f in self.fields]


@dataclass(frozen=True)
class Enum:
    """An enum `(a, b, c)`; its wire value is the member name as a string."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class Maybe:
    """`?T`: the value may be missing or null."""

    inner: VType


@dataclass(frozen=True)
class Array:
    """`[]T`."""

    inner: VType


@dataclass(frozen=True)
class Map:
    """`[string]T` (a set when T is the empty struct)."""

    inner: VType


VType = Primitive | Named | Struct | Enum | Maybe | Array | Map


@dataclass(frozen=True)
class Method:
    """A `method` member: its input and output structs."""

    name: str
    input: Struct
    output: Struct
    doc: str = ""


@dataclass(frozen=True)
class ErrorDef:
    """An `error` member and its parameters."""

    name: str
    parameters: Struct
    doc: str = ""


@dataclass
class Interface:
    """A parsed interface description; `text` is the original description."""

    name: str
    text: str
    doc: str = ""
    types: dict[str, Struct | Enum] = field(default_factory=dict)
    methods: dict[str, Method] = field(default_factory=dict)
    errors: dict[str, ErrorDef] = field(default_factory=dict)

    def method(self, name: str) -> Method:
        """The method `name`; KeyError if the interface has none of that name."""
        return self.methods[name]


# -------------------------------------------------------------------------------- parsing
_TOKEN = re.compile(
    r"""
    (?P<comment>\#[^\n]*)
  | (?P<ws>[ \t\r\n]+)
  | (?P<arrow>->)
  | (?P<map>\[string\])
  | (?P<array>\[\])
  | (?P<punct>[(),:?])
  | (?P<word>[A-Za-z0-9_.\-]+)
    """,
    re.VERBOSE,
)


@dataclass
class _Tok:
    kind: str
    text: str
    line: int
    doc: str


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, line = 0, 1
    pending_doc: list[str] = []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise InterfaceSyntaxError(f"line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        chunk = m.group()
        if kind == "comment":
            pending_doc.append(chunk[1:].strip())
        elif kind == "ws":
            if chunk.count("\n") > 1:
                # A blank line ends a doc comment block that is not attached to a member.
                pending_doc = []
        else:
            toks.append(_Tok(kind, chunk, line, "\n".join(pending_doc)))
            pending_doc = []
        line += chunk.count("\n")
        pos = m.end()
    return toks


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def _peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def _next(self) -> _Tok:
        tok = self._peek()
        if tok is None:
            raise InterfaceSyntaxError("unexpected end of interface description")
        self.i += 1
        return tok

    def _expect(self, text: str) -> _Tok:
        tok = self._next()
        if tok.text != text:
            raise InterfaceSyntaxError(f"line {tok.line}: expected {text!r}, found {tok.text!r}")
        return tok

    def _word(self, pattern: re.Pattern[str], what: str) -> _Tok:
        tok = self._next()
        if tok.kind != "word" or not pattern.match(tok.text):
            raise InterfaceSyntaxError(f"line {tok.line}: invalid {what} {tok.text!r}")
        return tok

    def parse(self) -> Interface:
        head = self._expect("interface")
        name = self._word(INTERFACE_NAME, "interface name").text
        iface = Interface(name=name, text=self.text, doc=head.doc)
        seen: set[str] = set()
        while self._peek() is not None:
            kw = self._next()
            member = self._word(MEMBER_NAME, "member name")
            if member.text in seen:
                raise InterfaceSyntaxError(f"line {member.line}: duplicate member {member.text}")
            seen.add(member.text)
            if kw.text == "type":
                t = self._type()
                if not isinstance(t, Struct | Enum):
                    raise InterfaceSyntaxError(f"line {kw.line}: a type must be a struct or enum")
                iface.types[member.text] = t
            elif kw.text == "method":
                inp = self._struct_only()
                self._expect("->")
                out = self._struct_only()
                iface.methods[member.text] = Method(member.text, inp, out, kw.doc)
            elif kw.text == "error":
                iface.errors[member.text] = ErrorDef(member.text, self._struct_only(), kw.doc)
            else:
                raise InterfaceSyntaxError(f"line {kw.line}: unknown keyword {kw.text!r}")
        if not iface.methods:
            raise InterfaceSyntaxError(f"interface {name} declares no method")
        self._check_references(iface)
        return iface

    def _struct_only(self) -> Struct:
        tok = self._peek()
        t = self._type()
        if not isinstance(t, Struct):
            line = tok.line if tok else 0
            raise InterfaceSyntaxError(f"line {line}: expected a struct")
        return t

    def _type(self) -> VType:
        tok = self._next()
        if tok.text == "?":
            nxt = self._peek()
            if nxt is not None and nxt.text == "?":
                raise InterfaceSyntaxError(f"line {tok.line}: '??' is not a type")
            return Maybe(self._type())
        if tok.kind == "array":
            return Array(self._type())
        if tok.kind == "map":
            return Map(self._type())
        if tok.text == "(":
            return self._struct_or_enum(tok)
        if tok.kind == "word":
            if tok.text in ("bool", "int", "float", "string", "object"):
                return Primitive(tok.text)
            if MEMBER_NAME.match(tok.text):
                return Named(tok.text)
        raise InterfaceSyntaxError(f"line {tok.line}: invalid type {tok.text!r}")

    def _struct_or_enum(self, open_tok: _Tok) -> Struct | Enum:
        first = self._peek()
        if first is not None and first.text == ")":
            self._next()
            return Struct(())
        second = self._peek(1)
        if second is not None and second.text == ":":
            fields: list[Field] = []
            while True:
                ftok = self._word(FIELD_NAME, "field name")
                self._expect(":")
                fields.append(Field(ftok.text, self._type(), ftok.doc))
                if self._next_sep():
                    break
            names = [f.name for f in fields]
            if len(set(names)) != len(names):
                raise InterfaceSyntaxError(f"line {open_tok.line}: duplicate field name")
            return Struct(tuple(fields))
        values: list[str] = []
        while True:
            values.append(self._word(FIELD_NAME, "enum value").text)
            if self._next_sep():
                break
        if len(set(values)) != len(values):
            raise InterfaceSyntaxError(f"line {open_tok.line}: duplicate enum value")
        return Enum(tuple(values))

    def _next_sep(self) -> bool:
        """Consume ',' (False: more follows) or ')' (True: done)."""
        tok = self._next()
        if tok.text == ")":
            return True
        if tok.text == ",":
            return False
        raise InterfaceSyntaxError(f"line {tok.line}: expected ',' or ')', found {tok.text!r}")

    def _check_references(self, iface: Interface) -> None:
        def walk(t: VType) -> None:
            if isinstance(t, Named):
                if t.name not in iface.types:
                    raise InterfaceSyntaxError(f"unknown type {t.name} in {iface.name}")
            elif isinstance(t, Struct):
                for f in t.fields:
                    walk(f.type)
            elif isinstance(t, Maybe | Array | Map):
                walk(t.inner)

        for td in iface.types.values():
            walk(td)
        for m in iface.methods.values():
            walk(m.input)
            walk(m.output)
        for e in iface.errors.values():
            walk(e.parameters)


def parse_interface(text: str) -> Interface:
    """Parse a varlink interface description; raises InterfaceSyntaxError."""
    return _Parser(text).parse()


# ----------------------------------------------------------------------------- validation
def validate(
    iface: Interface, vtype: VType, value: Any, path: str, bounds: Bounds = Bounds()
) -> None:
    """Check that `value` (decoded JSON) matches `vtype`; raises ValidationError at `path`."""
    if isinstance(vtype, Maybe):
        if value is None:
            return
        validate(iface, vtype.inner, value, path, bounds)
        return
    if value is None:
        raise ValidationError(path, "is required")
    if isinstance(vtype, Named):
        validate(iface, iface.types[vtype.name], value, path, bounds)
    elif isinstance(vtype, Primitive):
        _validate_primitive(vtype.kind, value, path, bounds)
    elif isinstance(vtype, Enum):
        if not isinstance(value, str) or value not in vtype.values:
            raise ValidationError(path, f"must be one of {', '.join(vtype.values)}")
    elif isinstance(vtype, Struct):
        validate_struct(iface, vtype, value, path, bounds)
    elif isinstance(vtype, Array):
        if not isinstance(value, list):
            raise ValidationError(path, "must be an array")
        if len(value) > bounds.max_items:
            raise ValidationError(path, f"has more than {bounds.max_items} items")
        for i, item in enumerate(value):
            validate(iface, vtype.inner, item, f"{path}[{i}]", bounds)
    else:
        if not isinstance(value, dict):
            raise ValidationError(path, "must be an object (map)")
        if len(value) > bounds.max_items:
            raise ValidationError(path, f"has more than {bounds.max_items} entries")
        for key, item in value.items():
            if len(key) > bounds.max_string:
                raise ValidationError(path, f"has a key longer than {bounds.max_string}")
            validate(iface, vtype.inner, item, f"{path}[{key[:64]!r}]", bounds)


def _validate_primitive(kind: str, value: Any, path: str, bounds: Bounds) -> None:
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValidationError(path, "must be a boolean")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(path, "must be an integer")
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValidationError(path, "is out of the 64-bit integer range")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(path, "must be a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(path, "must be finite")
    elif kind == "string":
        if not isinstance(value, str):
            raise ValidationError(path, "must be a string")
        if len(value) > bounds.max_string:
            raise ValidationError(path, f"is longer than {bounds.max_string} characters")
    # `object` is any JSON value; its size and depth are bounded by the decoder.


def validate_struct(
    iface: Interface, struct: Struct, value: Any, path: str, bounds: Bounds = Bounds()
) -> None:
    """Validate a struct value: no unknown fields, required fields present, each field typed."""
    if not isinstance(value, dict):
        raise ValidationError(path or "parameters", "must be an object")
    known = {f.name: f for f in struct.fields}
    for key in value:
        if key not in known:
            # Odd keys (empty, control characters) are shown quoted so the path stays readable.
            shown = key if FIELD_NAME.match(key) and len(key) <= 64 else repr(key[:64])
            raise ValidationError(f"{path}.{shown}" if path else shown, "is not a known field")
    for f in struct.fields:
        fpath = f"{path}.{f.name}" if path else f.name
        validate(iface, f.type, value.get(f.name), fpath, bounds)
