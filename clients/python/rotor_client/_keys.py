"""The verification state a Verifier reads: keys by kid, revoked kids and jtis, staleness.

One `KeyCache` is written by its source (a KeySetWatcher's task, or nothing at
all for a static JWKS) and read by any number of threads. Readers take no
lock: the key map is replaced whole, never changed in place, and the revoked
sets only see single dict operations, which are atomic in CPython.
"""

from __future__ import annotations

import json
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from rotor.v1 import keys_pb2

from rotor_client._stats import VerificationStats

log = logging.getLogger("rotor_client")

# The asymmetric algorithms Rotor signs with. Anything else in a key set
# (HS*, "none", an unknown name) is never used to verify.
SUPPORTED_ALGORITHMS = frozenset({"EdDSA", "ES256", "ES384", "PS256", "RS256"})
PRUNE_EVERY = 512  # revocations between sweeps of expired jtis


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key, parsed once, with the only algorithm it verifies."""

    kid: str
    alg: str
    public_key: Any
    verify: Callable[[bytes, Any, bytes], bool]


def verification_key(kid: str, alg: str, jwk: str | Mapping[str, Any]) -> VerificationKey:
    """Parse a public JWK for `alg`; ValueError when it is not a usable public key for it."""
    if alg not in SUPPORTED_ALGORITHMS:
        raise ValueError(
            f"key {kid!r} has algorithm {alg!r}; only {', '.join(sorted(SUPPORTED_ALGORITHMS))} verify"
        )
    doc = json.loads(jwk) if isinstance(jwk, str) else dict(jwk)
    if not isinstance(doc, dict) or "d" in doc or doc.get("kty") == "oct":
        raise ValueError(f"key {kid!r} is not a public asymmetric JWK")
    if doc.get("use", "sig") != "sig":
        raise ValueError(f"key {kid!r} is for {doc.get('use')!r}, not for signatures (use: sig)")
    if doc.get("alg", alg) != alg:
        raise ValueError(f"key {kid!r}: its JWK says alg {doc.get('alg')!r} but it is listed as {alg!r}")
    algorithm = jwt.get_algorithm_by_name(alg)
    try:
        public_key = algorithm.from_jwk(doc)
    except (jwt.InvalidKeyError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"key {kid!r} is not a valid {alg} public JWK: {e}") from None
    if hasattr(public_key, "private_bytes"):
        raise ValueError(f"key {kid!r} is a private key; a key set holds public keys only")
    return VerificationKey(kid, alg, public_key, algorithm.verify)


class KeyCache:
    """Keys and revocations for one tenant, as last confirmed by Rotor."""

    def __init__(self, tenant: str = "", max_staleness: float = math.inf) -> None:
        self.tenant = tenant
        self.max_staleness = max_staleness
        self.keys: Mapping[str, VerificationKey] = {}
        self.issuer = ""
        self.keyset_sequence = 0
        self.revoked_kids: dict[str, float] = {}
        self.revoked_jtis: dict[str, float] = {}
        self.client_revocations: dict[str, float] = {}  # client_id -> tokens issued before are revoked
        self.loaded = False
        # monotonic deadline after which the keys are not trusted; -inf until the first key set
        self.stale_at = -math.inf
        self.last_contact: float | None = None  # wall clock, for people
        self._since_prune = 0
        self.on_unknown_kid: Callable[[str], str] = lambda kid: ""
        # the outcome counts of the verifiers reading this cache, for the watcher's reports
        self.verifier_stats: weakref.WeakSet[VerificationStats] = weakref.WeakSet()

    # -- written by the source ----------------------------------------------------------

    def touch(self) -> None:
        """Rotor confirmed the key set just now."""
        self.last_contact = time.time()
        if self.loaded:
            self.stale_at = time.monotonic() + self.max_staleness

    def install(self, keyset: keys_pb2.KeySet) -> bool:
        """Adopt `keyset` unless a newer one is installed already; True when adopted."""
        if self.loaded and keyset.sequence < self.keyset_sequence:
            return False
        self.keys = self._parse(((k.kid, k.alg, k.public_jwk_json) for k in keyset.keys), keyset.tenant)
        self.issuer = keyset.issuer
        self.keyset_sequence = keyset.sequence
        self.loaded = True
        self.touch()
        return True

    def install_static(self, keys: Iterable[tuple[str, str, Mapping[str, Any]]], issuer: str) -> None:
        """A key set that never changes and never goes stale (Verifier.from_jwks)."""
        self.keys = {kid: verification_key(kid, alg, jwk) for kid, alg, jwk in keys}
        self.issuer = issuer
        self.loaded = True
        self.stale_at = math.inf

    def _parse(self, keys: Iterable[tuple[str, str, str]], tenant: str) -> dict[str, VerificationKey]:
        parsed: dict[str, VerificationKey] = {}
        for kid, alg, jwk in keys:
            if kid in self.revoked_kids:
                continue  # an older key set may still list it; it never verifies again
            known = self.keys.get(kid)
            if known is not None and known.alg == alg:
                parsed[kid] = known  # keys never change under a kid (it is their thumbprint)
                continue
            try:
                parsed[kid] = verification_key(kid, alg, jwk)
            except ValueError as e:
                log.warning("ignoring key %s of tenant %r: %s", kid, tenant, e)
        return parsed

    def revoke_key(self, kid: str, revoked_at: float) -> None:
        self.revoked_kids[kid] = revoked_at
        if kid in self.keys:
            self.keys = {k: v for k, v in self.keys.items() if k != kid}

    def revoke_jti(self, jti: str, expires_at: float) -> None:
        self.revoked_jtis[jti] = expires_at
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self.prune()

    def revoke_client(self, client_id: str, not_before: float) -> None:
        self.client_revocations[client_id] = max(not_before, self.client_revocations.get(client_id, 0.0))

    def replace_client_revocations(self, revocations: Iterable[tuple[str, float]]) -> None:
        self.client_revocations = dict(revocations)

    def replace_revoked_jtis(self, revoked: Iterable[tuple[str, float]]) -> None:
        self.revoked_jtis = dict(revoked)
        self._since_prune = 0

    def prune(self, grace: float = 300.0) -> None:
        """Forget revoked jtis of tokens long expired (their `exp` rejects them anyway)."""
        cutoff = time.time() - grace
        self.revoked_jtis = {j: exp for j, exp in self.revoked_jtis.items() if exp >= cutoff}
        self._since_prune = 0

    # -- read by verifiers ---------------------------------------------------------------

    def stale_message(self) -> str:
        if not self.loaded:
            return (
                "no key set has been received from Rotor yet; start the KeySetWatcher "
                "(await watcher.start()) and check that Rotor is reachable"
            )
        ago = time.time() - (self.last_contact or 0.0)
        return (
            f"the key set was last confirmed by Rotor {ago:.0f} s ago, more than max_staleness "
            f"({self.max_staleness:g} s); tokens are refused until the watcher reaches Rotor again "
            "(check connectivity to Rotor)"
        )
