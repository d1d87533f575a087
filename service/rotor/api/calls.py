"""The token calls as every door makes them: after its own parsing and authentication, the gRPC
TokenService and the HTTP OAuth 2.0 endpoints both come here, so the call-rate limits (one
bucket per client, whichever door it uses) and the core's rules, audit and events are the same.
"""

from __future__ import annotations

from rotor.api.limits import RateLimiter
from rotor.clock import Clock
from rotor.core.model import Client
from rotor.core.tokens import Introspection, IssuedTokens, TokenService


class TokenCalls:
    """Issue, Refresh, Revoke and Introspect for an authenticated client."""

    def __init__(
        self, tokens: TokenService, clock: Clock, rates: tuple[RateLimiter, RateLimiter] | None = None
    ) -> None:
        self.tokens = tokens
        self._issue_rate, self._refresh_rate = rates or (
            RateLimiter("Issue", 0, 0, clock),
            RateLimiter("Refresh", 0, 0, clock),
        )

    @property
    def refresh_tokens(self) -> bool:
        """Whether grants come with refresh tokens (tokens.refresh_ttl above 0)."""
        return self.tokens.policy.refresh_ttl > 0

    async def issue(
        self,
        client: Client,
        *,
        audiences: tuple[str, ...],
        scopes: tuple[str, ...],
        ttl: float | None,
        subject: str,
        bound_to: str | None,
    ) -> IssuedTokens:
        self._issue_rate.take(client.client_id)
        return await self.tokens.issue(
            client, audiences=audiences, scopes=scopes, ttl=ttl, subject=subject, bound_to=bound_to
        )

    async def refresh(
        self, client: Client, *, refresh_token: str, scopes: tuple[str, ...], bound_to: str | None
    ) -> IssuedTokens:
        self._refresh_rate.take(client.client_id)
        return await self.tokens.refresh(
            client, refresh_token=refresh_token, scopes=scopes, bound_to=bound_to
        )

    async def revoke(self, client: Client, *, token: str, reason: str) -> bool:
        return await self.tokens.revoke(client, token=token, reason=reason)

    async def introspect(self, client: Client, *, token: str) -> Introspection | None:
        return await self.tokens.introspect(client, token=token)
