"""What Issue and Refresh hand out, and how long a grant lives."""

from __future__ import annotations

import time
from typing import Any

import grpc
import rotor_client
from google.protobuf import duration_pb2
from rotor.clock import FakeClock

from .support import ISSUER, Credentials, Rotor, assert_error, failure, jwt_part


async def refresh(rotor: Rotor, client: Credentials, token: str, *scopes: str) -> Any:
    request = rotor_client.RefreshRequest(refresh_token=token, scope=list(scopes))
    return await rotor.tokens.Refresh(request, metadata=client.metadata, timeout=30)


async def test_the_response_describes_the_token_it_carries(rotor: Rotor, svc: Credentials) -> None:
    issued = await rotor.issue(svc, scope=["orders.read"], ttl=duration_pb2.Duration(seconds=90))
    header, claims = jwt_part(issued.access_token, 0), jwt_part(issued.access_token, 1)
    assert issued.token_type == "Bearer"
    assert issued.key_id == header["kid"] and header["typ"] == "at+jwt"
    assert issued.expires_at.seconds == claims["exp"] == claims["iat"] + 90
    assert list(issued.scope) == ["orders.read"] == claims["scope"].split()
    assert list(issued.audience) == ["api"] and claims["aud"] == "api"
    assert claims["iss"] == ISSUER and claims["sub"] == claims["client_id"] == "svc-orders"
    assert issued.refresh_token and issued.refresh_expires_at.seconds - claims["iat"] in (3599, 3600)


async def test_down_scoping_narrows_one_access_token_and_the_grant_keeps_its_scope(
    rotor: Rotor, svc: Credentials
) -> None:
    granted = await rotor.issue(svc, scope=["orders.read", "orders.write"])
    narrowed = await refresh(rotor, svc, granted.refresh_token, "orders.read")
    assert list(narrowed.scope) == ["orders.read"]
    assert jwt_part(narrowed.access_token, 1)["scope"] == "orders.read"
    full = await refresh(rotor, svc, narrowed.refresh_token)
    assert list(full.scope) == ["orders.read", "orders.write"]


async def test_no_refresh_token_when_refresh_ttl_is_zero(make_rotor: Any) -> None:
    rotor = await make_rotor(tokens={"refresh_ttl": 0})
    svc = await rotor.add_client("svc")
    issued = await rotor.issue(svc)
    assert issued.access_token and issued.refresh_token == ""
    assert not issued.HasField("refresh_expires_at")


async def test_a_grant_ends_at_refresh_family_ttl_however_often_it_is_refreshed(make_rotor: Any) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock, tokens={"refresh_ttl": 3600, "refresh_family_ttl": 3 * 3600})
    svc = await rotor.add_client("svc")
    granted = await rotor.issue(svc)
    family_end = granted.refresh_expires_at.seconds - 3600 + 3 * 3600

    token = granted.refresh_token
    for _ in range(2):
        clock.advance(3000)  # within each refresh token's own life
        renewed = await refresh(rotor, svc, token)
        assert renewed.refresh_expires_at.seconds <= family_end
        token = renewed.refresh_token
    clock.advance(3000)  # 9000 s: the token lives on, but not past the family's end
    last = await refresh(rotor, svc, token)
    assert last.refresh_expires_at.seconds == family_end

    clock.advance(family_end - clock.now() + 1)
    err = await failure(refresh(rotor, svc, last.refresh_token))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_EXPIRED")


async def test_a_client_allowed_any_subject_keeps_it_through_refresh(rotor: Rotor) -> None:
    gateway = await rotor.add_client("gateway", allow_any_subject=True)
    issued = await rotor.issue(gateway, subject="user-42")
    assert jwt_part(issued.access_token, 1)["sub"] == "user-42"
    renewed = await refresh(rotor, gateway, issued.refresh_token)
    claims = jwt_part(renewed.access_token, 1)
    assert claims["sub"] == "user-42" and claims["client_id"] == "gateway"
