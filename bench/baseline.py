"""The baseline: a bare grpc.aio server with one no-op unary method, set up like Rotor's server.

It runs on Rotor's event loop (`rotor.loop.run`, uvloop) with Rotor's server
options (`rotor.app.GRPC_OPTIONS`) and a generic handler whose request and
response are a few bytes passed through unchanged: the ceiling for any Python
gRPC service on this machine.

    python bench/baseline.py    # prints its port, serves until SIGTERM
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio
from rotor import loop
from rotor.app import GRPC_OPTIONS

SERVICE = "bench.Baseline"
METHOD = f"/{SERVICE}/Noop"
REQUEST = b"\x0a\x05bench"  # a protobuf-sized handful of bytes each way
RESPONSE = b"\x0a\x02ok"


async def noop(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
    return RESPONSE


async def serve(handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
    """Serve `handlers` on a free loopback port with Rotor's options; print the port, then serve
    until SIGTERM or SIGINT. (bench/fanout_floor.py serves its own this way.)"""
    server = aio.server(options=[*GRPC_OPTIONS, ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    print(port, flush=True)
    await stopping.wait()
    await server.stop(0)


if __name__ == "__main__":
    loop.run(
        serve(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Noop": grpc.unary_unary_rpc_method_handler(noop)}
                )
            ]
        )
    )
