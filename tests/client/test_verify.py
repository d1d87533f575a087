"""Verifier.verify offline: what it accepts, and each rejection with its own exception.

The key sets are built here (a static JWKS, or a KeyCache filled by hand as a
watcher would fill it); time comes from a FakeClock; tokens are signed by hand.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import rotor_client
from cryptography.hazmat.primitives import serialization
from rotor.clock import FakeClock
from rotor_client import (
    Claims,
    InsufficientScope,
    InvalidAudience,
    InvalidIssuer,
    InvalidSignature,
    InvalidTokenError,
    KeyRevoked,
    KeySetStale,
    RotorClientError,
    TokenExpired,
    TokenNotYetValid,
    TokenRevoked,
    UnknownKey,
    Verifier,
)
from rotor_client._keys import KeyCache
from rotor_client.errors import CertificateMismatch, MalformedToken
from rotor_client.verifier import certificate_thumbprint

from .jws import (
    ALGORITHMS,
    AUDIENCE,
    ISSUER,
    NOW,
    TTL,
    b64,
    b64json,
    claims_for,
    forge,
    header_for,
    jwks,
    self_signed_certificate,
    sign_parts,
    signing_key,
    static_cache,
    token,
    verifier_over,
    x5t_s256,
)

UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
ED = signing_key("EdDSA")
ES = signing_key("ES256")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def verifier(clock: FakeClock) -> Verifier:
    return verifier_over(*(signing_key(alg) for alg in ALGORITHMS), clock=clock)


# -- the happy path -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_valid_token_verifies_for_each_algorithm(alg: str) -> None:
    """A Rotor-shaped token signed with each supported algorithm verifies against a JWKS with its key."""
    key = signing_key(alg)
    verifier = Verifier.from_jwks(
        json.dumps(jwks(key)), issuer=ISSUER, audience=AUDIENCE, clock=FakeClock(NOW).now
    )
    claims = verifier.verify(token(key, sub=f"svc-{alg}"))
    assert claims.sub == f"svc-{alg}"


def test_from_jwks_takes_a_json_string_or_a_mapping_with_several_keys() -> None:
    """from_jwks accepts the JWKS as text or as a parsed mapping, and each of its keys verifies."""
    keys = [signing_key(alg) for alg in ALGORITHMS]
    for document in (json.dumps(jwks(*keys)), jwks(*keys)):
        verifier = Verifier.from_jwks(document, issuer=ISSUER, audience=AUDIENCE, clock=FakeClock(NOW).now)
        assert [verifier.verify(token(k)).client_id for k in keys] == ["svc-orders"] * len(keys)


def test_a_jwks_from_another_jose_library_verifies_too() -> None:
    """A JWKS made by PyJWT's own exporter (members in its order, plus kid/alg/use) verifies a token."""
    public = ES.private.public_key()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
    jwk.update(kid=ES.kid, alg="ES256", use="sig")
    verifier = Verifier.from_jwks({"keys": [jwk]}, issuer=ISSUER, audience=AUDIENCE, clock=FakeClock(NOW).now)
    assert verifier.verify(token(ES)).jti == claims_for()["jti"]


def test_claims_accessors_give_typed_values(verifier: Verifier) -> None:
    """Claims exposes sub, client_id, scopes (a frozenset), exp, iat, jti, audience and issuer, typed."""
    claims = verifier.verify(token(ED, sub="user-7", client_id="gateway", scope="a b  c", jti="j-1"))
    assert claims.sub == "user-7" and claims.client_id == "gateway"
    assert claims.scopes == frozenset({"a", "b", "c"}) and isinstance(claims.scopes, frozenset)
    assert claims.exp == int(NOW) + TTL and isinstance(claims.exp, int)
    assert claims.iat == int(NOW)
    assert claims.jti == "j-1"
    assert claims.audience == (AUDIENCE,)
    assert claims.issuer == ISSUER


def test_claims_without_a_scope_claim_have_no_scopes(verifier: Verifier) -> None:
    """A token with no scope claim (Issue with an empty scope list) gives an empty frozenset."""
    assert verifier.verify(token(ED, scope=None)).scopes == frozenset()


def test_claims_audience_lists_every_audience_of_a_list_aud(verifier: Verifier) -> None:
    """An aud list comes back as a tuple of every audience, in order."""
    claims = verifier.verify(token(ED, aud=["billing", AUDIENCE]))
    assert claims.audience == ("billing", AUDIENCE)


def test_claims_is_a_read_only_mapping_of_every_claim(verifier: Verifier) -> None:
    """Claims is a Mapping holding exactly the token's claims, and cannot be changed."""
    expected = claims_for(extra={"tenant": "t1"})
    claims = verifier.verify(forge(ED, expected))
    assert isinstance(claims, Mapping) and isinstance(claims, Claims)
    assert dict(claims) == expected and len(claims) == len(expected)
    assert set(claims) == set(expected) and "jti" in claims and "nope" not in claims
    assert claims["extra"] == {"tenant": "t1"} and claims.get("nope") is None
    with pytest.raises(TypeError):
        claims["sub"] = "someone-else"  # type: ignore[index]
    assert not hasattr(claims, "__setitem__")


# -- time ------------------------------------------------------------------------------------


def test_an_expired_token_is_refused(verifier: Verifier, clock: FakeClock) -> None:
    """A token past exp (beyond the leeway) raises TokenExpired."""
    clock.advance(TTL + 3600)
    with pytest.raises(TokenExpired):
        verifier.verify(token(ED))


@pytest.mark.parametrize("leeway", [0.0, 30.0, 120.0])
def test_expiry_is_accepted_within_the_leeway_and_refused_just_past_it(leeway: float) -> None:
    """At exp + leeway the token still verifies; a millisecond later it is TokenExpired."""
    clock = FakeClock(NOW)
    verifier = verifier_over(ED, clock=clock, leeway=leeway)
    signed = token(ED)
    clock.set(NOW + TTL + leeway)
    assert verifier.verify(signed).sub == "svc-orders"
    clock.set(NOW + TTL + leeway + 0.001)
    with pytest.raises(TokenExpired):
        verifier.verify(signed)


@pytest.mark.parametrize("leeway", [0.0, 30.0])
def test_a_token_not_yet_valid_is_refused_beyond_the_leeway(leeway: float) -> None:
    """nbf in the future: accepted down to nbf - leeway, TokenNotYetValid a millisecond before that."""
    clock = FakeClock(NOW)
    verifier = verifier_over(ED, clock=clock, leeway=leeway)
    future = token(ED, nbf=int(NOW) + 600, iat=int(NOW) + 600, exp=int(NOW) + 900)
    clock.set(NOW + 600 - leeway)
    assert verifier.verify(future).sub == "svc-orders"
    clock.set(NOW + 600 - leeway - 0.001)
    with pytest.raises(TokenNotYetValid):
        verifier.verify(future)


def test_without_nbf_a_token_issued_in_the_future_is_not_yet_valid(verifier: Verifier) -> None:
    """With no nbf, iat is when the token starts to be valid: an iat an hour ahead is refused."""
    with pytest.raises(TokenNotYetValid):
        verifier.verify(token(ED, nbf=None, iat=int(NOW) + 3600, exp=int(NOW) + 3900))


# -- who the token is from and for ----------------------------------------------------------


def test_a_token_from_another_issuer_is_refused(verifier: Verifier) -> None:
    """A validly signed token whose iss is not the verifier's issuer raises InvalidIssuer."""
    with pytest.raises(InvalidIssuer):
        verifier.verify(token(ED, iss="https://other-rotor.test"))


@pytest.mark.parametrize(
    "aud",
    [pytest.param("billing", id="another-name"), pytest.param(["billing", "audit"], id="list-without-ours")],
)
def test_a_token_for_another_audience_is_refused(verifier: Verifier, aud: Any) -> None:
    """A token whose aud does not name this service raises InvalidAudience."""
    with pytest.raises(InvalidAudience):
        verifier.verify(token(ED, aud=aud))


def test_an_aud_list_containing_our_audience_is_accepted(verifier: Verifier) -> None:
    """aud may be a list: one entry naming this service is enough."""
    assert verifier.verify(token(ED, aud=["billing", AUDIENCE, "audit"])).sub == "svc-orders"


def test_a_verifier_known_by_several_names_accepts_each_and_nothing_else() -> None:
    """audience=("api", "api-v2"): tokens for either verify; a token for neither is InvalidAudience."""
    verifier = verifier_over(ED, audience=("api", "api-v2"))
    assert verifier.verify(token(ED, aud="api")).sub == "svc-orders"
    assert verifier.verify(token(ED, aud=["x", "api-v2"])).sub == "svc-orders"
    with pytest.raises(InvalidAudience):
        verifier.verify(token(ED, aud="api-v3"))


def test_a_missing_required_scope_is_refused() -> None:
    """required_scopes not all in the token's scope raises InsufficientScope; no scope claim too."""
    verifier = verifier_over(ED, required_scopes=("orders.read", "orders.admin"))
    with pytest.raises(InsufficientScope):
        verifier.verify(token(ED, scope="orders.read orders.write"))
    with pytest.raises(InsufficientScope):
        verifier.verify(token(ED, scope=None))


def test_required_scopes_present_are_accepted() -> None:
    """A token holding every required scope (and more) verifies."""
    verifier = verifier_over(ED, required_scopes=("orders.read", "orders.write"))
    claims = verifier.verify(token(ED, scope="orders.write audit orders.read"))
    assert claims.scopes >= {"orders.read", "orders.write"}


def test_a_scope_that_only_prefixes_a_required_one_does_not_satisfy_it() -> None:
    """Scopes compare as whole space-separated words: "orders" or "orders.read.x" is not "orders.read"."""
    verifier = verifier_over(ED, required_scopes=("orders.read",))
    with pytest.raises(InsufficientScope):
        verifier.verify(token(ED, scope="orders orders.read.x orders.readers"))


# -- revocation, unknown keys, staleness -----------------------------------------------------


def test_a_revoked_jti_is_refused_and_other_tokens_are_not() -> None:
    """A jti in the cache's revoked list raises TokenRevoked; another token by the same key verifies."""
    cache = static_cache(ED)
    verifier = verifier_over(cache=cache)
    revoked, other = token(ED, jti="revoked-1"), token(ED, jti="still-good")
    assert verifier.verify(revoked).jti == "revoked-1"
    cache.revoke_jti("revoked-1", NOW + TTL)
    with pytest.raises(TokenRevoked):
        verifier.verify(revoked)
    assert verifier.verify(other).jti == "still-good"


def test_a_revoked_key_is_refused_once_the_watcher_applies_the_revocation() -> None:
    """As a KEY_REVOKED event applies (kid marked revoked, set without it): KeyRevoked, even for a
    token whose header the verifier had already seen, while the other key keeps verifying."""
    cache = static_cache(ED, ES)
    verifier = verifier_over(cache=cache)
    signed = token(ED)
    assert verifier.verify(signed).sub == "svc-orders"  # its header is now cached
    cache.revoke_key(ED.kid, NOW)
    cache.install_static([(ES.kid, ES.alg, ES.jwk)], ISSUER)
    with pytest.raises(KeyRevoked):
        verifier.verify(signed)
    assert verifier.verify(token(ES)).sub == "svc-orders"


def test_revoke_key_alone_refuses_the_kid_even_while_the_key_is_still_in_the_set() -> None:
    """KeyCache.revoke_key(kid) is enough: a revoked kid must never verify, whatever else the set holds."""
    cache = static_cache(ED, ES)
    verifier = verifier_over(cache=cache)
    cache.revoke_key(ED.kid, NOW)
    with pytest.raises(KeyRevoked):
        verifier.verify(token(ED))


def test_an_unknown_kid_is_refused(verifier: Verifier) -> None:
    """A token whose kid is not in the key set raises UnknownKey (a static set fetches nothing)."""
    stranger = signing_key("EdDSA", "not-in-the-set")
    with pytest.raises(UnknownKey):
        verifier.verify(token(stranger))


def test_a_key_set_past_its_staleness_deadline_raises_key_set_stale() -> None:
    """When the cache's stale_at has passed, verify raises KeySetStale (not trusting old keys forever),
    and verifies again once the set is confirmed."""
    cache = static_cache(ED)
    cache.max_staleness = 300.0
    cache.last_contact = time.time() - 400
    verifier = verifier_over(cache=cache)
    cache.stale_at = time.monotonic() - 1
    with pytest.raises(KeySetStale) as caught:
        verifier.verify(token(ED))
    assert not isinstance(caught.value, InvalidTokenError)
    assert "max_staleness" in str(caught.value)
    cache.stale_at = time.monotonic() + 300
    assert verifier.verify(token(ED)).sub == "svc-orders"


def test_a_cache_that_never_loaded_a_key_set_raises_key_set_stale() -> None:
    """Before the first key set arrives, every verify raises KeySetStale, not UnknownKey."""
    verifier = verifier_over(cache=KeyCache())
    with pytest.raises(KeySetStale) as caught:
        verifier.verify(token(ED))
    assert "no key set" in str(caught.value)


# -- shape -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typ",
    [
        pytest.param("JWT", id="JWT"),
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("jwt", id="jwt"),
        pytest.param("at+jwt+x", id="suffixed"),
        pytest.param("application/jwt", id="application-jwt"),
        pytest.param(["at+jwt"], id="list"),
        pytest.param(1, id="number"),
    ],
)
def test_a_typ_other_than_at_jwt_is_refused(verifier: Verifier, typ: Any) -> None:
    """An ID token or any other JWT (typ not at+jwt, RFC 9068 §4) is MalformedToken, even validly signed."""
    with pytest.raises(MalformedToken):
        verifier.verify(forge(ED, header=header_for(ED, typ=typ)))  # typ=None: no typ member at all


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"])
def test_at_jwt_typ_variants_are_accepted(verifier: Verifier, typ: str) -> None:
    """typ compares case-insensitively, with or without the "application/" prefix (RFC 9068 §2.1)."""
    assert verifier.verify(forge(ED, header=header_for(ED, typ=typ))).sub == "svc-orders"


@pytest.mark.parametrize("claim", ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"])
def test_a_token_missing_a_required_claim_is_malformed(verifier: Verifier, claim: str) -> None:
    """Each RFC 9068 required claim, left out of a validly signed token, makes it MalformedToken."""
    with pytest.raises(MalformedToken):
        verifier.verify(token(ED, **{claim: None}))


@pytest.mark.parametrize("claim", ["iss", "sub", "jti", "client_id"])
def test_a_non_string_identity_claim_is_malformed(verifier: Verifier, claim: str) -> None:
    """iss, sub, jti and client_id must be strings: a number or a list there is MalformedToken."""
    for value in (42, ["svc-orders"]):
        with pytest.raises(MalformedToken):
            verifier.verify(token(ED, **{claim: value}))


# -- errors a caller can act on --------------------------------------------------------------


def _stale_cache() -> KeyCache:
    cache = static_cache(ED)
    cache.max_staleness, cache.last_contact = 300.0, time.time() - 400
    cache.stale_at = time.monotonic() - 1
    return cache


def _revoked_key_cache() -> KeyCache:
    cache = static_cache(ES)
    cache.revoke_key(ED.kid, NOW - 10)
    return cache


def _revoked_jti_cache() -> KeyCache:
    cache = static_cache(ED)
    cache.revoke_jti(claims_for()["jti"], NOW + TTL)
    return cache


def _tampered() -> str:
    header, _, signature = token(ED).split(".")
    return f"{header}.{b64json(claims_for(sub='admin'))}.{signature}"


CERT = self_signed_certificate("client-a")
OTHER_CERT = self_signed_certificate("client-b")

# id -> (the cache to verify against, the token, peer certificate, exception, what the message tells to do)
FAILURES: dict[str, tuple[Callable[[], KeyCache], Callable[[], str], Any, type[Exception], str]] = {
    "expired": (
        lambda: static_cache(ED),
        lambda: token(ED, exp=int(NOW) - 3600),
        None,
        TokenExpired,
        "refresh",
    ),
    "not-yet-valid": (
        lambda: static_cache(ED),
        lambda: token(ED, nbf=int(NOW) + 3600),
        None,
        TokenNotYetValid,
        "check",
    ),
    "wrong-issuer": (
        lambda: static_cache(ED),
        lambda: token(ED, iss="https://x"),
        None,
        InvalidIssuer,
        "configure",
    ),
    "wrong-audience": (
        lambda: static_cache(ED),
        lambda: token(ED, aud="x"),
        None,
        InvalidAudience,
        "request",
    ),
    "revoked-jti": (_revoked_jti_cache, lambda: token(ED), None, TokenRevoked, "obtain a new token"),
    "revoked-kid": (_revoked_key_cache, lambda: token(ED), None, KeyRevoked, "obtain a new token"),
    "unknown-kid": (
        lambda: static_cache(ES),
        lambda: token(ED),
        None,
        UnknownKey,
        "not issued by this rotor",
    ),
    "bad-signature": (lambda: static_cache(ED), _tampered, None, InvalidSignature, "obtain a new token"),
    "alg-mismatch": (
        lambda: static_cache(ED),
        lambda: forge(ES, header=header_for(ES, kid=ED.kid)),
        None,
        InvalidSignature,
        "not issued by rotor",
    ),
    "not-a-jws": (
        lambda: static_cache(ED),
        lambda: "Bearer abc",
        None,
        MalformedToken,
        "pass the access token",
    ),
    "stale": (_stale_cache, lambda: token(ED), None, KeySetStale, "check connectivity"),
    "never-loaded": (KeyCache, lambda: token(ED), None, KeySetStale, "start the keysetwatcher"),
    "cnf-without-peer": (
        lambda: static_cache(ED),
        lambda: token(ED, cnf={"x5t#S256": x5t_s256(CERT)}),
        None,
        CertificateMismatch,
        "must use mtls",
    ),
    "cnf-other-peer": (
        lambda: static_cache(ED),
        lambda: token(ED, cnf={"x5t#S256": x5t_s256(CERT)}),
        OTHER_CERT,
        CertificateMismatch,
        "someone other than the client",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_each_failure_is_a_rotor_client_error_with_a_reason_and_an_actionable_message(case: str) -> None:
    """Every rejection raises its own class (a RotorClientError with an UPPER_SNAKE reason) and a
    message that says what to do."""
    make_cache, make_token, peer, expected, advice = FAILURES[case]
    verifier = verifier_over(cache=make_cache(), required_scopes=())
    with pytest.raises(expected) as caught:
        verifier.verify(make_token(), peer_certificate=peer)
    error = caught.value
    assert type(error) is expected and isinstance(error, RotorClientError)
    assert UPPER_SNAKE.fullmatch(error.reason), error.reason
    assert error.reason not in ("ROTOR_CLIENT_ERROR", "INVALID_TOKEN")
    message = str(error)
    assert message.strip() and advice in message.lower(), message


def test_every_exception_class_has_its_own_upper_snake_reason() -> None:
    """Each exported exception derives from RotorClientError and carries a distinct UPPER_SNAKE reason."""
    classes = [
        obj
        for name in rotor_client.__all__
        if isinstance(obj := getattr(rotor_client, name), type) and issubclass(obj, Exception)
    ]
    assert len(classes) >= 14
    for cls in classes:
        assert issubclass(cls, RotorClientError), cls
        assert UPPER_SNAKE.fullmatch(cls.reason), (cls, cls.reason)
    reasons = [cls.reason for cls in classes]
    assert len(set(reasons)) == len(reasons)
    invalid = [cls for cls in classes if issubclass(cls, InvalidTokenError)]
    assert {TokenExpired, TokenNotYetValid, InvalidSignature, UnknownKey, KeyRevoked} <= set(invalid)
    assert {TokenRevoked, InvalidAudience, InvalidIssuer, InsufficientScope, MalformedToken} <= set(invalid)
    assert not issubclass(KeySetStale, InvalidTokenError)  # the key set's fault, not the token's


# -- what from_jwks refuses -------------------------------------------------------------------


def _private_jwk(alg: str) -> dict[str, Any]:
    key = signing_key(alg)
    doc: dict[str, Any] = jwt.get_algorithm_by_name(alg).to_jwk(key.private, as_dict=True)
    return {**doc, "kid": key.kid, "alg": alg, "use": "sig"}


def _without(member: str) -> dict[str, Any]:
    return {name: value for name, value in ED.jwk.items() if name != member}


REFUSED_JWKS: dict[str, Any] = {
    "hs256-oct": {"keys": [{"kty": "oct", "k": b64(b"s" * 32), "kid": "h", "alg": "HS256", "use": "sig"}]},
    "alg-none": {"keys": [{**ED.jwk, "alg": "none"}]},
    "oct-labelled-rs256": {"keys": [{"kty": "oct", "k": b64(b"s" * 32), "kid": "h", "alg": "RS256"}]},
    "unknown-alg": {"keys": [{**ED.jwk, "alg": "Ed448"}]},
    "private-rsa": {"keys": [_private_jwk("RS256")]},
    "private-ec": {"keys": [_private_jwk("ES256")]},
    "private-okp": {"keys": [_private_jwk("EdDSA")]},
    "no-kid": {"keys": [_without("kid")]},
    "no-alg": {"keys": [_without("alg")]},
    "kid-not-a-string": {"keys": [{**ED.jwk, "kid": 7}]},
    "alg-for-another-key-type": {"keys": [{**ED.jwk, "alg": "ES256"}]},
    "not-a-key-set": {"kid": ED.kid, **ED.jwk},
    "keys-not-a-list": {"keys": ED.jwk},
    "a-key-not-an-object": {"keys": ["EdDSA"]},
}


@pytest.mark.parametrize("case", list(REFUSED_JWKS))
def test_from_jwks_refuses_keys_that_must_never_verify(case: str) -> None:
    """Symmetric, "none", private, unlabelled or malformed JWKs are a ValueError at construction."""
    with pytest.raises(ValueError):
        Verifier.from_jwks(REFUSED_JWKS[case], issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError):
        Verifier.from_jwks(json.dumps(REFUSED_JWKS[case]), issuer=ISSUER, audience=AUDIENCE)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"issuer": ""}, id="no-issuer"),
        pytest.param({"audience": ""}, id="empty-audience"),
        pytest.param({"audience": ()}, id="no-audience"),
        pytest.param({"leeway": -1.0}, id="negative-leeway"),
    ],
)
def test_a_verifier_without_issuer_or_audience_cannot_be_built(options: dict[str, Any]) -> None:
    """A verifier that would accept any issuer or audience, or negative leeway, is a ValueError."""
    with pytest.raises(ValueError):
        Verifier(static_cache(ED), **{"issuer": ISSUER, "audience": AUDIENCE, **options})


# -- certificate-bound tokens (RFC 8705 cnf) ---------------------------------------------------


def _bound_token() -> str:
    return token(ED, cnf={"x5t#S256": x5t_s256(CERT)})


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(lambda c: c.public_bytes(serialization.Encoding.PEM), id="pem-bytes"),
        pytest.param(lambda c: c.public_bytes(serialization.Encoding.PEM).decode(), id="pem-str"),
        pytest.param(lambda c: c.public_bytes(serialization.Encoding.DER), id="der-bytes"),
        pytest.param(lambda c: c, id="x509-certificate"),
    ],
)
def test_a_certificate_bound_token_verifies_with_its_certificate(
    verifier: Verifier, peer: Callable[[Any], Any]
) -> None:
    """cnf x5t#S256 matching the peer certificate (PEM, DER or parsed) verifies."""
    assert certificate_thumbprint(peer(CERT)) == x5t_s256(CERT)
    claims = verifier.verify(_bound_token(), peer_certificate=peer(CERT))
    assert claims["cnf"] == {"x5t#S256": x5t_s256(CERT)}


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(lambda c: c.public_bytes(serialization.Encoding.PEM), id="pem-bytes"),
        pytest.param(lambda c: c.public_bytes(serialization.Encoding.DER), id="der-bytes"),
        pytest.param(lambda c: c, id="x509-certificate"),
    ],
)
def test_a_certificate_bound_token_is_refused_with_another_certificate(
    verifier: Verifier, peer: Callable[[Any], Any]
) -> None:
    """A bound token presented over another client certificate raises CertificateMismatch."""
    with pytest.raises(CertificateMismatch):
        verifier.verify(_bound_token(), peer_certificate=peer(OTHER_CERT))


def test_a_certificate_bound_token_is_refused_without_a_peer_certificate(verifier: Verifier) -> None:
    """A bound token with no peer certificate (no mTLS) raises CertificateMismatch."""
    with pytest.raises(CertificateMismatch):
        verifier.verify(_bound_token())


def test_a_cnf_without_a_certificate_thumbprint_is_malformed(verifier: Verifier) -> None:
    """cnf present but without a string x5t#S256 is MalformedToken, with or without a peer certificate."""
    for cnf in ({"jkt": "abc"}, {"x5t#S256": 5}, "x5t", ["x5t#S256"]):
        for peer in (None, CERT):
            with pytest.raises(MalformedToken):
                verifier.verify(token(ED, cnf=cnf), peer_certificate=peer)


@pytest.mark.parametrize("peer", [None, CERT], ids=["no-peer", "with-peer"])
def test_a_bearer_token_verifies_with_or_without_a_peer_certificate(verifier: Verifier, peer: Any) -> None:
    """A token with no cnf is a bearer token: the caller's certificate, if any, does not matter."""
    claims = verifier.verify(token(ED), peer_certificate=peer)
    assert "cnf" not in claims and claims.sub == "svc-orders"


# -- threads -------------------------------------------------------------------------------


def test_verify_from_eight_threads_gives_each_call_its_own_correct_result() -> None:
    """8 threads verifying a shuffled mix of valid and invalid tokens, with more distinct headers than
    the header cache holds, each get exactly the result a lone call gets."""
    keys = [signing_key(alg) for alg in ALGORITHMS]
    cache = static_cache(*keys)
    cache.revoke_jti("revoked-jti", NOW + TTL)
    verifier = verifier_over(cache=cache)
    cases: list[tuple[str, str]] = []  # token, expected outcome: a sub, or an exception name
    for i in range(70):  # 70 valid headers: more than the 64 the cache holds
        key = keys[i % len(keys)]
        header = b64json(header_for(key, n=i))  # a distinct header per token: churns the header cache
        valid = sign_parts(key, header, b64json(claims_for(sub=f"sub-{i}", jti=f"jti-{i}")))
        cases.append((valid, f"sub-{i}"))
        h, _, s = valid.split(".")
        cases.append((f"{h}.{b64json(claims_for(sub='admin', jti=f'x-{i}'))}.{s}", "InvalidSignature"))
        other = keys[(i + 1) % len(keys)]  # a header naming this key's kid with another key's alg
        cases.append((forge(other, header=header_for(other, kid=key.kid, n=i)), "InvalidSignature"))
        cases.append((token(key, jti="revoked-jti", sub=f"r-{i}"), "TokenRevoked"))
        cases.append((forge(key, header=header_for(key, kid=f"unknown-{i}")), "UnknownKey"))
        cases.append((token(key, aud="billing"), "InvalidAudience"))

    def outcome(signed: str) -> str:
        try:
            return verifier.verify(signed).sub
        except InvalidTokenError as e:
            return type(e).__name__

    expected = {signed: want for signed, want in cases}
    assert [outcome(signed) for signed, _ in cases] == [want for _, want in cases]  # a lone caller

    start = threading.Barrier(8)

    def worker(seed: int) -> list[tuple[str, str, str]]:
        order = [signed for signed, _ in cases]
        random.Random(seed).shuffle(order)
        start.wait(timeout=30)
        wrong = []
        for signed in order:
            got = outcome(signed)
            if got != expected[signed]:
                wrong.append((signed[:40], expected[signed], got))
        return wrong

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(worker, range(8)))
    assert results == [[]] * 8
