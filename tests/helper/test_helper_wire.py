"""Framing and message decoding: every malformed input is a ProtocolError, never a crash."""

from __future__ import annotations

import pytest

from coi.helper.ipc.errors import FrameTooLarge, ProtocolError
from coi.helper.ipc.wire import (
    Call,
    FrameDecoder,
    decode_json,
    encode,
    json_depth,
    parse_call,
    parse_reply,
)


def test_frames_split_on_nul_across_reads() -> None:
    dec = FrameDecoder(100)
    assert dec.feed(b'{"a":') == []
    assert dec.feed(b'1}\0{"b":2}\0{"c"') == [b'{"a":1}', b'{"b":2}']
    assert dec.pending == 4


def test_frame_without_nul_is_bounded() -> None:
    dec = FrameDecoder(10)
    dec.feed(b"x" * 10)
    with pytest.raises(FrameTooLarge):
        dec.feed(b"x")


def test_oversized_complete_frame_is_refused() -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder(10).feed(b"y" * 11 + b"\0")


@pytest.mark.parametrize(
    "frame",
    [
        b"\xff\xfe",
        b"not json",
        b"[1,2]",
        b'"string"',
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":1,"a":2}',
        b"{" * 17 + b"}" * 17,
        b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"n":' + b"9" * 5000 + b"}",
        b"",
    ],
)
def test_bad_frames(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_json(frame, 16)


def test_depth_ignores_brackets_in_strings() -> None:
    assert json_depth('{"a":"[[[[{{{{\\"]]"}', 16) == 1
    assert decode_json(b'{"a":"[[[[[[[[[[[[[[[[[[[[[["}', 2) == {"a": "[" * 22}


@pytest.mark.parametrize(
    "msg",
    [
        {},
        {"method": 1},
        {"method": "NoInterface"},
        {"method": "org.x.lower"},
        {"method": "org.x.A", "parameters": []},
        {"method": "org.x.A", "more": "yes"},
        {"method": "org.x.A", "more": True, "oneway": True},
        {"method": "org.x.A", "upgrade": True},
        {"method": "org.x.A", "extra": 1},
        {"method": "org.x." + "A" * 300},
    ],
)
def test_bad_calls(msg: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        parse_call(msg)


def test_call_round_trip() -> None:
    call = Call("org.example.X.Do", {"a": [1, {"b": None}]}, more=True)
    frame = encode(call.to_wire())
    assert frame.endswith(b"\0")
    assert parse_call(decode_json(frame[:-1])) == call
    assert call.interface == "org.example.X" and call.member == "Do"


def test_reply_parsing() -> None:
    r = parse_reply({"parameters": {"x": 1}, "continues": True})
    assert r.parameters == {"x": 1} and r.continues and r.error is None
    with pytest.raises(ProtocolError):
        parse_reply({"error": 5})
    with pytest.raises(ProtocolError):
        parse_reply({"what": 1})
