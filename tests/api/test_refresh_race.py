"""Refresh tokens are single-use even under concurrent double use: exactly one caller wins."""

from __future__ import annotations

import asyncio

import grpc
import rotor_client
from grpc import aio

from .support import Credentials, Rotor, assert_error, failure

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def test_fifty_concurrent_refreshes_of_one_token_have_exactly_one_winner(
    rotor: Rotor, svc: Credentials
) -> None:
    granted = await rotor.issue(svc)  # also puts svc's credentials in the server's cache
    request = rotor_client.RefreshRequest(refresh_token=granted.refresh_token)

    results = await asyncio.gather(
        *(rotor.tokens.Refresh(request, metadata=svc.metadata, timeout=30) for _ in range(50)),
        return_exceptions=True,
    )

    winners = [r for r in results if isinstance(r, rotor_client.TokenResponse)]
    losers = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(winners) == 1, f"{len(winners)} concurrent uses of one refresh token succeeded"
    assert len(losers) == 49, [r for r in results if r not in winners and r not in losers]
    reasons = [
        assert_error(e, UNAUTHENTICATED, "REFRESH_TOKEN_REUSED", "REFRESH_TOKEN_REVOKED").reason
        for e in losers
    ]
    assert "REFRESH_TOKEN_REUSED" in reasons, "the reuse was never reported as such"

    # The reuse revoked the whole family: the winner's new refresh token is dead too.
    (winner,) = winners
    assert winner.refresh_token and winner.refresh_token != granted.refresh_token
    err = await failure(
        rotor.tokens.Refresh(
            rotor_client.RefreshRequest(refresh_token=winner.refresh_token), metadata=svc.metadata, timeout=30
        )
    )
    assert_error(err, UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")


async def test_concurrent_refreshes_of_different_grants_all_succeed(rotor: Rotor, svc: Credentials) -> None:
    grants = [await rotor.issue(svc) for _ in range(20)]
    results = await asyncio.gather(
        *(
            rotor.tokens.Refresh(
                rotor_client.RefreshRequest(refresh_token=g.refresh_token), metadata=svc.metadata, timeout=30
            )
            for g in grants
        )
    )
    assert len({r.refresh_token for r in results}) == 20
    assert all(r.access_token for r in results)
