"""GetKeySet: public, complete, on the published timeline, and current the moment a key changes."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import jwt
import pytest
import rotor_client
from rotor.clock import FakeClock

from .support import ISSUER, Credentials, Rotor, assert_error, event_type, failure, jwt_part, states

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


def verify(token: str, jwks_json: str) -> dict[str, Any]:
    """Verify with PyJWT against the JWK Set alone; the claims."""
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_json(jwks_json).keys}
    header = jwt.get_unverified_header(token)
    key = keys[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token, key=key.key, algorithms=[header["alg"]], issuer=ISSUER, options={"verify_aud": False}
    )
    return claims


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "ES384", "PS256", "RS256"])
async def test_the_key_set_is_public_and_on_the_published_timeline(make_rotor: Any, algorithm: str) -> None:
    rotor = await make_rotor(keys={"algorithm": algorithm, "rsa_bits": 2048})
    svc = await rotor.add_client("svc")
    key_set = await rotor.key_set()

    assert key_set.issuer == ISSUER and key_set.tenant == ""
    assert key_set.max_cache_age.ToTimedelta().total_seconds() == rotor.config.keys.max_cache_age
    (active,) = key_set.keys
    assert states(key_set.keys) == {active.kid: "ACTIVE"} and active.alg == algorithm
    for stamp in ("created_at", "activates_at", "retires_at", "expires_at"):
        assert active.HasField(stamp) and getattr(active, stamp).seconds > 0, stamp
    assert not active.HasField("revoked_at")
    assert key_set.HasField("next_rotation_at")
    assert key_set.next_rotation_at.seconds - active.activates_at.seconds == pytest.approx(
        rotor.config.keys.rotation_period, abs=1
    )

    members = json.loads(key_set.jwks_json)["keys"]
    assert [m["kid"] for m in members] == [active.kid]
    for member in [*members, json.loads(active.public_jwk_json)]:
        assert not PRIVATE_MEMBERS & set(member), f"private members in the key set: {sorted(member)}"
        assert member["alg"] == algorithm and member["use"] == "sig" and member["kty"]

    issued = await rotor.issue(svc)
    assert verify(issued.access_token, key_set.jwks_json)["client_id"] == "svc"
    assert jwt_part(issued.access_token, 0) == {"alg": algorithm, "kid": active.kid, "typ": "at+jwt"}


async def test_a_published_key_sets_next_rotation_at(rotor: Rotor, ops: Credentials) -> None:
    pending = (
        await rotor.admin.RotateKeys(
            rotor_client.RotateKeysRequest(reason="scheduled"), metadata=ops.metadata, timeout=30
        )
    ).key
    key_set = await rotor.key_set()
    assert states(key_set.keys)[pending.kid] == "PENDING"
    assert key_set.next_rotation_at == pending.activates_at
    assert pending.activates_at.seconds - pending.created_at.seconds == pytest.approx(2, abs=1)
    assert pending.kid in key_set.jwks_json, "a key must be published before it signs"


@pytest.mark.parametrize("which", ["active", "pending", "retired"])
async def test_a_revoked_key_leaves_the_very_next_key_set(rotor: Rotor, ops: Credentials, which: str) -> None:
    first = (await rotor.key_set()).keys[0].kid
    if which == "retired":
        await rotor.admin.RotateKeys(
            rotor_client.RotateKeysRequest(immediate=True), metadata=ops.metadata, timeout=30
        )
    elif which == "pending":
        await rotor.admin.RotateKeys(rotor_client.RotateKeysRequest(), metadata=ops.metadata, timeout=30)
    before = await rotor.key_set()  # primes any cache of the encoded key set
    by_state = {state: kid for kid, state in states(before.keys).items()}
    kid = by_state[which.upper()]
    if which != "pending":
        assert kid == first

    revoked = await rotor.admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=kid, reason="leaked"), metadata=ops.metadata, timeout=30
    )
    assert not revoked.pending_approval

    after = await rotor.key_set()
    assert kid not in states(after.keys) and kid not in after.jwks_json
    assert after.sequence > before.sequence
    assert list(states(after.keys).values()).count("ACTIVE") == 1


# -- the lifecycle on a fake clock --------------------------------------------------


async def test_the_scheduled_lifecycle_follows_the_clock(make_rotor: Any) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock)
    svc = await rotor.add_client("svc")
    ops = await rotor.add_client("ops", admin=True)
    watcher = await rotor.watch()
    snapshot = await watcher.next()
    (old,) = states(snapshot.keyset.keys)
    old_token = (await rotor.issue(svc)).access_token

    clock.advance(3600 - 2)  # rotation_period - publish_lead: the successor is published
    published = await watcher.next()
    assert event_type(published) == "KEY_PUBLISHED" and states([published.key]) == {
        published.key.kid: "PENDING"
    }
    new = published.key.kid
    assert (await rotor.key_set()).next_rotation_at == published.key.activates_at
    assert (await rotor.issue(svc)).key_id == old, "a key signed before its publish_lead passed"

    clock.advance(2)  # it activates, its predecessor retires
    activated, retired = await watcher.next(), await watcher.next()
    assert [(event_type(e), e.key.kid) for e in (activated, retired)] == [
        ("KEY_ACTIVATED", new),
        ("KEY_RETIRED", old),
    ]
    assert (await rotor.issue(svc)).key_id == new
    key_set = await rotor.key_set()
    assert states(key_set.keys) == {old: "RETIRED", new: "ACTIVE"}
    assert verify(old_token, key_set.jwks_json)["jti"], "tokens of the retired key must still verify"

    clock.advance(600 + 1)  # max_access_ttl + clock_skew after retiring: expired
    expired = await watcher.next()
    assert (event_type(expired), expired.key.kid) == ("KEY_EXPIRED", old)
    assert states((await rotor.key_set()).keys) == {new: "ACTIVE"}
    listed = await rotor.admin.ListKeys(
        rotor_client.ListKeysRequest(include_expired=True), metadata=ops.metadata, timeout=10
    )
    assert states(listed.keys)[old] == "EXPIRED"

    err = await failure(
        rotor.admin.RevokeKey(rotor_client.RevokeKeyRequest(kid=old), metadata=ops.metadata, timeout=10)
    )
    assert_error(err, grpc.StatusCode.FAILED_PRECONDITION, "KEY_NOT_REVOCABLE")


async def test_refresh_tokens_and_approvals_expire_on_the_clock(make_rotor: Any) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock, keys={"require_approval": True})
    svc = await rotor.add_client("svc")
    first = await rotor.add_client("admin-a", admin=True)
    second = await rotor.add_client("admin-b", admin=True)
    granted = await rotor.issue(svc)
    kid = (await rotor.key_set()).keys[0].kid
    asked = await rotor.admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=kid, reason="suspected"), metadata=first.metadata, timeout=30
    )

    clock.advance(3600 + 1)  # past refresh_ttl and the approval window

    err = await failure(
        rotor.tokens.Refresh(
            rotor_client.RefreshRequest(refresh_token=granted.refresh_token),
            metadata=svc.metadata,
            timeout=30,
        )
    )
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_EXPIRED")
    assert not await rotor.revoke(svc, granted.access_token), "an expired token was reported revoked"

    err = await failure(
        rotor.admin.ApproveOperation(
            rotor_client.ApproveOperationRequest(operation_id=asked.operation_id),
            metadata=second.metadata,
            timeout=30,
        )
    )
    assert_error(err, grpc.StatusCode.FAILED_PRECONDITION, "OPERATION_EXPIRED")
    assert kid in states((await rotor.key_set()).keys)


async def test_a_revoked_jti_stays_in_snapshots_until_the_token_expires(make_rotor: Any) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock)
    svc = await rotor.add_client("svc")
    token = (await rotor.issue(svc, ttl={"seconds": 120})).access_token
    jti = jwt_part(token, 1)["jti"]
    assert await rotor.revoke(svc, token)

    clock.advance(119)
    snapshot = await (await rotor.watch()).next()
    assert jti in {r.jti for r in snapshot.revoked_tokens}

    clock.advance(2)
    snapshot = await (await rotor.watch()).next()
    assert jti not in {r.jti for r in snapshot.revoked_tokens}
