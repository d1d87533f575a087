"""The fan-out baseline: a bare grpc.aio server that streams to watchers and nothing else.

It answers WatchKeyRotations with a SNAPSHOT, then holds each stream on a
queue; RotateKeys stamps one KEY_PUBLISHED event with `occurred_at` and puts its
bytes, encoded once, on every queue. No authentication, no store, no limits:
what grpc.aio itself costs to fan one message out to N streams on this machine,
on Rotor's event loop (`rotor.loop.run`, uvloop) with Rotor's server options.
bench/watchers.py and the benchmark's RotateKeys call drive it exactly as they
drive Rotor, so the two fan-out figures compare like with like.

    python bench/fanout_floor.py    # prints its port, serves until SIGTERM
"""

from __future__ import annotations

import asyncio
from typing import Any

import baseline
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from rotor import loop
from rotor_client import KeyEvent, KeyEventType


class Fanout:
    def __init__(self) -> None:
        self.sequence = 1
        self.queues: set[asyncio.Queue[bytes]] = set()

    async def watch(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> Any:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.queues.add(queue)
        try:
            yield KeyEvent(
                type=KeyEventType.KEY_EVENT_TYPE_SNAPSHOT, sequence=self.sequence
            ).SerializeToString()
            while True:
                yield await queue.get()
        finally:
            self.queues.discard(queue)

    async def rotate(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        self.sequence += 1
        occurred_at = Timestamp()
        occurred_at.GetCurrentTime()
        event = KeyEvent(
            type=KeyEventType.KEY_EVENT_TYPE_KEY_PUBLISHED, sequence=self.sequence, occurred_at=occurred_at
        ).SerializeToString()
        for queue in self.queues:
            queue.put_nowait(event)
        return b""

    async def list_keys(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        return b""


def handlers(fanout: Fanout) -> list[grpc.GenericRpcHandler[Any, Any]]:
    return [
        grpc.method_handlers_generic_handler(
            "rotor.v1.TokenService",
            {"WatchKeyRotations": grpc.unary_stream_rpc_method_handler(fanout.watch)},
        ),
        grpc.method_handlers_generic_handler(
            "rotor.v1.KeyAdmin",
            {
                "RotateKeys": grpc.unary_unary_rpc_method_handler(fanout.rotate),
                "ListKeys": grpc.unary_unary_rpc_method_handler(fanout.list_keys),
            },
        ),
    ]


if __name__ == "__main__":
    loop.run(baseline.serve(handlers(Fanout())))
