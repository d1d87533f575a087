"""Tenants: each has its own keys, tokens, events and revocations, and none reaches another."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import rotor_client
from rotor.config import TenantConfig
from rotor.v1 import keys_pb2

from .conftest import MakeRotor
from .support import (
    AUDIENCE,
    ISSUER,
    Credentials,
    Rotor,
    Watcher,
    assert_error,
    event_type,
    failure,
    jwt_part,
    key_state,
    states,
)

TENANT = "acme"


async def key_set(rotor: Rotor, tenant: str) -> keys_pb2.KeySet:
    return await rotor.tokens.GetKeySet(rotor_client.GetKeySetRequest(tenant=tenant), timeout=10)


async def first_key_set(rotor: Rotor, tenant: str, within: float = 10.0) -> keys_pb2.KeySet:
    """The tenant's key set once it has an active key (the rotator discovers new tenants every tick)."""
    async with asyncio.timeout(within):
        while True:
            try:
                found = await key_set(rotor, tenant)
                if "ACTIVE" in states(found.keys).values():
                    return found
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.05)


def active_kid(keys: Any) -> str:
    (kid,) = [kid for kid, state in states(keys).items() if state == "ACTIVE"]
    return kid


async def next_event(watcher: Watcher) -> keys_pb2.KeyEvent:
    """The next event that is not a snapshot or a heartbeat."""
    while True:
        event = await watcher.next()
        if event_type(event) != "SNAPSHOT":
            return event


@pytest.fixture
async def acme(rotor: Rotor) -> Credentials:
    """A client of tenant "acme" (audience "api"), once the tenant's first key signs."""
    client = await rotor.add_client("svc-acme", tenant=TENANT)
    await first_key_set(rotor, TENANT)
    return client


async def test_a_new_tenant_gets_its_first_key_soon_after_its_first_client(rotor: Rotor) -> None:
    """Unknown before any client names it; registering one gives it an active key of its own."""
    err = await failure(key_set(rotor, TENANT))
    assert_error(err, grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")

    await rotor.add_client("svc-acme", tenant=TENANT)
    found = await first_key_set(rotor, TENANT)
    assert found.tenant == TENANT
    assert list(states(found.keys).values()) == ["ACTIVE"]
    assert all(k.tenant == TENANT for k in found.keys), found.keys
    assert found.sequence > 0


async def test_tenant_key_sets_share_no_key(rotor: Rotor, acme: Credentials, ops: Credentials) -> None:
    """The default tenant's kids and acme's are disjoint, also after a rotation in each."""
    for tenant in ("", TENANT):
        await rotor.admin.RotateKeys(
            rotor_client.RotateKeysRequest(tenant=tenant, reason="test"), metadata=ops.metadata, timeout=30
        )
    default, of_acme = await key_set(rotor, ""), await key_set(rotor, TENANT)
    assert len(default.keys) == len(of_acme.keys) == 2
    assert not set(states(default.keys)) & set(states(of_acme.keys))
    assert {k.tenant for k in default.keys} == {""} and {k.tenant for k in of_acme.keys} == {TENANT}


async def test_a_token_of_a_tenant_client_is_signed_by_that_tenants_key(
    rotor: Rotor, acme: Credentials, svc: Credentials
) -> None:
    """The kid of an acme client's token is acme's active key; a default client's is the default one."""
    acme_token = (await rotor.issue(acme)).access_token
    default_token = (await rotor.issue(svc)).access_token
    assert jwt_part(acme_token, 0)["kid"] == active_kid((await key_set(rotor, TENANT)).keys)
    assert jwt_part(default_token, 0)["kid"] == active_kid((await key_set(rotor, "")).keys)


async def test_a_verifier_of_another_tenant_refuses_the_token(
    rotor: Rotor, acme: Credentials, svc: Credentials
) -> None:
    """A Verifier on one tenant's KeySetWatcher meets the other tenant's kid as unknown; its own accepts it."""
    token = (await rotor.issue(acme)).access_token
    async with (
        rotor_client.KeySetWatcher(rotor.address) as default_watcher,
        rotor_client.KeySetWatcher(rotor.address, tenant=TENANT) as acme_watcher,
    ):
        default_verifier = rotor_client.Verifier(default_watcher, issuer=ISSUER, audience=AUDIENCE)
        acme_verifier = rotor_client.Verifier(acme_watcher, issuer=ISSUER, audience=AUDIENCE)
        with pytest.raises(rotor_client.UnknownKey):
            default_verifier.verify(token)
        assert acme_verifier.verify(token)["client_id"] == acme.client_id
        default_token = (await rotor.issue(svc)).access_token
        with pytest.raises(rotor_client.UnknownKey):
            acme_verifier.verify(default_token)
        assert default_verifier.verify(default_token)["client_id"] == svc.client_id


async def test_key_events_reach_only_their_tenants_watchers(
    rotor: Rotor, acme: Credentials, ops: Credentials
) -> None:
    """A rotation in one tenant is pushed to its watchers; the other tenant's next event is its own."""
    default_watcher, acme_watcher = await rotor.watch(), await rotor.watch(tenant=TENANT)
    await default_watcher.next()
    await acme_watcher.next()

    async def rotate(tenant: str) -> str:
        response = await rotor.admin.RotateKeys(
            rotor_client.RotateKeysRequest(tenant=tenant, immediate=True, reason="test"),
            metadata=ops.metadata,
            timeout=30,
        )
        return str(response.key.kid)

    acme_kid = await rotate(TENANT)
    published = await next_event(acme_watcher)
    assert (event_type(published), published.key.kid, published.keyset.tenant) == (
        "KEY_PUBLISHED",
        acme_kid,
        TENANT,
    )
    default_kid = await rotate("")
    seen = await next_event(default_watcher)
    assert (event_type(seen), seen.key.kid) == ("KEY_PUBLISHED", default_kid), (
        "the default tenant's watcher was sent an acme event"
    )

    for _ in range(2):  # acme's KEY_ACTIVATED and KEY_RETIRED come before anything else
        assert (await next_event(acme_watcher)).key.tenant == TENANT
    acme_kid = await rotate(TENANT)
    seen = await next_event(acme_watcher)
    assert (event_type(seen), seen.key.kid) == ("KEY_PUBLISHED", acme_kid), (
        "acme's watcher was sent a default-tenant event"
    )


async def test_revoking_a_tenants_key_leaves_other_tenants_untouched(
    rotor: Rotor, acme: Credentials, ops: Credentials, svc: Credentials
) -> None:
    """RevokeKey of acme's active key replaces it in acme only; the default key set is as it was."""
    before = await key_set(rotor, "")
    acme_before = await key_set(rotor, TENANT)
    revoked = active_kid(acme_before.keys)
    response = await rotor.admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=revoked, reason="compromised"), metadata=ops.metadata, timeout=30
    )
    assert key_state(response.key) == "REVOKED"

    after = await key_set(rotor, "")
    assert states(after.keys) == states(before.keys)
    assert after.sequence == before.sequence and after.jwks_json == before.jwks_json
    acme_after = await key_set(rotor, TENANT)
    assert revoked not in states(acme_after.keys)
    assert active_kid(acme_after.keys) not in states(after.keys)
    assert jwt_part((await rotor.issue(svc)).access_token, 0)["kid"] == active_kid(before.keys)
    assert jwt_part((await rotor.issue(acme)).access_token, 0)["kid"] == active_kid(acme_after.keys)


async def test_a_revoked_tokens_jti_is_pushed_only_to_its_tenants_watchers(
    rotor: Rotor, acme: Credentials, svc: Credentials
) -> None:
    """TOKEN_REVOKED of an acme token reaches acme's watcher; the default watcher's next event is its own."""
    default_watcher, acme_watcher = await rotor.watch(), await rotor.watch(tenant=TENANT)
    await default_watcher.next()
    await acme_watcher.next()

    acme_token = (await rotor.issue(acme)).access_token
    assert await rotor.revoke(acme, acme_token, reason="test")
    pushed = await next_event(acme_watcher)
    assert event_type(pushed) == "TOKEN_REVOKED"
    assert pushed.revoked_token.jti == jwt_part(acme_token, 1)["jti"]

    default_token = (await rotor.issue(svc)).access_token
    assert await rotor.revoke(svc, default_token, reason="test")
    seen = await next_event(default_watcher)
    assert (event_type(seen), seen.revoked_token.jti) == (
        "TOKEN_REVOKED",
        jwt_part(default_token, 1)["jti"],
    ), "the default tenant's watcher was sent acme's revocation"
    reconnected = await rotor.watch()
    snapshot = await reconnected.next()
    assert {r.jti for r in snapshot.revoked_tokens} == {jwt_part(default_token, 1)["jti"]}


@pytest.mark.parametrize("call", ["GetKeySet", "WatchKeyRotations"])
async def test_an_unknown_tenant_is_not_found(rotor: Rotor, call: str) -> None:
    """A tenant no client or config names is NOT_FOUND, TENANT_NOT_FOUND, for reads and watches alike."""
    if call == "GetKeySet":
        err = await failure(key_set(rotor, "no-such-tenant"))
    else:
        watcher = await rotor.watch(tenant="no-such-tenant")
        err = await watcher.ended()
    assert_error(err, grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")


async def test_a_tenant_signs_with_its_own_configured_algorithm(make_rotor: MakeRotor) -> None:
    """[tenants.acme] algorithm = "ES256" gives acme ES256 keys while the default tenant keeps EdDSA."""
    rotor = await make_rotor(tenants={TENANT: TenantConfig(algorithm="ES256")})
    acme = await rotor.add_client("svc-acme", tenant=TENANT)
    of_acme = await first_key_set(rotor, TENANT)
    default = await key_set(rotor, "")
    assert {k.alg for k in of_acme.keys} == {"ES256"}
    assert {k.alg for k in default.keys} == {"EdDSA"}
    assert jwt_part((await rotor.issue(acme)).access_token, 0)["alg"] == "ES256"

    ops = await rotor.add_client("ops", admin=True)
    rotated = await rotor.admin.RotateKeys(
        rotor_client.RotateKeysRequest(tenant=TENANT, reason="test"), metadata=ops.metadata, timeout=30
    )
    assert rotated.key.alg == "ES256", "a rotation must keep the tenant's algorithm"


async def test_an_admin_of_a_tenant_manages_only_that_tenant(
    rotor: Rotor, acme: Credentials, ops: Credentials
) -> None:
    """A tenant's admin may rotate its own keys but not the default tenant's; a default-tenant admin may."""
    acme_admin = await rotor.add_client("acme-admin", admin=True, tenant=TENANT)
    own = rotor_client.RotateKeysRequest(tenant=TENANT, reason="own tenant")
    assert (await rotor.admin.RotateKeys(own, metadata=acme_admin.metadata, timeout=30)).key.tenant == TENANT
    other = rotor_client.RotateKeysRequest(tenant="", reason="not its tenant")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rotor.admin.RotateKeys(other, metadata=acme_admin.metadata, timeout=30)
    assert_error(refused.value, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")
    assert "admin of tenant 'acme' only" in (refused.value.details() or "")
    global_rotation = rotor_client.RotateKeysRequest(tenant=TENANT, reason="global admin")
    assert (
        await rotor.admin.RotateKeys(global_rotation, metadata=ops.metadata, timeout=30)
    ).key.tenant == TENANT
