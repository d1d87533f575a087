"""The rotator: applies due key transitions on time, for every tenant.

It sleeps until the next transition falls due (at most `max_sleep`, so
changes made by other processes are noticed), and wakes early whenever this
process changes a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rotor.clock import Clock
from rotor.core.keys import KeyManager
from rotor.store import Store

log = logging.getLogger("rotor.rotation")


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
    ) -> None:
        self._keys = keys
        self._store = store
        self._clock = clock
        self._max_sleep = max_sleep
        self._prune_every = prune_every
        self._event_retention = event_retention
        self._last_prune = 0.0
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> float | None:
        """Apply what is due in every tenant; returns when the next transition falls due."""
        next_at: float | None = None
        for tenant in self._keys.tenants:
            due = await self._keys.apply_due(tenant)
            if due is not None and (next_at is None or due < next_at):
                next_at = due
        now = self._clock.now()
        if now - self._last_prune >= self._prune_every:
            self._last_prune = now
            # clock skew: a verifier may accept a token that long past `exp`, so its revocation must outlive it
            removed = await self._store.prune(now - self._keys.policy.clock_skew, now - self._event_retention)
            if removed:
                log.info("pruned %d expired rows", removed)
        return next_at

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rotor-rotator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self._keys.changed.clear()
            try:
                next_at = await self.tick()
            except Exception:
                log.exception("key rotation failed; retrying")
                next_at = None
            delay = self._max_sleep if next_at is None else next_at - self._clock.now()
            delay = min(max(delay, 0.0), self._max_sleep)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: it can swallow a cancellation
                    await self._keys.changed.wait()
