"""Dispatch of varlink calls to typed handlers, plus `org.varlink.service`.

Adding a method means adding its lines to the interface text, its dataclasses to
`coi.helper.interface.METHOD_TYPES`, and one `MethodSpec` (name, polkit action, handler).
The dispatcher validates parameters against the interface before a handler sees them, checks
the action with polkit, converts to and from dataclasses, and turns every failure into a typed
error reply: a handler bug yields `InternalError`, never a dead helper.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from coi.helper.interface import (
    INTERFACE,
    METHOD_TYPES,
    SERVICE_INTERFACE,
    Action,
    Err,
    service_interface,
)
from coi.helper.ipc.errors import ValidationError, VarlinkError
from coi.helper.ipc.idl import Bounds, Interface, validate_struct
from coi.helper.ipc.typed import check_dataclass, from_wire, to_wire
from coi.helper.ipc.wire import Call, reply_message

log = logging.getLogger(__name__)

# Replies are ours, so only sanity bounds apply to them.
REPLY_BOUNDS = Bounds(max_string=1 << 20, max_items=1 << 16)


class CallContext(Protocol):
    """What a handler knows about the call besides its parameters."""

    def require(self, action: Action) -> None:
        """Raise the typed error unless the caller may use `action`."""


Handler = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class MethodSpec:
    """One method: its polkit action (None: no authorisation needed) and typed handler.

    The handler gets (context, input dataclass) and returns the output dataclass, or for a
    streaming method an iterable of them (one reply each; the last one ends the call).
    """

    name: str
    action: Action | None
    handler: Handler
    streaming: bool = False


@dataclass(frozen=True)
class Contribution:
    """A method a feature package adds to org.codeonincus.Helper, with its dataclasses."""

    spec: MethodSpec
    input_type: type
    output_type: type


@dataclass
class _Registered:
    iface: Interface
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    types: dict[str, tuple[type, type]] = field(default_factory=dict)


class Service:
    """The set of interfaces a varlink service implements, with `org.varlink.service` built in."""

    def __init__(
        self, vendor: str, product: str, version: str, url: str, bounds: Bounds | None = None
    ) -> None:
        self.vendor, self.product, self.version, self.url = vendor, product, version, url
        self.bounds = bounds or Bounds()
        self._ifaces: dict[str, _Registered] = {}
        self._ifaces[SERVICE_INTERFACE] = _Registered(service_interface())

    def add_interface(
        self,
        iface: Interface,
        methods: Iterable[MethodSpec],
        types: dict[str, tuple[type, type]] | None = None,
    ) -> None:
        """Register an interface; TypeError if a spec or dataclass disagrees with its text."""
        types = types if types is not None else (METHOD_TYPES if iface.name == INTERFACE else {})
        reg = _Registered(iface)
        for spec in methods:
            if spec.name not in iface.methods:
                raise TypeError(f"{iface.name} has no method {spec.name}")
            if spec.name not in types:
                raise TypeError(f"{iface.name}.{spec.name} has no dataclasses")
            tin, tout = types[spec.name]
            check_dataclass(iface, iface.methods[spec.name].input, tin, f"{spec.name} input")
            check_dataclass(iface, iface.methods[spec.name].output, tout, f"{spec.name} output")
            reg.methods[spec.name] = spec
            reg.types[spec.name] = (tin, tout)
        self._ifaces[iface.name] = reg

    @property
    def interfaces(self) -> list[str]:
        """Names of the implemented interfaces."""
        return list(self._ifaces)

    # ----------------------------------------------------------------------- dispatch
    def dispatch(self, ctx: CallContext, call: Call) -> Iterator[dict[str, Any]]:
        """Yield the reply messages for `call` (none for oneway calls)."""
        replies = self._replies(ctx, call)
        if call.oneway:
            for _ in replies:
                pass
            return
        yield from replies

    def _replies(self, ctx: CallContext, call: Call) -> Iterator[dict[str, Any]]:
        try:
            if call.interface == SERVICE_INTERFACE:
                yield reply_message(self._service_call(call))
                return
            reg = self._ifaces.get(call.interface)
            if reg is None:
                raise VarlinkError(Err.INTERFACE_NOT_FOUND, {"interface": call.interface})
            method = reg.iface.methods.get(call.member)
            if method is None:
                raise VarlinkError(Err.METHOD_NOT_FOUND, {"method": call.method})
            spec = reg.methods.get(call.member)
            if spec is None:
                raise VarlinkError(Err.METHOD_NOT_IMPLEMENTED, {"method": call.method})
            if spec.streaming and not call.more:
                raise VarlinkError(Err.EXPECTED_MORE)
            try:
                validate_struct(reg.iface, method.input, call.parameters, "", self.bounds)
            except ValidationError as exc:
                raise VarlinkError(Err.INVALID_PARAMETER, {"parameter": exc.parameter}) from exc
            if spec.action is not None:
                ctx.require(spec.action)
            tin, _ = reg.types[spec.name]
            result = spec.handler(ctx, from_wire(tin, call.parameters))
            if not spec.streaming:
                yield reply_message(self._output(reg, method.name, result))
                return
            pending: dict[str, Any] | None = None
            for item in result:
                if pending is not None:
                    # A stream lives long: the peer must still be the process that was
                    # authorised (cached decisions expire, so polkit is asked again too).
                    if spec.action is not None:
                        ctx.require(spec.action)
                    yield reply_message(pending, continues=True)
                pending = self._output(reg, method.name, item)
            yield reply_message(pending or {})
        except VarlinkError as exc:
            yield reply_message(exc.parameters, error=exc.name)
        except Exception:
            log.exception("handler of %s failed", call.method)
            yield reply_message(
                {"reason": "the helper failed unexpectedly; see its log"}, error=Err.INTERNAL
            )

    def _output(self, reg: _Registered, name: str, result: Any) -> dict[str, Any]:
        _, tout = reg.types[name]
        if not isinstance(result, tout):
            raise TypeError(f"{name} returned {type(result).__name__}, not {tout.__name__}")
        wire: dict[str, Any] = to_wire(result)
        # Our own replies obey the contract too (catches drift in handlers at once).
        validate_struct(reg.iface, reg.iface.methods[name].output, wire, "", REPLY_BOUNDS)
        return wire

    def _service_call(self, call: Call) -> dict[str, Any]:
        iface = self._ifaces[SERVICE_INTERFACE].iface
        method = iface.methods.get(call.member)
        if method is None:
            raise VarlinkError(Err.METHOD_NOT_FOUND, {"method": call.method})
        try:
            validate_struct(iface, method.input, call.parameters, "", self.bounds)
        except ValidationError as exc:
            raise VarlinkError(Err.INVALID_PARAMETER, {"parameter": exc.parameter}) from exc
        if method.name == "GetInfo":
            return {
                "vendor": self.vendor,
                "product": self.product,
                "version": self.version,
                "url": self.url,
                "interfaces": self.interfaces,
            }
        name = call.parameters["interface"]
        reg = self._ifaces.get(name)
        if reg is None:
            raise VarlinkError(Err.INTERFACE_NOT_FOUND, {"interface": name[:255]})
        return {"description": reg.iface.text}
