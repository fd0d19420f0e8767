"""The stager's socketpair protocol: strict, bounded, and a failed channel is never reused."""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi.helper.stager import (
    MAX_MESSAGE,
    MAX_PATHS,
    Stager,
    StageRequest,
    StagerError,
    parse_request,
)

BUILD: dict[str, Any] = {
    "op": "build",
    "uid": 1000,
    "instance": "coi-abc-1",
    "project": "default",
    "workspace": "/home/u/ws",
    "protected": [".git/hooks"],
    "secrets": [".env"],
    "in_home": False,
}


def encode(msg: object) -> bytes:
    return json.dumps(msg).encode()


def test_a_valid_build_and_remove() -> None:
    op, req = parse_request(encode(BUILD))
    assert op == "build"
    assert req == StageRequest(
        1000, "coi-abc-1", "default", "/home/u/ws", (".git/hooks",), (".env",), False
    )
    assert parse_request(encode({"op": "remove", "uid": 5, "instance": "c"})) == (
        "remove",
        (5, "c"),
    )


@pytest.mark.parametrize(
    "change",
    [
        {"op": "mount"},
        {"uid": 0},  # root never: a compromised parent cannot stage root's directories
        {"uid": -1},
        {"uid": "1000"},
        {"uid": True},
        {"in_home": 1},
        {"workspace": ""},
        {"workspace": "/a\0b"},
        {"instance": "x" * 64},
        {"protected": ".git/hooks"},
        {"protected": [1]},
        {"secrets": ["x"] * (MAX_PATHS + 1)},
        {"extra": 1},
    ],
)
def test_anything_else_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(StagerError):
        parse_request(encode({**BUILD, **change}))


def test_missing_fields_garbage_and_oversize_are_refused() -> None:
    for data in (
        encode({k: v for k, v in BUILD.items() if k != "secrets"}),
        encode({"op": "remove", "uid": 5}),
        encode([BUILD]),
        b"\xff\xfe",
        b"{",
        b" " * (MAX_MESSAGE + 1),
        b"[" * 30000 + b"]" * 30000,
    ):
        with pytest.raises(StagerError):
            parse_request(data)


@settings(max_examples=2000, deadline=None)
@given(
    st.binary(max_size=512)
    | st.recursive(
        st.none() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    ).map(encode)
)
def test_the_decoder_only_ever_raises_stager_error(data: bytes) -> None:
    with contextlib.suppress(StagerError):
        parse_request(data)


def test_a_dead_stager_channel_is_never_used_again() -> None:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stager = Stager(parent, pid=0, caps=[])
    child.close()  # the stager exited
    with pytest.raises(StagerError, match="not running"):
        stager.remove(1000, "c")
    assert not stager.alive
    with pytest.raises(StagerError, match="not running"):
        stager.remove(1000, "c")


def test_a_refusal_is_reported_and_the_channel_stays_usable() -> None:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stager = Stager(parent, pid=0, caps=[])
    child.send(encode({"ok": False, "error": "workspace is not yours"}))
    with pytest.raises(StagerError, match="workspace is not yours"):
        stager.remove(1000, "c")
    assert json.loads(child.recv(MAX_MESSAGE)) == {"op": "remove", "uid": 1000, "instance": "c"}
    child.send(encode({"ok": True, "removed": True}))
    assert stager.remove(1000, "c") is True
    assert stager.alive
    parent.close()
    child.close()
