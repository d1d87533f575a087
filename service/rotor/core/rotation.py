"""The rotator: applies due key transitions on time, for every tenant.

It sleeps until the next transition falls due (at most `max_sleep`, so
changes made by other processes are noticed), and wakes early whenever this
process changes a key.

Where several processes share a store (`--workers N`, replicas), exactly one
runs the schedule: the holder of the "rotator" lease, which it renews at every
tick. If it dies, another takes the lease once `lease_ttl` has passed; each
transaction re-checks the lease's fencing token, so a holder that lost it
changes nothing. Admin operations (RotateKeys, RevokeKey) run on any process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

from rotor.clock import Clock
from rotor.core.errors import SignerUnavailable
from rotor.core.keys import KeyManager
from rotor.core.model import Lease
from rotor.store import Store, StoreError

log = logging.getLogger("rotor.rotation")
LEASE = "rotator"


def holder_name() -> str:
    """This process, as a lease holder: unique, and readable in the store."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Rotator:
    """Runs `KeyManager.apply_due` for each tenant whenever something falls due."""

    def __init__(
        self,
        keys: KeyManager,
        store: Store,
        clock: Clock,
        *,
        max_sleep: float = 1.0,
        prune_every: float = 60.0,
        event_retention: float = 7 * 86400.0,
        lease_ttl: float = 10.0,
    ) -> None:
        self._keys = keys
        self._store = store
        self._clock = clock
        self._max_sleep = max_sleep
        self._prune_every = prune_every
        self._event_retention = event_retention
        self._last_prune = 0.0
        self._task: asyncio.Task[None] | None = None
        self._lease_ttl = lease_ttl
        self._holder = holder_name()
        self.lease: Lease | None = None  # set while this process runs the schedule
        self._renewed_at = 0.0
        self.failed_ticks = 0  # ticks that raised (the store away, say): rotor_rotator_failures_total

    async def tick(self) -> float | None:
        """Apply what is due in every tenant, if this process holds the lease; returns when the next
        transition falls due (None when nothing is scheduled here)."""
        new = await self._keys.discover_tenants()  # every process: GetKeySet and watchers need them
        if new:
            log.info("new tenants: %s", ", ".join(repr(t) for t in new))
        lease = await self._renew_lease()
        if lease is None:
            return None
        next_at: float | None = None
        for tenant in self._keys.tenants:
            due = await self._keys.apply_due(tenant, lease)
            if due is not None and (next_at is None or due < next_at):
                next_at = due
        now = self._clock.now()
        if now - self._last_prune >= self._prune_every:
            self._last_prune = now
            # clock skew: a verifier may accept a token that long past `exp`, so its revocation must outlive it
            removed = await self._store.prune(now - self._keys.policy.clock_skew, now - self._event_retention)
            if removed:
                log.info("pruned %d expired rows", removed)
            try:
                await self._keys.sweep()
            except SignerUnavailable as e:  # the HSM away: the next round sweeps
                log.warning("cannot sweep destroyed keys' private halves yet: %s", e)
        return next_at

    async def _renew_lease(self) -> Lease | None:
        now = self._clock.now()
        if self.lease is not None and now - self._renewed_at < self._lease_ttl / 3:
            return self.lease  # renewed moments ago: not a store write (an fsync) at every tick
        fencing = await self._store.acquire_lease(LEASE, self._holder, self._lease_ttl, now)
        if fencing is None:
            if self.lease is not None:
                log.warning("another process took the rotator lease; this one stops rotating keys")
            self.lease = None
            return None
        if self.lease is None or self.lease.fencing != fencing:
            log.info("this process runs key rotation now (lease %s, fencing token %d)", self._holder, fencing)
        self.lease = Lease(LEASE, self._holder, fencing)
        self._renewed_at = now
        return self.lease

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rotor-rotator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.lease is not None:  # hand over at once rather than after lease_ttl
            with contextlib.suppress(StoreError):
                await self._store.release_lease(LEASE, self._holder)
            self.lease = None

    async def _run(self) -> None:
        while True:
            self._keys.changed.clear()
            try:
                next_at = await self.tick()
            except Exception:
                self.failed_ticks += 1
                log.exception("key rotation failed; retrying")
                next_at = None
            delay = self._max_sleep if next_at is None else next_at - self._clock.now()
            # a holder renews well within lease_ttl; the others try as often, to take over in time
            delay = min(max(delay, 0.0), self._max_sleep, self._lease_ttl / 3)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: it can swallow a cancellation
                    await self._keys.changed.wait()
