"""What one caller may ask of this process: call rates, failed sign-ins, open streams.

Every limit is per process (each worker and replica keeps its own), is kept in
memory, and refuses with RESOURCE_EXHAUSTED and a reason; the call-rate and
sign-in limits also say when to come back (google.rpc.RetryInfo).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass

from rotor.clock import Clock
from rotor.core.errors import TooManyRequests, TooManyWatchers
from rotor.core.model import Client

MAX_TRACKED = 100_000  # callers remembered per table; past it the least recently seen are forgotten


def peer_address(peer: str) -> str:
    """The caller's address from a gRPC peer string ("ipv4:10.0.0.7:51234"), without the port."""
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer


def address_of_ip(ip: str) -> str:
    """An HTTP peer's IP as peer_address spells a gRPC one ("ipv4:10.0.0.7", "ipv6:[::1]"), so that
    the per-address limits count one caller the same through either door."""
    return f"ipv6:[{ip}]" if ":" in ip else f"ipv4:{ip}"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per client: `rate` calls a second sustained, `burst` at once.

    A rate of 0 turns the limit off.
    """

    def __init__(self, what: str, rate: float, burst: int, clock: Clock) -> None:
        self._what, self._rate, self._burst, self._clock = what, rate, float(burst), clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, client_id: str) -> None:
        """Spend one call of `client_id`'s allowance, or raise TooManyRequests with when to retry."""
        if self._rate <= 0:
            return
        now = self._clock.now()
        bucket = self._buckets.pop(client_id, None)  # re-inserted last: the dict stays in LRU order
        if bucket is None:
            bucket = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        self._buckets[client_id] = bucket
        if len(self._buckets) > MAX_TRACKED:
            del self._buckets[next(iter(self._buckets))]
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self._rate
            raise TooManyRequests(
                f"client {client_id!r} is over its {self._what} limit of {self._rate:g} a second "
                f"(burst {self._burst:g}); retry in {math.ceil(wait * 1000)} ms",
                retry_after=wait,
                reason="RATE_LIMITED",
            )
        bucket.tokens -= 1


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    blocked_until: float


class AuthBackoff:
    """Slows down guessing: after `free` failed authentications in a row for one client id, or
    `free_per_address` from one address (many clients may share one: a NAT, a sidecar), further
    attempts whose secret is not already known good wait 1 s, then 2 s, 4 s... up to `longest`. A client whose secret was verified recently still gets in
    (the Authenticator's cache), so a stranger's wrong guesses do not lock it out.
    A client's run of failures ends when it authenticates; an address's ends after `forget`
    seconds without a failure.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        free: int = 10,
        free_per_address: int = 30,
        longest: float = 60.0,
        forget: float = 900.0,
    ) -> None:
        self._clock, self._longest, self._forget = clock, longest, forget
        self._free = {"client": free, "peer": free_per_address}
        self._failures: dict[str, _Failures] = {}

    def wait(self, client_id: str, address: str) -> float:
        """Seconds before an unverified attempt for this client id from this address is allowed."""
        now = self._clock.now()
        waits = [0.0]
        for key in (f"client:{client_id}", f"peer:{address}"):
            seen = self._failures.get(key)
            if seen is not None and now - seen.last < self._forget:
                waits.append(seen.blocked_until - now)
        return max(waits)

    def failed(self, client_id: str, address: str) -> None:
        now = self._clock.now()
        for key in (f"client:{client_id}", f"peer:{address}"):
            seen = self._failures.pop(key, None)
            if seen is None or now - seen.last >= self._forget:
                seen = _Failures(0, now, now)
            seen.count += 1
            seen.last = now
            free = self._free[key.split(":", 1)[0]]
            if seen.count >= free:
                seen.blocked_until = now + min(2.0 ** (seen.count - free), self._longest)
            self._failures[key] = seen
        while len(self._failures) > MAX_TRACKED:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, client_id: str) -> None:
        self._failures.pop(f"client:{client_id}", None)

    def refusal(self, client_id: str, wait: float) -> TooManyRequests:
        return TooManyRequests(
            f"too many failed authentications for client {client_id[:64]!r} or from this address; "
            f"retry in {math.ceil(wait)} s with the right secret",
            retry_after=wait,
            reason="TOO_MANY_FAILED_AUTHENTICATIONS",
        )


class WatcherLimits:
    """Caps on open WatchKeyRotations streams: per client (per address for anonymous callers),
    and in all."""

    def __init__(self, per_client: int = 100, total: int = 20_000) -> None:
        self.per_client, self.total = per_client, total
        self._open: Counter[str] = Counter()
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def take(self, client: Client | None, peer: str) -> str:
        """Count one more stream for its holder; returns the key `give_back` takes. TooManyWatchers
        at a cap. (A pair of calls, not a context manager: a server holds thousands of streams, and
        each held generator frame costs memory.)"""
        who = sys.intern(
            f"client:{client.client_id}" if client is not None else f"address:{peer_address(peer)}"
        )
        if self._count >= self.total:
            raise TooManyWatchers(
                f"the server holds as many watchers as it allows ({self.total}); retry with backoff"
            )
        if self._open[who] >= self.per_client:
            raise TooManyWatchers(
                f"this {who.split(':', 1)[0]} already holds {self.per_client} WatchKeyRotations streams; "
                "share one per process"
            )
        self._open[who] += 1
        self._count += 1
        return who

    def give_back(self, who: str) -> None:
        self._open[who] -= 1
        if not self._open[who]:
            del self._open[who]
        self._count -= 1
