"""Propagation you can see: which named watchers are connected, and how far each has got.

A watcher names itself with the metadata `x-rotor-watcher: NAME`. The server
tracks, per connected named watcher, the newest event sequence sent to it
and the kids of the key set it was last sent. With
`[keys] activation_requires_ack`, a pending key activates only once every
connected named watcher has been sent it (or max_ack_wait after it was due).
The registry is this process's; rotor.core.fleet writes it to the store, where
every replica reads every other's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(eq=False)
class WatcherState:
    name: str
    peer: str
    tenant: str
    connected_at: float
    sent_sequence: int = 0
    known_kids: frozenset[str] = field(default_factory=frozenset)


class WatcherRegistry:
    """The named watchers connected to this process."""

    def __init__(self) -> None:
        self._watchers: dict[WatcherState, None] = {}  # in the order they connected

    def add(self, name: str, peer: str, tenant: str, now: float) -> WatcherState | None:
        """Track a stream until `remove` (None, tracking nothing, for an unnamed watcher)."""
        if not name:
            return None
        state = WatcherState(name, peer, tenant, now)
        self._watchers[state] = None
        return state

    def remove(self, state: WatcherState | None) -> None:
        if state is not None:
            del self._watchers[state]

    @staticmethod
    def sent(state: WatcherState | None, sequence: int, kids: Iterable[str] | None) -> None:
        """Record that event `sequence` (carrying a key set with `kids`, if any) went to the watcher."""
        if state is None:
            return
        state.sent_sequence = max(state.sent_sequence, sequence)
        if kids is not None:
            state.known_kids = frozenset(kids)

    def all(self) -> list[WatcherState]:
        """Every connected named watcher, of every tenant."""
        return list(self._watchers)

    def named(self, tenant: str) -> list[WatcherState]:
        """The tenant's connected named watchers, oldest connection first."""
        return sorted((w for w in self._watchers if w.tenant == tenant), key=lambda w: w.connected_at)

    def unacknowledged(self, tenant: str, kid: str) -> list[str]:
        """Names of the tenant's connected named watchers that have not been sent key `kid`."""
        return sorted({w.name for w in self._watchers if w.tenant == tenant and kid not in w.known_kids})
