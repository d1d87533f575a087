"""The status model (rotor.core.status): the key timeline, the watchers judged against it, and the
newest audit events, as /status.json and `rotor status --json` show them."""

from __future__ import annotations

from typing import Any

import pytest
from rotor.core.fleet import FleetWatcher, VerificationCount
from rotor.core.model import AuditEntry, KeyState, SigningKey
from rotor.core.status import AUDIT_SHOWN, TenantStatus, WatcherSighting, build_status, sighting_of

from .support import PUBLISH_LEAD, ROTATION, T0, VERIFY_WINDOW

NOW = T0 + 100


def key(kid: str, state: KeyState, activates_at: float) -> SigningKey:
    retires = activates_at + ROTATION
    return SigningKey(
        kid=kid,
        tenant="",
        alg="EdDSA",
        state=state,
        public_jwk="{}",
        sealed_private=None,
        created_at=activates_at - PUBLISH_LEAD,
        activates_at=activates_at,
        retires_at=retires,
        expires_at=retires + VERIFY_WINDOW,
    )


RETIRED = key("retired-kid-0000", KeyState.RETIRED, T0 - ROTATION)
ACTIVE = key("active-kid-11111", KeyState.ACTIVE, T0)
PENDING = key("pending-kid-2222", KeyState.PENDING, T0 + 200)
EXPIRED = key("expired-kid-3333", KeyState.EXPIRED, T0 - 3 * ROTATION)
REVOKED = key("revoked-kid-4444", KeyState.REVOKED, T0 - 2 * ROTATION)
KEYS = (PENDING, EXPIRED, ACTIVE, REVOKED, RETIRED)


def sighting(
    name: str, sequence: int, kids: set[str], *counts: tuple[str, str, int], replica: str = "r1"
) -> WatcherSighting:
    return WatcherSighting(name, replica, T0, sequence, frozenset(kids), NOW - 5, tuple(counts))


def status(*watchers: WatcherSighting, keys: tuple[SigningKey, ...] = KEYS, audit: Any = ()) -> TenantStatus:
    return build_status(
        "",
        now=NOW,
        latest_sequence=9,
        next_rotation_at=PENDING.activates_at,
        keys=keys,
        watchers=watchers,
        audit=audit,
    )


def test_the_timeline_holds_the_keys_of_the_set_in_the_order_they_sign() -> None:
    doc = status().to_dict()
    assert [(k["kid"], k["state"]) for k in doc["keys"]] == [
        (RETIRED.kid, "retired"),
        (ACTIVE.kid, "active"),
        (PENDING.kid, "pending"),
    ]
    line = doc["keys"][2]
    assert line["short_kid"] == "pending-" and line["alg"] == "EdDSA"
    assert line["published_at"] == "2027-01-15T07:53:20Z"  # T0 + 200 s - publish_lead; T0 is 08:00:00
    assert (line["activates_at"], doc["next_rotation_at"]) == ("2027-01-15T08:03:20Z", "2027-01-15T08:03:20Z")
    assert (doc["active_kid"], doc["pending_kid"]) == (ACTIVE.kid, PENDING.kid)


@pytest.mark.parametrize(
    ("kids", "active", "pending"),
    [
        pytest.param({ACTIVE.kid, PENDING.kid}, True, True, id="both"),
        pytest.param({RETIRED.kid, ACTIVE.kid}, True, False, id="not-yet-the-pending-one"),
        pytest.param({RETIRED.kid}, False, False, id="neither"),
    ],
)
def test_a_watcher_holds_the_active_and_the_pending_key_or_not(
    kids: set[str], active: bool, pending: bool
) -> None:
    (line,) = status(sighting("billing", 7, kids)).watchers
    assert (line.holds_active, line.holds_pending, line.behind) == (active, pending, 2)


def test_a_watcher_at_the_newest_event_holds_the_whole_set_before_its_next_report_says_so() -> None:
    (line,) = status(sighting("billing", 9, {RETIRED.kid, ACTIVE.kid})).watchers
    assert (line.holds_active, line.holds_pending, line.behind) == (True, True, 0)
    assert line.kids == (ACTIVE.kid, RETIRED.kid)  # what it said it holds, as it said it


def test_with_no_pending_key_holding_it_is_not_a_question() -> None:
    (line,) = status(sighting("billing", 9, {ACTIVE.kid}), keys=(ACTIVE,)).watchers
    assert (line.holds_active, line.holds_pending, line.behind) == (True, None, 0)


def test_verification_outcomes_add_up_across_kids_with_the_failure_ratios() -> None:
    """Expiry is a failure, but the one to expect: the other ratio leaves it out."""
    w = sighting(
        "billing",
        9,
        {ACTIVE.kid},
        ("OK", ACTIVE.kid, 80),
        ("OK", RETIRED.kid, 10),
        ("TOKEN_EXPIRED", ACTIVE.kid, 6),
        ("UNKNOWN_KEY", "stranger", 4),
    )
    verifications = status(w).to_dict()["watchers"][0]["verifications"]
    assert verifications["outcomes"] == {"OK": 90, "TOKEN_EXPIRED": 6, "UNKNOWN_KEY": 4}
    assert (verifications["total"], verifications["failed"], verifications["expired"]) == (100, 10, 6)
    assert (verifications["failure_ratio"], verifications["other_failure_ratio"]) == (0.1, 0.04)


def test_a_watcher_with_no_verifications_has_no_ratio() -> None:
    verifications = status(sighting("billing", 9, set())).to_dict()["watchers"][0]["verifications"]
    assert verifications["total"] == 0 and verifications["failure_ratio"] is None


def test_watchers_are_listed_by_name_then_replica() -> None:
    lines = status(
        sighting("orders", 9, set(), replica="r1"),
        sighting("billing", 9, set(), replica="r2"),
        sighting("billing", 9, set(), replica="r1"),
    ).watchers
    assert [(w.name, w.replica) for w in lines] == [("billing", "r1"), ("billing", "r2"), ("orders", "r1")]


def entry(sequence: int) -> AuditEntry:
    return AuditEntry(sequence, T0 + sequence, "ops", "key.published", "kid", "success", "", "{}", "", "")


def test_the_newest_audit_events_come_first_and_only_so_many() -> None:
    doc = status(audit=[entry(i) for i in range(1, 31)]).to_dict()
    assert [a["sequence"] for a in doc["audit"]] == list(range(30, 30 - AUDIT_SHOWN, -1))


def test_a_viewer_who_may_not_see_the_audit_log_gets_no_audit_key() -> None:
    assert "audit" not in status(audit=None).to_dict()


def test_a_watcher_that_only_reports_is_listed_with_no_stream_and_what_it_reported() -> None:
    reported = FleetWatcher(
        tenant="",
        name="cron",
        replica="r2",
        peer="",
        connected_at=None,
        sent_sequence=0,
        sent_kids=(),
        reported_sequence=8,
        reported_kids=(ACTIVE.kid,),
        last_seen=NOW - 3,
        last_report_at=NOW - 3,
        verifications=(
            VerificationCount("OK", ACTIVE.kid, 5),
            VerificationCount("UNKNOWN_KEY", PENDING.kid, 1),
        ),
    )
    (line,) = status(sighting_of(reported)).to_dict()["watchers"]
    assert (line["name"], line["replica"], line["connected_at"]) == ("cron", "r2", None)
    assert (line["sequence"], line["behind"], line["kids"]) == (8, 1, [ACTIVE.kid])
    assert (line["holds_active"], line["holds_pending"]) == (True, False)
    assert line["verifications"]["outcomes"] == {"OK": 5, "UNKNOWN_KEY": 1}
