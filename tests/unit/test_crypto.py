"""Key material: sealing at rest, the key-encryption key, JWKs, thumbprints and signatures."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import jwt
import pytest
from jwcrypto import jwk as jose_jwk  # type: ignore[import-untyped]
from jwcrypto import jws as jose_jws
from rotor.core.crypto import (
    AesGcmSealer,
    CryptoError,
    Signer,
    decode_unverified,
    generate_private_key,
    load_kek,
    private_from_bytes,
    private_to_bytes,
    public_jwk,
    thumbprint,
    verify_signature,
)

from .support import PRIVATE_MEMBERS

KID = b"kid-1"
ALGORITHMS = ["EdDSA", "ES256", "ES384", "PS256", "RS256"]


# -- sealing -------------------------------------------------------------------------


def test_sealed_material_opens_with_the_same_kek_and_kid() -> None:
    sealer = AesGcmSealer(os.urandom(32))
    sealed = sealer.seal(b"private key bytes", KID)
    assert b"private key bytes" not in sealed
    assert sealer.unseal(sealed, KID) == b"private key bytes"


def test_sealing_twice_gives_different_ciphertexts() -> None:
    sealer = AesGcmSealer(os.urandom(32))
    assert sealer.seal(b"same", KID) != sealer.seal(b"same", KID)


def test_another_kek_cannot_unseal() -> None:
    sealed = AesGcmSealer(os.urandom(32)).seal(b"secret", KID)
    with pytest.raises(CryptoError, match="key-encryption key"):
        AesGcmSealer(os.urandom(32)).unseal(sealed, KID)


def test_sealed_material_is_bound_to_its_kid() -> None:
    sealer = AesGcmSealer(os.urandom(32))
    sealed = sealer.seal(b"secret", KID)
    with pytest.raises(CryptoError):
        sealer.unseal(sealed, b"kid-2")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda s: s[:-1] + bytes([s[-1] ^ 1]), id="flipped-tag-bit"),
        pytest.param(lambda s: s[:20] + bytes([s[20] ^ 1]) + s[21:], id="flipped-ciphertext-bit"),
        pytest.param(lambda s: b"\x02" + s[1:], id="unknown-version"),
        pytest.param(lambda s: s[:10], id="truncated"),
        pytest.param(lambda s: b"", id="empty"),
    ],
)
def test_damaged_sealed_material_raises_crypto_error(damage: object) -> None:
    sealer = AesGcmSealer(os.urandom(32))
    sealed = sealer.seal(b"secret", KID)
    with pytest.raises(CryptoError):
        sealer.unseal(damage(sealed), KID)  # type: ignore[operator]


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_sealer_requires_a_32_byte_kek(size: int) -> None:
    with pytest.raises(CryptoError):
        AesGcmSealer(os.urandom(size))


# -- the key-encryption key ------------------------------------------------------------


def test_kek_from_the_environment(tmp_path: Path) -> None:
    kek = os.urandom(32)
    assert load_kek(base64.b64encode(kek).decode(), tmp_path / "kek.key", create=True) == (kek, False)
    assert load_kek(f"  {base64.b64encode(kek).decode()}\n", tmp_path / "kek.key", create=True) == (
        kek,
        False,
    )
    assert not (tmp_path / "kek.key").exists()  # the environment wins; no file is made


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("not base64!", id="not-base64"),
        pytest.param(base64.b64encode(os.urandom(16)).decode(), id="16-bytes"),
        pytest.param(base64.b64encode(os.urandom(33)).decode(), id="33-bytes"),
        pytest.param(base64.urlsafe_b64encode(b"\xff" * 32).decode(), id="urlsafe-alphabet"),
    ],
)
def test_bad_kek_in_the_environment_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(CryptoError, match="ROTOR_KEK"):
        load_kek(value, tmp_path / "kek.key", create=True)


def test_missing_kek_file_is_created_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "data" / "kek.key"
    kek, created = load_kek(None, path, create=True)
    assert created is True and len(kek) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_kek(None, path, create=True) == (kek, False)
    assert load_kek("", path, create=False) == (kek, False)


def test_missing_kek_file_without_create_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="ROTOR_KEK"):
        load_kek(None, tmp_path / "kek.key", create=False)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"garbage!", id="not-base64"),
        pytest.param(base64.b64encode(os.urandom(24)) + b"\n", id="24-bytes"),
    ],
)
def test_bad_kek_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "kek.key"
    path.write_bytes(content)
    with pytest.raises(CryptoError, match=str(path)):
        load_kek(None, path, create=True)


# -- keys, JWKs and signatures -----------------------------------------------------------


@pytest.fixture(scope="module", params=ALGORITHMS)
def signer_and_jwk(request: pytest.FixtureRequest) -> tuple[Signer, dict[str, object]]:
    alg: str = request.param
    private = generate_private_key(alg, rsa_bits=2048)
    jwk = public_jwk(private, alg)
    return Signer.for_key(str(jwk["kid"]), alg, private), jwk


CLAIMS = {
    "iss": "https://tokens.test",
    "sub": "svc-a",
    "aud": "api",
    "iat": 1_800_000_000,
    "exp": 1_800_000_300,
}


def test_public_jwk_has_no_private_member_and_names_itself(
    signer_and_jwk: tuple[Signer, dict[str, object]],
) -> None:
    signer, jwk = signer_and_jwk
    assert not set(jwk) & set(PRIVATE_MEMBERS)
    assert (jwk["kid"], jwk["alg"], jwk["use"]) == (signer.kid, signer.alg, "sig")
    assert jwk["kid"] == thumbprint(jwk)


def test_kid_is_the_rfc7638_thumbprint_as_jwcrypto_computes_it(
    signer_and_jwk: tuple[Signer, dict[str, object]],
) -> None:
    _, jwk = signer_and_jwk
    assert jose_jwk.JWK(**jwk).thumbprint() == jwk["kid"]


def test_tokens_verify_with_pyjwt(signer_and_jwk: tuple[Signer, dict[str, object]]) -> None:
    signer, jwk = signer_and_jwk
    token = signer.sign(CLAIMS)
    decoded = jwt.decode(
        token,
        jwt.PyJWK(jwk),
        algorithms=[signer.alg],
        audience="api",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert decoded == CLAIMS
    assert jwt.get_unverified_header(token) == {"alg": signer.alg, "kid": signer.kid, "typ": "at+jwt"}


def test_tokens_verify_with_jwcrypto(signer_and_jwk: tuple[Signer, dict[str, object]]) -> None:
    signer, jwk = signer_and_jwk
    token = signer.sign(CLAIMS)
    verified = jose_jws.JWS()
    verified.deserialize(token)
    verified.verify(jose_jwk.JWK(**jwk), alg=signer.alg)
    assert json.loads(verified.payload) == CLAIMS


def test_verify_signature_accepts_ours_and_refuses_tampering(
    signer_and_jwk: tuple[Signer, dict[str, object]],
) -> None:
    signer, jwk = signer_and_jwk
    token = signer.sign(CLAIMS)
    assert verify_signature(token, json.dumps(jwk), signer.alg)
    head, payload, signature = token.split(".")
    forged = signer.sign({**CLAIMS, "sub": "admin"}).split(".")[1]
    assert not verify_signature(f"{head}.{forged}.{signature}", json.dumps(jwk), signer.alg)
    assert not verify_signature(f"{head}.{payload}.", json.dumps(jwk), signer.alg)
    assert decode_unverified(token)[1] == CLAIMS


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_private_key_survives_der_round_trip(alg: str) -> None:
    private = generate_private_key(alg)
    restored = private_from_bytes(private_to_bytes(private))
    assert public_jwk(restored, alg) == public_jwk(private, alg)


@pytest.mark.parametrize("alg", ["HS256", "none", "ES512"])
def test_unsupported_algorithms_cannot_make_keys(alg: str) -> None:
    with pytest.raises(CryptoError):
        generate_private_key(alg)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.e30.x", "e30.bm90IGpzb24.x"])
def test_decode_unverified_refuses_what_is_not_a_compact_jws(token: str) -> None:
    with pytest.raises(ValueError):
        decode_unverified(token)


RFC7638_EXAMPLE = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
        "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
        "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}


def test_thumbprint_matches_the_rfc7638_example() -> None:
    assert thumbprint(RFC7638_EXAMPLE) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
