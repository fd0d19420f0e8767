"""Typed dataclasses at the varlink boundary: conversion to and from wire values, and a check
that a dataclass has exactly the fields of its varlink struct (so code and contract cannot drift).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from coi.helper.ipc.idl import (
    Array,
    Enum,
    Interface,
    Map,
    Maybe,
    Named,
    Primitive,
    Struct,
    VType,
)

T = TypeVar("T")


def to_wire(value: Any) -> Any:
    """Convert dataclasses, enums, lists and dicts to JSON-ready values; None fields are omitted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v is not None:
                out[f.name] = to_wire(v)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    return value


def from_wire(cls: type[T], value: Any) -> T:
    """Build `cls` (a dataclass) from a value already validated against its varlink type."""
    return typing.cast(T, _convert(cls, value))


def _convert(tp: Any, value: Any) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _convert(inner[0], value)
    if origin is list:
        (inner,) = get_args(tp)
        return [_convert(inner, v) for v in value]
    if origin is tuple:
        inner = get_args(tp)[0]
        return tuple(_convert(inner, v) for v in value)
    if origin is dict:
        _, inner = get_args(tp)
        return {k: _convert(inner, v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp)
        kwargs = {
            f.name: _convert(hints[f.name], value.get(f.name))
            for f in dataclasses.fields(tp)
            if f.name in value or not _has_default(f)
        }
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def check_dataclass(iface: Interface, struct: Struct | VType, cls: type[Any], where: str) -> None:
    """Raise TypeError unless `cls` has exactly the fields of `struct`, recursively for nested
    dataclasses; `where` names the struct in the message."""
    if isinstance(struct, Named):
        struct = iface.types[struct.name]
    if not isinstance(struct, Struct):
        raise TypeError(f"{where}: {cls.__name__} maps a non-struct varlink type")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{where}: {cls.__name__} is not a dataclass")
    hints = get_type_hints(cls)
    have = [f.name for f in dataclasses.fields(cls)]
    want = struct.names()
    if sorted(have) != sorted(want):
        raise TypeError(f"{where}: {cls.__name__} has fields {have}, the interface says {want}")
    for f in struct.fields:
        _check_field(iface, f.type, hints[f.name], f"{where}.{f.name}")


def _check_field(iface: Interface, vtype: VType, tp: Any, where: str) -> None:
    optional = False
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        optional = len(args) < len(get_args(tp))
        tp = args[0]
    if isinstance(vtype, Maybe) != optional:
        raise TypeError(f"{where}: optional in one of interface and dataclass only")
    if isinstance(vtype, Maybe):
        vtype = vtype.inner
    if isinstance(vtype, Named):
        vtype = iface.types[vtype.name]
    if isinstance(vtype, Struct):
        check_dataclass(iface, vtype, tp, where)
    elif isinstance(vtype, Enum):
        if not (isinstance(tp, type) and issubclass(tp, enum.Enum)):
            raise TypeError(f"{where}: enum in the interface, {tp} in the dataclass")
        if sorted(m.value for m in tp) != sorted(vtype.values):
            raise TypeError(f"{where}: enum values differ from the interface")
    elif isinstance(vtype, Array):
        if get_origin(tp) not in (list, tuple):
            raise TypeError(f"{where}: array in the interface, {tp} in the dataclass")
        _check_field(iface, vtype.inner, get_args(tp)[0], f"{where}[]")
    elif isinstance(vtype, Map):
        if get_origin(tp) is not dict:
            raise TypeError(f"{where}: map in the interface, {tp} in the dataclass")
        _check_field(iface, vtype.inner, get_args(tp)[1], f"{where}[]")
    elif isinstance(vtype, Primitive):
        expected = {"bool": bool, "int": int, "float": float, "string": str}.get(vtype.kind)
        if expected is not None and tp is not expected:
            raise TypeError(f"{where}: {vtype.kind} in the interface, {tp} in the dataclass")
