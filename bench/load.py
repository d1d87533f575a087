"""The load generator: one process, grpc.aio on Rotor's event loop, a fixed number of calls in flight.

    python bench/load.py --target HOST:PORT --method issue --concurrency 16 --seconds 3 \
        --out FILE [--client-id ID --client-secret S] [--channels N]

It prepares first, outside the timed window: the channels connect, each caller
makes one untimed call (the server checks the client's secret once, then
caches it), a Refresh caller gets the first token of its own chain, and a
Revoke run issues the access tokens it will revoke, one revoke per token
(issuing for as long as the timed window lasts, so the pool outlasts the
window unless Revoke is faster than Issue; `exhausted` then says so).

Then it prints `ready`, waits for a line on stdin (so that several load
processes start together), runs for --seconds and writes one JSON object to
--out: calls, errors, first_error, seconds, exhausted, latencies_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from baseline import METHOD as NOOP_METHOD
from baseline import REQUEST as NOOP_REQUEST
from grpc import aio
from rotor import loop
from rotor_client import (
    GetKeySetRequest,
    IssueRequest,
    RefreshRequest,
    RevokeRequest,
    TokenServiceStub,
    basic_auth,
)

METHODS = ("noop", "issue", "refresh", "revoke", "keyset")
TIMEOUT = 30.0

Call = Callable[[], Awaitable[object]]


class Exhausted(Exception):
    """Raised when a Revoke caller has no token left to revoke."""


async def make_call(method: str, channel: aio.Channel, args: argparse.Namespace, tokens: list[str]) -> Call:
    """One caller's call of `method`, after the caller's own untimed preparation."""
    stub = TokenServiceStub(channel)
    auth = basic_auth(args.client_id, args.client_secret)
    issue = IssueRequest(audience=[args.audience])

    if method == "noop":
        noop = channel.unary_unary(NOOP_METHOD)
        return lambda: noop(NOOP_REQUEST, timeout=TIMEOUT)
    if method == "keyset":
        keyset = GetKeySetRequest()
        return lambda: stub.GetKeySet(keyset, timeout=TIMEOUT)
    if method == "issue":
        return lambda: stub.Issue(issue, metadata=auth, timeout=TIMEOUT)
    if method == "revoke":

        async def revoke() -> object:
            if not tokens:
                raise Exhausted
            return await stub.Revoke(RevokeRequest(token=tokens.pop()), metadata=auth, timeout=TIMEOUT)

        return revoke

    chain = [(await stub.Issue(issue, metadata=auth, timeout=TIMEOUT)).refresh_token]
    if not chain[0]:
        raise SystemExit("Refresh needs a server that issues refresh tokens; this one issued none")

    async def refresh() -> object:
        try:
            response = await stub.Refresh(
                RefreshRequest(refresh_token=chain[0]), metadata=auth, timeout=TIMEOUT
            )
        except grpc.RpcError:
            # the token may have been spent before the failure: a new chain, not a reuse
            chain[0] = (await stub.Issue(issue, metadata=auth, timeout=TIMEOUT)).refresh_token
            raise
        chain[0] = response.refresh_token
        return response

    return refresh


async def drive(call: Call, deadline: float, latencies: list[float], errors: list[str]) -> None:
    """Call `call` back to back until `deadline`, recording each success's latency."""
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            await call()
        except grpc.RpcError as e:
            errors.append(f"{e.code().name}: {e.details()}")
            continue
        except Exhausted:
            return
        latencies.append(time.perf_counter() - start)


async def issue_tokens(
    channel: aio.Channel, args: argparse.Namespace, deadline: float, out: list[str]
) -> None:
    stub = TokenServiceStub(channel)
    auth = basic_auth(args.client_id, args.client_secret)
    issue = IssueRequest(audience=[args.audience])
    while time.perf_counter() < deadline:
        out.append((await stub.Issue(issue, metadata=auth, timeout=TIMEOUT)).access_token)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    channels = [aio.insecure_channel(args.target) for _ in range(min(args.channels, args.concurrency))]
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), TIMEOUT) for c in channels))
        on = [channels[i % len(channels)] for i in range(args.concurrency)]
        tokens: list[str] = []
        if args.method == "revoke":
            deadline = time.perf_counter() + args.seconds
            await asyncio.gather(*(issue_tokens(channel, args, deadline, tokens) for channel in on))
        calls = await asyncio.gather(*(make_call(args.method, channel, args, tokens) for channel in on))
        if args.method != "revoke":  # a revoke spends a token: its warm-up call was the issuing
            await asyncio.gather(*(call() for call in calls))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        latencies: list[float] = []
        errors: list[str] = []
        started = time.perf_counter()
        await asyncio.gather(*(drive(call, started + args.seconds, latencies, errors) for call in calls))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return {
        "calls": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "seconds": round(elapsed, 4),
        "exhausted": args.method == "revoke" and not tokens,
        "latencies_ms": [round(s * 1000, 3) for s in latencies],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--client-id", default="")
    parser.add_argument("--client-secret", default="")
    parser.add_argument("--audience", default="bench")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    parser.add_argument("--seconds", type=float, default=3.0, help="the timed window")
    parser.add_argument("--channels", type=int, default=64, help="connections the callers share")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    args = parser.parse_args()
    args.out.write_text(json.dumps(loop.run(run(args))))


if __name__ == "__main__":
    main()
