"""Local verification of Rotor access tokens (RFC 9068 JWTs), with no call to Rotor.

    verifier = Verifier(watcher, issuer="https://tokens.internal", audience="orders")
    claims = verifier.verify(token)          # raises an InvalidTokenError subclass
    claims.client_id, claims.scopes

Nothing in a token's header is trusted over the key set: the key is chosen by
`kid` alone, and it verifies only with its own algorithm. Headers that ask a
verifier to fetch or trust something else (`jku`, `x5u`, `jwk`, `x5c`) and
extensions the verifier would have to understand (`crit`) are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from rotor_client._keys import KeyCache, VerificationKey
from rotor_client._stats import VerificationStats, reportable_kid
from rotor_client.errors import (
    CertificateMismatch,
    InsufficientScope,
    InvalidAudience,
    InvalidIssuer,
    InvalidSignature,
    KeyRevoked,
    KeySetStale,
    MalformedToken,
    RotorClientError,
    TokenExpired,
    TokenNotYetValid,
    TokenRevoked,
    UnknownKey,
)

if TYPE_CHECKING:
    from rotor_client.watcher import KeySetWatcher, ThreadedKeySetWatcher

MAX_TOKEN_LENGTH = 16 * 1024  # characters; Rotor's tokens are well under 2 KiB
ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068 §2.1, compared case-insensitively
# header members that point a verifier at key material of the token's choosing, or at
# extensions it would have to understand: never honoured, so refused
FORBIDDEN_HEADERS = ("crit", "jku", "x5u", "jwk", "x5c")
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id")
TIME_CLAIMS = ("exp", "iat", "nbf")
LATEST_INSTANT = 253_402_300_799  # 9999-12-31T23:59:59Z: any later "time" is not one
# three base64url parts and nothing else: a decoder that skips stray characters would let one
# token be written many ways
COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")  # an empty signature fails later
HEADER_CACHE_SIZE = 64
PeerCertificate = bytes | str | x509.Certificate


class Claims(Mapping[str, Any]):
    """A verified token's claims: a read-only mapping with typed accessors."""

    __slots__ = ("_claims", "_scopes")

    def __init__(self, claims: dict[str, Any]) -> None:
        self._claims = claims
        scope = claims.get("scope", "")
        self._scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()

    def __getitem__(self, name: str) -> Any:
        return self._claims[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._claims)

    def __len__(self) -> int:
        return len(self._claims)

    def __repr__(self) -> str:
        return f"Claims({self._claims!r})"

    @property
    def sub(self) -> str:
        return str(self._claims["sub"])

    @property
    def client_id(self) -> str:
        return str(self._claims["client_id"])

    @property
    def scopes(self) -> frozenset[str]:
        return self._scopes

    @property
    def audience(self) -> tuple[str, ...]:
        aud = self._claims["aud"]
        return (aud,) if isinstance(aud, str) else tuple(aud)

    @property
    def issuer(self) -> str:
        return str(self._claims["iss"])

    @property
    def exp(self) -> int:
        return int(self._claims["exp"])

    @property
    def iat(self) -> int:
        return int(self._claims["iat"])

    @property
    def jti(self) -> str:
        return str(self._claims["jti"])


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        names = [name for name, _ in pairs]
        dup = next(name for name in names if names.count(name) > 1)
        raise MalformedToken(f"the token repeats the JSON member {dup[:40]!r}; a token must name each once")
    return doc


def _not_json(constant: str) -> Any:
    raise MalformedToken(f"the token contains {constant}, which is not JSON")


_decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_not_json)


def _b64_json(part: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        doc = _decoder.decode(raw.decode("utf-8"))
    except MalformedToken:
        raise
    except RecursionError:
        raise MalformedToken(f"the token's {what} nests too deeply to be a token's") from None
    except (binascii.Error, ValueError) as e:
        raise MalformedToken(
            f"the token's {what} is not base64url-encoded JSON ({e}); pass the token "
            "exactly as Rotor issued it, without the 'Bearer ' prefix"
        ) from None
    if not isinstance(doc, dict):
        raise MalformedToken(f"the token's {what} is not a JSON object")
    return doc


def _b64(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise MalformedToken("the token's signature is not base64url") from None


def _require(needed: Iterable[str], granted: Iterable[str]) -> None:
    missing = set(needed).difference(granted)
    if missing:
        raise InsufficientScope(
            f"the token lacks the scope {' '.join(sorted(missing))}; the caller must request "
            "it when obtaining the token (and be registered for it)"
        )


def _utc(instant: float) -> str:
    return datetime.fromtimestamp(instant, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_thumbprint(certificate: PeerCertificate) -> str:
    """base64url(SHA-256(DER)): the `x5t#S256` of RFC 8705 for a certificate (PEM, DER or parsed)."""
    if isinstance(certificate, x509.Certificate):
        der = certificate.public_bytes(Encoding.DER)
    else:
        data = certificate.encode() if isinstance(certificate, str) else certificate
        der = (
            x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER) if b"-----BEGIN" in data else data
        )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


class Verifier:
    """Verifies Rotor access tokens locally against a watcher's key set.

    `verify` is synchronous and does no I/O: call it per request, from asyncio or
    from threads. It counts every outcome (`stats()`); a KeySetWatcher with a
    `name` reports the counts of the verifiers built on it to Rotor.
    """

    def __init__(
        self,
        watcher: KeySetWatcher | ThreadedKeySetWatcher | KeyCache,
        *,
        issuer: str,
        audience: str | Collection[str],
        required_scopes: Iterable[str] = (),
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer:
            raise ValueError("issuer is required: the `issuer` Rotor is configured with")
        audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        if not audiences or not all(audiences):
            raise ValueError("audience is required: the name this service is known by in tokens' `aud`")
        if leeway < 0:
            raise ValueError("leeway must be zero or more seconds")
        self._cache = watcher if isinstance(watcher, KeyCache) else watcher.key_cache
        self.issuer = issuer
        self.audiences = frozenset(audiences)
        self.required_scopes = frozenset(required_scopes)
        self.leeway = leeway
        self._clock = clock
        self._headers: dict[str, tuple[str, str]] = {}  # encoded header -> (kid, alg), checked
        self._stats = VerificationStats()
        self._cache.verifier_stats.add(self._stats)  # a named watcher reports them to Rotor

    @classmethod
    def from_jwks(
        cls,
        jwks_json: str | Mapping[str, Any],
        *,
        issuer: str,
        audience: str | Collection[str],
        required_scopes: Iterable[str] = (),
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> Verifier:
        """A verifier over a fixed key set (a JWKS document): no stream, no refresh, never stale.

        For environments that cannot hold a stream. Keys must carry `kid` and
        `alg`; revocations are not seen, so keep token lifetimes short.
        """
        doc = json.loads(jwks_json) if isinstance(jwks_json, str) else jwks_json
        if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
            raise ValueError('jwks_json must be a JWK Set: {"keys": [...]}')
        keys = []
        for jwk in doc["keys"]:
            if not isinstance(jwk, Mapping) or not isinstance(jwk.get("kid"), str) or not jwk.get("alg"):
                raise ValueError("every key in the JWK Set needs a string `kid` and an `alg`")
            keys.append((jwk["kid"], str(jwk["alg"]), jwk))
        cache = KeyCache()
        cache.install_static(keys, issuer)
        return cls(
            cache,
            issuer=issuer,
            audience=audience,
            required_scopes=required_scopes,
            leeway=leeway,
            clock=clock,
        )

    # -- the hot path ------------------------------------------------------------------

    def verify(self, token: str, *, peer_certificate: PeerCertificate | None = None) -> Claims:
        """The token's claims if Rotor issued it for this service and it is still good.

        Raises a subclass of InvalidTokenError naming what is wrong, or
        KeySetStale when the key set has not been confirmed for too long.
        """
        kid = ""
        try:
            cache = self._cache
            if time.monotonic() > cache.stale_at:
                raise KeySetStale(cache.stale_message())
            if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
                size = len(token) if isinstance(token, str | bytes) else 0
                raise MalformedToken(
                    f"the token must be a string of at most {MAX_TOKEN_LENGTH} characters (got "
                    f"{type(token).__name__} of length {size}); pass the access token exactly as issued"
                )
            if COMPACT_JWS.fullmatch(token) is None:
                raise MalformedToken(
                    "the token is not a compact JWS (three base64url parts separated by dots); "
                    "pass the access token exactly as issued, without the 'Bearer ' prefix"
                )
            header_b64, payload_b64, signature_b64 = token.split(".")
            checked = self._headers.get(header_b64)
            kid, alg = checked if checked is not None else self._check_header(header_b64)
            key = cache.keys.get(kid)
            if key is None or kid in cache.revoked_kids:
                raise self._missing_key(cache, kid)
            if alg != key.alg:
                raise InvalidSignature(
                    f"the token's header says alg {alg[:20]!r} but key {kid!r} is {key.alg}; "
                    "a key verifies only with its own algorithm, so this token was not issued by Rotor"
                )
            if checked is None:
                if len(self._headers) >= HEADER_CACHE_SIZE:
                    self._headers = {}  # old keys' headers; the live ones come back on next use
                self._headers[header_b64] = (kid, alg)
            if not key.verify(
                f"{header_b64}.{payload_b64}".encode("ascii"), key.public_key, _b64(signature_b64)
            ):
                raise InvalidSignature(
                    f"the signature does not verify with key {kid!r}: the token was altered or not "
                    "issued by this Rotor; obtain a new token"
                )
            claims = _b64_json(payload_b64, "payload")
            self._check_claims(claims, cache, key)
            if peer_certificate is not None or "cnf" in claims:
                self._check_binding(claims, peer_certificate)
        except RotorClientError as refused:
            self._stats.add(refused.reason, reportable_kid(kid))
            raise
        self._stats.add("OK", kid)
        return Claims(claims)

    def stats(self) -> dict[str, int]:
        """Every `verify` outcome so far: {"OK": n, "TOKEN_EXPIRED": n, "UNKNOWN_KEY": n, ...}
        (a failure counts under its exception's `reason`)."""
        return self._stats.by_outcome()

    def stats_by_kid(self) -> dict[tuple[str, str], int]:
        """The same, per (outcome, kid of the token's header; "" when it named none)."""
        return self._stats.by_outcome_and_kid()

    # -- the rest ---------------------------------------------------------------------

    def _check_header(self, header_b64: str) -> tuple[str, str]:
        header = _b64_json(header_b64, "header")
        for name in FORBIDDEN_HEADERS:
            if name in header:
                raise MalformedToken(
                    f"the token's header carries {name!r}, which this verifier never honours "
                    "(keys come only from Rotor's key set); Rotor's tokens have no such member"
                )
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES:
            raise MalformedToken(
                f"the token's typ is {str(typ)[:20]!r}, not 'at+jwt': it is not an RFC 9068 access "
                "token (an ID token or another JWT cannot be used as an access token)"
            )
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or not kid:
            raise MalformedToken("the token's header has no kid; Rotor names the signing key in every token")
        if not isinstance(alg, str):
            raise MalformedToken("the token's header has no alg")
        return kid, alg

    def _missing_key(self, cache: KeyCache, kid: str) -> Exception:
        shown = kid[:64]
        if kid in cache.revoked_kids:
            return KeyRevoked(
                f"the token is signed by key {shown!r}, revoked at {_utc(cache.revoked_kids[kid])}; "
                "every token it signed is refused: the caller must obtain a new token"
            )
        hint = cache.on_unknown_kid(kid)
        tenant = f"tenant {cache.tenant!r}" if cache.tenant else "the default tenant"
        return UnknownKey(
            f"key {shown!r} is not in the key set of {tenant} (sequence {cache.keyset_sequence}): the "
            f"token was not issued by this Rotor, or for another tenant; the caller must present a "
            f"token from this service's Rotor{hint}"
        )

    def _check_claims(self, claims: dict[str, Any], cache: KeyCache, key: VerificationKey) -> None:
        for name in REQUIRED_CLAIMS:
            if name not in claims:
                raise MalformedToken(
                    f"the token has no {name!r} claim, which every RFC 9068 access token has"
                )
        for name in ("iss", "sub", "jti", "client_id"):
            if not isinstance(claims[name], str):
                raise MalformedToken(f"the token's {name!r} claim is not a string")
        for name in TIME_CLAIMS:
            value = claims.get(name, 0)
            if type(value) not in (int, float) or not 0 <= value <= LATEST_INSTANT:
                raise MalformedToken(
                    f"the token's {name!r} claim must be a number of seconds since the epoch, up to year 9999"
                )
        exp, nbf = claims["exp"], claims.get("nbf", claims["iat"])
        now = self._clock()
        if now > exp + self.leeway:
            raise TokenExpired(
                f"the token expired at {_utc(exp)} (leeway {self.leeway:g} s); the caller must "
                "refresh it or obtain a new one (TokenClient does this ahead of expiry)"
            )
        if now + self.leeway < nbf:
            raise TokenNotYetValid(
                f"the token is not valid before {_utc(nbf)}; the clocks of the caller's issuer and "
                "this host disagree by more than the leeway: check NTP on both"
            )
        if claims["iss"] != self.issuer:
            raise InvalidIssuer(
                f"the token's issuer is {str(claims['iss'])[:80]!r}, not {self.issuer!r}: it comes "
                "from another Rotor; configure Verifier(issuer=...) with Rotor's `issuer`"
            )
        aud = claims["aud"]
        audiences = (aud,) if isinstance(aud, str) else aud
        if not isinstance(audiences, list | tuple) or self.audiences.isdisjoint(
            a for a in audiences if isinstance(a, str)
        ):
            raise InvalidAudience(
                f"the token is for {str(aud)[:80]}, not for {' or '.join(sorted(self.audiences))}; the "
                "caller must request a token with this service's audience"
            )
        jti = claims["jti"]
        if jti in cache.revoked_jtis:
            raise TokenRevoked(
                f"the token {str(jti)[:32]!r} was revoked at Rotor; the caller must obtain a new token"
            )
        not_before = cache.client_revocations.get(claims["client_id"])
        if not_before is not None and claims["iat"] < not_before:
            raise TokenRevoked(
                f"every token of client {str(claims['client_id'])[:64]!r} issued before {_utc(not_before)} was "
                "revoked at Rotor; the caller must obtain a new token"
            )
        if self.required_scopes:
            scope = claims.get("scope", "")
            _require(self.required_scopes, scope.split() if isinstance(scope, str) else ())

    def require_scopes(self, claims: Claims, scopes: Iterable[str]) -> None:
        """Raise InsufficientScope unless `claims` grant every scope in `scopes`."""
        _require(scopes, claims.scopes)

    def _check_binding(self, claims: dict[str, Any], peer_certificate: PeerCertificate | None) -> None:
        cnf = claims.get("cnf")
        if cnf is None:
            return  # a bearer token: not bound to any certificate
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if not isinstance(bound, str):
            raise MalformedToken("the token's cnf claim has no x5t#S256 certificate thumbprint")
        if peer_certificate is None:
            raise CertificateMismatch(
                "the token is bound to a client certificate (cnf x5t#S256) but no peer certificate "
                "was given: the caller must use mTLS, and verify(token, peer_certificate=...) needs it"
            )
        if certificate_thumbprint(peer_certificate) != bound:
            raise CertificateMismatch(
                "the token is bound to another client certificate than the caller's: it was "
                "presented by someone other than the client it was issued to"
            )
