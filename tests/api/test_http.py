"""The HTTP side port: JWKS and discovery for gateways, /metrics for Prometheus, health probes."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from grpc import aio
from jwcrypto import jwk, jwt
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families
from rotor_client import RotateKeysRequest

from .conftest import MakeRotor
from .support import AUDIENCE, ISSUER, Credentials, Rotor


@pytest.fixture
async def rotor(make_rotor: MakeRotor) -> Rotor:
    return await make_rotor(http_listen="127.0.0.1:0")


def base(rotor: Rotor) -> str:
    return f"http://127.0.0.1:{rotor.server.http_port}"


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers or {}) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_the_jwks_verifies_a_token_with_an_independent_jose_library(
    rotor: Rotor, svc: Credentials
) -> None:
    """A token verifies with jwcrypto against /.well-known/jwks.json, the same key set as GetKeySet."""
    status, headers, body = await get(base(rotor) + "/.well-known/jwks.json")
    assert status == 200 and headers["Content-Type"].startswith("application/jwk-set+json")
    jwks = json.loads(body)
    keyset = await rotor.key_set()
    assert {k["kid"] for k in jwks["keys"]} == {k.kid for k in keyset.keys}
    issued = await rotor.issue(svc, audience=[AUDIENCE])
    verified = jwt.JWT(jwt=issued.access_token, key=jwk.JWKSet.from_json(body), expected_type="JWS")
    claims = json.loads(verified.claims)
    assert claims["iss"] == ISSUER and claims["client_id"] == svc.client_id


async def test_the_jwks_may_be_cached_no_longer_than_max_cache_age_and_has_an_etag(rotor: Rotor) -> None:
    """Cache-Control max-age <= max_cache_age; a matching If-None-Match gets 304 with no body."""
    status, headers, _ = await get(base(rotor) + "/.well-known/jwks.json")
    max_age = int(headers["Cache-Control"].split("max-age=")[1].split(",")[0])
    assert status == 200 and 0 <= max_age <= rotor.config.keys.max_cache_age
    etag = headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    status, headers, body = await get(base(rotor) + "/.well-known/jwks.json", {"If-None-Match": etag})
    assert status == 304 and body == b"" and headers["ETag"] == etag


async def test_the_etag_changes_when_the_key_set_does(rotor: Rotor, ops: Credentials) -> None:
    """After a rotation the JWKS has the new key and another ETag."""
    _, headers, _ = await get(base(rotor) + "/.well-known/jwks.json")
    rotated = await rotor.admin.RotateKeys(
        RotateKeysRequest(reason="test"), metadata=ops.metadata, timeout=30
    )
    status, after, body = await get(
        base(rotor) + "/.well-known/jwks.json", {"If-None-Match": headers["ETag"]}
    )
    assert status == 200 and after["ETag"] != headers["ETag"]
    assert rotated.key.kid in {k["kid"] for k in json.loads(body)["keys"]}


async def test_an_unknown_tenant_is_a_404_with_a_reason(rotor: Rotor) -> None:
    """?tenant= naming no tenant answers 404 with the gRPC API's reason."""
    status, _, body = await get(base(rotor) + "/.well-known/jwks.json?tenant=nobody")
    assert status == 404 and json.loads(body)["error"] == "TENANT_NOT_FOUND"


async def test_the_discovery_document_points_at_a_working_jwks(rotor: Rotor) -> None:
    """The openid-configuration names the issuer, the algorithms, and a jwks_uri that answers."""
    status, _, body = await get(base(rotor) + "/.well-known/openid-configuration")
    document: dict[str, Any] = json.loads(body)
    assert status == 200 and document["issuer"] == ISSUER
    assert rotor.config.keys.algorithm in document["id_token_signing_alg_values_supported"]
    status, _, jwks = await get(document["jwks_uri"])
    assert status == 200 and json.loads(jwks)["keys"]


async def test_metrics_parse_and_move_when_tokens_are_issued(rotor: Rotor, svc: Credentials) -> None:
    """/metrics parses with prometheus-client's parser; issuing and refusing tokens moves the counters."""
    _, headers, body = await get(base(rotor) + "/metrics")
    assert headers["Content-Type"].startswith("text/plain")
    before = samples(body.decode())
    assert before[("rotor_active_keys", (("tenant", ""),))] == 1
    for _ in range(3):
        await rotor.issue(svc, audience=[AUDIENCE])
    bad = Credentials(svc.client_id, "wrong")
    with pytest.raises(aio.AioRpcError):
        await rotor.issue(bad, audience=[AUDIENCE])
    after = samples((await get(base(rotor) + "/metrics"))[2].decode())
    ok = ("rotor_tokens_issued_total", (("client", svc.client_id), ("outcome", "ok")))
    assert after[ok] - before.get(ok, 0) == 3
    assert after[("rotor_auth_failures_total", (("reason", "INVALID_CLIENT"),))] >= 1
    assert after[("rotor_rpc_duration_seconds_count", (("code", "OK"), ("method", "Issue")))] >= 3
    assert ("rotor_next_rotation_seconds", (("tenant", ""),)) in after
    assert after[("rotor_rotator_leader", ())] == 1, "a lone server runs the key schedule"
    assert after[("rotor_rotator_failures_total", ())] == 0


async def test_health_probes(rotor: Rotor) -> None:
    """/healthz answers while the process runs; /readyz says whether it can sign."""
    assert (await get(base(rotor) + "/healthz"))[0] == 200
    assert (await get(base(rotor) + "/readyz"))[0] == 200
