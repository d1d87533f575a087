"""Network-bound clients (allowed_cidrs), and refusals that cannot flood the audit log."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import grpc
import pytest
import rotor_client
from rotor.v1 import key_admin_pb2

from .conftest import MakeRotor
from .support import AUDIENCE, Credentials, Rotor, assert_error, failure


async def bound(rotor: Rotor, name: str, *cidrs: str) -> Credentials:
    return await rotor.add_client(name, allowed_cidrs=cidrs)


async def denials(rotor: Rotor, client_id: str) -> list[str]:
    """The RPCs refused to `client_id` for its address, as the audit log records them."""
    entries = await rotor.server.store.audit_after(0, limit=100_000)
    return [e.target for e in entries if e.action == "client.address_denied" and e.actor == client_id]


@pytest.mark.parametrize(
    ("listen", "outside", "inside"),
    [
        ("127.0.0.1:0", "10.0.0.0/8", "127.0.0.0/8"),
        ("[::1]:0", "fd00::/8", "::1/128"),
    ],
    ids=["ipv4", "ipv6"],
)
async def test_a_client_is_refused_outside_its_networks_and_served_inside(
    make_rotor: MakeRotor, listen: str, outside: str, inside: str
) -> None:
    rotor = await make_rotor(listen=listen)
    owner = await rotor.add_client("owner")
    token = (await rotor.issue(owner, audience=[AUDIENCE])).access_token
    far = await bound(rotor, "far", outside)
    near = await bound(rotor, "near", inside, outside)

    err = await failure(rotor.issue(far, audience=[AUDIENCE]))
    info = assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_NOT_ALLOWED")
    assert info.domain == "rotor" and outside in err.details()
    err = await failure(
        rotor.tokens.Refresh(
            rotor_client.RefreshRequest(refresh_token="x" * 43), metadata=far.metadata, timeout=30
        )
    )
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_NOT_ALLOWED")
    assert_error(
        await failure(rotor.revoke(far, token)), grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_NOT_ALLOWED"
    )
    assert await denials(rotor, "far") == ["Issue", "Refresh", "Revoke"]

    issued = await rotor.issue(near, audience=[AUDIENCE])
    refreshed = await rotor.tokens.Refresh(
        rotor_client.RefreshRequest(refresh_token=issued.refresh_token), metadata=near.metadata, timeout=30
    )
    assert await rotor.revoke(near, refreshed.access_token)
    assert await denials(rotor, "near") == []


async def test_a_forwarded_for_header_is_not_trusted(rotor: Rotor) -> None:
    far = await bound(rotor, "far", "10.0.0.0/8")
    metadata = (*far.metadata, ("x-forwarded-for", "10.1.2.3"), ("x-real-ip", "10.1.2.3"))
    err = await failure(
        rotor.tokens.Issue(rotor_client.IssueRequest(audience=[AUDIENCE]), metadata=metadata, timeout=30)
    )
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_NOT_ALLOWED")


@pytest.fixture
async def rotor(make_rotor: MakeRotor) -> Rotor:
    return await make_rotor()


def suppressed_total(rotor: Rotor) -> float:
    value = rotor.server.metrics.registry.get_sample_value("rotor_audit_refusals_suppressed_total")
    return value or 0.0


async def test_a_flood_of_anonymous_admin_calls_leaves_a_bounded_audit_log(rotor: Rotor) -> None:
    """10,000 refused KeyAdmin calls from one address: at most [limits] audit_refusals_per_minute
    entries (60) and a summary, not 10,000; the metric counts the rest."""
    before = (await rotor.server.store.audit_head())[0]
    calls = 10_000
    refused = 0
    for start in range(0, calls, 500):
        batch = [
            rotor.admin.ListClients(key_admin_pb2.ListClientsRequest(), timeout=60)
            for _ in range(min(500, calls - start))
        ]
        for outcome in await asyncio.gather(*batch, return_exceptions=True):
            assert isinstance(outcome, grpc.aio.AioRpcError)
            assert outcome.code() == grpc.StatusCode.UNAUTHENTICATED
            refused += 1
    assert refused == calls
    written = (await rotor.server.store.audit_head())[0] - before
    assert 0 < written <= 61
    assert suppressed_total(rotor) == calls - written
    # the real work of an admin is still audited, fail-closed as ever
    admin = await rotor.add_client("root", admin=True)
    await rotor.admin.CreateClient(
        key_admin_pb2.CreateClientRequest(name="after-flood"), metadata=admin.metadata, timeout=30
    )
    entries = await rotor.server.store.audit_after(0, limit=100_000)
    assert any(e.action == "client.created" and e.target == "after-flood" for e in entries)


async def test_a_summary_entry_counts_the_refusals_left_out(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(limits={"audit_refusals_per_minute": 3})
    for _ in range(10):
        await failure(rotor.admin.ListClients(key_admin_pb2.ListClientsRequest(), timeout=30))
    entries = await rotor.server.store.audit_after(0, limit=1000)
    assert sum(e.action == "admin.denied" for e in entries) == 3
    # a minute on, the window closes: its summary says how many were left out
    key_admin_summaries = rotor.server.key_admin.flush_refusal_summaries
    rotor.server.refusals.WINDOW = 0.0
    await key_admin_summaries()
    summaries = [
        e
        for e in await rotor.server.store.audit_after(0, limit=1000)
        if e.action == "audit.refusals_suppressed"
    ]
    assert len(summaries) == 1 and '"suppressed":7' in summaries[0].details_json
    assert summaries[0].target == "127.0.0.1"


async def test_the_http_door_binds_clients_to_their_networks_too(make_rotor: MakeRotor) -> None:
    """/oauth2/token, /oauth2/revoke and /oauth2/introspect refuse a client outside its networks
    (403 unauthorized_client, ADDRESS_NOT_ALLOWED), audited like the gRPC refusals; inside, served."""
    rotor = await make_rotor(http_listen="127.0.0.1:0")
    far = await bound(rotor, "far", "10.0.0.0/8")
    near = await bound(rotor, "near", "127.0.0.0/8")
    url = f"http://127.0.0.1:{rotor.server.http_port}/oauth2"
    forms = {
        "token": {"grant_type": "client_credentials", "audience": AUDIENCE},
        "revoke": {"token": "x" * 43},
        "introspect": {"token": "x" * 43},
    }

    async def post(endpoint: str, client: Credentials) -> tuple[int, dict[str, str]]:
        credential = base64.b64encode(f"{client.client_id}:{client.secret}".encode()).decode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/{endpoint}", data=forms[endpoint], headers={"Authorization": f"Basic {credential}"}
            ) as resp,
        ):
            return resp.status, await resp.json() if resp.content_length else {}

    for endpoint in forms:
        status, body = await post(endpoint, far)
        assert status == 403, (endpoint, body)
        assert body["error"] == "unauthorized_client" and body["error_reason"] == "ADDRESS_NOT_ALLOWED"
        assert (await post(endpoint, near))[0] == 200, endpoint
    assert await denials(rotor, "far") == ["Issue", "Revoke", "Introspect"]
