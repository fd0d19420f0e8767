"""Property-based fuzzing of the decoder, the validators and the whole dispatch path.

Each decoder/validator property runs EXAMPLES cases (7 properties: 10,500 cases), and the live
server loop another 500, well under a minute in all.
The invariant everywhere: hostile input yields a typed error (ProtocolError, ValidationError,
a varlink error reply), never any other exception.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helper_fakes import FakeInstances, ScriptedPolkit, make_app, peer_as
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coi.helper.interface import Action, Authorization, helper_interface
from coi.helper.ipc.errors import FrameTooLarge, ProtocolError, ValidationError
from coi.helper.ipc.idl import Bounds, validate_struct
from coi.helper.ipc.wire import FrameDecoder, decode_json, parse_call
from coi.helper.names import instance_name_problem, project_name_problem

EXAMPLES = 1500
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
names = st.sampled_from(["instance", "project", "ping", "x", "method", "parameters", "more"])
objects = st.dictionaries(names | st.text(max_size=10), json_values, max_size=5)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_frame_decoder_never_loses_or_invents_bytes(chunks: list[bytes]) -> None:
    dec = FrameDecoder(48)
    frames: list[bytes] = []
    try:
        for chunk in chunks:
            frames += dec.feed(chunk)
    except FrameTooLarge:
        return
    data = b"".join(chunks)
    complete = data.split(b"\0")[:-1]
    assert frames == complete
    assert all(len(f) <= 48 for f in frames)


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_decoder_on_arbitrary_bytes(frame: bytes) -> None:
    try:
        value = decode_json(frame, 8)
    except ProtocolError:
        return
    assert isinstance(value, dict)


@FUZZ
@given(json_values, st.integers(min_value=1, max_value=6))
def test_decoder_depth_limit_is_exact(value: Any, limit: int) -> None:
    text = json.dumps({"v": value}, allow_nan=True)

    def depth(v: Any) -> int:
        if isinstance(v, list | dict):
            inner = v.values() if isinstance(v, dict) else v
            return 1 + max((depth(x) for x in inner), default=0)
        return 0

    want = 1 + depth(value)
    try:
        decoded = decode_json(text.encode(), limit)
    except ProtocolError:
        # Refused for depth, or for NaN/Infinity which JSON does not have.
        assert want > limit or re.search(r"NaN|Infinity", text)
        return
    assert want <= limit
    assert set(decoded) == {"v"}


@FUZZ
@given(objects)
def test_call_parser_on_arbitrary_objects(msg: dict[str, Any]) -> None:
    try:
        call = parse_call(msg)
    except ProtocolError:
        return
    assert isinstance(call.parameters, dict)
    assert "." in call.method


IFACE = helper_interface()


@FUZZ
@given(st.sampled_from(sorted(IFACE.methods)), objects)
def test_validators_on_arbitrary_parameters(method: str, params: dict[str, Any]) -> None:
    try:
        validate_struct(IFACE, IFACE.methods[method].input, params, "", Bounds())
    except ValidationError as exc:
        assert exc.parameter
        return
    assert set(params) <= set(IFACE.methods[method].input.names())


HOSTNAME = re.compile(r"^[A-Za-z0-9-]{1,63}$")


@FUZZ
@given(st.text(max_size=70) | st.from_regex(r"[a-z0-9-]{1,70}", fullmatch=True))
def test_name_rules_match_their_specification(name: str) -> None:
    ok = instance_name_problem(name) is None
    assert ok == bool(
        HOSTNAME.match(name) and name[0] != "-" and name[-1] != "-" and not name.isdigit()
    )
    pok = project_name_problem(name) is None
    if pok:
        assert name and len(name) <= 63 and name not in ("*", ".", "..")
        assert not set(name) & set("/ _'\"")


APP = make_app(
    ScriptedPolkit({(1001, Action.MONITOR.value): Authorization.ALLOWED}),
    FakeInstances(),
)
SERVICE = APP.service()
KNOWN_ERRORS = {f"org.codeonincus.Helper.{e}" for e in IFACE.errors} | {
    f"org.varlink.service.{e}"
    for e in (
        "InterfaceNotFound",
        "MethodNotFound",
        "MethodNotImplemented",
        "InvalidParameter",
        "ExpectedMore",
    )
}


@FUZZ
@given(
    st.sampled_from(
        [f"org.codeonincus.Helper.{m}" for m in IFACE.methods]
        + [
            "org.varlink.service.GetInfo",
            "org.varlink.service.GetInterfaceDescription",
            "org.codeonincus.Helper.Nope",
            "org.nope.X.Y",
        ]
    ),
    objects,
    st.sampled_from([0, 1001, 1002]),
)
def test_dispatch_always_answers_with_a_reply_or_typed_error(
    method: str, params: dict[str, Any], uid: int
) -> None:
    from coi.helper.ipc.wire import Call, encode

    replies = list(SERVICE.dispatch(APP.context(peer_as(uid)), Call(method, params)))
    assert len(replies) == 1
    reply = replies[0]
    encode(reply)  # always serialisable
    if "error" in reply:
        assert reply["error"] in KNOWN_ERRORS
        assert reply["error"] != "org.codeonincus.Helper.InternalError"


# ------------------------------------------------------- the whole server loop on a real socket
@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An in-process Server (the real accept loop and connection handling) on a temp socket."""
    from coi.helper.server import Server, ServerLimits

    path = str(tmp_path_factory.mktemp("srv") / "h.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    server = Server(
        listener, SERVICE, APP.context, ServerLimits(max_message_bytes=4096, read_timeout=5)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.stop()
    thread.join(5)
    listener.close()


frames = st.one_of(
    st.binary(max_size=300),
    objects.map(lambda o: json.dumps(o).encode() + b"\0"),
    st.builds(
        lambda m, p: json.dumps({"method": m, "parameters": p}).encode() + b"\0",
        st.sampled_from([f"org.codeonincus.Helper.{m}" for m in IFACE.methods]),
        objects,
    ),
)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(frames, min_size=1, max_size=4))
def test_server_answers_or_closes_and_keeps_serving(live_server: str, chunks: list[bytes]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(live_server)
        with contextlib.suppress(OSError):
            s.sendall(b"".join(chunks))
        s.shutdown(socket.SHUT_WR)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                data += chunk
    for reply in data.split(b"\0")[:-1]:
        msg = json.loads(reply)
        assert "error" not in msg or msg["error"] in KNOWN_ERRORS
        assert msg.get("error") != "org.codeonincus.Helper.InternalError"
    # And the next client is served.
    from coi.helper.ipc.client import VarlinkConnection

    with VarlinkConnection(live_server, timeout=10) as conn:
        assert conn.call("org.codeonincus.Helper.Ping", {"ping": "ok"}) == {"pong": "ok"}
