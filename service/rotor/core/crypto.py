"""Signing keys and compact JWS: generate, describe as JWK, sign, verify, seal.

Only asymmetric algorithms exist here: a shared secret (HS*) or no signature
(`none`) would defeat a public key set.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwt.algorithms import Algorithm

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_CURVES: dict[str, ec.EllipticCurve] = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}
_THUMBPRINT_MEMBERS = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
ACCESS_TOKEN_TYPE = "at+jwt"
MAX_HEADER = 1024  # base64url characters; ours is about 150
MAX_CLAIMS = 8192


class CryptoError(Exception):
    """Raised when key material cannot be generated, sealed, unsealed or checked."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_private_key(alg: str, rsa_bits: int = 3072) -> PrivateKey:
    """A fresh private key for `alg`."""
    match alg:
        case "EdDSA":
            return ed25519.Ed25519PrivateKey.generate()
        case "ES256" | "ES384":
            return ec.generate_private_key(_CURVES[alg])
        case "PS256" | "RS256":
            return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        case _:
            raise CryptoError(f"unsupported algorithm {alg!r}")


def private_to_bytes(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_from_bytes(data: bytes) -> PrivateKey:
    key = serialization.load_der_private_key(data, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CryptoError(f"unexpected private key type {type(key).__name__}")
    return key


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    members = {m: jwk[m] for m in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    return b64url(
        hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    )


def public_jwk(key: PrivateKey, alg: str) -> dict[str, Any]:
    """The public half of `key` as a JWK with kid (its thumbprint), alg and use."""
    return jwk_of_public(key.public_key(), alg)


def jwk_of_public(key: PublicKey, alg: str) -> dict[str, Any]:
    """A public key as a JWK with kid (its thumbprint), alg and use."""
    members = jwt.get_algorithm_by_name(alg).to_jwk(key, as_dict=True)
    public = {
        m: v for m, v in members.items() if m not in ("d", "p", "q", "dp", "dq", "qi", "k", "oth", "key_ops")
    }
    return {"kid": thumbprint(public), "alg": alg, "use": "sig", **public}


@functools.lru_cache(maxsize=64)
def public_key_from_jwk(jwk_json: str, alg: str) -> Any:
    """The key object of a public JWK (cached: the key set changes rarely)."""
    return jwt.get_algorithm_by_name(alg).from_jwk(jwk_json)


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs compact JWS with one private key; the header is encoded once."""

    kid: str
    alg: str
    private_key: PrivateKey
    header_b64: str
    algorithm: Algorithm

    @classmethod
    def for_key(cls, kid: str, alg: str, private_key: PrivateKey) -> Signer:
        header = {"alg": alg, "kid": kid, "typ": ACCESS_TOKEN_TYPE}
        header_b64 = b64url(json.dumps(header, separators=(",", ":")).encode())
        return cls(kid, alg, private_key, header_b64, jwt.get_algorithm_by_name(alg))

    def sign(self, claims: dict[str, Any]) -> str:
        signing_input = f"{self.header_b64}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        signature = self.algorithm.sign(signing_input.encode("ascii"), self.private_key)
        return f"{signing_input}.{b64url(signature)}"


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, unverified; ValueError when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    if len(parts[0]) > MAX_HEADER or len(parts[1]) > MAX_CLAIMS:
        raise ValueError("JWS header or payload is larger than any token of ours")
    try:
        header, claims = json.loads(b64url_decode(parts[0])), json.loads(b64url_decode(parts[1]))
    except RecursionError:  # deeply nested JSON
        raise ValueError("JWS header or payload nests too deeply") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("JWS header and payload must be JSON objects")
    return header, claims


def verify_signature(token: str, jwk_json: str, alg: str) -> bool:
    """Whether `token`'s signature is valid under the given public JWK, with the key's own alg."""
    head, _, signature = token.rpartition(".")
    try:
        key = public_key_from_jwk(jwk_json, alg)
        return bool(
            jwt.get_algorithm_by_name(alg).verify(head.encode("ascii"), key, b64url_decode(signature))
        )
    except (ValueError, TypeError, jwt.InvalidKeyError, UnicodeError):
        return False


def probe(signer: Signer, jwk: dict[str, Any]) -> None:
    """Sign a probe token and verify it against the published JWK; CryptoError if that fails."""
    token = signer.sign({"probe": secrets.token_urlsafe(8)})
    if not verify_signature(token, json.dumps(jwk), signer.alg):
        raise CryptoError(f"key {signer.kid} failed its sign-and-verify probe; it will not be published")


class Sealer(Protocol):
    """Seals private key material at rest (AES-GCM here; a KMS or HSM could stand in)."""

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes: ...

    def unseal(self, sealed: bytes, associated_data: bytes) -> bytes: ...


class AesGcmSealer:
    """AES-256-GCM under a 32-byte key-encryption key; the kid is bound as associated data."""

    _VERSION = b"\x01"

    def __init__(self, kek: bytes) -> None:
        if len(kek) != 32:
            raise CryptoError("the key-encryption key must be 32 bytes (AES-256)")
        self._aead = AESGCM(kek)

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        nonce = os.urandom(12)
        return self._VERSION + nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def unseal(self, sealed: bytes, associated_data: bytes) -> bytes:
        if not sealed.startswith(self._VERSION) or len(sealed) < 29:
            raise CryptoError("sealed key material has an unknown format")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], associated_data)
        except InvalidTag:
            raise CryptoError(
                "sealed key material does not open with this key-encryption key (wrong ROTOR_KEK or key file?)"
            ) from None


def load_kek(env_value: str | None, path: Path, create: bool) -> tuple[bytes, bool]:
    """The key-encryption key: from ROTOR_KEK (base64, 32 bytes) or the key file at `path`.

    With `create`, a missing key file is generated (mode 0600). Returns the key
    and whether it was just created.
    """
    if env_value:
        try:
            kek = base64.b64decode(env_value.strip(), validate=True)
        except ValueError:
            raise CryptoError("ROTOR_KEK is not base64") from None
        if len(kek) != 32:
            raise CryptoError(f"ROTOR_KEK must hold 32 bytes, it holds {len(kek)}")
        return kek, False
    try:
        kek = base64.b64decode(path.read_bytes().strip(), validate=True)
    except FileNotFoundError:
        if not create:
            raise CryptoError(
                f"no key-encryption key at {path}, and the store already holds keys sealed with one: "
                "restore that file (or set ROTOR_KEK to it); a new one could not open them"
            ) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        kek = os.urandom(32)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(kek) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(draft, path)  # atomic, and fails if another process got there first
        except FileExistsError:
            return load_kek(None, path, create=False)
        finally:
            draft.unlink()
        return kek, True
    except ValueError:
        raise CryptoError(f"{path} does not hold a base64 key-encryption key") from None
    if len(kek) != 32:
        raise CryptoError(f"{path} must hold 32 bytes (base64), it holds {len(kek)}")
    return kek, False
