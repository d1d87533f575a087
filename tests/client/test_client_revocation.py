"""RevokeClientTokens as the client library enforces it: a real Rotor, a KeySetWatcher, a Verifier.

After an admin revokes a client's tokens, every verifier refuses the access
tokens that client got before `not_before` (TokenRevoked), learning it from the
pushed CLIENT_REVOKED event or, when it connects later, from the SNAPSHOT.
Other clients' tokens, and the client's tokens from `not_before` on, verify.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import rotor_client
from api.support import AUDIENCE, ISSUER, Credentials, Rotor, jwt_part
from rotor.v1 import key_admin_pb2
from rotor_client import KeySetWatcher, TokenRevoked, Verifier

PUSH_DEADLINE = 3.0  # seconds for a revocation to reach a connected verifier


async def until(condition: Callable[[], bool], what: str, within: float = PUSH_DEADLINE) -> None:
    """Poll `condition` every 10 ms; fail the test if it is not true within `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what}")
        await asyncio.sleep(0.01)


def refuses(verifier: Verifier, token: str) -> bool:
    """Whether the verifier refuses `token` as revoked (any other outcome is False)."""
    try:
        verifier.verify(token)
    except TokenRevoked:
        return True
    except Exception:
        return False
    return False


def verifier_for(watcher: KeySetWatcher) -> Verifier:
    return Verifier(watcher, issuer=ISSUER, audience=AUDIENCE)


async def revoke_client_tokens(rotor: Rotor, admin: Credentials, client_id: str) -> float:
    """RevokeClientTokens as `admin`; the not_before it answers, in seconds."""
    response = await rotor.admin.RevokeClientTokens(
        key_admin_pb2.RevokeClientTokensRequest(client_id=client_id, reason="leaked"),
        metadata=admin.metadata,
        timeout=30,
    )
    return response.not_before.seconds + response.not_before.nanos / 1e9


async def wall_clock_past(instant: float, within: float = 3.0) -> None:
    """Until time.time() >= instant (not_before is at most a second away)."""
    await until(lambda: time.time() >= instant, f"the wall clock reached {instant}", within)


async def test_revoking_a_clients_tokens_makes_the_verifier_refuse_its_earlier_tokens(
    rotor: Rotor, ops: Credentials
) -> None:
    """After RevokeClientTokens(X), X's earlier token raises TokenRevoked within seconds; Y's still verifies."""
    x = await rotor.add_client("svc-x")
    y = await rotor.add_client("svc-y")
    async with KeySetWatcher(rotor.address) as watcher:
        verifier = verifier_for(watcher)
        x_token = (await rotor.issue(x)).access_token
        y_token = (await rotor.issue(y)).access_token
        assert verifier.verify(x_token).client_id == "svc-x"
        assert verifier.verify(y_token).client_id == "svc-y"

        await revoke_client_tokens(rotor, ops, "svc-x")
        await until(lambda: refuses(verifier, x_token), "svc-x's token is refused as revoked")
        try:
            verifier.verify(x_token)
        except TokenRevoked as revoked:
            assert "svc-x" in str(revoked), str(revoked)
        assert verifier.verify(y_token).client_id == "svc-y"


async def test_a_token_the_client_gets_from_not_before_on_verifies_again(
    rotor: Rotor, ops: Credentials
) -> None:
    """Tokens issued before not_before stay refused; once the wall clock passes it, a new token verifies."""
    x = await rotor.add_client("svc-x")
    async with KeySetWatcher(rotor.address) as watcher:
        verifier = verifier_for(watcher)
        before = (await rotor.issue(x)).access_token
        not_before = await revoke_client_tokens(rotor, ops, "svc-x")
        same_second = (await rotor.issue(x)).access_token  # after the call, but usually before not_before
        await until(lambda: refuses(verifier, before), "the earlier token is refused")
        if jwt_part(same_second, 1)["iat"] < not_before:
            assert refuses(verifier, same_second), "a token with iat before not_before verified"

        await wall_clock_past(not_before)
        after = (await rotor.issue(x)).access_token
        assert jwt_part(after, 1)["iat"] >= not_before
        assert verifier.verify(after).client_id == "svc-x"
        assert refuses(verifier, before)


async def test_a_watcher_connecting_after_the_revocation_learns_it_from_the_snapshot(
    rotor: Rotor, ops: Credentials
) -> None:
    """A KeySetWatcher started after RevokeClientTokens refuses the old token at once (SNAPSHOT.client_revocations)."""
    x = await rotor.add_client("svc-x")
    y = await rotor.add_client("svc-y")
    x_token = (await rotor.issue(x)).access_token
    y_token = (await rotor.issue(y)).access_token
    not_before = await revoke_client_tokens(rotor, ops, "svc-x")

    async with KeySetWatcher(rotor.address) as late:  # ready once the SNAPSHOT is applied
        verifier = verifier_for(late)
        assert refuses(verifier, x_token), "a watcher that connected later lets the revoked token through"
        assert verifier.verify(y_token).client_id == "svc-y"
        await wall_clock_past(not_before)
        assert verifier.verify((await rotor.issue(x)).access_token).client_id == "svc-x"


async def test_a_thread_watcher_enforces_a_client_revocation_too(rotor: Rotor, ops: Credentials) -> None:
    """KeySetWatcher.start_in_thread: the pushed CLIENT_REVOKED reaches a verifier used from threads."""
    x = await rotor.add_client("svc-x")
    x_token = (await rotor.issue(x)).access_token
    watcher = await asyncio.to_thread(KeySetWatcher.start_in_thread, rotor.address)
    try:
        verifier = Verifier(watcher, issuer=ISSUER, audience=AUDIENCE)
        assert verifier.verify(x_token).client_id == "svc-x"
        await revoke_client_tokens(rotor, ops, "svc-x")
        await until(lambda: refuses(verifier, x_token), "the threaded watcher refuses svc-x's token")
    finally:
        await asyncio.to_thread(watcher.close)


async def test_the_watcher_hands_client_revoked_to_on_change_and_resumes_after_it(
    rotor: Rotor, ops: Credentials
) -> None:
    """on_change gets the CLIENT_REVOKED event, and the watcher's sequence (its resume point) moves past it."""
    x = await rotor.add_client("svc-x")
    seen: list[int] = []
    async with KeySetWatcher(rotor.address, on_change=lambda e: seen.append(e.type)) as watcher:
        token = (await rotor.issue(x)).access_token
        verifier = verifier_for(watcher)
        await revoke_client_tokens(rotor, ops, "svc-x")
        await until(lambda: refuses(verifier, token), "the revocation arrived")
        sequence = (await rotor.key_set()).sequence
        await until(lambda: watcher.sequence >= sequence, "the watcher's sequence moved to the event")
    assert rotor_client.KeyEventType.Value("KEY_EVENT_TYPE_CLIENT_REVOKED") in seen
