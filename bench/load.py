"""A load generator: one process, grpc.aio, a fixed number of calls in flight.

    python bench/load.py --target 127.0.0.1:50051 --client-id ID --client-secret S \
        --method issue --concurrency 32 --seconds 5

Prints one JSON object: calls, errors, seconds, rate, p50_ms, p99_ms. Each
caller opens its own channel every `--calls-per-channel` calls at most, so
connections spread over the workers sharing a port (the kernel balances
SO_REUSEPORT by connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import grpc
from grpc import aio
from rotor_client import (
    GetKeySetRequest,
    IssueRequest,
    RefreshRequest,
    TokenServiceStub,
    basic_auth,
)

try:
    import uvloop
except ImportError:  # the standard loop then
    uvloop = None


async def caller(
    args: argparse.Namespace, deadline: float, latencies: list[float], errors: list[str]
) -> None:
    metadata = basic_auth(args.client_id, args.client_secret)
    issue = IssueRequest(audience=[args.audience])
    while time.perf_counter() < deadline:
        async with aio.insecure_channel(args.target) as channel:
            stub = TokenServiceStub(channel)
            refresh_token = ""
            for _ in range(args.calls_per_channel):
                if time.perf_counter() >= deadline:
                    return
                start = time.perf_counter()
                try:
                    if args.method == "issue":
                        await stub.Issue(issue, metadata=metadata, timeout=30)
                    elif args.method == "keyset":
                        await stub.GetKeySet(GetKeySetRequest(), timeout=30)
                    elif args.method == "refresh":
                        if not refresh_token:
                            refresh_token = (
                                await stub.Issue(issue, metadata=metadata, timeout=30)
                            ).refresh_token
                            start = time.perf_counter()
                        resp = await stub.Refresh(
                            RefreshRequest(refresh_token=refresh_token), metadata=metadata, timeout=30
                        )
                        refresh_token = resp.refresh_token
                except grpc.RpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")  # type: ignore[attr-defined]
                    continue
                latencies.append(time.perf_counter() - start)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    deadline = started + args.seconds
    await asyncio.gather(*(caller(args, deadline, latencies, errors) for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "calls": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "seconds": round(elapsed, 3),
        "rate": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--client-id", default="")
    parser.add_argument("--client-secret", default="")
    parser.add_argument("--audience", default="bench")
    parser.add_argument("--method", choices=["issue", "refresh", "keyset"], default="issue")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--calls-per-channel", type=int, default=200)
    args = parser.parse_args()
    if uvloop is not None:
        uvloop.install()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
