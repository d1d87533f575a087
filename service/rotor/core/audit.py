"""The audit log: every security event, in the same transaction as the change, in a hash chain.

Each entry's hash is the SHA-256 of its fields and the previous entry's hash,
so editing or deleting any entry breaks the chain from there on, and the
store's head (the last sequence and hash) catches a truncated tail.
Issuance is counted in metrics, not written here: the log holds what an
auditor asks about (keys, clients, revocations, approvals, refusals).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rotor.core.model import AuditEntry

GENESIS = "0" * 64  # the prev_hash of the first entry
SYSTEM = "rotor"  # the actor of what the schedule does
CLI = "cli"  # the actor of what the command line does on the store


def details(**fields: Any) -> str:
    """A details_json value: compact, keys sorted, empty values left out."""
    return json.dumps({k: v for k, v in sorted(fields.items()) if v not in (None, "")}, separators=(",", ":"))


def chain_hash(
    prev_hash: str,
    sequence: int,
    occurred_at: float,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    tenant: str,
    details_json: str,
) -> str:
    """The hash of one entry: SHA-256 over a canonical JSON array of its fields and prev_hash."""
    canonical = json.dumps(
        [prev_hash, sequence, occurred_at, actor, action, target, outcome, tenant, details_json],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def entry_hash(entry: AuditEntry) -> str:
    return chain_hash(
        entry.prev_hash,
        entry.sequence,
        entry.occurred_at,
        entry.actor,
        entry.action,
        entry.target,
        entry.outcome,
        entry.tenant,
        entry.details_json,
    )


class ChainBroken(Exception):
    """The audit log was altered: `sequence` is the first entry that does not verify."""

    def __init__(self, sequence: int, why: str) -> None:
        super().__init__(f"the audit log is broken at sequence {sequence}: {why}")
        self.sequence = sequence
        self.why = why


class ChainVerifier:
    """Checks entries fed in sequence order; raises ChainBroken at the first bad one."""

    def __init__(self) -> None:
        self.count = 0
        self.last_sequence = 0
        self.last_hash = GENESIS

    def feed(self, entries: Iterable[AuditEntry]) -> None:
        for entry in entries:
            expected = self.last_sequence + 1
            if entry.sequence != expected:
                raise ChainBroken(expected, f"entry {expected} is missing (the next one is {entry.sequence})")
            if entry.prev_hash != self.last_hash:
                raise ChainBroken(entry.sequence, "its prev_hash is not the previous entry's hash")
            if entry_hash(entry) != entry.hash:
                raise ChainBroken(entry.sequence, "its contents do not match its hash (edited)")
            self.count += 1
            self.last_sequence, self.last_hash = entry.sequence, entry.hash

    def finish(self, head_sequence: int, head_hash: str) -> None:
        """Compare with the store's head: entries deleted from the end show here."""
        if head_sequence != self.last_sequence:
            raise ChainBroken(
                self.last_sequence + 1,
                f"the log ends at {self.last_sequence} but its head says {head_sequence} (entries deleted)",
            )
        if head_hash != self.last_hash:
            raise ChainBroken(self.last_sequence, "the last entry's hash is not the head's (edited)")


@dataclass(slots=True)
class _Window:
    started: float
    written: int = 0
    suppressed: int = 0


@dataclass(frozen=True, slots=True)
class Suppressed:
    """Refusals from one address left out of the log in one window: one summary entry says so."""

    address: str
    count: int
    since: float


class RefusalBudget:
    """How many refusal entries each peer address may add to the log: at most `per_minute` a
    minute, so that callers who are refused (anonymous ones above all) cannot grow the log without
    bound. The rest are counted, and once the minute is over one summary entry says how many.

    Only refusals go through here: the audit of real changes stays fail-closed and unlimited.
    Each process keeps its own budget (with --workers, each worker).
    """

    WINDOW = 60.0
    MAX_ADDRESSES = 10_000  # addresses tracked at once; beyond, newcomers share one window

    def __init__(self, per_minute: int, on_suppressed: Callable[[], None] | None = None) -> None:
        self._limit = per_minute
        self._windows: dict[str, _Window] = {}
        self._pending: list[Suppressed] = []
        self._on_suppressed = on_suppressed

    def admit(self, address: str, now: float) -> bool:
        """Whether a refusal from `address` at `now` is written; False counts it as suppressed."""
        if self._limit <= 0:
            return True  # 0: no cap
        window = self._windows.get(address)
        if window is None and len(self._windows) >= self.MAX_ADDRESSES:
            address = "*"  # a spray of addresses shares one window
            window = self._windows.get(address)
        if window is None or now - window.started >= self.WINDOW:
            if window is not None and window.suppressed:
                self._pending.append(Suppressed(address, window.suppressed, window.started))
            window = self._windows[address] = _Window(now)
        if window.written < self._limit:
            window.written += 1
            return True
        window.suppressed += 1
        if self._on_suppressed is not None:
            self._on_suppressed()
        return False

    def summaries(self, now: float | None = None) -> list[Suppressed]:
        """The summaries due, each returned once: those of windows a later refusal closed and, with
        `now`, of every window whose minute is over (quiet ones are forgotten then)."""
        if now is not None:
            for address, window in list(self._windows.items()):
                if now - window.started >= self.WINDOW:
                    del self._windows[address]
                    if window.suppressed:
                        self._pending.append(Suppressed(address, window.suppressed, window.started))
        out, self._pending = self._pending, []
        return out

    def unwritten(self, summaries: list[Suppressed]) -> None:
        """Summaries that could not be written (the store away): returned by the next `summaries`."""
        self._pending = summaries + self._pending
