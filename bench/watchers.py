"""Fan-out watchers: many WatchKeyRotations streams from one process, over a few channels.

    python bench/watchers.py --target HOST:PORT --client ID:SECRET:STREAMS [--client ...] \
        --out FILE [--channels 4] [--timeout 120]

Each stream authenticates as its client and reads its first message, the
SNAPSHOT. Once every stream has it or has failed, the process prints
`ready OPENED FAILED [FIRST ERROR]`; then each stream waits for the first key event after its
snapshot and notes the wall-clock time (time.time()) it arrived. At the end
(every stream has its event, or --timeout passed) it writes one JSON object to
--out: received (the arrival times), missing, errors, the event's sequence,
type and occurred_at, and the CPU seconds the process spent from `ready` on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from rotor import loop
from rotor_client import (
    KeyEvent,
    KeyEventType,
    TokenServiceStub,
    WatchKeyRotationsRequest,
    basic_auth,
)


class Watchers:
    """The streams of this process, and how many have their snapshot."""

    def __init__(self, total: int, opening: int) -> None:
        self.total, self.opened, self.failed = total, 0, 0
        self.all_started = asyncio.Event()
        self.errors: list[str] = []
        self._opening = asyncio.Semaphore(opening)
        # every call stays open until the process is done, as a real watcher's would: a stream
        # closed on its event would make the server tear it down while it still delivers to others
        self.calls: list[Any] = []

    def started(self, ok: bool) -> None:
        self._opening.release()
        if ok:
            self.opened += 1
        else:
            self.failed += 1
        if self.opened + self.failed == self.total:
            self.all_started.set()

    async def watch(self, stub: TokenServiceStub, metadata: Any) -> tuple[float, KeyEvent]:
        """The arrival time and the event: the first after this stream's snapshot."""
        snapshot: int | None = None
        await self._opening.acquire()
        call = stub.WatchKeyRotations(WatchKeyRotationsRequest(), metadata=metadata)
        self.calls.append(call)
        try:
            async for event in call:
                if snapshot is None:
                    if event.type != KeyEventType.KEY_EVENT_TYPE_SNAPSHOT:
                        raise RuntimeError(f"the first message is {KeyEventType.Name(event.type)}")
                    snapshot = event.sequence
                    self.started(True)
                elif event.type != KeyEventType.KEY_EVENT_TYPE_HEARTBEAT and event.sequence > snapshot:
                    return time.time(), event
            raise RuntimeError("the stream ended before the event")
        except (grpc.RpcError, RuntimeError) as e:
            self.errors.append(f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e))
            if snapshot is None:
                self.started(False)
            raise


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = [(client_id, secret) for client_id, secret, n in args.client for _ in range(int(n))]
    channels = [aio.insecure_channel(args.target) for _ in range(args.channels)]
    stubs = [TokenServiceStub(channel) for channel in channels]
    watchers = Watchers(len(plan), args.opening)
    tasks = [
        asyncio.create_task(watchers.watch(stubs[i % len(stubs)], basic_auth(client_id, secret)))
        for i, (client_id, secret) in enumerate(plan)
    ]
    try:
        await asyncio.wait_for(watchers.all_started.wait(), args.timeout)
        print(f"ready {watchers.opened} {watchers.failed} {''.join(watchers.errors[:1])}", flush=True)
        cpu_ready = time.process_time()
        done, _ = await asyncio.wait(tasks, timeout=args.timeout)
        cpu_s = time.process_time() - cpu_ready
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for call in watchers.calls:
            call.cancel()
        await asyncio.gather(*(channel.close() for channel in channels))
    arrived = [task.result() for task in done if not task.cancelled() and task.exception() is None]
    events = {(e.sequence, e.type, e.occurred_at.seconds + e.occurred_at.nanos / 1e9) for _, e in arrived}
    sequence, type_, occurred_at = min(events) if events else (0, 0, 0.0)
    return {
        "received": [t for t, _ in arrived],
        "missing": len(plan) - len(arrived),
        "errors": watchers.errors[:5],
        "distinct_events": len(events),
        "cpu_s": cpu_s,  # this process's CPU (every thread) from `ready` to the last event read
        "event": {"sequence": sequence, "type": KeyEventType.Name(type_), "occurred_at": occurred_at},
    }


def client_spec(text: str) -> tuple[str, str, str]:
    client_id, secret, streams = text.rsplit(":", 2)
    return client_id, secret, streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument(
        "--client", type=client_spec, action="append", required=True, help="ID:SECRET:STREAMS (repeatable)"
    )
    parser.add_argument("--channels", type=int, default=4, help="connections the streams share")
    parser.add_argument("--opening", type=int, default=100, help="streams waiting for their snapshot at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for each phase")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    args = parser.parse_args()
    args.out.write_text(json.dumps(loop.run(run(args))))


if __name__ == "__main__":
    main()
