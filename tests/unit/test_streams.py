"""A stream's two deadlines, kept by one ticker: a heartbeat after silence, a cut-off for a stuck write."""

from __future__ import annotations

import asyncio

import pytest
from rotor.api.streams import Streams
from rotor.core.errors import WatcherTooSlow
from rotor.core.events import Delivery, Subscription


class Context:
    """A servicer context whose writes finish at once, or never (`stuck`)."""

    def __init__(self, stuck: bool = False) -> None:
        self.stuck = stuck
        self.written: list[bytes] = []

    async def write(self, message: bytes) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        self.written.append(message)


async def test_wait_ends_on_an_offer_a_beat_or_a_close_and_pop_takes_in_order() -> None:
    sub: Subscription[bytes] = Subscription("")
    waiter = sub.wait()
    assert not waiter.done() and sub.pop() is None
    first, second = Delivery(None, b"1"), Delivery(None, b"2")  # type: ignore[arg-type]
    sub.offer(first)
    sub.offer(second)
    assert waiter.done()
    assert sub.wait().done(), "deliveries already queued: the wait ends at once"
    assert (sub.pop(), sub.pop(), sub.pop()) == (first, second, None)

    waiter = sub.wait()
    sub.beat()
    assert waiter.done() and sub.pop() is None and not sub.closed
    waiter = sub.wait()
    assert not waiter.done(), "a beat ends one wait only"
    sub.offer(first)
    assert waiter.done() and sub.pop() == first

    sub.beat()  # while the subscriber was busy: its next wait ends at once
    assert sub.wait().done()

    waiter = sub.wait()
    sub.offer(first)
    sub._close("slow")
    assert waiter.done() and sub.closed == "slow" and sub.pop() is None


async def test_a_silent_stream_is_woken_for_its_heartbeat_and_a_busy_one_is_not() -> None:
    streams = Streams(heartbeat=0.2, write_timeout=10)
    sub: Subscription[bytes] = Subscription("")
    stream = streams.open(sub)
    try:
        await asyncio.wait_for(sub.wait(), 2)  # woken with nothing queued: the heartbeat is due
        assert sub.pop() is None and not sub.closed
        await streams.write(stream, Context(), b"heartbeat")
        waiter = sub.wait()
        await asyncio.sleep(0.1)
        assert not waiter.done(), "it has just sent: no heartbeat yet"
        await asyncio.wait_for(waiter, 2)
    finally:
        streams.close(stream)


async def test_a_write_the_subscriber_never_takes_is_cut_off_with_watcher_too_slow() -> None:
    streams = Streams(heartbeat=10, write_timeout=0.2)

    async def serve() -> None:
        stream = streams.open(Subscription(""))
        try:
            await streams.write(stream, Context(), b"taken")
            await streams.write(stream, Context(stuck=True), b"never taken")
        finally:
            streams.close(stream)

    with pytest.raises(WatcherTooSlow, match=r"took no data for 0\.2 s"):
        await asyncio.wait_for(serve(), 5)


async def test_cancelling_a_stream_from_outside_is_still_a_cancellation() -> None:
    streams = Streams(heartbeat=10, write_timeout=10)

    async def serve() -> None:
        stream = streams.open(Subscription(""))
        try:
            await streams.write(stream, Context(stuck=True), b"never taken")
        finally:
            streams.close(stream)

    task = asyncio.create_task(serve())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
