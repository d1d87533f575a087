"""Verifier outcome counts, and a named KeySetWatcher reporting them to a real Rotor."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from api.support import AUDIENCE, ISSUER, Credentials, Rotor
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rotor.v1 import key_admin_pb2
from rotor_client import KeySetWatcher, TokenExpired, UnknownKey, Verifier
from rotor_client.prometheus import instrument

from .test_watcher import foreign_token, until

MakeRotor = Callable[..., Any]
INTERVAL = 0.5


def refused(verifier: Verifier, token: str) -> str:
    try:
        verifier.verify(token)
    except Exception as e:
        return str(getattr(e, "reason", type(e).__name__))
    return "OK"


async def test_stats_count_every_outcome_per_kid(rotor: Rotor, svc: Credentials) -> None:
    issued = await rotor.issue(svc)
    async with KeySetWatcher(rotor.address) as watcher:
        verifier = Verifier(watcher, issuer=ISSUER, audience=AUDIENCE)
        assert verifier.stats() == {}
        for _ in range(3):
            verifier.verify(issued.access_token)
        with pytest.raises(UnknownKey):
            verifier.verify(foreign_token("stranger"))
        with pytest.raises(Exception, match="compact JWS"):
            verifier.verify("not a token")
        late = Verifier(watcher, issuer=ISSUER, audience=AUDIENCE, clock=lambda: 2**40)
        with pytest.raises(TokenExpired):
            late.verify(issued.access_token)
    assert verifier.stats() == {"OK": 3, "UNKNOWN_KEY": 1, "TOKEN_MALFORMED": 1}
    assert verifier.stats_by_kid() == {
        ("OK", issued.key_id): 3,
        ("UNKNOWN_KEY", "stranger"): 1,
        ("TOKEN_MALFORMED", ""): 1,
    }
    assert late.stats() == {"TOKEN_EXPIRED": 1}, "each verifier counts its own"


async def test_a_kid_no_key_set_could_hold_is_counted_under_none(rotor: Rotor) -> None:
    async with KeySetWatcher(rotor.address) as watcher:
        verifier = Verifier(watcher, issuer=ISSUER, audience=AUDIENCE)
        for kid in ("k" * 500, "two words"):
            with pytest.raises(UnknownKey):
                verifier.verify(foreign_token(kid))
    assert verifier.stats_by_kid() == {("UNKNOWN_KEY", ""): 2}


async def test_counting_is_exact_across_threads(rotor: Rotor, svc: Credentials) -> None:
    token = (await rotor.issue(svc)).access_token
    async with KeySetWatcher(rotor.address) as watcher:
        verifier = Verifier(watcher, issuer=ISSUER, audience=AUDIENCE)

        def work() -> None:
            for _ in range(200):
                verifier.verify(token)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert verifier.stats() == {"OK": 800}


async def status_of(rotor: Rotor, admin: Credentials, name: str) -> key_admin_pb2.WatcherStatus | None:
    response = await rotor.admin.GetRotationStatus(
        key_admin_pb2.GetRotationStatusRequest(), metadata=admin.metadata, timeout=10
    )
    return next((w for w in response.watchers if w.name == name), None)


async def test_a_named_watcher_reports_its_verifiers_counts_kids_and_sequence(
    make_rotor: MakeRotor,
) -> None:
    rotor = await make_rotor(limits={"report_interval": INTERVAL})
    admin = await rotor.add_client("ops-admin", admin=True)
    svc = await rotor.add_client("svc-orders")
    issued = await rotor.issue(svc)
    async with KeySetWatcher(rotor.address, name="orders", report_interval=60) as watcher:
        first, second = (Verifier(watcher, issuer=ISSUER, audience=AUDIENCE) for _ in range(2))
        first.verify(issued.access_token)
        second.verify(issued.access_token)
        assert refused(second, foreign_token("stranger")) == "UNKNOWN_KEY"
        wanted = {("OK", issued.key_id): 2, ("UNKNOWN_KEY", "stranger"): 1}
        # Rotor's next_report_in (INTERVAL) wins over the watcher's own 60 s
        seen: key_admin_pb2.WatcherStatus | None = None
        async with asyncio.timeout(10):
            while True:
                seen = await status_of(rotor, admin, "orders")
                if seen is not None and {(c.outcome, c.kid): c.count for c in seen.verifications} == wanted:
                    break
                await asyncio.sleep(0.05)
        assert seen is not None
        assert set(seen.kids) == set(watcher.key_cache.keys)
        assert seen.sent_sequence == watcher.sequence
        assert seen.HasField("connected_at") and seen.HasField("last_report_at")
        assert watcher.reports_sent >= 1


async def test_counts_of_a_report_that_fails_go_with_the_next(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(limits={"report_interval": 30})
    admin = await rotor.add_client("ops-admin", admin=True)
    svc = await rotor.add_client("svc-orders")
    token = (await rotor.issue(svc)).access_token
    async with KeySetWatcher(rotor.address, name="orders") as watcher:
        verifier = Verifier(watcher, issuer=ISSUER, audience=AUDIENCE)
        await until(lambda: watcher.reports_sent == 1, "the first report")
        verifier.verify(token)
        with pytest.raises(Exception, match=r"reported .* ago"):
            await watcher.report()  # too soon after the first: refused, the count is kept
        rotor.server.fleet._last_report.clear()  # as if the interval had passed
        await watcher.report()
        async with asyncio.timeout(10):
            while True:
                seen = await status_of(rotor, admin, "orders")
                if seen is not None and [(c.outcome, c.count) for c in seen.verifications] == [("OK", 1)]:
                    break
                await asyncio.sleep(0.05)


async def test_an_unnamed_watcher_sends_no_report(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(limits={"report_interval": INTERVAL})
    admin = await rotor.add_client("ops-admin", admin=True)
    async with KeySetWatcher(rotor.address) as watcher:
        Verifier(watcher, issuer=ISSUER, audience=AUDIENCE)
        await asyncio.sleep(3 * INTERVAL)
        assert watcher.reports_sent == 0
    response = await rotor.admin.GetRotationStatus(
        key_admin_pb2.GetRotationStatusRequest(), metadata=admin.metadata, timeout=10
    )
    assert not response.watchers


async def test_prometheus_exports_the_verifications_by_outcome(rotor: Rotor, svc: Credentials) -> None:
    token = (await rotor.issue(svc)).access_token
    registry = CollectorRegistry()
    async with KeySetWatcher(rotor.address) as watcher:
        a, b = (Verifier(watcher, issuer=ISSUER, audience=AUDIENCE) for _ in range(2))
        instrument(a, b, registry=registry)
        a.verify(token)
        b.verify(token)
        assert refused(b, foreign_token()) == "UNKNOWN_KEY"
    found = {
        (s.name, s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert found == {
        ("rotor_client_verifications_total", "OK"): 2,
        ("rotor_client_verifications_total", "UNKNOWN_KEY"): 1,
    }
