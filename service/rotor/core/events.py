"""The event hub: a live view of the event log, fanned out to subscribers.

The hub tails the log: at once after this process commits an event (the
store's commit listener pokes it), and every `poll_interval` for writers it
cannot hear, such as another process on the same store. Each event is decoded
and encoded once, then offered to every subscriber of its tenant. A
subscriber's queue is bounded; one that falls behind is cut off rather than
slowing the rest, and resumes with `after_sequence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from rotor.core.model import Event, StoredEvent
from rotor.store import Store

log = logging.getLogger("rotor.events")

T = TypeVar("T")
QUEUE_SIZE = 1024
BATCH = 500  # events read from the log at a time


@dataclass(frozen=True, slots=True)
class Delivery(Generic[T]):
    """An event and its encoding, shared by every subscriber."""

    event: Event
    encoded: T


class Subscription(Generic[T]):
    """One subscriber's queue: at most QUEUE_SIZE deliveries waiting. `closed` says why it ended:
    "slow" or "shutdown". Kept small (a list and the future it last waited on):
    a server holds thousands."""

    __slots__ = ("_beat", "_pending", "_waiter", "closed", "tenant")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.closed = ""
        self._beat = False
        self._pending: list[Delivery[T]] = []
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, delivery: Delivery[T]) -> bool:
        """Queue a delivery; False when the subscriber is QUEUE_SIZE behind (nothing is queued)."""
        if len(self._pending) >= QUEUE_SIZE:
            return False
        self._pending.append(delivery)
        self._wake()
        return True

    def beat(self) -> None:
        """End the subscriber's wait with nothing to pop (its owner's heartbeat is due); if it is
        not waiting, its next wait ends at once."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        else:
            self._beat = True

    def _close(self, why: str) -> None:
        if not self.closed:
            self.closed = why
            self._pending.clear()  # what the subscriber will never read
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def pop(self) -> Delivery[T] | None:
        """The oldest queued delivery; None when there is none or the subscription is closed."""
        return self._pending.pop(0) if self._pending and not self.closed else None

    def wait(self) -> asyncio.Future[None]:
        """A future done once a delivery is offered, the subscription closes or `beat` is called
        (done already if one of them happened since the last wait). A future, not a coroutine:
        a subscriber waiting on it keeps no frame of ours alive."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if self._pending or self.closed or self._beat:
            waiter.set_result(None)
        self._beat = False
        return waiter

    async def next(self, wait: float) -> Delivery[T] | None:
        """The next delivery; None after `wait` seconds, on `beat`, or when closed (check `closed`)."""
        if not self._pending and not self.closed:
            try:
                async with asyncio.timeout(wait):
                    await self.wait()
            except TimeoutError:
                return None
        return self.pop()


def _sequence(stored: StoredEvent) -> int:
    return stored.sequence


class EventHub(Generic[T]):
    """Tails the store's event log and hands each event to every subscriber of its tenant."""

    def __init__(
        self,
        store: Store,
        encode: Callable[[Event], T],
        *,
        poll_interval: float = 0.5,
        on_event: Callable[[Event], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._encode = encode
        self._poll_interval = poll_interval
        self._on_event = on_event
        self._subscribers: dict[str, set[Subscription[T]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.last_sequence: dict[str, int] = {}  # per tenant, as far as the hub has read
        self.generation = 0  # bumped on every poke and event: cheap staleness check for caches
        self._cursor = 0
        store.add_commit_listener(self.poke)

    async def start(self) -> None:
        self._cursor = await self._store.last_sequence()
        for tenant in await self._store.list_tenants():
            self.last_sequence[tenant] = await self._store.last_sequence(tenant)
        self._task = asyncio.create_task(self._tail(), name="rotor-event-hub")

    def poke(self) -> None:
        """Something was committed: read the log now."""
        self.generation += 1
        self._wake.set()

    def subscribe(self, tenant: str) -> Subscription[T]:
        sub: Subscription[T] = Subscription(tenant)
        if self._stopping:
            sub._close("shutdown")
        self._subscribers.setdefault(tenant, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription[T]) -> None:
        subs = self._subscribers.get(sub.tenant)
        if subs is not None:
            subs.discard(sub)

    async def close(self) -> None:
        """End every subscription ("shutdown") and stop tailing."""
        self._stopping = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub._close("shutdown")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _tail(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
        # cancellation that close() sends when the wait has just finished.
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.catch_up()
            except Exception:
                log.exception("reading the event log failed; retrying")
                await asyncio.sleep(self._poll_interval)

    async def catch_up(self) -> None:
        """Read and deliver every event committed since the last one delivered.

        The events this process just committed come from the store without a read, as long as
        they follow on from the last one delivered; at a gap (another process's events between
        them), the log is read from the last one delivered."""
        written = sorted(self._store.take_committed_events(), key=_sequence)
        if written and await self._deliver_from(written, contiguous=True):
            return
        while True:
            batch = await self._store.events_after(self._cursor, limit=BATCH)
            await self._deliver_from(batch, contiguous=False)
            if len(batch) < BATCH:  # the whole log is read: no need to ask again
                return

    async def _deliver_from(self, events: list[StoredEvent], *, contiguous: bool) -> bool:
        """Deliver `events` (in sequence order) after the last delivered; False at a gap when
        they must be `contiguous` (the log is the judge of what lies between)."""
        for stored in events:
            if stored.sequence <= self._cursor:
                continue  # delivered already
            if contiguous and stored.sequence != self._cursor + 1:
                return False
            event = stored.decode()
            if self._on_event is not None:
                await self._on_event(event)
            self._deliver(Delivery(event, self._encode(event)))
            self._cursor = stored.sequence
            self.last_sequence[stored.tenant] = stored.sequence
            self.generation += 1
        return True

    def _deliver(self, delivery: Delivery[T]) -> None:
        for sub in list(self._subscribers.get(delivery.event.tenant, ())):
            if not sub.offer(delivery):
                log.warning(
                    "a watcher of tenant %r fell %d events behind; cutting it off", sub.tenant, QUEUE_SIZE
                )
                sub._close("slow")
                self.unsubscribe(sub)
