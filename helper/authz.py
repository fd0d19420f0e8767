"""Authorisation per call: peer liveness, polkit's answer (briefly cached per connection),
and the rule that without polkit only uid 0 is served."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from coi.helper.identity import IdentityError, PeerIdentity
from coi.helper.interface import Action, Authorization, Err
from coi.helper.ipc.errors import VarlinkError
from coi.helper.polkit import Decision, PolkitClient

DECISION_TTL = 5.0


@dataclass
class DecisionCache:
    """polkit answers for one connection, kept for `ttl` seconds."""

    ttl: float = DECISION_TTL
    _entries: dict[str, tuple[float, Decision]] = field(default_factory=dict)

    def get(self, action: str) -> Decision | None:
        """A cached decision still within its lifetime, or None."""
        hit = self._entries.get(action)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, action: str, decision: Decision) -> None:
        """Remember a decision."""
        self._entries[action] = (time.monotonic() + self.ttl, decision)


class Authorizer:
    """Decides whether a peer may use an action."""

    def __init__(self, polkit: PolkitClient | None) -> None:
        self.polkit = polkit

    def decide(self, peer: PeerIdentity, action: Action, cache: DecisionCache) -> Decision:
        """polkit's decision for `peer` and `action` (root is always allowed)."""
        if peer.uid == 0:
            return Decision(Authorization.ALLOWED)
        cached = cache.get(action.value)
        if cached is not None:
            return cached
        if self.polkit is None:
            decision = Decision(Authorization.UNAVAILABLE, "polkit is not configured")
        else:
            decision = self.polkit.check(peer, action.value)
        cache.put(action.value, decision)
        return decision

    def require(self, peer: PeerIdentity, action: Action, cache: DecisionCache) -> None:
        """Raise the typed error unless `peer` (still alive) may use `action`."""
        self._verify(peer, action)
        decision = self.decide(peer, action, cache)
        # The peer may have exited while polkit was thinking; its pid must not be trusted then.
        self._verify(peer, action)
        if decision.result is Authorization.ALLOWED:
            return
        if decision.result is Authorization.CHALLENGE:
            raise VarlinkError(Err.INTERACTIVE_AUTH, {"action": action.value})
        reason = decision.detail
        if decision.result is Authorization.UNAVAILABLE:
            reason = f"{decision.detail}; without polkit only root is served"
        raise VarlinkError(Err.PERMISSION_DENIED, {"action": action.value, "reason": reason})

    @staticmethod
    def _verify(peer: PeerIdentity, action: Action) -> None:
        try:
            peer.verify()
        except IdentityError as exc:
            raise VarlinkError(
                Err.PERMISSION_DENIED, {"action": action.value, "reason": str(exc)}
            ) from exc
