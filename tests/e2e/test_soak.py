"""A `rotor serve` process under a steady mixed load keeps its memory and its open files level.

The load: Issue, Refresh and Revoke (of access tokens and of grants), GetKeySet, watchers that
connect, read their snapshot and go (every tenth on a connection of its own), a watcher that stays,
and failed sign-ins. The server's VmRSS and open file descriptors are sampled every second for
ROTOR_SOAK_SECONDS (60 by default). The first third is warm-up (scrypt buffers, SQLite's page
caches filling); the median of the last third may exceed the median of the middle third by at
most FD_GROWTH descriptors and RSS_GROWTH bytes. Medians, not peaks: a leak lifts them, a passing
spike (a scrypt run, a connection being set up) does not.

The margins catch a leak of 1 KB per call whenever the load passes about 100 calls/s (2 MiB over
the 20 s between the medians); this machine does 600-700 with other tests running. Wrapping the
server's response encoder to keep 1 KB per response moved the median by 12 MiB, 256 B by 4 MiB,
and keeping one file descriptor per 1000 responses added 13: each failed. Healthy runs move them
by under 0.3 MiB and 0 descriptors.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import rotor_client
from rotor.v1 import keys_pb2

from .conftest import MakeServer
from .support import basic, error_info

SECONDS = float(os.environ.get("ROTOR_SOAK_SECONDS", "60"))
SAMPLE_EVERY = 1.0
FD_GROWTH = 4
RSS_GROWTH = 2 * 1024 * 1024
LEAK_PER_CALL = 1024  # the smallest leak the soak must catch

# revocations outlive their token by clock_skew: short tokens keep the live set, and so every
# watcher's snapshot, the same size from one minute to the next
SOAK_CONFIG = {"tokens": {"access_ttl": "5s", "max_access_ttl": "10s", "refresh_ttl": "1h"}}

pytestmark = pytest.mark.long


@dataclass(frozen=True)
class Sample:
    at: float
    rss: int  # bytes
    fds: int


def sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return Sample(time.monotonic(), kb * 1024, len(os.listdir(f"/proc/{pid}/fd")))


class Loop(threading.Thread):
    """Calls `step` until stopped, counting calls; errors not in `expected` are recorded."""

    expected: frozenset[str] = frozenset()  # ErrorInfo reasons this load provokes on purpose

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.channel = grpc.insecure_channel(address)
        self.halt = threading.Event()
        self.calls = 0
        self.unexpected: Counter[str] = Counter()

    def step(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.step()
            except grpc.RpcError as err:
                if self.halt.is_set():
                    return
                info = error_info(err)
                if info is None or info.reason not in self.expected:
                    self.unexpected[f"{type(self).__name__}: {err.code().name}: {err.details()}"] += 1
                self.calls += 1
            except Exception as err:
                self.unexpected[f"{type(self).__name__}: {err!r}"] += 1
                return

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        self.channel.close()


# the sign-in backoff is per address, and every caller here is 127.0.0.1: once the failed sign-ins
# trip it, a client whose secret is not in the server's cache is asked to wait too
BACKOFF = frozenset({"TOO_MANY_FAILED_AUTHENTICATIONS"})


class Tokens(Loop):
    expected = BACKOFF

    def __init__(self, address: str, client: dict[str, str]) -> None:
        super().__init__(address)
        self.stub = rotor_client.TokenServiceStub(self.channel)
        self.auth = basic(client)

    def step(self) -> None:
        issued = self.stub.Issue(rotor_client.IssueRequest(), metadata=self.auth, timeout=10)
        refresh = issued.refresh_token
        for _ in range(3):
            request = rotor_client.RefreshRequest(refresh_token=refresh)
            renewed = self.stub.Refresh(request, metadata=self.auth, timeout=10)
            refresh = renewed.refresh_token
            revoke = rotor_client.RevokeRequest(token=renewed.access_token, reason="soak")
            self.stub.Revoke(revoke, metadata=self.auth, timeout=10)
            self.calls += 3
        grant = rotor_client.RevokeRequest(token=refresh, reason="soak")
        self.stub.Revoke(grant, metadata=self.auth, timeout=10)
        self.calls += 2


class KeySets(Loop):
    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.stub = rotor_client.TokenServiceStub(self.channel)

    def step(self) -> None:
        self.stub.GetKeySet(rotor_client.GetKeySetRequest(), timeout=10)
        self.calls += 1
        time.sleep(0.002)


class PassingWatchers(Loop):
    """Watchers that connect, read the snapshot and leave; every tenth on a connection of its own."""

    def step(self) -> None:
        own = self.calls % 10 == 0
        channel = grpc.insecure_channel(self.address) if own else self.channel
        try:
            stream = rotor_client.TokenServiceStub(channel).WatchKeyRotations(
                rotor_client.WatchKeyRotationsRequest(), timeout=10
            )
            assert next(stream).type == keys_pb2.KEY_EVENT_TYPE_SNAPSHOT
            stream.cancel()
            self.calls += 1
        finally:
            if own:
                channel.close()
        time.sleep(0.01)


class StayingWatcher(Loop):
    """A watcher that stays, reading every event the load causes (and back at once if it is ever
    cut off for falling behind: its thread shares this process with the load)."""

    expected = frozenset({"WATCHER_TOO_SLOW"})

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.stream: Any = None

    def step(self) -> None:
        self.stream = rotor_client.TokenServiceStub(self.channel).WatchKeyRotations(
            rotor_client.WatchKeyRotationsRequest()
        )
        if self.halt.is_set():  # stop() ran while the stream was being opened
            self.stream.cancel()
        for _ in self.stream:
            self.calls += 1

    def stop(self) -> None:
        self.halt.set()
        if self.stream is not None:
            self.stream.cancel()
        super().stop()


class FailedSignIns(Loop):
    """Wrong secrets for a real client, and client ids nobody registered."""

    expected = frozenset({"INVALID_CLIENT"}) | BACKOFF

    def __init__(self, address: str, victim: dict[str, str]) -> None:
        super().__init__(address)
        self.stub = rotor_client.TokenServiceStub(self.channel)
        self.wrong = [
            rotor_client.basic_auth(victim["client_id"], "not-the-secret"),
            rotor_client.basic_auth("nobody-registered-this", "guess"),
        ]

    def step(self) -> None:
        auth = self.wrong[self.calls % 2]
        try:
            self.stub.Issue(rotor_client.IssueRequest(), metadata=auth, timeout=10)
        finally:
            time.sleep(0.05)
        self.unexpected["a wrong secret was accepted"] += 1


def level(samples: list[Sample], field: str) -> float:
    """The median: a leak lifts it, a passing spike (a scrypt run's buffer, a new connection) does not."""
    return float(statistics.median(getattr(s, field) for s in samples))


def test_memory_and_open_files_stay_level_under_a_mixed_load(make_server: MakeServer) -> None:
    server = make_server(SOAK_CONFIG)
    assert server.proc is not None
    pid = server.proc.pid
    clients = [server.add_client(f"svc-{i}", "--audience", "api") for i in range(2)]
    victim = server.add_client("victim", "--audience", "api")
    loads: list[Loop] = [
        *(Tokens(server.address, c) for c in clients),
        KeySets(server.address),
        PassingWatchers(server.address),
        StayingWatcher(server.address),
        FailedSignIns(server.address, victim),
    ]
    for load in loads:
        load.start()
    samples: list[Sample] = []
    calls: list[int] = []
    try:
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            time.sleep(SAMPLE_EVERY)
            assert server.running(), f"the server died under the soak:\n{server.log()}"
            samples.append(sample(pid))
            calls.append(sum(load.calls for load in loads))
    finally:
        for load in loads:
            load.stop()

    unexpected = sum((load.unexpected for load in loads), Counter())
    assert not unexpected, f"errors under a steady load: {unexpected.most_common(5)}"
    third = len(samples) // 3
    assert third >= 3, f"{len(samples)} samples: ROTOR_SOAK_SECONDS is too short to tell a plateau"
    middle, last = samples[third : 2 * third], samples[2 * third :]
    rate = (calls[-1] - calls[third]) / (samples[-1].at - samples[third].at)
    leak = int(rate * (last[len(last) // 2].at - middle[len(middle) // 2].at) * LEAK_PER_CALL)
    figures = (
        f"RSS {level(middle, 'rss') / 2**20:.1f} -> {level(last, 'rss') / 2**20:.1f} MiB, "
        f"fds {level(middle, 'fds'):.0f} -> {level(last, 'fds'):.0f}, {rate:.0f} calls/s "
        f"(a {LEAK_PER_CALL} B/call leak would add {leak / 2**20:.1f} MiB)"
    )
    assert level(last, "fds") - level(middle, "fds") <= FD_GROWTH, f"open files keep growing: {figures}"
    assert level(last, "rss") - level(middle, "rss") <= RSS_GROWTH, f"memory keeps growing: {figures}"
