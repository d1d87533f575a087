"""Tokens: issue access tokens, refresh grants, revoke either.

Access tokens are JWTs (RFC 9068) and are never stored; revoking one writes a
denylist row until its `exp`, and an event that reaches every watcher.
Refresh tokens are 256 random bits, stored as SHA-256 only. Each belongs to a
family (one grant); using one marks it used and creates its successor in one
transaction, and a second use, or use by another client, revokes the family.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from dataclasses import dataclass

from rotor.clock import Clock
from rotor.core import audit, validation
from rotor.core.clients import revoke_tokens_in
from rotor.core.crypto import decode_unverified, verify_signature
from rotor.core.errors import (
    AudienceNotAllowed,
    AudienceRequired,
    ClientNotFound,
    InvalidRequest,
    RefreshTokenExpired,
    RefreshTokenInvalid,
    RefreshTokenReused,
    RefreshTokenRevoked,
    RefreshTokenWrongClient,
    RotorError,
    ScopeNotAllowed,
    SubjectNotAllowed,
    TokenNotOwned,
    quote,
)
from rotor.core.keys import KeyRing
from rotor.core.model import (
    DEFAULT_TENANT,
    Client,
    Event,
    EventType,
    KeyState,
    RefreshFamily,
    RefreshToken,
    RevokedToken,
)
from rotor.store import Store

log = logging.getLogger("rotor.tokens")


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    issuer: str
    access_ttl: float
    max_access_ttl: float
    refresh_ttl: float  # 0 = no refresh tokens
    refresh_family_ttl: float
    clock_skew: float


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str
    expires_at: int
    refresh_token: str
    refresh_expires_at: float | None
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    key_id: str


@dataclass(frozen=True, slots=True)
class Introspection:
    """What RFC 7662 tells about an active token (an inactive one is None)."""

    token_type: str  # "Bearer" (an access token) or "refresh_token"
    client_id: str
    subject: str
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    expires_at: float
    issued_at: float
    not_before: float | None
    jti: str  # "" for a refresh token
    kid: str  # "" for a refresh token
    issuer: str
    tenant: str
    bound_to: str = ""  # the cnf x5t#S256 of a certificate-bound access token


def refresh_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenService:
    """Issue, Refresh and Revoke, as the domain sees them."""

    def __init__(self, store: Store, keyring: KeyRing, clock: Clock, policy: TokenPolicy) -> None:
        self._store = store
        self._keyring = keyring
        self._clock = clock
        self.policy = policy

    # -- Issue -----------------------------------------------------------------

    async def issue(
        self,
        client: Client,
        *,
        audiences: tuple[str, ...],
        scopes: tuple[str, ...],
        ttl: float | None,
        subject: str,
        bound_to: str | None = None,
    ) -> IssuedTokens:
        """`bound_to`: the x5t#S256 of the client certificate the call came with (RFC 8705)."""
        audiences = self._granted_audiences(client, validation.audiences(audiences))
        scopes = validation.scopes(scopes)
        self._check_scopes(client, scopes)
        subject = validation.subject(subject)
        if subject and subject != client.client_id and not client.allow_any_subject:
            raise SubjectNotAllowed(
                f"client {client.client_id!r} may only ask for tokens about itself; register it with "
                "--allow-any-subject to name another subject"
            )
        lifetime = self._lifetime(ttl)
        now = self._clock.now()
        refresh_token, refresh_expires_at, family = "", None, None
        if self.policy.refresh_ttl > 0:
            refresh_token = secrets.token_urlsafe(32)
            family = RefreshFamily(
                family_id=secrets.token_urlsafe(16),
                client_id=client.client_id,
                tenant=client.tenant,
                subject=subject or client.client_id,
                scopes=scopes,
                audiences=audiences,
                created_at=now,
                expires_at=now + self.policy.refresh_family_ttl,
            )
            refresh_expires_at = min(now + self.policy.refresh_ttl, family.expires_at)
        # signed before anything is written: a signer that fails leaves no grant behind
        issued = await self._sign(
            client,
            subject or client.client_id,
            audiences,
            scopes,
            lifetime,
            now,
            refresh_token,
            refresh_expires_at,
            bound_to,
        )
        if family is not None and refresh_expires_at is not None:
            async with self._store.transaction() as tx:
                await tx.insert_family(family)
                await tx.insert_refresh_token(
                    RefreshToken(
                        refresh_token_hash(refresh_token),
                        family.family_id,
                        client.client_id,
                        now,
                        refresh_expires_at,
                    )
                )
        return issued

    def _granted_audiences(self, client: Client, requested: tuple[str, ...]) -> tuple[str, ...]:
        if not requested:
            if len(client.audiences) == 1:
                return client.audiences
            if not client.audiences:
                raise AudienceNotAllowed(
                    f"client {client.client_id!r} has no audience registered; an operator must add one"
                )
            raise AudienceRequired(
                f"client {client.client_id!r} has several audiences ({', '.join(client.audiences[:5])}); name one in `audience`"
            )
        for audience in requested:
            if audience not in client.audiences:
                raise AudienceNotAllowed(
                    f"audience {quote(audience)} is not registered for client {client.client_id!r}"
                )
        return requested

    def _check_scopes(self, client: Client, scopes: tuple[str, ...]) -> None:
        for scope in scopes:
            if scope not in client.scopes:
                raise ScopeNotAllowed(
                    f"scope {quote(scope)} is not registered for client {client.client_id!r}"
                )

    def _lifetime(self, ttl: float | None) -> int:
        if ttl is None:
            return max(1, int(self.policy.access_ttl))
        if not math.isfinite(ttl) or ttl <= 0:
            raise InvalidRequest("ttl must be positive; leave it unset for the default", "INVALID_TTL", "ttl")
        if ttl > self.policy.max_access_ttl:
            raise InvalidRequest(
                f"ttl {ttl:g}s is above the maximum of {self.policy.max_access_ttl:g}s", "TTL_TOO_LONG", "ttl"
            )
        return max(1, int(ttl))

    async def _sign(
        self,
        client: Client,
        subject: str,
        audiences: tuple[str, ...],
        scopes: tuple[str, ...],
        lifetime: int,
        now: float,
        refresh_token: str,
        refresh_expires_at: float | None,
        bound_to: str | None,
    ) -> IssuedTokens:
        signer = self._keyring.signer(client.tenant)
        iat = int(now)
        claims: dict[str, object] = {
            "iss": self.policy.issuer,
            "sub": subject,
            "aud": audiences[0] if len(audiences) == 1 else list(audiences),
            "exp": iat + lifetime,
            "iat": iat,
            "nbf": iat,
            "jti": secrets.token_urlsafe(16),
            "client_id": client.client_id,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        if bound_to:
            claims["cnf"] = {"x5t#S256": bound_to}
        return IssuedTokens(
            access_token=await signer.sign(claims),
            expires_at=iat + lifetime,
            refresh_token=refresh_token,
            refresh_expires_at=refresh_expires_at,
            scopes=scopes,
            audiences=audiences,
            key_id=signer.kid,
        )

    # -- Refresh ---------------------------------------------------------------

    async def refresh(
        self, client: Client, *, refresh_token: str, scopes: tuple[str, ...], bound_to: str | None = None
    ) -> IssuedTokens:
        validation.token(refresh_token, "refresh_token")
        scopes = validation.scopes(scopes)
        token_hash = refresh_token_hash(refresh_token)
        successor = secrets.token_urlsafe(32)
        failure: RotorError | None = None
        async with self._store.transaction() as tx:
            now = self._clock.now()
            grant = await tx.get_refresh_grant(token_hash)
            if grant is None:
                raise RefreshTokenInvalid("unknown refresh token; Issue a new grant")
            token, family = grant
            if family.revoked_at is not None:
                raise RefreshTokenRevoked("this refresh token's grant was revoked; Issue a new grant")
            if token.client_id != client.client_id:
                await tx.revoke_family(
                    family.family_id, now, f"refresh token presented by {client.client_id}"
                )
                await tx.append_audit(
                    now,
                    client.client_id,
                    "refresh.stolen_token_detected",
                    family.family_id,
                    "success",
                    family.tenant,
                    audit.details(
                        owner=family.client_id, presented_by=client.client_id, effect="family revoked"
                    ),
                )
                failure = RefreshTokenWrongClient(
                    "this refresh token was issued to another client; its grant is now revoked"
                )
            elif token.used_at is not None or not await tx.mark_refresh_token_used(token_hash, now):
                await tx.revoke_family(family.family_id, now, "refresh token reused")
                await tx.append_audit(
                    now,
                    client.client_id,
                    "refresh.reuse_detected",
                    family.family_id,
                    "success",
                    family.tenant,
                    audit.details(client_id=client.client_id, effect="family revoked"),
                )
                failure = RefreshTokenReused(
                    "this refresh token was already used, so it may have been stolen: its whole grant is now "
                    "revoked; Issue a new grant"
                )
            else:
                if now >= token.expires_at or now >= family.expires_at:
                    raise RefreshTokenExpired("this refresh token has expired; Issue a new grant")
                narrowed = self._narrow(client, family, scopes)
                refresh_expires_at = min(now + self.policy.refresh_ttl, family.expires_at)
                # signed inside the transaction: a signer that fails rolls it back, so the
                # presented refresh token is not used up
                issued = await self._sign(
                    client,
                    family.subject,
                    family.audiences,
                    narrowed,
                    self._lifetime(None),
                    now,
                    successor,
                    refresh_expires_at,
                    bound_to,
                )
                await tx.insert_refresh_token(
                    RefreshToken(
                        refresh_token_hash(successor),
                        family.family_id,
                        client.client_id,
                        now,
                        refresh_expires_at,
                    )
                )
        if failure is not None:  # the family's revocation is committed; now tell the caller
            log.warning("refresh family %s revoked: %s", family.family_id, failure.reason)
            raise failure
        return issued

    def _narrow(self, client: Client, family: RefreshFamily, scopes: tuple[str, ...]) -> tuple[str, ...]:
        """The access token's scope: the grant's, or a subset of it (RFC 6749 §6)."""
        for scope in scopes:
            if scope not in family.scopes:
                raise ScopeNotAllowed(
                    f"scope {quote(scope)} is not part of this grant ({' '.join(family.scopes) or 'no scope'}); "
                    "a refresh can only narrow the scope"
                )
        granted = scopes or family.scopes
        self._check_scopes(client, granted)
        return granted

    # -- RevokeClientTokens ------------------------------------------------------

    async def revoke_client(self, admin: Client, client_id: str, reason: str) -> tuple[int, float]:
        """End every refresh family of a client and revoke its access tokens issued before now, at
        every verifier (a CLIENT_REVOKED event). Returns the families revoked and `not_before`.

        `not_before` is the next whole second: tokens carry whole-second `iat`, so a token issued
        in the same second, before or after, is refused too (never one issued before let through).
        The revocation is kept until the last token it covers has expired (readers add clock skew).
        """
        client_id = validation.identifier(client_id, "client_id")
        reason = validation.reason(reason)
        async with self._store.transaction() as tx:
            now = self._clock.now()
            target = await tx.get_client(client_id) if client_id else None
            if target is None:
                raise ClientNotFound(f"no client named {quote(client_id)}; rotor clients list shows them")
            families, not_before = await revoke_tokens_in(
                tx, target, now, reason or "RevokeClientTokens", self.policy.max_access_ttl
            )
            await tx.append_audit(
                now,
                admin.client_id,
                "client.tokens_revoked",
                client_id,
                "success",
                target.tenant,
                audit.details(reason=reason, families_revoked=families, not_before=not_before),
            )
        log.warning("revoked every token of client %s (%d refresh families): %s", client_id, families, reason)
        return families, not_before

    # -- Revoke ----------------------------------------------------------------

    async def revoke(self, client: Client, *, token: str, reason: str) -> bool:
        """Revoke an access token or a refresh token's family (RFC 7009): True when it is now revoked."""
        validation.token(token, "token")
        reason = validation.reason(reason)
        if token.count(".") == 2:
            return await self._revoke_access_token(client, token, reason)
        return await self._revoke_refresh_token(client, token, reason)

    async def _revoke_access_token(self, client: Client, token: str, reason: str) -> bool:
        try:
            header, claims = decode_unverified(token)
        except (ValueError, UnicodeError):
            return False
        kid, jti, exp = header.get("kid"), claims.get("jti"), claims.get("exp")
        if not isinstance(kid, str) or not isinstance(jti, str) or not isinstance(exp, int | float):
            return False
        key = self._keyring.find(kid) or await self._store.get_key(kid)
        if (
            key is None
            or header.get("alg") != key.alg
            or not verify_signature(token, key.public_jwk, key.alg)
        ):
            return False  # not a token of ours
        if claims.get("iss") != self.policy.issuer:
            return False
        owner_id = str(claims.get("client_id", ""))
        owner = client if owner_id == client.client_id else await self._store.get_client(owner_id)
        if owner is None or owner.tenant != key.tenant:
            return False  # signed by a key of another tenant than its client's: not a token we issued
        if not _may_revoke(client, owner_id, key.tenant):
            raise TokenNotOwned(
                "this token was issued to another client; only it or an admin of its tenant may revoke it"
            )
        now = self._clock.now()
        if exp + self.policy.clock_skew <= now:
            return False  # expired: nothing left to revoke
        if key.state in (KeyState.REVOKED, KeyState.EXPIRED):
            return True  # its key no longer verifies anything
        revoked = RevokedToken(jti, key.tenant, owner_id, float(exp), now, reason)
        async with self._store.transaction() as tx:
            if await tx.insert_revoked_token(revoked):
                payload = Event.encode_payload(None, (), revoked)
                await tx.append_event(key.tenant, EventType.TOKEN_REVOKED.value, now, payload)
                await tx.append_audit(
                    now,
                    client.client_id,
                    "token.revoked",
                    jti,
                    "success",
                    key.tenant,
                    audit.details(client_id=revoked.client_id, reason=reason, expires_at=revoked.expires_at),
                )
        return True

    async def _revoke_refresh_token(self, client: Client, token: str, reason: str) -> bool:
        async with self._store.transaction() as tx:
            now = self._clock.now()
            row = await tx.get_refresh_token(refresh_token_hash(token))
            family = await tx.get_family(row.family_id) if row is not None else None
            if row is None or family is None:
                return False
            if not _may_revoke(client, family.client_id, family.tenant):
                raise TokenNotOwned(
                    "this refresh token was issued to another client; only it or an admin of its tenant "
                    "may revoke it"
                )
            if family.revoked_at is not None:
                return True
            if now >= family.expires_at or (row.used_at is None and now >= row.expires_at):
                return False
            await tx.revoke_family(family.family_id, now, reason or "revoked")
            await tx.append_audit(
                now,
                client.client_id,
                "family.revoked",
                family.family_id,
                "success",
                family.tenant,
                audit.details(client_id=family.client_id, reason=reason),
            )
        return True

    # -- Introspect (RFC 7662) -----------------------------------------------------

    async def introspect(self, client: Client, *, token: str) -> Introspection | None:
        """What `token` is, when it is active and the caller may know: an access token of the
        caller's tenant (any client of a tenant may check one presented to it), or a refresh token
        of the caller's (or, for an admin, of its tenant). None for anything else: unknown,
        expired, revoked, signed by a revoked key, of another tenant."""
        validation.token(token, "token")
        if token.count(".") == 2:
            return await self._introspect_access_token(client, token)
        return await self._introspect_refresh_token(client, token)

    async def _introspect_access_token(self, client: Client, token: str) -> Introspection | None:
        try:
            header, claims = decode_unverified(token)
        except (ValueError, UnicodeError):
            return None
        kid, jti = header.get("kid"), claims.get("jti")
        exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
        nbf = _number(claims.get("nbf", claims.get("iat")))
        if not isinstance(kid, str) or not isinstance(jti, str) or exp is None or iat is None or nbf is None:
            return None
        key = self._keyring.find(kid) or await self._store.get_key(kid)
        if (
            key is None
            or key.tenant != client.tenant
            or key.state in (KeyState.REVOKED, KeyState.EXPIRED)
            or header.get("alg") != key.alg
            or claims.get("iss") != self.policy.issuer
            or not verify_signature(token, key.public_jwk, key.alg)
        ):
            return None
        now = self._clock.now()
        if now >= exp or nbf > now + self.policy.clock_skew:
            return None
        if await self._store.get_revoked_token(jti) is not None:
            return None
        owner = str(claims.get("client_id", ""))
        cut_off = await self._store.get_client_revocation(owner)
        if cut_off is not None and cut_off.tenant == key.tenant and iat < cut_off.not_before:
            return None  # RevokeClientTokens covered it
        aud = claims.get("aud")
        audiences = (aud,) if isinstance(aud, str) else tuple(a for a in aud or () if isinstance(a, str))
        scope = claims.get("scope")
        cnf = claims.get("cnf")
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        return Introspection(
            token_type="Bearer",
            client_id=owner,
            subject=str(claims.get("sub", "")),
            scopes=tuple(scope.split()) if isinstance(scope, str) else (),
            audiences=audiences,
            expires_at=exp,
            issued_at=iat,
            not_before=nbf,
            jti=jti,
            kid=kid,
            issuer=self.policy.issuer,
            tenant=key.tenant,
            bound_to=bound if isinstance(bound, str) else "",
        )

    async def _introspect_refresh_token(self, client: Client, token: str) -> Introspection | None:
        row = await self._store.get_refresh_token(refresh_token_hash(token))
        family = await self._store.get_family(row.family_id) if row is not None else None
        if row is None or family is None or family.tenant != client.tenant:
            return None
        if family.client_id != client.client_id and not client.admin:
            return None  # a refresh token is its client's secret
        now = self._clock.now()
        if family.revoked_at is not None or row.used_at is not None:
            return None
        expires_at = min(row.expires_at, family.expires_at)
        if now >= expires_at:
            return None
        return Introspection(
            token_type="refresh_token",
            client_id=family.client_id,
            subject=family.subject,
            scopes=family.scopes,
            audiences=family.audiences,
            expires_at=expires_at,
            issued_at=row.issued_at,
            not_before=None,
            jti="",
            kid="",
            issuer=self.policy.issuer,
            tenant=family.tenant,
        )


def _number(value: object) -> float | None:
    """A JSON number claim as a float; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _may_revoke(client: Client, owner: str, tenant: str) -> bool:
    """Whether `client` may revoke a token of `owner` in `tenant`: its own, or as an admin of that
    tenant (an admin of the default tenant administers every tenant)."""
    if client.tenant != tenant:
        return client.admin and client.tenant == DEFAULT_TENANT
    return owner == client.client_id or client.admin
