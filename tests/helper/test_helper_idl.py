"""The varlink interface parser and value validator."""

from __future__ import annotations

import pytest
import varlink.scanner

from coi.helper.interface import check_contract, helper_interface, service_interface
from coi.helper.ipc.errors import InterfaceSyntaxError, ValidationError
from coi.helper.ipc.idl import (
    Array,
    Bounds,
    Enum,
    Map,
    Maybe,
    Named,
    Primitive,
    Struct,
    parse_interface,
    validate,
    validate_struct,
)

SAMPLE = """
# A sample.
interface org.example.Sample

type Color (red, green)

# A point.
type Point (x: int, y: ?float, tags: []string, attrs: [string]bool, c: Color)

method Get(name: string, opts: ?(verbose: bool)) -> (p: Point, all: [string]Point)

error Missing (name: string)
"""


def test_sample_parses() -> None:
    iface = parse_interface(SAMPLE)
    assert iface.name == "org.example.Sample"
    assert iface.types["Color"] == Enum(("red", "green"))
    point = iface.types["Point"]
    assert isinstance(point, Struct)
    assert point.names() == ["x", "y", "tags", "attrs", "c"]
    assert point.fields[1].type == Maybe(Primitive("float"))
    assert point.fields[2].type == Array(Primitive("string"))
    assert point.fields[3].type == Map(Primitive("bool"))
    assert point.fields[4].type == Named("Color")
    assert iface.methods["Get"].output.fields[1].type == Map(Named("Point"))
    assert iface.errors["Missing"].parameters.names() == ["name"]
    assert iface.doc == "A sample."


@pytest.mark.parametrize(
    "text",
    [
        "",
        "interface org.example.X\n",  # no method
        "interface noDots\nmethod A() -> ()",
        "interface org.example.X\nmethod a() -> ()",  # member names are capitalised
        "interface org.example.X\nmethod A() -> (x: Unknown)",
        "interface org.example.X\nmethod A() -> (x: ??int)",
        "interface org.example.X\nmethod A() -> (x: int, x: int)",
        "interface org.example.X\nmethod A() -> ()\nmethod A() -> ()",
        "interface org.example.X\nmethod A() -> (x: int",
        "interface org.example.X\nmethod A() -> (x: int) $",
        "interface org.example.X\nmethod A() (x: int)",
        "interface org.example.X\ntype T int\nmethod A() -> ()",
        "interface org.example.X\nwidget A ()\nmethod A() -> ()",
        "interface org.example.X\nmethod A() -> (e: (a, a))",
    ],
)
def test_invalid_descriptions_are_refused(text: str) -> None:
    with pytest.raises(InterfaceSyntaxError):
        parse_interface(text)


@pytest.mark.parametrize("iface", [helper_interface(), service_interface()])
def test_shipped_interfaces_agree_with_the_reference_parser(iface: object) -> None:
    """The `varlink` package's own scanner reads our files with the same members."""
    from coi.helper.ipc.idl import Interface

    assert isinstance(iface, Interface)
    theirs = varlink.scanner.Interface(iface.text)
    assert theirs.name == iface.name
    assert set(theirs.members) == set(iface.methods) | set(iface.errors) | set(iface.types)


def test_contract_dataclasses_match_the_interface_text() -> None:
    check_contract()


def test_documented_errors_exist() -> None:
    errors = set(helper_interface().errors)
    assert {
        "NotOwner",
        "NoSuchInstance",
        "InvalidName",
        "PermissionDenied",
        "InteractiveAuthenticationRequired",
        "PolicyForbidden",
        "RateLimited",
        "ProtocolViolation",
        "InternalError",
    } <= errors


IFACE = parse_interface(SAMPLE)
POINT = IFACE.types["Point"]
GOOD = {"x": 1, "y": 2.5, "tags": ["a"], "attrs": {"k": True}, "c": "red"}


def test_good_value_validates() -> None:
    assert isinstance(POINT, Struct)
    validate_struct(IFACE, POINT, GOOD, "p")
    validate_struct(IFACE, POINT, {**GOOD, "y": None}, "p")
    validate_struct(IFACE, POINT, {k: v for k, v in GOOD.items() if k != "y"}, "p")


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"x": True}, "p.x"),  # bools are not ints
        ({"x": 2**63}, "p.x"),
        ({"x": "1"}, "p.x"),
        ({"y": "nan"}, "p.y"),
        ({"y": float("inf")}, "p.y"),
        ({"tags": "a"}, "p.tags"),
        ({"tags": [1]}, "p.tags[0]"),
        ({"attrs": {"k": 1}}, "p.attrs['k']"),
        ({"c": "blue"}, "p.c"),
        ({"c": None}, "p.c"),
        ({"zzz": 1}, "p.zzz"),
    ],
)
def test_bad_values_name_the_parameter(change: dict[str, object], path: str) -> None:
    assert isinstance(POINT, Struct)
    with pytest.raises(ValidationError) as err:
        validate_struct(IFACE, POINT, {**GOOD, **change}, "p")
    assert err.value.parameter == path


def test_missing_required_field() -> None:
    assert isinstance(POINT, Struct)
    with pytest.raises(ValidationError) as err:
        validate_struct(IFACE, POINT, {k: v for k, v in GOOD.items() if k != "x"}, "p")
    assert err.value.parameter == "p.x"


def test_bounds_apply() -> None:
    bounds = Bounds(max_string=3, max_items=2)
    with pytest.raises(ValidationError):
        validate(IFACE, Primitive("string"), "abcd", "s", bounds)
    with pytest.raises(ValidationError):
        validate(IFACE, Array(Primitive("int")), [1, 2, 3], "a", bounds)
    with pytest.raises(ValidationError):
        validate(IFACE, Map(Primitive("int")), {"a": 1, "b": 2, "c": 3}, "m", bounds)
    validate(IFACE, Primitive("string"), "abc", "s", bounds)
