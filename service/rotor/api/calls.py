"""The token calls as every door makes them: after its own parsing and authentication, the gRPC
TokenService and the HTTP OAuth 2.0 endpoints both come here, so the network binding of clients
(allowed_cidrs), the call-rate limits (one bucket per client, whichever door it uses), a new
tenant's first key, and the core's rules, audit and events are the same.

`peer` is the transport's address as gRPC spells it ("ipv4:10.0.0.7:51234"; the HTTP door
spells its peer the same way, without the port): only it counts, never a header.
"""

from __future__ import annotations

from rotor.api.limits import RateLimiter
from rotor.clock import Clock
from rotor.core.audit import RefusalBudget
from rotor.core.clients import check_address
from rotor.core.keys import KeyManager
from rotor.core.model import Client
from rotor.core.tokens import Introspection, IssuedTokens, TokenService
from rotor.store import Store


class TokenCalls:
    """Issue, Refresh, Revoke and Introspect for an authenticated client."""

    def __init__(
        self,
        tokens: TokenService,
        keys: KeyManager,
        store: Store,
        clock: Clock,
        rates: tuple[RateLimiter, RateLimiter] | None = None,
        refusals: RefusalBudget | None = None,
    ) -> None:
        self.tokens = tokens
        self._keys, self._store, self._clock, self._refusals = keys, store, clock, refusals
        self._issue_rate, self._refresh_rate = rates or (
            RateLimiter("Issue", 0, 0, clock),
            RateLimiter("Refresh", 0, 0, clock),
        )

    @property
    def refresh_tokens(self) -> bool:
        """Whether grants come with refresh tokens (tokens.refresh_ttl above 0)."""
        return self.tokens.policy.refresh_ttl > 0

    async def _admit(self, client: Client, peer: str, rpc: str) -> None:
        """Refuse a client calling from outside its networks (audited within the refusal budget)."""
        if client.allowed_cidrs:
            await check_address(self._store, self._clock, client, peer, rpc, self._refusals)

    async def _signing(self, tenant: str) -> None:
        """A tenant created a moment ago (its first client just registered) signs at once."""
        if not self._keys.keyring.has_active(tenant):
            await self._keys.ensure_signing(tenant)

    async def issue(
        self,
        client: Client,
        peer: str,
        *,
        audiences: tuple[str, ...],
        scopes: tuple[str, ...],
        ttl: float | None,
        subject: str,
        bound_to: str | None,
    ) -> IssuedTokens:
        await self._admit(client, peer, "Issue")
        self._issue_rate.take(client.client_id)
        await self._signing(client.tenant)
        return await self.tokens.issue(
            client, audiences=audiences, scopes=scopes, ttl=ttl, subject=subject, bound_to=bound_to
        )

    async def refresh(
        self, client: Client, peer: str, *, refresh_token: str, scopes: tuple[str, ...], bound_to: str | None
    ) -> IssuedTokens:
        await self._admit(client, peer, "Refresh")
        self._refresh_rate.take(client.client_id)
        await self._signing(client.tenant)
        return await self.tokens.refresh(
            client, refresh_token=refresh_token, scopes=scopes, bound_to=bound_to
        )

    async def revoke(self, client: Client, peer: str, *, token: str, reason: str) -> bool:
        await self._admit(client, peer, "Revoke")
        return await self.tokens.revoke(client, token=token, reason=reason)

    async def introspect(self, client: Client, peer: str, *, token: str) -> Introspection | None:
        await self._admit(client, peer, "Introspect")
        return await self.tokens.introspect(client, token=token)
