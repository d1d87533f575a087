"""OAuth 2.0 over HTTP: /oauth2/token, /oauth2/revoke, /oauth2/introspect, as stock clients use them.

The door calls the same core as the gRPC API, so what one door does the other sees: a refresh
token used over HTTP is reused over gRPC, a token revoked in one is inactive in the other.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
import requests
import rotor_client
from authlib.integrations.requests_client import OAuth2Session
from multidict import CIMultiDict
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session as OAuthlibSession
from rotor.api.limits import address_of_ip, peer_address
from rotor.clock import FakeClock
from rotor.config import TenantConfig
from rotor.v1 import key_admin_pb2
from rotor_client import KeySetWatcher, RevokeKeyRequest, Verifier
from rotor_client.verifier import certificate_thumbprint

from .conftest import MakeRotor
from .support import AUDIENCE, ISSUER, Credentials, Rotor, assert_error, failure, jwt_part
from .test_tls import SAN, Pki

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
async def rotor(make_rotor: MakeRotor) -> Rotor:
    return await make_rotor(http_listen="127.0.0.1:0")


def base(rotor: Rotor, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{rotor.server.http_port}"


def basic(client: Credentials) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{client.client_id}:{client.secret}".encode()).decode()
    }


async def post(
    url: str,
    data: Any,
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    """POST a form; (status, headers, JSON body or {})."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=headers or {}, ssl=ssl_context or False) as resp,
    ):
        body = await resp.read()
        return resp.status, CIMultiDict(resp.headers), json.loads(body) if body else {}


async def token(rotor: Rotor, client: Credentials, **form: Any) -> dict[str, Any]:
    status, headers, body = await post(
        base(rotor) + "/oauth2/token", {"grant_type": "client_credentials", **form}, basic(client)
    )
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    return body


async def introspect(rotor: Rotor, client: Credentials, value: str) -> dict[str, Any]:
    status, _, body = await post(base(rotor) + "/oauth2/introspect", {"token": value}, basic(client))
    assert status == 200, body
    return body


# -- third-party clients -----------------------------------------------------------


async def test_authlib_gets_refreshes_and_revokes_tokens(rotor: Rotor, svc: Credentials) -> None:
    """authlib's OAuth2Session: client_credentials, refresh_token (the old one then dies), revoke."""
    url = base(rotor)

    def session_flow() -> tuple[dict[str, Any], dict[str, Any], requests.Response, dict[str, Any]]:
        with OAuth2Session(svc.client_id, svc.secret, scope="orders.read") as session:
            first = dict(session.fetch_token(url + "/oauth2/token", grant_type="client_credentials"))
            second = dict(session.refresh_token(url + "/oauth2/token", refresh_token=first["refresh_token"]))
            revoked = session.revoke_token(
                url + "/oauth2/revoke", second["refresh_token"], token_type_hint="refresh_token"
            )
            reused = requests.post(
                url + "/oauth2/token",
                data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"]},
                auth=(svc.client_id, svc.secret),
                timeout=30,
            ).json()
            return first, second, revoked, reused

    first, second, revoked, after = await asyncio.to_thread(session_flow)
    assert first["token_type"] == "Bearer" and first["scope"] == "orders.read"
    assert 0 < first["expires_in"] <= rotor.config.tokens.access_ttl
    assert jwt_part(first["access_token"], 1)["client_id"] == svc.client_id
    assert second["refresh_token"] != first["refresh_token"]
    assert revoked.status_code == 200
    assert after["error"] == "invalid_grant" and after["error_reason"] == "REFRESH_TOKEN_REVOKED"


async def test_authlib_with_client_secret_post(rotor: Rotor, svc: Credentials) -> None:
    """client_secret_post: the credentials in the body, no Authorization header."""
    url = base(rotor) + "/oauth2/token"

    def fetch() -> dict[str, Any]:
        with OAuth2Session(svc.client_id, svc.secret, token_endpoint_auth_method="client_secret_post") as s:
            return dict(s.fetch_token(url, grant_type="client_credentials", audience=AUDIENCE))

    issued = await asyncio.to_thread(fetch)
    assert jwt_part(issued["access_token"], 1)["aud"] == AUDIENCE


async def test_requests_oauthlib_backend_application_client(
    rotor: Rotor, svc: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests-oauthlib's BackendApplicationClient, as its docs show it, gets a usable token."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP on loopback; TLS is tested below
    url = base(rotor) + "/oauth2/token"

    def fetch() -> dict[str, Any]:
        session = OAuthlibSession(client=BackendApplicationClient(client_id=svc.client_id))
        return dict(
            session.fetch_token(
                token_url=url, client_id=svc.client_id, client_secret=svc.secret, scope=["orders.write"]
            )
        )

    def fetch_unscoped() -> dict[str, Any]:
        session = OAuthlibSession(client=BackendApplicationClient(client_id=svc.client_id))
        return dict(session.fetch_token(token_url=url, client_id=svc.client_id, client_secret=svc.secret))

    unscoped = await asyncio.to_thread(fetch_unscoped)
    assert "scope" not in unscoped and "scope" not in jwt_part(unscoped["access_token"], 1)
    issued = await asyncio.to_thread(fetch)
    assert issued["scope"] == ["orders.write"]  # oauthlib splits it
    claims = jwt_part(issued["access_token"], 1)
    assert claims["scope"] == "orders.write" and claims["sub"] == svc.client_id


async def test_a_token_from_http_verifies_with_pyjwt_through_discovery_and_with_the_verifier(
    rotor: Rotor, svc: Credentials
) -> None:
    """PyJWKClient on the jwks_uri that discovery names verifies it; so does rotor_client.Verifier."""
    issued = await token(rotor, svc, audience=AUDIENCE)
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        async with aiohttp.ClientSession() as session, session.get(base(rotor) + path) as resp:
            document = await resp.json()
        assert document["token_endpoint"] == base(rotor) + "/oauth2/token"
        assert document["revocation_endpoint"] == base(rotor) + "/oauth2/revoke"
        assert document["introspection_endpoint"] == base(rotor) + "/oauth2/introspect"
        assert document["grant_types_supported"] == ["client_credentials", "refresh_token"]
        assert {"client_secret_basic", "client_secret_post"} <= set(
            document["token_endpoint_auth_methods_supported"]
        )

    def verify() -> dict[str, Any]:
        signing_key = jwt.PyJWKClient(document["jwks_uri"]).get_signing_key_from_jwt(issued["access_token"])
        claims: dict[str, Any] = jwt.decode(
            issued["access_token"],
            signing_key.key,
            algorithms=document["id_token_signing_alg_values_supported"],
            audience=AUDIENCE,
            issuer=document["issuer"],
        )
        return claims

    assert (await asyncio.to_thread(verify))["client_id"] == svc.client_id
    async with KeySetWatcher(rotor.address) as watcher:
        claims = Verifier(watcher, issuer=ISSUER, audience=AUDIENCE).verify(issued["access_token"])
    assert claims.client_id == svc.client_id


# -- errors --------------------------------------------------------------------------


async def test_every_error_is_rfc6749_json_with_a_reason(make_rotor: MakeRotor) -> None:
    """Each §5.2 error code, its status, and an error_description that says what to do."""
    rotor = await make_rotor(http_listen="127.0.0.1:0")
    svc = await rotor.add_client("svc-orders")
    other = await rotor.add_client("svc-other")
    url = base(rotor) + "/oauth2/token"
    cc = {"grant_type": "client_credentials"}
    wrong = Credentials(svc.client_id, "wrong-secret")
    their = await token(rotor, other)
    cases: list[tuple[str, Any, dict[str, str], int, str, str]] = [
        ("no grant_type", {}, basic(svc), 400, "invalid_request", "FIELD_REQUIRED"),
        (
            "twice",
            [("grant_type", "client_credentials")] * 2,
            basic(svc),
            400,
            "invalid_request",
            "INVALID_VALUE",
        ),
        ("no credentials", cc, {}, 401, "invalid_client", "INVALID_CLIENT"),
        ("wrong secret, Basic", cc, basic(wrong), 401, "invalid_client", "INVALID_CLIENT"),
        (
            "wrong secret, post",
            {**cc, "client_id": svc.client_id, "client_secret": "wrong"},
            {},
            401,
            "invalid_client",
            "INVALID_CLIENT",
        ),
        (
            "unknown refresh token",
            {"grant_type": "refresh_token", "refresh_token": "nope"},
            basic(svc),
            400,
            "invalid_grant",
            "REFRESH_TOKEN_INVALID",
        ),
        (
            "another client's refresh token",
            {"grant_type": "refresh_token", "refresh_token": their["refresh_token"]},
            basic(svc),
            400,
            "invalid_grant",
            "REFRESH_TOKEN_CLIENT_MISMATCH",
        ),
        (
            "another subject",
            {**cc, "subject": "alice"},
            basic(svc),
            400,
            "unauthorized_client",
            "SUBJECT_NOT_ALLOWED",
        ),
        (
            "password grant",
            {"grant_type": "password"},
            basic(svc),
            400,
            "unsupported_grant_type",
            "UNSUPPORTED_GRANT_TYPE",
        ),
        (
            "scope",
            {**cc, "scope": "orders.read admin"},
            basic(svc),
            400,
            "invalid_scope",
            "SCOPE_NOT_ALLOWED",
        ),
        (
            "audience",
            {**cc, "resource": "https://elsewhere"},
            basic(svc),
            400,
            "invalid_target",
            "AUDIENCE_NOT_ALLOWED",
        ),
    ]
    for name, data, headers, status, error, reason in cases:
        got, response_headers, body = await post(url, data, headers)
        assert (got, body.get("error"), body.get("error_reason")) == (status, error, reason), name
        assert body["error_description"], name
        assert response_headers["Cache-Control"] == "no-store", name
        challenge = response_headers.get("WWW-Authenticate", "")
        assert challenge.startswith("Basic") == (status == 401 and name != "wrong secret, post"), name
    # revoking another client's token
    status, _, body = await post(base(rotor) + "/oauth2/revoke", {"token": their["access_token"]}, basic(svc))
    assert (status, body["error"], body["error_reason"]) == (400, "unauthorized_client", "TOKEN_NOT_OWNED")
    # not a form
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=cc, headers=basic(svc)) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"
        async with session.post(
            url, data=b"grant_type=\xff\xfe", headers={**basic(svc), "Content-Type": FORM}
        ) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"


async def test_rate_limits_answer_429_with_retry_after(make_rotor: MakeRotor) -> None:
    """Over the issue rate, the shared limiter answers 429 with Retry-After, for either door."""
    rotor = await make_rotor(http_listen="127.0.0.1:0", limits={"issue_rate": 0.01, "issue_burst": 1})
    svc = await rotor.add_client("svc-orders")
    await token(rotor, svc)
    status, headers, body = await post(
        base(rotor) + "/oauth2/token", {"grant_type": "client_credentials"}, basic(svc)
    )
    assert status == 429 and body["error_reason"] == "RATE_LIMITED"
    assert int(headers["Retry-After"]) >= 1
    # the gRPC door draws on the same bucket
    err = await failure(rotor.issue(svc, audience=[AUDIENCE]))
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")


async def test_failed_sign_ins_over_http_slow_down_grpc_too(make_rotor: MakeRotor) -> None:
    """The failed-authentication backoff is one: wrong secrets over HTTP hold back gRPC guesses."""
    rotor = await make_rotor(http_listen="127.0.0.1:0")
    svc = await rotor.add_client("svc-orders")
    wrong = Credentials(svc.client_id, "guess")
    for _ in range(10):
        status, _, _ = await post(
            base(rotor) + "/oauth2/token", {"grant_type": "client_credentials"}, basic(wrong)
        )
        assert status == 401
    err = await failure(rotor.issue(Credentials(svc.client_id, "another-guess"), audience=[AUDIENCE]))
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_FAILED_AUTHENTICATIONS")
    status, headers, body = await post(
        base(rotor) + "/oauth2/token", {"grant_type": "client_credentials"}, basic(wrong)
    )
    assert (
        status == 429 and body["error_reason"] == "TOO_MANY_FAILED_AUTHENTICATIONS" and headers["Retry-After"]
    )


async def test_garbage_never_yields_a_500(rotor: Rotor, svc: Credentials) -> None:
    """Odd bodies and headers get 4xx answers, never a 500."""
    bodies: list[tuple[bytes, dict[str, str]]] = [
        (b"", {"Content-Type": FORM}),
        (b"%%%%&&&===", {"Content-Type": FORM}),
        (b"grant_type=client_credentials&scope=" + b"a" * 40_000, {"Content-Type": FORM}),
        (b"grant_type=refresh_token&refresh_token=" + b"x" * 20_000, {"Content-Type": FORM}),
        (b"grant_type=client_credentials", {"Content-Type": FORM, "Authorization": "Basic !!!"}),
        (b"grant_type=client_credentials", {"Content-Type": FORM, "Authorization": "Bearer x"}),
        (b"grant_type=client_credentials&audience=%00", {"Content-Type": FORM}),
        (b"token=", {"Content-Type": FORM}),
    ]
    async with aiohttp.ClientSession() as session:
        for path in ("/oauth2/token", "/oauth2/revoke", "/oauth2/introspect"):
            for data, headers in bodies:
                merged = {**basic(svc), **headers}
                async with session.post(base(rotor) + path, data=data, headers=merged) as resp:
                    assert 400 <= resp.status < 500, (path, data[:40], resp.status, await resp.text())


# -- one grant, two doors -------------------------------------------------------------


async def test_a_refresh_token_used_over_http_and_reused_over_grpc_ends_the_family(
    rotor: Rotor, svc: Credentials
) -> None:
    """HTTP refresh, then the old token again over gRPC: REFRESH_TOKEN_REUSED, and the newest dies."""
    first = await token(rotor, svc)
    status, _, second = await post(
        base(rotor) + "/oauth2/token",
        {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        basic(svc),
    )
    assert status == 200
    reuse = rotor.tokens.Refresh(
        rotor_client.RefreshRequest(refresh_token=first["refresh_token"]), metadata=svc.metadata, timeout=30
    )
    assert_error(await failure(reuse), grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")
    status, _, body = await post(
        base(rotor) + "/oauth2/token",
        {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]},
        basic(svc),
    )
    assert (status, body["error"], body["error_reason"]) == (400, "invalid_grant", "REFRESH_TOKEN_REVOKED")


async def test_a_refresh_token_used_over_grpc_and_reused_over_http_ends_the_family(
    rotor: Rotor, svc: Credentials
) -> None:
    first = await rotor.issue(svc, audience=[AUDIENCE])
    second = await rotor.tokens.Refresh(
        rotor_client.RefreshRequest(refresh_token=first.refresh_token), metadata=svc.metadata, timeout=30
    )
    status, _, body = await post(
        base(rotor) + "/oauth2/token",
        {"grant_type": "refresh_token", "refresh_token": first.refresh_token},
        basic(svc),
    )
    assert (status, body["error"], body["error_reason"]) == (400, "invalid_grant", "REFRESH_TOKEN_REUSED")
    newest = rotor.tokens.Refresh(
        rotor_client.RefreshRequest(refresh_token=second.refresh_token), metadata=svc.metadata, timeout=30
    )
    assert_error(await failure(newest), grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")


async def test_a_narrower_scope_on_refresh(rotor: Rotor, svc: Credentials) -> None:
    """grant_type=refresh_token with scope narrows this access token only (RFC 6749 §6)."""
    first = await token(rotor, svc, scope="orders.read orders.write")
    status, _, second = await post(
        base(rotor) + "/oauth2/token",
        {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "scope": "orders.read"},
        basic(svc),
    )
    assert status == 200 and second["scope"] == "orders.read"
    assert jwt_part(second["access_token"], 1)["scope"] == "orders.read"


# -- introspection ---------------------------------------------------------------------


async def test_introspection_of_an_active_token_over_http_and_grpc(rotor: Rotor, svc: Credentials) -> None:
    """RFC 7662 fields over HTTP; the IntrospectResponse fields over gRPC; the same token."""
    issued = await token(rotor, svc, scope="orders.read")
    claims = jwt_part(issued["access_token"], 1)
    gateway = await rotor.add_client("gateway")
    body = await introspect(rotor, gateway, issued["access_token"])
    assert body == {
        "active": True,
        "token_type": "Bearer",
        "client_id": svc.client_id,
        "sub": svc.client_id,
        "scope": "orders.read",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": claims["exp"],
        "iat": claims["iat"],
        "nbf": claims["nbf"],
        "jti": claims["jti"],
    }
    response = await rotor.tokens.Introspect(
        rotor_client.IntrospectRequest(token=issued["access_token"]), metadata=gateway.metadata, timeout=30
    )
    assert response.active and response.client_id == svc.client_id and response.sub == svc.client_id
    assert list(response.scope) == ["orders.read"] and list(response.audience) == [AUDIENCE]
    assert response.expires_at.seconds == claims["exp"] and response.issued_at.seconds == claims["iat"]
    assert response.jti == claims["jti"] and response.issuer == ISSUER
    assert response.kid == jwt_part(issued["access_token"], 0)["kid"]
    # a refresh token: its own client may introspect it, another may not learn of it
    mine = await introspect(rotor, svc, issued["refresh_token"])
    assert mine["active"] and mine["token_type"] == "refresh_token" and mine["client_id"] == svc.client_id
    assert await introspect(rotor, gateway, issued["refresh_token"]) == {"active": False}
    assert await introspect(rotor, gateway, "not-a-token") == {"active": False}


async def test_introspection_needs_client_credentials(rotor: Rotor, svc: Credentials) -> None:
    issued = await token(rotor, svc)
    status, _, body = await post(base(rotor) + "/oauth2/introspect", {"token": issued["access_token"]})
    assert (status, body["error"]) == (401, "invalid_client")
    err = await failure(rotor.tokens.Introspect(rotor_client.IntrospectRequest(token="x"), timeout=30))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")


async def test_introspection_of_a_revoked_token_and_of_a_revoked_key(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """A token revoked over HTTP is inactive over gRPC; every token of a revoked key is inactive."""
    revoked = await token(rotor, svc)
    kept = await token(rotor, svc)
    status, headers, _ = await post(
        base(rotor) + "/oauth2/revoke", {"token": revoked["access_token"]}, basic(svc)
    )
    assert status == 200 and headers["Cache-Control"] == "no-store"
    response = await rotor.tokens.Introspect(
        rotor_client.IntrospectRequest(token=revoked["access_token"]), metadata=svc.metadata, timeout=30
    )
    assert response == rotor_client.IntrospectResponse(active=False)
    assert (await introspect(rotor, svc, kept["access_token"]))["active"] is True
    status, _, _ = await post(base(rotor) + "/oauth2/revoke", {"token": "unknown"}, basic(svc))
    assert status == 200, "RFC 7009: an unknown token is not an error"
    kid = jwt_part(kept["access_token"], 0)["kid"]
    await rotor.admin.RevokeKey(RevokeKeyRequest(kid=kid, reason="test"), metadata=ops.metadata, timeout=30)
    assert await introspect(rotor, svc, kept["access_token"]) == {"active": False}


async def test_introspection_of_an_expired_token(make_rotor: MakeRotor) -> None:
    clock = FakeClock(start=float(int(time.time())))
    rotor = await make_rotor(http_listen="127.0.0.1:0", clock=clock)
    svc = await rotor.add_client("svc-orders")
    issued = await token(rotor, svc)
    assert (await introspect(rotor, svc, issued["access_token"]))["active"] is True
    clock.advance(rotor.config.tokens.access_ttl)
    assert await introspect(rotor, svc, issued["access_token"]) == {"active": False}


async def test_introspection_of_another_tenants_token(make_rotor: MakeRotor) -> None:
    """A client of one tenant learns nothing of another tenant's tokens."""
    rotor = await make_rotor(http_listen="127.0.0.1:0", tenants={"acme": TenantConfig()})
    svc = await rotor.add_client("svc-orders")
    acme = await rotor.add_client("acme-gateway", tenant="acme")
    issued = await token(rotor, svc)
    assert (await introspect(rotor, svc, issued["access_token"]))["active"] is True
    assert await introspect(rotor, acme, issued["access_token"]) == {"active": False}
    theirs = await token(rotor, acme)
    assert (await introspect(rotor, acme, theirs["access_token"]))["active"] is True
    assert await introspect(rotor, svc, theirs["access_token"]) == {"active": False}


# -- mTLS -----------------------------------------------------------------------------


async def test_tls_client_auth_over_https_binds_the_token(make_rotor: MakeRotor, tmp_path: Path) -> None:
    """Over mTLS a registered certificate is the client (tls_client_auth); the token carries its
    cnf.x5t#S256, and introspection says so. Basic credentials over mTLS bind to the cert too."""
    pki = Pki(tmp_path)
    rotor = await make_rotor(http_listen="127.0.0.1:0", tls=pki.tls())
    await rotor.add_client("orders", cert_san=SAN)
    svc = await rotor.add_client("svc")

    counter = itertools.count()

    def context(issued: Any) -> ssl.SSLContext:
        folder = tmp_path / f"client-{next(counter)}"
        folder.mkdir()
        cert, key = issued.write(folder, "client")
        ctx = ssl.create_default_context(cadata=pki.ca.pem.decode())
        ctx.check_hostname = False
        ctx.load_cert_chain(cert, key)
        return ctx

    url = base(rotor, "https")
    status, _, body = await post(
        url + "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": "orders"},
        ssl_context=context(pki.client),
    )
    assert status == 200, body
    thumbprint = certificate_thumbprint(pki.client.cert_pem)
    claims = jwt_part(body["access_token"], 1)
    assert claims["client_id"] == "orders" and claims["cnf"] == {"x5t#S256": thumbprint}
    status, _, seen = await post(
        url + "/oauth2/introspect", {"token": body["access_token"]}, ssl_context=context(pki.client)
    )
    assert seen["active"] and seen["cnf"] == {"x5t#S256": thumbprint}
    status, _, bound = await post(
        url + "/oauth2/token", {"grant_type": "client_credentials"}, basic(svc), context(pki.stranger)
    )
    assert status == 200
    assert jwt_part(bound["access_token"], 1)["cnf"]["x5t#S256"] == certificate_thumbprint(
        pki.stranger.cert_pem
    )
    status, _, refused = await post(
        url + "/oauth2/token", {"grant_type": "client_credentials"}, ssl_context=context(pki.stranger)
    )
    assert (status, refused["error"]) == (401, "invalid_client")
    assert "spiffe://example.org/nobody" in refused["error_description"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/.well-known/openid-configuration", ssl=context(pki.client)) as resp,
    ):
        document = await resp.json()
    assert "tls_client_auth" in document["token_endpoint_auth_methods_supported"]


async def test_http_calls_are_counted_in_the_same_metrics(rotor: Rotor, svc: Credentials) -> None:
    await token(rotor, svc)
    await token(rotor, svc)
    await post(
        base(rotor) + "/oauth2/token",
        {"grant_type": "client_credentials"},
        basic(Credentials(svc.client_id, "x")),
    )
    async with aiohttp.ClientSession() as session, session.get(base(rotor) + "/metrics") as resp:
        text = await resp.text()
    assert f'rotor_tokens_issued_total{{client="{svc.client_id}",outcome="ok"}} 2.0' in text
    assert 'rotor_auth_failures_total{reason="INVALID_CLIENT"} 1.0' in text


async def test_introspection_of_a_token_of_a_client_whose_tokens_were_all_revoked(
    make_rotor: MakeRotor,
) -> None:
    """RevokeClientTokens covers the tokens issued before it: introspection says inactive."""
    clock = FakeClock(start=float(int(time.time())))
    rotor = await make_rotor(http_listen="127.0.0.1:0", clock=clock)
    svc = await rotor.add_client("svc-orders")
    ops = await rotor.add_client("ops-admin", admin=True)
    before = await token(rotor, svc)
    await rotor.admin.RevokeClientTokens(
        key_admin_pb2.RevokeClientTokensRequest(client_id=svc.client_id, reason="test"),
        metadata=ops.metadata,
        timeout=30,
    )
    assert await introspect(rotor, ops, before["access_token"]) == {"active": False}
    clock.advance(2)  # past not_before, the next whole second
    after = await token(rotor, svc)
    assert (await introspect(rotor, ops, after["access_token"]))["active"] is True


def test_http_and_grpc_name_one_caller_by_the_same_address() -> None:
    assert address_of_ip("10.0.0.7") == peer_address("ipv4:10.0.0.7:51234")
    assert address_of_ip("::1") == peer_address("ipv6:[::1]:51234")


async def test_guesses_from_one_address_over_http_hold_back_that_address_over_grpc(
    make_rotor: MakeRotor,
) -> None:
    """The per-address backoff is shared too: 30 failed sign-ins for made-up clients over HTTP,
    and a further guess from the same address over gRPC waits."""
    clock = FakeClock(start=float(int(time.time())))  # the backoff does not run out mid-test
    rotor = await make_rotor(http_listen="127.0.0.1:0", clock=clock)
    for i in range(30):
        status, _, _ = await post(
            base(rotor) + "/oauth2/token",
            {"grant_type": "client_credentials"},
            basic(Credentials(f"nobody-{i}", "guess")),
        )
        assert status == 401
    err = await failure(rotor.issue(Credentials("nobody-else", "guess"), audience=[AUDIENCE]))
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_FAILED_AUTHENTICATIONS")
