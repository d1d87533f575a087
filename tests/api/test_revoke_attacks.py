"""Revoke under attack: no forged, confused or hostile token ever revokes a genuine one.

Rotor answers Revoke with RFC 7009 semantics. A token it cannot recognise as one it
signed (unparseable, unknown or mismatched key, wrong algorithm, bad signature,
expired) gets `revoked=false`, not an error; a token over 16 KiB is INVALID_ARGUMENT
VALUE_TOO_LONG; another client's genuine token is PERMISSION_DENIED TOKEN_NOT_OWNED.
Whatever jti, client or key a forged token names, the genuine tokens stay out of
the revocation list, their grants still refresh, and the audit log records no
revocation. Admins, who may revoke any token, get the same answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import pytest
import rotor_client
from client.jws import SigningKey, b64, b64json, self_signed_certificate, sign_parts, signing_key
from cryptography.hazmat.primitives import serialization
from rotor.clock import FakeClock
from rotor.config import TenantConfig
from rotor.core.crypto import MAX_HEADER
from rotor.core.validation import MAX_TOKEN
from rotor.v1 import key_admin_pb2, keys_pb2

from .conftest import MakeRotor
from .support import Credentials, Rotor, assert_error, failure, jwt_part, states

ATTACKER = signing_key("EdDSA", "attacker-key")
ATTACKER_KEYS = {
    alg: signing_key(alg, f"attacker-{alg.lower()}") for alg in ("RS256", "PS256", "ES256", "ES384")
}
ATTACKER_KEYS["EdDSA"] = ATTACKER
TENANT = "acme"


@dataclass
class Scene:
    """A server, two ordinary clients with a genuine grant each, an admin, and the signing key."""

    rotor: Rotor
    svc: Credentials
    billing: Credentials
    ops: Credentials
    genuine: rotor_client.TokenResponse
    billings: rotor_client.TokenResponse
    key: keys_pb2.Key

    @property
    def header(self) -> dict[str, Any]:
        return jwt_part(self.genuine.access_token, 0)

    @property
    def claims(self) -> dict[str, Any]:
        return jwt_part(self.genuine.access_token, 1)

    @property
    def public_key(self) -> Any:
        return jwt.get_algorithm_by_name(self.key.alg).from_jwk(self.key.public_jwk_json)

    def caller(self, who: str) -> Credentials:
        return {"svc": self.svc, "admin": self.ops}[who]


async def make_scene(rotor: Rotor) -> Scene:
    svc, billing, ops = await asyncio.gather(
        rotor.add_client("svc-orders"),
        rotor.add_client("svc-billing"),
        rotor.add_client("ops-admin", admin=True),
    )
    genuine, billings = await asyncio.gather(rotor.issue(svc), rotor.issue(billing))
    (key,) = [k for k in (await rotor.key_set()).keys if k.kid == genuine.key_id]
    return Scene(rotor, svc, billing, ops, genuine, billings, key)


@pytest.fixture
async def scene(rotor: Rotor) -> Scene:
    return await make_scene(rotor)


def split(token: str) -> tuple[str, str, str]:
    header, payload, signature = token.split(".")
    return header, payload, signature


def raw(json_text: str) -> str:
    return b64(json_text.encode())


def signed(key: SigningKey, header: dict[str, Any], claims: dict[str, Any], alg: str | None = None) -> str:
    return sign_parts(key, b64json(header), b64json(claims), alg)


def hmac_signed(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    head = f"{b64json(header)}.{b64json(claims)}"
    return f"{head}.{b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())}"


def public_pem(scene: Scene) -> bytes:
    return bytes(
        scene.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


async def revoke(scene: Scene, who: str, token: str) -> bool:
    request = rotor_client.RevokeRequest(token=token, reason="attack")
    response = await scene.rotor.tokens.Revoke(request, metadata=scene.caller(who).metadata, timeout=30)
    return bool(response.revoked)


async def revoked_jtis(rotor: Rotor) -> set[str]:
    """The jtis in a fresh watcher's SNAPSHOT: what every verifier of the default tenant refuses."""
    watcher = await rotor.watch()
    try:
        snapshot = await watcher.next()
    finally:
        watcher.cancel()
    return {t.jti for t in snapshot.revoked_tokens}


async def audited_actions(scene: Scene) -> list[str]:
    page = await scene.rotor.admin.ListAuditEvents(
        key_admin_pb2.ListAuditEventsRequest(page_size=1000), metadata=scene.ops.metadata, timeout=30
    )
    return [e.action for e in page.events]


async def assert_untouched(scene: Scene) -> None:
    """Neither genuine access token is revoked, both grants still refresh, nothing was revoked."""
    denied = await revoked_jtis(scene.rotor)
    for grant in (scene.genuine, scene.billings):
        assert jwt_part(grant.access_token, 1)["jti"] not in denied, "a genuine jti was revoked"
    revocations = {"token.revoked", "family.revoked"} & set(await audited_actions(scene))
    assert not revocations, f"the audit log records {revocations}"
    for client, grant in ((scene.svc, scene.genuine), (scene.billing, scene.billings)):
        request = rotor_client.RefreshRequest(refresh_token=grant.refresh_token)
        renewed = await scene.rotor.tokens.Refresh(request, metadata=client.metadata, timeout=30)
        assert renewed.access_token


# -- the catalogue: each builds, from a scene, a token no one may revoke anything with ---------------

Attack = Callable[[Scene], str]
FORGED: dict[str, list[Attack]] = {}


def forged(family: str) -> Callable[[Attack], Attack]:
    def register(build: Attack) -> Attack:
        FORGED.setdefault(family, []).append(build)
        return build

    return register


@forged("alg-none")
def alg_none_naming_the_genuine_key(s: Scene) -> str:
    header, payload, _ = split(signed(ATTACKER, {**s.header, "alg": "none"}, s.claims))
    return f"{header}.{payload}."


@forged("alg-none")
def alg_none_carrying_the_genuine_signature(s: Scene) -> str:
    _, payload, signature = split(s.genuine.access_token)
    return f"{b64json({**s.header, 'alg': 'none'})}.{payload}.{signature}"


@forged("hmac-keyed-with-the-public-key")
def hs256_keyed_with_the_public_jwk(s: Scene) -> str:
    return hmac_signed(s.key.public_jwk_json.encode(), {**s.header, "alg": "HS256"}, s.claims)


@forged("hmac-keyed-with-the-public-key")
def hs256_keyed_with_the_public_key_pem(s: Scene) -> str:
    return hmac_signed(public_pem(s), {**s.header, "alg": "HS256"}, s.claims)


@forged("hmac-keyed-with-the-public-key")
def hmac_under_the_keys_own_alg_label(s: Scene) -> str:
    return hmac_signed(public_pem(s), s.header, s.claims)


@forged("the-attackers-keys")
def attackers_key_naming_the_genuine_kid(s: Scene) -> str:
    return signed(ATTACKER, s.header, s.claims)


@forged("the-attackers-keys")
def attackers_rsa_key_as_rs256_on_the_genuine_kid(s: Scene) -> str:
    return signed(ATTACKER_KEYS["RS256"], {**s.header, "alg": "RS256"}, s.claims)


@forged("the-attackers-keys")
def attackers_rsa_key_as_ps256_on_the_genuine_kid(s: Scene) -> str:
    return signed(ATTACKER_KEYS["PS256"], {**s.header, "alg": "PS256"}, s.claims)


@forged("the-attackers-keys")
def attackers_ec_key_as_es256_on_the_genuine_kid(s: Scene) -> str:
    return signed(ATTACKER_KEYS["ES256"], {**s.header, "alg": "ES256"}, s.claims)


@forged("the-attackers-keys")
def attackers_own_kid_with_genuine_claims(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": ATTACKER.kid}, s.claims)


@forged("genuine-parts-recombined")
def tampered_payload_under_the_genuine_signature(s: Scene) -> str:
    header, _, signature = split(s.genuine.access_token)
    return f"{header}.{b64json({**s.claims, 'exp': s.claims['exp'] + 3600})}.{signature}"


@forged("genuine-parts-recombined")
def billings_jti_under_svcs_genuine_signature(s: Scene) -> str:
    header, _, signature = split(s.genuine.access_token)
    jti = jwt_part(s.billings.access_token, 1)["jti"]
    return f"{header}.{b64json({**s.claims, 'jti': jti})}.{signature}"


@forged("genuine-parts-recombined")
def billings_signature_on_svcs_token(s: Scene) -> str:
    header, payload, _ = split(s.genuine.access_token)
    return f"{header}.{payload}.{split(s.billings.access_token)[2]}"


@forged("another-clients-jti")
def attacker_signed_claims_naming_billings_jti(s: Scene) -> str:
    return signed(ATTACKER, s.header, {**s.claims, "jti": jwt_part(s.billings.access_token, 1)["jti"]})


@forged("another-clients-jti")
def attacker_signed_claims_naming_billings_jti_and_client(s: Scene) -> str:
    return signed(ATTACKER, s.header, jwt_part(s.billings.access_token, 1))


@forged("hostile-kid")
def kid_path_traversal(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": "../../etc/passwd"}, s.claims)


@forged("hostile-kid")
def kid_file_url(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": "file:///etc/passwd"}, s.claims)


@forged("hostile-kid")
def kid_sql_or_true(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": "' OR 1=1 --"}, s.claims)


@forged("hostile-kid")
def kid_sql_union(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": "x' UNION SELECT kid FROM keys --"}, s.claims)


@forged("hostile-kid")
def kid_sql_like_wildcard(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": "%"}, s.claims)


@forged("hostile-kid")
def kid_genuine_with_sql_comment(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": s.key.kid + "'--"}, s.claims)


@forged("hostile-kid")
def kid_genuine_with_a_nul(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": s.key.kid + "\x00"}, s.claims)


@forged("hostile-kid")
def kid_genuine_in_upper_case(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": s.key.kid.upper()}, s.claims)


@forged("hostile-kid")
def kid_as_a_list(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": [s.key.kid]}, s.claims)


@forged("hostile-kid")
def kid_as_an_object(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": {"kid": s.key.kid}}, s.claims)


@forged("hostile-kid")
def kid_missing(s: Scene) -> str:
    return signed(ATTACKER, {"alg": s.key.alg, "typ": "at+jwt"}, s.claims)


@forged("duplicate-json-members")
def duplicate_kid_last_one_genuine(s: Scene) -> str:
    header = f'{{"alg":"{s.key.alg}","kid":"{ATTACKER.kid}","typ":"at+jwt","kid":"{s.key.kid}"}}'
    return sign_parts(ATTACKER, raw(header), b64json(s.claims))


@forged("duplicate-json-members")
def duplicate_alg_last_one_genuine(s: Scene) -> str:
    header = f'{{"alg":"none","kid":"{s.key.kid}","typ":"at+jwt","alg":"{s.key.alg}"}}'
    return sign_parts(ATTACKER, raw(header), b64json(s.claims))


@forged("duplicate-json-members")
def duplicate_jti_last_one_genuine(s: Scene) -> str:
    claims = json.dumps({**s.claims, "jti": "attacker"}, separators=(",", ":"))
    return sign_parts(ATTACKER, b64json(s.header), raw(claims[:-1] + f',"jti":"{s.claims["jti"]}"}}'))


@forged("hostile-header-members")
def crit_header(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "crit": ["exp"], "b64": False}, s.claims)


@forged("hostile-header-members")
def embedded_jwk_header_on_the_genuine_kid(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "jwk": {**ATTACKER.jwk, "kid": s.key.kid}}, s.claims)


@forged("hostile-header-members")
def embedded_jwk_header_on_the_attackers_kid(s: Scene) -> str:
    return signed(ATTACKER, {**s.header, "kid": ATTACKER.kid, "jwk": ATTACKER.jwk}, s.claims)


@forged("hostile-header-members")
def x5c_header_with_the_attackers_certificate(s: Scene) -> str:
    der = self_signed_certificate("attacker").public_bytes(serialization.Encoding.DER)
    header = {**s.header, "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
    return signed(ATTACKER_KEYS["ES256"], header, s.claims)


@forged("oversized-or-odd-json")
def header_just_over_rotors_limit(s: Scene) -> str:
    token = signed(ATTACKER, {**s.header, "pad": "h" * MAX_HEADER}, s.claims)
    assert len(split(token)[0]) > MAX_HEADER
    return token


@forged("oversized-or-odd-json")
def deeply_nested_claims(s: Scene) -> str:
    return sign_parts(ATTACKER, b64json(s.header), raw("[" * 3000 + "]" * 3000))


@forged("oversized-or-odd-json")
def infinite_and_nan_times(s: Scene) -> str:
    claims = json.dumps(s.claims, separators=(",", ":"))
    claims = claims.replace(f'"exp":{s.claims["exp"]}', '"exp":1e999').replace(
        f'"iat":{s.claims["iat"]}', '"iat":NaN'
    )
    return sign_parts(ATTACKER, b64json(s.header), raw(claims))


@forged("not-a-jws")
def not_base64(s: Scene) -> str:
    return "!!!.???.***"


@forged("not-a-jws")
def three_empty_parts(s: Scene) -> str:
    return ".."


@forged("not-a-jws")
def text_in_another_script(s: Scene) -> str:
    return "ключ.ключ.ключ"


@forged("near-miss-refresh-tokens")
def refresh_token_with_its_last_character_changed(s: Scene) -> str:
    token = s.genuine.refresh_token
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@forged("near-miss-refresh-tokens")
def refresh_token_one_character_short(s: Scene) -> str:
    return s.genuine.refresh_token[:-1]


@forged("near-miss-refresh-tokens")
def refresh_token_with_a_trailing_newline(s: Scene) -> str:
    return s.genuine.refresh_token + "\n"


@forged("near-miss-refresh-tokens")
def refresh_token_in_upper_case(s: Scene) -> str:
    return s.genuine.refresh_token.upper()


@forged("near-miss-refresh-tokens")
def refresh_token_stored_hash(s: Scene) -> str:
    return hashlib.sha256(s.genuine.refresh_token.encode()).hexdigest()


@forged("near-miss-refresh-tokens")
def refresh_token_dressed_as_a_jwt(s: Scene) -> str:
    return f"{s.genuine.refresh_token}.{b64json(s.claims)}.x"


@pytest.mark.parametrize("family", FORGED)
async def test_forged_tokens_are_answered_not_revoked_and_revoke_nothing(scene: Scene, family: str) -> None:
    """Each token of the family, presented by its named client and by an admin."""
    for build in FORGED[family]:
        token = build(scene)
        for who in ("svc", "admin"):
            assert await revoke(scene, who, token) is False, f"{build.__name__}, presented by {who}"
    await assert_untouched(scene)


async def test_the_untouched_check_sees_a_genuine_revocation(scene: Scene) -> None:
    """The control: the owner's revocation of its genuine tokens shows where the checks above look."""
    assert await revoke(scene, "svc", scene.genuine.access_token) is True
    assert scene.claims["jti"] in await revoked_jtis(scene.rotor)
    assert await revoke(scene, "svc", scene.genuine.refresh_token) is True
    assert {"token.revoked", "family.revoked"} <= set(await audited_actions(scene))
    err = await failure(
        scene.rotor.tokens.Refresh(
            rotor_client.RefreshRequest(refresh_token=scene.genuine.refresh_token),
            metadata=scene.svc.metadata,
            timeout=30,
        )
    )
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")


@pytest.mark.parametrize("part", ["header", "payload"])
async def test_a_token_over_sixteen_kib_is_invalid_argument_and_revokes_nothing(
    scene: Scene, part: str
) -> None:
    pad = {"pad": "p" * MAX_TOKEN}
    header, claims = (
        ({**scene.header, **pad}, scene.claims)
        if part == "header"
        else (scene.header, {**scene.claims, **pad})
    )
    for who in ("svc", "admin"):
        err = await failure(revoke(scene, who, signed(ATTACKER, header, claims)))
        assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "VALUE_TOO_LONG")
        assert err.details().startswith("token ") and len(err.details()) < 300, err.details()
    await assert_untouched(scene)


# -- headers that would make a careless server fetch something ------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port on 127.0.0.1 that nothing should ever connect to."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def connected(sock: socket.socket) -> bool:
    try:
        peer, _ = sock.accept()
    except BlockingIOError:
        return False
    peer.close()
    return True


@pytest.mark.parametrize("member", ["jku", "x5u"])
async def test_a_url_in_the_header_is_never_fetched(
    scene: Scene, listener: socket.socket, member: str
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/jwks.json"
    for kid in (scene.key.kid, ATTACKER.kid):
        token = signed(ATTACKER, {**scene.header, "kid": kid, member: url}, scene.claims)
        for who in ("svc", "admin"):
            assert await revoke(scene, who, token) is False
    assert not connected(listener), f"the server fetched the {member} URL"
    await assert_untouched(scene)


# -- genuine keys, used the wrong way ---------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "ES384"])
async def test_algorithm_confusion_against_each_key_type_revokes_nothing(
    make_rotor: MakeRotor, alg: str
) -> None:
    """On a server signing with `alg`: the attacker's keys under every label, the genuine token
    relabelled, HMAC keyed with the public key, and (for ECDSA) an all-zero signature."""
    scene = await make_scene(await make_rotor(keys={"algorithm": alg, "rsa_bits": 2048}))
    assert scene.key.alg == alg
    header, payload, signature = split(scene.genuine.access_token)
    attempts = [
        hmac_signed(s, {**scene.header, "alg": "HS256"}, scene.claims)
        for s in (public_pem(scene), scene.key.public_jwk_json.encode())
    ]
    for label, key in ATTACKER_KEYS.items():
        attempts.append(signed(key, {**scene.header, "alg": label}, scene.claims))
        attempts.append(signed(key, scene.header, scene.claims, alg=key.alg))
        if label != alg:
            attempts.append(f"{b64json({**scene.header, 'alg': label})}.{payload}.{signature}")
    if alg.startswith("ES"):
        attempts.append(f"{header}.{payload}.{b64(bytes(len(base64.urlsafe_b64decode(signature + '==='))))}")
    for token in attempts:
        for who in ("svc", "admin"):
            assert await revoke(scene, who, token) is False
    await assert_untouched(scene)


async def test_a_genuine_token_whose_key_was_revoked_counts_as_already_revoked(scene: Scene) -> None:
    """Its key left every key set, so the token is dead: revoked=true (RFC 7009 "already revoked")."""
    await scene.rotor.admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=scene.key.kid, reason="leak"),
        metadata=scene.ops.metadata,
        timeout=30,
    )
    assert await revoke(scene, "svc", scene.genuine.access_token) is True


async def test_a_forged_token_naming_a_revoked_key_is_not_taken_for_revoked(scene: Scene) -> None:
    """A forgery naming the revoked kid is still unrecognised (false), and the other grants live on."""
    await scene.rotor.admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=scene.key.kid, reason="leak"),
        metadata=scene.ops.metadata,
        timeout=30,
    )
    listed = await scene.rotor.admin.ListKeys(
        rotor_client.ListKeysRequest(), metadata=scene.ops.metadata, timeout=30
    )
    assert states(listed.keys)[scene.key.kid] == "REVOKED"
    for who in ("svc", "admin"):
        assert await revoke(scene, who, signed(ATTACKER, scene.header, scene.claims)) is False
    for client, grant in ((scene.svc, scene.genuine), (scene.billing, scene.billings)):
        request = rotor_client.RefreshRequest(refresh_token=grant.refresh_token)
        assert (await scene.rotor.tokens.Refresh(request, metadata=client.metadata, timeout=30)).access_token


async def test_an_expired_but_genuinely_signed_token_is_not_revoked(make_rotor: MakeRotor) -> None:
    clock = FakeClock()
    rotor = await make_rotor(clock=clock)
    scene = await make_scene(rotor)
    clock.advance(rotor.config.tokens.access_ttl + rotor.config.keys.clock_skew + 1)
    for who in ("svc", "admin"):
        assert await revoke(scene, who, scene.genuine.access_token) is False
    await assert_untouched(scene)


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
async def test_another_clients_genuine_token_is_not_owned_and_stays_live(scene: Scene, which: str) -> None:
    err = await failure(revoke(scene, "svc", getattr(scene.billings, which)))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "TOKEN_NOT_OWNED")
    await assert_untouched(scene)


async def test_a_token_signed_by_another_rotors_genuine_key_revokes_nothing(make_rotor: MakeRotor) -> None:
    """Another deployment with the same issuer holds genuine Rotor keys, but not this one's: its
    signature over our claims is unrecognised, under its own kid or ours."""
    scene = await make_scene(await make_rotor())
    elsewhere = (await make_rotor()).server.keyring.signer("")
    theirs = SigningKey(elsewhere.kid, elsewhere.alg, elsewhere.private_key)
    for header in ({**scene.header, "kid": elsewhere.kid}, scene.header):
        for who in ("svc", "admin"):
            assert await revoke(scene, who, signed(theirs, header, scene.claims)) is False
    await assert_untouched(scene)


# -- tenants: one tenant's key material must not reach another tenant's tokens -------------------------


async def tenant_scene(make_rotor: MakeRotor) -> tuple[Scene, SigningKey]:
    """A scene in the default tenant, and the genuine signing key of tenant acme."""
    rotor = await make_rotor(tenants={TENANT: TenantConfig()})
    scene = await make_scene(rotor)
    signer = rotor.server.keyring.signer(TENANT)
    return scene, SigningKey(signer.kid, signer.alg, signer.private_key)


async def test_a_token_signed_by_another_tenants_key_cannot_block_a_jtis_revocation(
    make_rotor: MakeRotor,
) -> None:
    scene, acme_key = await tenant_scene(make_rotor)
    acme = await scene.rotor.add_client("acme-app", tenant=TENANT)
    header = {"alg": acme_key.alg, "kid": acme_key.kid, "typ": "at+jwt"}
    squatter = signed(acme_key, header, {**scene.claims, "sub": "acme-app", "client_id": "acme-app"})
    await scene.rotor.revoke(acme, squatter)

    assert await revoke(scene, "svc", scene.genuine.access_token) is True
    assert scene.claims["jti"] in await revoked_jtis(scene.rotor), (
        "the owner's revocation never reached the default tenant's verifiers"
    )


async def test_a_token_signed_by_another_tenants_key_is_not_one_of_the_callers(make_rotor: MakeRotor) -> None:
    scene, acme_key = await tenant_scene(make_rotor)
    header = {"alg": acme_key.alg, "kid": acme_key.kid, "typ": "at+jwt"}
    for who in ("svc", "admin"):
        assert await revoke(scene, who, signed(acme_key, header, scene.claims)) is False
    await assert_untouched(scene)


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
async def test_a_tenants_admin_cannot_revoke_a_default_tenant_token(
    make_rotor: MakeRotor, which: str
) -> None:
    scene, _ = await tenant_scene(make_rotor)
    acme_admin = await scene.rotor.add_client("acme-admin", admin=True, tenant=TENANT)
    err = await failure(scene.rotor.revoke(acme_admin, getattr(scene.genuine, which)))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "TOKEN_NOT_OWNED", "ADMIN_REQUIRED")
    await assert_untouched(scene)
