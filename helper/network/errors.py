"""The exception hierarchy of the network engine.

Every error carries one actionable sentence; the IPC layer maps the classes to the typed
varlink errors (`InvalidPolicy`, `InvalidTarget`, ...), the CLI prints the sentence.
"""

from __future__ import annotations


class NetworkError(Exception):
    """Base class of every error the network engine raises."""


class InvalidPolicy(NetworkError):
    """A network policy does not validate; `field` names the offending part."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"network policy field {field!r} {reason}")
        self.field = field
        self.reason = reason


class InvalidTarget(NetworkError):
    """The container's network attachment (veth, bridge, gateway) is not usable."""


class FirewallError(NetworkError):
    """nftables refused or failed a transaction."""


class ResolverError(NetworkError):
    """The per-container DNS resolver could not be started or stopped."""
