"""Exception hierarchy of the varlink layer (shared by server and client)."""

from __future__ import annotations

from typing import Any


class IpcError(Exception):
    """Base class of every error raised by `coi.helper.ipc`."""


class InterfaceSyntaxError(IpcError):
    """The varlink interface description text does not parse."""


class ProtocolError(IpcError):
    """A peer sent bytes that are not a valid varlink message (framing, JSON, bounds)."""


class FrameTooLarge(ProtocolError):
    """A message grew past the configured maximum size before its NUL terminator."""


class ValidationError(IpcError):
    """A value does not match its varlink type; `parameter` is the dotted path of the field."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"invalid parameter '{parameter}': {reason}")
        self.parameter = parameter
        self.reason = reason


class VarlinkError(IpcError):
    """A typed varlink error reply (`error` + `parameters`), raised by handlers and clients."""

    def __init__(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        self.name = name
        self.parameters: dict[str, Any] = dict(parameters or {})
        detail = ", ".join(f"{k}={v!r}" for k, v in sorted(self.parameters.items()))
        super().__init__(f"{name}({detail})" if detail else name)
