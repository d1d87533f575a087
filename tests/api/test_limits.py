"""Overload and abuse: what one caller may ask of a server, and what happens past it.

Per-client rate limits on Issue and Refresh (token buckets, RESOURCE_EXHAUSTED with a
google.rpc.RetryInfo), backoff on repeated failed authentication per client id and per
address, caps on watchers, gRPC's size limits, a stuck subscriber cut off without holding up
the others, and keepalive and idle timeouts that free what a vanished peer held.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import rotor_client
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rotor.clock import FakeClock

from .conftest import MakeRotor
from .support import Credentials, Rotor, assert_error, event_type, failure, jwt_part, status_details

TIGHT_WINDOW = (("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0))


def retry_delay(err: aio.AioRpcError) -> float:
    """The google.rpc.RetryInfo delay an error carries, in seconds (the test fails without one)."""
    status = status_details(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay: duration_pb2.Duration = info.retry_delay
            return delay.ToNanoseconds() / 1e9
    raise AssertionError(f"no RetryInfo in {err.code().name}: {err.details()}")


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for `condition` to hold; the test fails after `within` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - server-side state, with no event to wait on
            await asyncio.sleep(0.05)


async def serving(rotor: Rotor) -> bool:
    health = health_pb2_grpc.HealthStub(rotor.channel())
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


# -- rate limits -----------------------------------------------------------------


async def test_issue_past_the_burst_is_refused_with_when_to_retry_and_refills_at_the_rate(
    make_rotor: MakeRotor,
) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock, limits={"issue_rate": 2, "issue_burst": 3})
    svc = await rotor.add_client("svc")
    for _ in range(3):
        await rotor.issue(svc)
    err = await failure(rotor.issue(svc))
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert 0 < retry_delay(err) <= 0.5, "one call refills in 1/rate seconds"
    assert "svc" in err.details() and "Issue" in err.details()

    clock.advance(0.5)  # one call's worth at 2 a second
    await rotor.issue(svc)
    assert_error(await failure(rotor.issue(svc)), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    clock.advance(60)  # refills to the burst, not beyond
    for _ in range(3):
        await rotor.issue(svc)
    assert_error(await failure(rotor.issue(svc)), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")


async def test_one_clients_limit_leaves_other_clients_and_other_methods_alone(make_rotor: MakeRotor) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock, limits={"issue_rate": 1, "issue_burst": 1})
    noisy, quiet = await rotor.add_client("noisy"), await rotor.add_client("quiet")
    issued = await rotor.issue(noisy)
    assert_error(await failure(rotor.issue(noisy)), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    await rotor.issue(quiet)
    refreshed = await rotor.tokens.Refresh(
        rotor_client.RefreshRequest(refresh_token=issued.refresh_token), metadata=noisy.metadata, timeout=10
    )
    assert refreshed.access_token, "Refresh has a bucket of its own"
    assert await rotor.revoke(noisy, issued.access_token), "Revoke is not limited"


async def test_refresh_past_its_burst_is_refused_and_the_refresh_token_is_not_spent(
    make_rotor: MakeRotor,
) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock, limits={"refresh_rate": 1, "refresh_burst": 1})
    svc = await rotor.add_client("svc")
    first, second = await rotor.issue(svc), await rotor.issue(svc)

    async def refresh(token: str) -> rotor_client.TokenResponse:
        request = rotor_client.RefreshRequest(refresh_token=token)
        return await rotor.tokens.Refresh(request, metadata=svc.metadata, timeout=10)

    await refresh(first.refresh_token)
    err = await failure(refresh(second.refresh_token))
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert 0 < retry_delay(err) <= 1
    clock.advance(1)
    assert (await refresh(second.refresh_token)).refresh_token, "a refused Refresh left its token unused"


async def test_a_rate_of_zero_turns_the_limit_off(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(clock=FakeClock(start=time.time()), limits={"issue_rate": 0, "issue_burst": 0})
    svc = await rotor.add_client("svc")
    await asyncio.gather(*(rotor.issue(svc) for _ in range(50)))


# -- failed authentication ---------------------------------------------------------


def wrong(client_id: str) -> tuple[tuple[str, str], ...]:
    return rotor_client.basic_auth(client_id, "not-the-secret-0123456789")


async def test_repeated_wrong_secrets_for_one_client_make_guesses_wait_longer_and_longer(
    make_rotor: MakeRotor,
) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock)
    victim = await rotor.add_client("victim")
    for _ in range(10):
        assert_error(
            await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=wrong("victim"))),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CLIENT",
        )
    err = await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=wrong("victim")))
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_FAILED_AUTHENTICATIONS")
    assert retry_delay(err) == pytest.approx(1.0)
    # the right secret, never verified by this server, waits too: no guess is checked meanwhile
    err = await failure(rotor.issue(victim))
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_FAILED_AUTHENTICATIONS")

    clock.advance(1)
    assert_error(
        await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=wrong("victim"))),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CLIENT",
    )
    err = await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=wrong("victim")))
    assert retry_delay(err) == pytest.approx(2.0), "each failure past the free ones doubles the wait"

    clock.advance(2)
    await rotor.issue(victim)  # the right secret ends the run of failures
    for _ in range(9):
        await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=wrong("victim")))
    await rotor.issue(victim)


async def test_a_strangers_wrong_guesses_do_not_lock_out_a_client_already_signed_in(
    make_rotor: MakeRotor,
) -> None:
    rotor = await make_rotor(clock=FakeClock(start=time.time()))
    svc = await rotor.add_client("svc")
    await rotor.issue(svc)  # its secret is now known good
    for _ in range(15):
        await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=wrong("svc")))
    assert_error(
        await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=wrong("svc"))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_FAILED_AUTHENTICATIONS",
    )
    assert (await rotor.issue(svc)).access_token


async def test_backoff_tells_an_unknown_client_id_from_a_known_one_no_better_than_before(
    make_rotor: MakeRotor,
) -> None:
    rotor = await make_rotor(clock=FakeClock(start=time.time()))
    await rotor.add_client("real")
    answers = {}
    for client_id in ("real", "ghost"):
        for _ in range(10):
            await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=wrong(client_id)))
        err = await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=wrong(client_id)))
        assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_FAILED_AUTHENTICATIONS")
        answers[client_id] = (err.details().replace(client_id, "ID"), retry_delay(err))
    assert answers["real"] == answers["ghost"]


async def test_many_failures_from_one_address_slow_every_unverified_attempt_from_it(
    make_rotor: MakeRotor,
) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock)
    known, fresh = await rotor.add_client("known"), await rotor.add_client("fresh")
    await rotor.issue(known)
    for n in range(30):  # a sweep over client ids: each id fails once, the address thirty times
        await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=wrong(f"guess-{n}")))
    err = await failure(rotor.issue(fresh))
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_FAILED_AUTHENTICATIONS")
    assert (await rotor.issue(known)).access_token, "a secret that already worked still does"
    clock.advance(retry_delay(err))
    assert (await rotor.issue(fresh)).access_token


# -- watchers ---------------------------------------------------------------------


async def test_watchers_per_client_and_in_all_are_capped_as_configured(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(limits={"watchers_per_client": 2, "max_watchers": 3})
    one, two = await rotor.add_client("one"), await rotor.add_client("two")

    async def watch(client: Credentials) -> Any:
        """An open stream that got its snapshot."""
        call = rotor.tokens.WatchKeyRotations(
            rotor_client.WatchKeyRotationsRequest(), metadata=client.metadata
        )
        assert event_type(await call.read()) == "SNAPSHOT"
        return call

    async def refused(client: Credentials) -> aio.AioRpcError:
        call = rotor.tokens.WatchKeyRotations(
            rotor_client.WatchKeyRotationsRequest(), metadata=client.metadata
        )
        with pytest.raises(aio.AioRpcError) as caught:
            await call.read()
        return caught.value

    held = [await watch(one), await watch(one)]
    err = await refused(one)
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS")
    assert "2" in err.details()

    held.append(await watch(two))
    err = await refused(two)
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS")
    assert "3" in err.details()

    held.pop(0).cancel()  # a closed stream frees its place
    await until(lambda: rotor.server.watcher_limits.count < 3)
    held.append(await watch(one))
    for call in held:
        call.cancel()


# -- size limits ------------------------------------------------------------------


async def test_a_message_over_four_mebibytes_is_refused_and_the_server_serves_on(
    rotor: Rotor, svc: Credentials
) -> None:
    huge = rotor_client.IssueRequest(subject="s" * (4 * 1024 * 1024 + 1))
    err = await failure(rotor.tokens.Issue(huge, metadata=svc.metadata, timeout=30))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await serving(rotor)
    assert (await rotor.issue(svc)).access_token


async def test_metadata_far_over_eight_kibibytes_is_refused_and_the_server_serves_on(
    rotor: Rotor, svc: Credentials
) -> None:
    metadata = (*svc.metadata, ("x-padding", "p" * 20_000))  # past gRPC's hard limit, not just its soft one
    err = await failure(rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=metadata, timeout=30))
    assert err.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
    )
    assert await serving(rotor)
    assert (await rotor.issue(svc)).access_token


# -- a stuck subscriber -----------------------------------------------------------


async def test_a_stuck_watcher_is_cut_off_and_never_holds_up_the_others(make_rotor: MakeRotor) -> None:
    """A watcher that stops reading (its flow-control window full) is cut off with
    WATCHER_TOO_SLOW once a write waits `write_timeout`; meanwhile every event reaches a reading
    watcher promptly: the median time from a Revoke's answer to its event's arrival stays under
    50 ms."""
    rotor = await make_rotor(limits={"write_timeout": 0.5, "issue_rate": 0, "issue_burst": 0})
    svc = await rotor.add_client("svc")
    stuck = await rotor.watch(channel=rotor.channel(options=TIGHT_WINDOW))
    reading = await rotor.watch()
    assert event_type(await stuck.next()) == "SNAPSHOT"
    assert event_type(await reading.next()) == "SNAPSHOT"

    lags: list[float] = []
    count = 300  # far past the stuck watcher's window
    for _ in range(count):
        token = (await rotor.issue(svc)).access_token
        assert await rotor.revoke(svc, token)
        answered = time.perf_counter()
        event = await reading.next(within=10)
        lags.append(time.perf_counter() - answered)
        assert event.revoked_token.jti == jwt_part(token, 1)["jti"]

    err = await stuck.ended(within=30)
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCHER_TOO_SLOW")
    assert "after_sequence" in err.details()
    assert len(stuck.received) - 1 < count, "the stuck watcher should not have taken every event"
    assert statistics.median(lags) < 0.05, (
        f"events reached the reading watcher late: {statistics.median(lags)}"
    )


# -- keepalive and idle connections -------------------------------------------------


class FreezingProxy:
    """A TCP proxy that can stop passing bytes both ways, as a host that vanished without a FIN."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self.frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await source.read(65536):
                if self.frozen.is_set():
                    await asyncio.Event().wait()  # hold the socket open, pass nothing
                sink.write(data)
                await sink.drain()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()


@contextlib.asynccontextmanager
async def proxied(rotor: Rotor) -> AsyncIterator[FreezingProxy]:
    proxy = FreezingProxy(rotor.server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_a_watcher_whose_host_vanished_is_dropped_by_keepalive(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(limits={"keepalive_time": 0.2, "keepalive_timeout": 0.2})
    async with proxied(rotor) as proxy:
        channel = aio.insecure_channel(f"127.0.0.1:{proxy.port}")
        stub = rotor_client.TokenServiceStub(channel)
        call = stub.WatchKeyRotations(rotor_client.WatchKeyRotationsRequest())
        assert event_type(await call.read()) == "SNAPSHOT"
        assert rotor.server.watcher_limits.count == 1
        proxy.frozen.set()
        await until(lambda: rotor.server.watcher_limits.count == 0, within=15)
        call.cancel()
        await channel.close()


async def test_a_connection_with_no_call_is_closed_after_the_idle_timeout(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(limits={"idle_timeout": 0.3})
    channel = rotor.channel()
    await rotor_client.TokenServiceStub(channel).GetKeySet(rotor_client.GetKeySetRequest(), timeout=10)
    assert channel.get_state() == grpc.ChannelConnectivity.READY
    async with asyncio.timeout(15):
        while channel.get_state() == grpc.ChannelConnectivity.READY:
            await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
    assert channel.get_state() == grpc.ChannelConnectivity.IDLE
    assert await serving(rotor), "the next call reconnects"
