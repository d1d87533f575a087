"""Forging compact JWS access tokens by hand, for the verifier tests.

Tokens are built part by part (base64url(header).base64url(payload).base64url(signature))
so a test can put anything in any part: a valid Rotor token, or whatever an attacker would.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from rotor.clock import FakeClock
from rotor_client import Verifier
from rotor_client._keys import KeyCache

ISSUER = "https://rotor.test"
AUDIENCE = "api"
NOW = 1_800_000_000.0  # the fake clock's start; every token here is issued at NOW
TTL = 300
ALGORITHMS = ("EdDSA", "ES256", "ES384", "RS256", "PS256")


@dataclass(frozen=True)
class SigningKey:
    """A private key with the kid and the one algorithm Rotor would publish it under."""

    kid: str
    alg: str
    private: Any

    @property
    def jwk(self) -> dict[str, Any]:
        """The public JWK as Rotor publishes it: kid, kty, alg and use "sig"."""
        doc: dict[str, Any] = jwt.get_algorithm_by_name(self.alg).to_jwk(
            self.private.public_key(), as_dict=True
        )
        return {**doc, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, signing_input: bytes, alg: str | None = None) -> bytes:
        """Sign with this key's algorithm (or another one the key type allows, for alg confusion)."""
        algorithm = jwt.get_algorithm_by_name(alg or self.alg)
        return algorithm.sign(signing_input, self.private)


def _generate(alg: str) -> Any:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def signing_key(alg: str, kid: str = "") -> SigningKey:
    """One key per (alg, kid), generated once per test run (RSA keys are slow to make)."""
    return SigningKey(kid or f"{alg.lower()}-key", alg, _generate(alg))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(doc: Any) -> str:
    return b64(json.dumps(doc, separators=(",", ":")).encode())


def header_for(key: SigningKey, **members: Any) -> dict[str, Any]:
    """Rotor's header for `key`; a member set to None is left out."""
    header = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt", **members}
    return {name: value for name, value in header.items() if value is not None}


def claims_for(**members: Any) -> dict[str, Any]:
    """The claims of a valid Rotor access token issued at NOW; a member set to None is left out."""
    claims = {
        "iss": ISSUER,
        "sub": "svc-orders",
        "aud": AUDIENCE,
        "exp": int(NOW) + TTL,
        "iat": int(NOW),
        "nbf": int(NOW),
        "jti": "4f1d8a0e9b7c6d5e4f3a2b1c0d9e8f7a",
        "client_id": "svc-orders",
        "scope": "orders.read orders.write",
        **members,
    }
    return {name: value for name, value in claims.items() if value is not None}


def sign_parts(key: SigningKey, header_b64: str, payload_b64: str, alg: str | None = None) -> str:
    """header.payload.signature, signed over exactly the two given (raw) parts."""
    signature = key.sign(f"{header_b64}.{payload_b64}".encode("ascii"), alg)
    return f"{header_b64}.{payload_b64}.{b64(signature)}"


def forge(
    key: SigningKey,
    claims: Mapping[str, Any] | None = None,
    header: Mapping[str, Any] | None = None,
    alg: str | None = None,
) -> str:
    """A token signed by `key` (with `alg` if given), Rotor's header and claims unless replaced."""
    return sign_parts(
        key,
        b64json(dict(header) if header is not None else header_for(key)),
        b64json(dict(claims) if claims is not None else claims_for()),
        alg,
    )


def token(key: SigningKey, **members: Any) -> str:
    """A valid Rotor token signed by `key`, with claims changed by `members`."""
    return forge(key, claims_for(**members))


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.jwk for k in keys]}


def static_cache(*keys: SigningKey) -> KeyCache:
    """A KeyCache holding `keys`, filled by hand as a watcher would, never stale."""
    cache = KeyCache()
    cache.install_static(((k.kid, k.alg, k.jwk) for k in keys), ISSUER)
    return cache


def verifier_over(
    *keys: SigningKey, clock: FakeClock | None = None, cache: KeyCache | None = None, **options: Any
) -> Verifier:
    """A Verifier for ISSUER/AUDIENCE over `keys` (or `cache`), on a fake clock at NOW."""
    clock = clock or FakeClock(NOW)
    options.setdefault("issuer", ISSUER)
    options.setdefault("audience", AUDIENCE)
    return Verifier(cache if cache is not None else static_cache(*keys), clock=clock.now, **options)


@functools.cache
def self_signed_certificate(common_name: str) -> x509.Certificate:
    """A throwaway client certificate (one per name per run), as an mTLS peer would present."""
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(private, hashes.SHA256())
    )


def x5t_s256(certificate: x509.Certificate) -> str:
    """RFC 8705 `x5t#S256`: base64url(SHA-256(DER)), computed here independently of the library."""
    return b64(hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest())
