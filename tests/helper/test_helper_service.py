"""Dispatch, authorisation and ownership through the real Service and HelperApp."""

from __future__ import annotations

from typing import Any

import pytest
from helper_fakes import FakeInstances, ScriptedPolkit, make_app, peer_as

from coi.helper.app import HelperApp
from coi.helper.interface import Action, Authorization, Err
from coi.helper.ipc.wire import Call
from coi.helper.service import MethodSpec, Service

MONITOR = Action.MONITOR.value


def run(app: HelperApp, uid: int, method: str, params: dict[str, Any], **kw: Any) -> list[dict]:
    svc = app.service()
    ctx = app.context(peer_as(uid, **kw))
    return list(svc.dispatch(ctx, Call(method, params)))


def one(app: HelperApp, uid: int, method: str, params: dict[str, Any], **kw: Any) -> dict:
    (reply,) = run(app, uid, method, params, **kw)
    return reply


H = "org.codeonincus.Helper."


def test_ping_and_getinfo_need_no_authorisation() -> None:
    app = make_app(ScriptedPolkit())
    assert one(app, 1001, H + "Ping", {"ping": "x"}) == {"parameters": {"pong": "x"}}
    info = one(app, 1001, H + "GetInfo", {})["parameters"]
    assert info["caller"]["uid"] == 1001
    assert info["caller"]["project"] == "user-1001"
    assert info["caller"]["admin"] is False
    assert set(info["caller"]["authorization"].values()) == {"denied"}
    assert info["policy"]["loaded"] is False


def test_service_interface() -> None:
    app = make_app()
    info = one(app, 0, "org.varlink.service.GetInfo", {})["parameters"]
    assert info["interfaces"] == ["org.varlink.service", "org.codeonincus.Helper"]
    desc = one(app, 0, "org.varlink.service.GetInterfaceDescription", {"interface": H[:-1]})
    assert desc["parameters"]["description"].startswith("# coi-helper")
    missing = one(app, 0, "org.varlink.service.GetInterfaceDescription", {"interface": "a.b"})
    assert missing["error"] == Err.INTERFACE_NOT_FOUND


@pytest.mark.parametrize(
    ("method", "params", "error"),
    [
        ("org.other.Iface.X", {}, Err.INTERFACE_NOT_FOUND),
        (H + "Nope", {}, Err.METHOD_NOT_FOUND),
        ("org.varlink.service.Nope", {}, Err.METHOD_NOT_FOUND),
        (H + "Ping", {}, Err.INVALID_PARAMETER),
        (H + "Ping", {"ping": 5}, Err.INVALID_PARAMETER),
        (H + "Ping", {"ping": "x", "extra": 1}, Err.INVALID_PARAMETER),
        (H + "Ping", {"ping": "x" * 5000}, Err.INVALID_PARAMETER),
        (H + "DescribeInstance", {"instance": "c1"}, Err.INVALID_PARAMETER),
    ],
)
def test_typed_errors(method: str, params: dict[str, Any], error: str) -> None:
    assert one(make_app(), 0, method, params)["error"] == error


def test_invalid_parameter_names_the_field() -> None:
    reply = one(make_app(), 0, H + "Ping", {"ping": "x", "bogus": 1})
    assert reply["parameters"] == {"parameter": "bogus"}


def test_owner_is_served_others_are_not() -> None:
    inst = FakeInstances()
    inst.add("user-1001", "c1")
    inst.add("user-1002", "c2")
    polkit = ScriptedPolkit(
        {(1001, MONITOR): Authorization.ALLOWED, (1002, MONITOR): Authorization.ALLOWED}
    )
    app = make_app(polkit, inst)
    ok = one(app, 1001, H + "DescribeInstance", {"instance": "c1", "project": "user-1001"})
    assert ok["parameters"]["instance"]["nics"][0]["host_name"] == "veth1234"
    refused = one(app, 1001, H + "DescribeInstance", {"instance": "c2", "project": "user-1002"})
    assert refused == {
        "error": Err.NOT_OWNER,
        "parameters": {"instance": "c2", "project": "user-1002", "uid": 1001},
    }
    # The refusal came before Incus was asked anything about bob's project.
    assert ("user-1002", "c2") not in inst.asked


def test_admin_group_and_root_reach_every_project() -> None:
    inst = FakeInstances()
    inst.add("user-1002", "c2")
    app = make_app(ScriptedPolkit({(1005, MONITOR): Authorization.ALLOWED}), inst)
    params = {"instance": "c2", "project": "user-1002"}
    assert "error" not in one(app, 0, H + "DescribeInstance", params)
    if app.admin_gid is not None:
        reply = one(app, 1005, H + "DescribeInstance", params, groups=(app.admin_gid,))
        assert "error" not in reply
    assert one(app, 1005, H + "DescribeInstance", params)["error"] == Err.NOT_OWNER


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Authorization.DENIED, Err.PERMISSION_DENIED),
        (Authorization.CHALLENGE, Err.INTERACTIVE_AUTH),
        (Authorization.UNAVAILABLE, Err.PERMISSION_DENIED),
    ],
)
def test_polkit_refusals(answer: Authorization, error: str) -> None:
    inst = FakeInstances()
    inst.add("user-1001", "c1")
    app = make_app(ScriptedPolkit({(1001, MONITOR): answer}), inst)
    reply = one(app, 1001, H + "DescribeInstance", {"instance": "c1", "project": "user-1001"})
    assert reply["error"] == error
    assert inst.asked == []


def test_without_polkit_only_root_is_served() -> None:
    inst = FakeInstances()
    inst.add("user-1001", "c1")
    app = make_app(None, inst)
    params = {"instance": "c1", "project": "user-1001"}
    reply = one(app, 1001, H + "DescribeInstance", params)
    assert reply["error"] == Err.PERMISSION_DENIED
    assert "only root" in reply["parameters"]["reason"]
    assert "error" not in one(app, 0, H + "DescribeInstance", params)


def test_decisions_are_cached_per_connection() -> None:
    inst = FakeInstances()
    inst.add("user-1001", "c1")
    polkit = ScriptedPolkit({(1001, MONITOR): Authorization.ALLOWED})
    app = make_app(polkit, inst)
    svc, ctx = app.service(), app.context(peer_as(1001))
    call = Call(H + "DescribeInstance", {"instance": "c1", "project": "user-1001"})
    for _ in range(5):
        assert "error" not in next(svc.dispatch(ctx, call))
    assert polkit.calls == 1
    # A new connection asks again.
    list(svc.dispatch(app.context(peer_as(1001)), call))
    assert polkit.calls == 2


def test_dead_peer_loses_authorisation() -> None:
    inst = FakeInstances()
    inst.add("user-1001", "c1")
    app = make_app(ScriptedPolkit({(1001, MONITOR): Authorization.ALLOWED}), inst)
    peer = peer_as(1001)
    stale = type(peer)(peer.pid, peer.uid, peer.gid, peer.start_time + 1, (), None)
    call = Call(H + "DescribeInstance", {"instance": "c1", "project": "user-1001"})
    (reply,) = app.service().dispatch(app.context(stale), call)
    assert reply["error"] == Err.PERMISSION_DENIED
    assert "exited" in reply["parameters"]["reason"]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"instance": "-bad", "project": "user-1"}, "instance"),
        ({"instance": "123", "project": "user-1"}, "instance"),
        ({"instance": "a" * 64, "project": "user-1"}, "instance"),
        ({"instance": "c1", "project": "a_b"}, "project"),
        ({"instance": "c1", "project": "a/b"}, "project"),
        ({"instance": "c1", "project": ".."}, "project"),
    ],
)
def test_names_follow_incus_rules(params: dict[str, str], parameter: str) -> None:
    reply = one(make_app(), 0, H + "DescribeInstance", params)
    assert reply["error"] == Err.INVALID_NAME
    assert reply["parameters"]["parameter"] == parameter


def test_oneway_gets_no_reply_and_handler_bugs_are_internal_errors() -> None:
    app = make_app()
    svc = app.service()
    ctx = app.context(peer_as(0))
    assert list(svc.dispatch(ctx, Call(H + "Ping", {"ping": "x"}, oneway=True))) == []

    def broken(_ctx: object, _params: object) -> object:
        raise RuntimeError("boom")

    from coi.helper.interface import helper_interface

    svc.add_interface(helper_interface(), [MethodSpec("Ping", None, broken)])
    (reply,) = svc.dispatch(ctx, Call(H + "Ping", {"ping": "x"}))
    assert reply["error"] == Err.INTERNAL
    assert "boom" not in str(reply)


def test_streaming_methods_use_continues() -> None:
    from dataclasses import dataclass

    from coi.helper.ipc.idl import parse_interface

    iface = parse_interface("interface org.example.S\nmethod Count(n: int) -> (i: int)\n")

    @dataclass(frozen=True)
    class CountIn:
        n: int

    @dataclass(frozen=True)
    class CountOut:
        i: int

    svc = Service("v", "p", "1", "u")
    svc.add_interface(
        iface,
        [MethodSpec("Count", None, lambda _c, p: (CountOut(i) for i in range(p.n)), True)],
        {"Count": (CountIn, CountOut)},
    )
    ctx = make_app().context(peer_as(0))
    replies = list(svc.dispatch(ctx, Call("org.example.S.Count", {"n": 3}, more=True)))
    assert [r.get("continues", False) for r in replies] == [True, True, False]
    assert [r["parameters"]["i"] for r in replies] == [0, 1, 2]
    (no_more,) = svc.dispatch(ctx, Call("org.example.S.Count", {"n": 3}))
    assert no_more["error"] == Err.EXPECTED_MORE


def test_registration_refuses_drift() -> None:
    from dataclasses import dataclass

    from coi.helper.interface import helper_interface

    @dataclass(frozen=True)
    class WrongIn:
        pong: str

    svc = Service("v", "p", "1", "u")
    with pytest.raises(TypeError):
        svc.add_interface(
            helper_interface(),
            [MethodSpec("Ping", None, lambda c, p: p)],
            {"Ping": (WrongIn, WrongIn)},
        )
    with pytest.raises(TypeError):
        svc.add_interface(helper_interface(), [MethodSpec("NoSuchMethod", None, lambda c, p: p)])


def test_feature_modules_contribute_methods() -> None:
    app = make_app(ScriptedPolkit(), extensions=("helper_fakes", "coi.helper.no_such_feature.ipc"))
    reply = one(app, 0, H + "Reconcile", {})
    assert reply == {"parameters": {"removed": ["gone"], "reapplied": []}}
    # The contributed method's polkit action applies like any other.
    assert one(app, 1001, H + "Reconcile", {})["error"] == Err.PERMISSION_DENIED
    # Without the module, the interface still lists it but nothing implements it.
    assert one(make_app(), 0, H + "Reconcile", {})["error"] == Err.METHOD_NOT_IMPLEMENTED


def test_attachment_comes_from_incus_facts() -> None:
    inst = FakeInstances()
    inst.add("user-1001", "c1")
    att = inst.attachment("user-1001", "c1")
    assert (att.veth, att.bridge, att.gateway4) == ("veth1234", "coibr0", "10.0.0.1")


def test_streams_stop_when_the_peer_is_no_longer_authorised() -> None:
    from dataclasses import dataclass

    from coi.helper.ipc.idl import parse_interface

    iface = parse_interface("interface org.example.S\nmethod Count(n: int) -> (i: int)\n")

    @dataclass(frozen=True)
    class CountIn:
        n: int

    @dataclass(frozen=True)
    class CountOut:
        i: int

    polkit = ScriptedPolkit({(1001, MONITOR): Authorization.ALLOWED})
    app = make_app(polkit)
    svc = Service("v", "p", "1", "u")
    svc.add_interface(
        iface,
        [
            MethodSpec(
                "Count", Action.MONITOR, lambda _c, p: (CountOut(i) for i in range(p.n)), True
            )
        ],
        {"Count": (CountIn, CountOut)},
    )
    ctx = app.context(peer_as(1001))
    stream = svc.dispatch(ctx, Call("org.example.S.Count", {"n": 5}, more=True))
    assert next(stream)["parameters"] == {"i": 0}
    polkit.answers.clear()  # the grant is withdrawn ...
    ctx.cache._entries.clear()  # ... and the cached decision has expired
    rest = list(stream)
    assert rest[-1]["error"] == Err.PERMISSION_DENIED
    assert len(rest) == 1
