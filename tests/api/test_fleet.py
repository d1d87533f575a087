"""The fleet view over gRPC: ReportVerifications, and what GetRotationStatus and /metrics make of it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from prometheus_client.parser import text_string_to_metric_families
from rotor.clock import FakeClock
from rotor.v1 import key_admin_pb2, keys_pb2, token_service_pb2

from .conftest import MakeRotor
from .support import (
    Credentials,
    Rotor,
    Watcher,
    assert_error,
    failure,
    rotation_status,
    status_details,
    status_when,
)

INTERVAL = 0.5  # [limits] report_interval in these tests


def report(
    watcher: str = "orders",
    *,
    tenant: str = "",
    sequence: int = 0,
    kids: tuple[str, ...] = (),
    counts: tuple[tuple[str, str, int], ...] = (),
) -> token_service_pb2.ReportVerificationsRequest:
    return token_service_pb2.ReportVerificationsRequest(
        tenant=tenant,
        watcher=watcher,
        sequence=sequence,
        kids=kids,
        counts=[keys_pb2.VerificationCount(outcome=o, kid=k, count=c) for o, k, c in counts],
    )


def verifications(w: key_admin_pb2.WatcherStatus) -> dict[tuple[str, str], int]:
    return {(c.outcome, c.kid): c.count for c in w.verifications}


@pytest.fixture
async def fleet_rotor(make_rotor: MakeRotor) -> Rotor:
    return await make_rotor(limits={"report_interval": INTERVAL}, http_listen="127.0.0.1:0")


@pytest.fixture
async def admin(fleet_rotor: Rotor) -> Credentials:
    return await fleet_rotor.add_client("ops-admin", admin=True)


async def test_a_report_needs_no_credentials_and_says_when_to_report_next(fleet_rotor: Rotor) -> None:
    response = await fleet_rotor.tokens.ReportVerifications(report(counts=(("OK", "", 3),)), timeout=10)
    assert response.next_report_in.ToNanoseconds() == INTERVAL * 1e9


async def test_a_reporting_watcher_is_listed_with_its_kids_sequence_and_counts(
    fleet_rotor: Rotor, admin: Credentials
) -> None:
    keyset = await fleet_rotor.key_set()
    kid = keyset.keys[0].kid
    counts = (("OK", kid, 40), ("TOKEN_EXPIRED", kid, 2), ("UNKNOWN_KEY", "stranger", 1))
    await fleet_rotor.tokens.ReportVerifications(
        report("orders", sequence=keyset.sequence, kids=(kid,), counts=counts), timeout=10
    )
    listed = await status_when(fleet_rotor, admin, lambda s: len(s.watchers) == 1)
    (orders,) = listed.watchers
    assert orders.name == "orders"
    assert list(orders.kids) == [kid]
    assert orders.sent_sequence == keyset.sequence
    assert orders.replica == fleet_rotor.server.fleet.replica
    assert orders.HasField("last_report_at") and not orders.HasField("connected_at")
    assert verifications(orders) == {
        ("OK", kid): 40,
        ("TOKEN_EXPIRED", kid): 2,
        ("UNKNOWN_KEY", "stranger"): 1,
    }


async def test_counts_add_up_over_reports_within_the_window(fleet_rotor: Rotor, admin: Credentials) -> None:
    await fleet_rotor.tokens.ReportVerifications(report(counts=(("OK", "k", 5),)), timeout=10)
    await asyncio.sleep(INTERVAL / 2 + 0.05)  # the least a name may wait between reports
    await fleet_rotor.tokens.ReportVerifications(report(counts=(("OK", "k", 7),)), timeout=10)
    await status_when(
        fleet_rotor, admin, lambda s: [verifications(w) for w in s.watchers] == [{("OK", "k"): 12}]
    )


async def test_a_streaming_watcher_that_reports_shows_both(fleet_rotor: Rotor, admin: Credentials) -> None:
    """Its stream gives the replica, peer and connection time; its report the kids it holds."""
    call = fleet_rotor.tokens.WatchKeyRotations(
        token_service_pb2.WatchKeyRotationsRequest(), metadata=(("x-rotor-watcher", "billing"),)
    )
    snapshot = await Watcher(call).next()
    kids = tuple(k.kid for k in snapshot.keyset.keys)
    await fleet_rotor.tokens.ReportVerifications(
        report("billing", sequence=snapshot.sequence, kids=kids, counts=(("OK", kids[0], 1),)), timeout=10
    )
    listed = await status_when(
        fleet_rotor, admin, lambda s: len(s.watchers) == 1 and s.watchers[0].HasField("last_report_at")
    )
    (billing,) = listed.watchers
    assert billing.HasField("connected_at") and billing.peer
    assert tuple(billing.kids) == kids and billing.sent_sequence == snapshot.sequence
    call.cancel()


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        pytest.param(report(counts=(("MAYBE", "", 1),)), "INVALID_VALUE", id="unknown-outcome"),
        pytest.param(report(counts=(("ok", "", 1),)), "INVALID_VALUE", id="outcome-in-lower-case"),
        pytest.param(report(""), "FIELD_REQUIRED", id="no-watcher-name"),
        pytest.param(report("x" * 300), "INVALID_VALUE", id="watcher-name-too-long"),
        pytest.param(report("two words"), "INVALID_VALUE", id="watcher-name-with-a-space"),
        pytest.param(report(kids=tuple(f"k{i}" for i in range(65))), "VALUE_TOO_LONG", id="too-many-kids"),
        pytest.param(report(kids=("k" * 300,)), "INVALID_VALUE", id="kid-too-long"),
        pytest.param(
            report(counts=tuple(("OK", f"k{i}", 1) for i in range(257))),
            "VALUE_TOO_LONG",
            id="too-many-counts",
        ),
        pytest.param(report(counts=(("OK", "k" * 300, 1),)), "INVALID_VALUE", id="count-kid-too-long"),
        pytest.param(report(counts=(("OK", "", 10**13),)), "INVALID_VALUE", id="count-too-large"),
        pytest.param(report(sequence=2**64 - 1), "INVALID_VALUE", id="sequence-beyond-any"),
    ],
)
async def test_malformed_or_oversized_reports_are_invalid_argument(
    fleet_rotor: Rotor,
    admin: Credentials,
    request_: token_service_pb2.ReportVerificationsRequest,
    reason: str,
) -> None:
    err = await failure(fleet_rotor.tokens.ReportVerifications(request_, timeout=10))
    assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert len(err.details()) < 400, "a message quotes at most a short prefix of the input"
    assert not (await rotation_status(fleet_rotor, admin)).watchers, "a refused report tracks nothing"


async def test_an_unknown_tenant_is_not_found(fleet_rotor: Rotor) -> None:
    err = await failure(fleet_rotor.tokens.ReportVerifications(report(tenant="nowhere"), timeout=10))
    assert_error(err, grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")


async def test_a_name_reporting_too_fast_is_rate_limited_with_retry_info(fleet_rotor: Rotor) -> None:
    await fleet_rotor.tokens.ReportVerifications(report("eager"), timeout=10)
    err = await failure(fleet_rotor.tokens.ReportVerifications(report("eager"), timeout=10))
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    details = status_details(err)
    assert details is not None
    retry = [d for d in details.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry, "RATE_LIMITED carries a RetryInfo"
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    assert 0 < info.retry_delay.ToNanoseconds() <= INTERVAL * 1e9
    # another name is not held back by this one
    await fleet_rotor.tokens.ReportVerifications(report("patient"), timeout=10)


async def test_no_more_names_are_tracked_than_max_watchers(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(
        limits={"report_interval": INTERVAL, "max_watchers": 2, "watchers_per_client": 2}
    )
    for name in ("one", "two"):
        await rotor.tokens.ReportVerifications(report(name), timeout=10)
    err = await failure(rotor.tokens.ReportVerifications(report("three"), timeout=10))
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS")


async def test_a_watcher_silent_for_three_intervals_is_gone(make_rotor: MakeRotor) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock, limits={"report_interval": INTERVAL})
    admin = await rotor.add_client("ops-admin", admin=True)
    await rotor.tokens.ReportVerifications(report("fading"), timeout=10)
    await status_when(rotor, admin, lambda s: [w.name for w in s.watchers] == ["fading"])
    clock.advance(2.5 * INTERVAL)
    assert [w.name for w in (await rotation_status(rotor, admin)).watchers] == ["fading"], "not gone yet"
    clock.advance(INTERVAL)
    assert not (await rotation_status(rotor, admin)).watchers


async def metrics(rotor: Rotor) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{rotor.server.http_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_reports_show_in_the_fleet_metrics(fleet_rotor: Rotor) -> None:
    await fleet_rotor.tokens.ReportVerifications(
        report("orders", counts=(("OK", "k", 9), ("UNKNOWN_KEY", "x", 1))), timeout=10
    )
    wanted: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        ("rotor_fleet_verifications_total", (("outcome", "OK"), ("tenant", ""), ("watcher", "orders"))): 9,
        (
            "rotor_fleet_verifications_total",
            (("outcome", "UNKNOWN_KEY"), ("tenant", ""), ("watcher", "orders")),
        ): 1,
        ("rotor_fleet_watchers", (("tenant", ""),)): 1,
        ("rotor_fleet_watcher_up", (("tenant", ""), ("watcher", "orders"))): 1,
    }
    found: dict[Any, float] = {}
    async with asyncio.timeout(10):
        while True:
            found = await metrics(fleet_rotor)
            if all(found.get(k) == v for k, v in wanted.items()):
                break
            await asyncio.sleep(0.05)


# -- two replicas' Fleet views over one store (no server: the ack gate's and the views' logic) --


@pytest.fixture
async def two_replicas(tmp_path: Any) -> Any:
    from rotor.core.fleet import Fleet
    from rotor.core.propagation import WatcherRegistry
    from rotor.store.sqlite import SqliteStore

    clock = FakeClock(start=1_800_000_000.0)
    stores = [await SqliteStore.open(tmp_path / "rotor.db") for _ in range(2)]
    registries = [WatcherRegistry(), WatcherRegistry()]
    fleets = [
        Fleet(store, clock, registry, replica=name, report_interval=10.0)
        for store, registry, name in zip(stores, registries, ("a", "b"), strict=True)
    ]
    yield clock, registries, fleets
    for store in stores:
        await store.close()


async def test_the_ack_gate_sees_a_watcher_streaming_from_another_replica(two_replicas: Any) -> None:
    clock, (registry_a, _), (fleet_a, fleet_b) = two_replicas
    stream = registry_a.add("orders", "ipv4:10.0.0.7:5000", "", clock.now())
    try:
        registry_a.sent(stream, 5, ["k1"])
        assert fleet_a.unacknowledged("", "k2") == ["orders"], "its own stream, at once"
        assert fleet_b.unacknowledged("", "k2") == [], "replica b has not read the store yet"
        await fleet_a.sync()
        await fleet_b.sync()
        assert fleet_b.unacknowledged("", "k2") == ["orders"]
        assert fleet_b.unacknowledged("", "k1") == []
        (seen,) = await fleet_b.watchers("")
        assert (seen.replica, seen.connected_at, seen.sent_sequence) == ("a", clock.now(), 5)
        registry_a.sent(stream, 6, ["k1", "k2"])
        await fleet_a.sync()  # not yet due: a stream's row is refreshed once per report interval
        await fleet_b.sync()
        assert fleet_b.unacknowledged("", "k2") == ["orders"]
        clock.advance(10.0)
        await fleet_a.sync()
        await fleet_b.sync()
        assert fleet_b.unacknowledged("", "k2") == []
    finally:
        registry_a.remove(stream)
    await fleet_a.sync()  # the stream ended: written at once
    await fleet_b.sync()
    assert await fleet_b.watchers("") == [] and fleet_b.unacknowledged("", "k3") == []


async def test_a_watcher_reporting_to_one_replica_holds_keys_for_the_other(two_replicas: Any) -> None:
    from rotor.core.fleet import check_report

    clock, _, (fleet_a, fleet_b) = two_replicas
    fleet_a.report(check_report("", "poller", 4, ["k1", "k2"], [("OK", "k1", 3)]))
    assert [w.name for w in await fleet_a.watchers("")] == ["poller"], "a report shows at once where taken"
    await fleet_a.sync()
    await fleet_b.sync()
    (seen,) = await fleet_b.watchers("")
    assert (seen.replica, seen.kids, seen.sequence, seen.connected_at) == ("a", ("k1", "k2"), 4, None)
    assert [(c.outcome, c.kid, c.count) for c in seen.verifications] == [("OK", "k1", 3)]
    assert fleet_b.unacknowledged("", "k2") == [] and fleet_b.unacknowledged("", "k3") == ["poller"]
    assert dict(fleet_b.present()) == {"": 1}
    clock.advance(30.0)  # three report intervals without a word
    await fleet_b.sync()
    assert await fleet_b.watchers("") == [] and fleet_b.unacknowledged("", "k3") == []
    assert [(w.name, present) for w, present in fleet_b.known()] == [("poller", False)]


async def test_at_most_a_hundred_counts_are_shown_per_watcher_the_largest_first(two_replicas: Any) -> None:
    from rotor.core.fleet import check_report

    _, _, (fleet_a, _) = two_replicas
    counts = [("UNKNOWN_KEY", f"forged-{i}", 1) for i in range(255)] + [("OK", "k1", 1000)]
    fleet_a.report(check_report("", "flooded", 0, ["k1"], counts))
    await fleet_a.sync()
    (seen,) = await fleet_a.watchers("")
    assert len(seen.verifications) == 100
    assert (seen.verifications[0].outcome, seen.verifications[0].count) == ("OK", 1000)
