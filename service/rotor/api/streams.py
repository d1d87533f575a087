"""Open WatchKeyRotations streams and their two deadlines: heartbeats and stuck writes.

A stream sends a heartbeat once it has sent nothing for `heartbeat` seconds, and
is cut off with WATCHER_TOO_SLOW when one write has waited `write_timeout`
seconds (the subscriber takes nothing: its flow-control window is full). One
ticker checks both for every open stream, a few times per interval, instead of
a timer per stream and per write: with thousands of watchers, setting and
cancelling two timers for every delivery cost more than the delivery's own
Python. A heartbeat is therefore sent after between 1 and 1.25 intervals of
silence, and a stuck write is cut off after between 1 and 1.25 timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from rotor.core.errors import WatcherTooSlow
from rotor.core.events import Subscription

TICKS_PER_INTERVAL = 4


class Stream:
    """One open stream: its task, its subscription, and when it last sent or began a write."""

    __slots__ = ("sent_at", "sub", "task", "too_slow", "writing_since")

    def __init__(self, sub: Subscription[Any], now: float) -> None:
        self.task = asyncio.current_task()
        self.sub = sub
        self.sent_at = now
        self.writing_since = 0.0  # 0 while no write waits
        self.too_slow = False


class Streams:
    """The open streams of one servicer, and the ticker that keeps their deadlines."""

    def __init__(self, heartbeat: float, write_timeout: float) -> None:
        self.heartbeat = heartbeat
        self.write_timeout = write_timeout
        self._tick = min(heartbeat, write_timeout) / TICKS_PER_INTERVAL
        self._open: set[Stream] = set()
        self._ticker: asyncio.Task[None] | None = None

    def open(self, sub: Subscription[Any]) -> Stream:
        """Track the calling task's stream until `close`."""
        stream = Stream(sub, time.monotonic())
        self._open.add(stream)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._keep_deadlines(), name="rotor-stream-deadlines")
        return stream

    def close(self, stream: Stream) -> None:
        self._open.discard(stream)
        if not self._open and self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def write(self, stream: Stream, context: Any, message: bytes) -> None:
        """Send one message; WatcherTooSlow if it waits `write_timeout` for the subscriber."""
        stream.writing_since = time.monotonic()
        try:
            await context.write(message)
        except asyncio.CancelledError:
            if not stream.too_slow:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # our cancellation, turned into the error below
            raise WatcherTooSlow(
                f"this stream took no data for {self.write_timeout:g} s and was cut off; "
                "reconnect with after_sequence set to the last sequence received"
            ) from None
        finally:
            stream.writing_since = 0.0
        stream.sent_at = time.monotonic()

    async def _keep_deadlines(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(self._tick)
                now = time.monotonic()
                for stream in self._open:
                    if stream.writing_since:
                        if now - stream.writing_since >= self.write_timeout and not stream.too_slow:
                            stream.too_slow = True
                            if stream.task is not None:
                                stream.task.cancel()
                    elif now - stream.sent_at >= self.heartbeat:
                        stream.sub.beat()
