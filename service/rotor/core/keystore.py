"""Where signing keys' private halves live: the one seam between key lifecycle and key material.

A `KeyStore` MUST offer four things and nothing more: make a key (its public
half comes back, with the reference the database keeps), give a `TokenSigner`
for a key it made, and destroy a key's private half. The key manager, the
rotator, the probe self-test, revocation and expiry never ask which store they
hold.

- The sealed store (the default) keeps the private half in the database,
  sealed with AES-GCM under the key-encryption key; its reference IS the
  sealed half, and destroying it is clearing that column, which the lifecycle
  does in the transaction that retires, revokes or expires the key.
- The PKCS#11 store (`rotor.core.hsm`) keeps it on a token, never extractable;
  its reference is the object's label (the kid), and destroying it is
  C_DestroyObject after that transaction commits.

A store raises `CryptoError` when key material is wrong (a KEK that does not
open a sealed half) and `SignerUnavailable` when the device is away: the call
may be retried, and nothing was changed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from rotor.core.crypto import (
    CryptoError,
    PrivateKey,
    Sealer,
    Signer,
    generate_private_key,
    private_from_bytes,
    private_to_bytes,
    public_jwk,
    verify_signature,
)
from rotor.core.model import SigningKey

SEALED = "sealed"
PKCS11 = "pkcs11"
KEY_STORES = (SEALED, PKCS11)
# Key generation has a thread of its own: never queued behind other work.
_KEYGEN = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rotor-keygen")


@dataclass(frozen=True, slots=True)
class MadeKey:
    """A key a store just made: its public JWK (kid, alg, use and the public members) and the
    reference to its private half that the database keeps (`SigningKey.sealed_private`)."""

    jwk: dict[str, Any]
    private_ref: bytes

    @property
    def kid(self) -> str:
        return str(self.jwk["kid"])


class TokenSigner(Protocol):
    """Signs compact JWS with one key; `kid` and `alg` go in the header."""

    @property
    def kid(self) -> str: ...

    @property
    def alg(self) -> str: ...

    async def sign(self, claims: dict[str, Any]) -> str:
        """The compact JWS of `claims`; SignerUnavailable when the device cannot sign now."""
        ...


class KeyStore(Protocol):
    """Makes, signs with and destroys private halves; see the module docstring for the contract."""

    @property
    def name(self) -> str:
        """What `Key.key_store` shows: "sealed" or "pkcs11"."""
        ...

    async def make(self, alg: str, rsa_bits: int) -> MadeKey:
        """A new key for `alg`. It MUST be probed by the caller before it is published."""
        ...

    def signer(self, kid: str, alg: str, private_ref: bytes) -> TokenSigner:
        """A signer for a key this store made; CryptoError if its private half cannot be used."""
        ...

    async def destroy(self, kid: str, private_ref: bytes | None) -> None:
        """Destroy the key's private half; a half already gone is not an error."""
        ...

    async def held(self) -> frozenset[str]:
        """The kids whose private halves this store holds outside the database (for a sweep)."""
        ...

    @property
    def healthy(self) -> bool:
        """Whether the store could sign when it last tried (readiness)."""
        ...

    async def check(self) -> bool:
        """Whether the store can sign now; it may try to recover first."""
        ...


@dataclass(frozen=True, slots=True)
class SealedSigner:
    """Signs on the event loop's thread: a local key signs in microseconds."""

    local: Signer

    @property
    def kid(self) -> str:
        return self.local.kid

    @property
    def alg(self) -> str:
        return self.local.alg

    @property
    def private_key(self) -> PrivateKey:
        return self.local.private_key

    async def sign(self, claims: dict[str, Any]) -> str:
        return self.local.sign(claims)


class SealedKeyStore:
    """Private halves generated in memory and sealed under the key-encryption key."""

    name = SEALED
    healthy = True

    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer

    async def make(self, alg: str, rsa_bits: int) -> MadeKey:
        loop = asyncio.get_running_loop()
        private = await loop.run_in_executor(_KEYGEN, generate_private_key, alg, rsa_bits)  # RSA is slow
        jwk = public_jwk(private, alg)
        return MadeKey(jwk, self._sealer.seal(private_to_bytes(private), jwk["kid"].encode()))

    def signer(self, kid: str, alg: str, private_ref: bytes) -> TokenSigner:
        private = private_from_bytes(self._sealer.unseal(private_ref, kid.encode()))
        return SealedSigner(Signer.for_key(kid, alg, private))

    async def destroy(self, kid: str, private_ref: bytes | None) -> None:
        """Nothing left to do: the lifecycle clears the sealed half in the key's own transaction."""

    async def held(self) -> frozenset[str]:
        return frozenset()

    async def check(self) -> bool:
        return True


class KeyStores:
    """The store new keys are made in, and every store an existing key may live in (a deployment
    that moved to an HSM keeps its sealed keys until they expire)."""

    def __init__(self, current: KeyStore, others: Mapping[str, KeyStore] | None = None) -> None:
        self.current = current
        self._by_name = {**(others or {}), current.name: current}

    @property
    def all(self) -> tuple[KeyStore, ...]:
        return tuple(self._by_name.values())

    def of(self, key: SigningKey) -> KeyStore:
        """The store holding `key`'s private half; CryptoError when this process has no access to it."""
        store = self._by_name.get(key.key_store)
        if store is None:
            raise CryptoError(
                f"key {key.kid} lives in the {key.key_store} key store, which this server is not set up for"
                + (
                    " (its key-encryption key is missing: ROTOR_KEK or keys.kek_file)"
                    if key.key_store == SEALED
                    else ""
                )
            )
        return store


async def probe(signer: TokenSigner, jwk: dict[str, Any]) -> None:
    """Sign a probe token and verify it against the published JWK; CryptoError if that fails."""
    token = await signer.sign({"probe": secrets.token_urlsafe(8)})
    if not verify_signature(token, json.dumps(jwk), signer.alg):
        raise CryptoError(f"key {signer.kid} failed its sign-and-verify probe; it will not be published")
