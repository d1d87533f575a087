"""Client administration over KeyAdmin: every RPC, its refusals, and what each change does to
the next call."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import rotor_client
from google.protobuf import duration_pb2, field_mask_pb2
from rotor.v1 import key_admin_pb2

from .conftest import MakeRotor
from .support import AUDIENCE, SCOPES, Credentials, Rotor, assert_error, failure


async def audit_actions(rotor: Rotor, target: str = "") -> list[tuple[str, str, str]]:
    """(actor, action, outcome) of every audit entry, oldest first (about `target`, if given)."""
    entries = await rotor.server.store.audit_after(0, limit=100_000)
    return [(e.actor, e.action, e.outcome) for e in entries if not target or e.target == target]


async def call(rotor: Rotor, who: Credentials, method: str, request: Any) -> Any:
    return await getattr(rotor.admin, method)(request, metadata=who.metadata, timeout=30)


def create_request(name: str, **fields: Any) -> key_admin_pb2.CreateClientRequest:
    fields.setdefault("scopes", list(SCOPES))
    fields.setdefault("audiences", [AUDIENCE])
    return key_admin_pb2.CreateClientRequest(name=name, **fields)


async def create(rotor: Rotor, by: Credentials, name: str, **fields: Any) -> Credentials:
    response = await call(rotor, by, "CreateClient", create_request(name, **fields))
    return Credentials(response.client.client_id, response.client_secret)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


@pytest.fixture
async def rotor(make_rotor: MakeRotor) -> Rotor:
    return await make_rotor()


@pytest.fixture
async def admin(rotor: Rotor) -> Credentials:
    return await rotor.add_client("root", admin=True)


# -- CreateClient -------------------------------------------------------------------


async def test_create_client_returns_the_secret_once_and_the_client_without_it(
    rotor: Rotor, admin: Credentials
) -> None:
    response = await call(
        rotor,
        admin,
        "CreateClient",
        create_request(
            "orders",
            allowed_cidrs=["127.0.0.0/8", "::1"],
            cert_sans=["spiffe://example.org/orders"],
            secret_ttl=duration_pb2.Duration(seconds=3600),
        ),
    )
    assert response.client_secret
    client = response.client
    assert (client.client_id, client.tenant, list(client.scopes), list(client.audiences)) == (
        "orders",
        "",
        list(SCOPES),
        [AUDIENCE],
    )
    assert list(client.allowed_cidrs) == ["127.0.0.0/8", "::1/128"]
    assert list(client.cert_sans) == ["spiffe://example.org/orders"]
    assert client.HasField("secret_expires_at") and client.created_at.seconds > 0
    assert response.client_secret not in str(client)
    stored = await rotor.server.store.get_client("orders")
    assert stored is not None and response.client_secret not in stored.secret_hash
    issued = await rotor.issue(Credentials("orders", response.client_secret), audience=[AUDIENCE])
    assert issued.access_token
    assert ("root", "client.created", "success") in await audit_actions(rotor, "orders")


async def test_a_new_tenant_issues_at_once_with_no_retry(rotor: Rotor, admin: Credentials) -> None:
    created = await create(rotor, admin, "acme-svc", tenant="acme")
    issued = await rotor.issue(created, audience=[AUDIENCE])  # no UNAVAILABLE window: the first try works
    key_set = await rotor.tokens.GetKeySet(rotor_client.GetKeySetRequest(tenant="acme"), timeout=10)
    assert issued.key_id in {k.kid for k in key_set.keys}


async def test_a_new_tenant_added_on_the_store_issues_at_once(rotor: Rotor) -> None:
    """As `rotor clients add NAME --tenant T` does while a server runs: the server's first Issue
    for the tenant makes its key rather than failing."""
    created = await rotor.add_client("beta-svc", tenant="beta")
    issued = await rotor.issue(created, audience=[AUDIENCE])
    assert issued.access_token


async def test_concurrent_first_issues_of_a_new_tenant_make_one_key(rotor: Rotor) -> None:
    created = await rotor.add_client("gamma-svc", tenant="gamma")
    issued = await asyncio.gather(*(rotor.issue(created, audience=[AUDIENCE]) for _ in range(20)))
    assert len({i.key_id for i in issued}) == 1
    assert len(await rotor.server.store.list_keys("gamma")) == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"name": ""}, "FIELD_REQUIRED"),
        ({"name": " bad name"}, "INVALID_CLIENT_ID"),
        ({"allowed_cidrs": ["10.0.0.1/8"]}, "INVALID_VALUE"),
        ({"allowed_cidrs": ["not-a-network"]}, "INVALID_VALUE"),
        ({"cert_sans": ["spiffe://a/x", "spiffe://a/y"]}, "TOO_MANY_VALUES"),
        ({"secret_ttl": duration_pb2.Duration(seconds=-5)}, "INVALID_DURATION"),
        ({"tenant": "bad tenant!"}, "INVALID_VALUE"),
    ],
    ids=["no-name", "bad-name", "host-bits", "not-cidr", "two-sans", "negative-ttl", "bad-tenant"],
)
async def test_create_client_refuses_bad_input(
    rotor: Rotor, admin: Credentials, fields: dict[str, Any], reason: str
) -> None:
    name = fields.pop("name", "ok-name")
    err = await failure(call(rotor, admin, "CreateClient", create_request(name, **fields)))
    assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, reason)


async def test_create_client_refuses_a_taken_name(rotor: Rotor, admin: Credentials) -> None:
    await create(rotor, admin, "dup")
    err = await failure(call(rotor, admin, "CreateClient", create_request("dup")))
    assert_error(err, grpc.StatusCode.ALREADY_EXISTS, "CLIENT_EXISTS")


# -- who may call ---------------------------------------------------------------------

EVERY_RPC = [
    ("CreateClient", create_request("x")),
    ("GetClient", key_admin_pb2.GetClientRequest(client_id="root")),
    ("ListClients", key_admin_pb2.ListClientsRequest()),
    ("UpdateClient", key_admin_pb2.UpdateClientRequest(client_id="root", update_mask=mask("scopes"))),
    ("DeleteClient", key_admin_pb2.DeleteClientRequest(client_id="root")),
    ("RotateClientSecret", key_admin_pb2.RotateClientSecretRequest(client_id="root")),
]


@pytest.mark.parametrize(("method", "request_"), EVERY_RPC, ids=[m for m, _ in EVERY_RPC])
async def test_a_non_admin_is_refused_and_audited(
    rotor: Rotor, admin: Credentials, method: str, request_: Any
) -> None:
    plain = await rotor.add_client("plain")
    err = await failure(call(rotor, plain, method, request_))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")
    assert ("plain", "admin.denied", "denied") in await audit_actions(rotor, method)


@pytest.mark.parametrize(("method", "request_"), EVERY_RPC, ids=[m for m, _ in EVERY_RPC])
async def test_an_anonymous_caller_is_refused(rotor: Rotor, method: str, request_: Any) -> None:
    err = await failure(getattr(rotor.admin, method)(request_, timeout=30))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")


TENANT_RPCS = [
    ("GetClient", key_admin_pb2.GetClientRequest(client_id="root")),
    ("ListClients", key_admin_pb2.ListClientsRequest(tenant="zeta")),
    ("UpdateClient", key_admin_pb2.UpdateClientRequest(client_id="root", update_mask=mask("scopes"))),
    ("DeleteClient", key_admin_pb2.DeleteClientRequest(client_id="root")),
    ("RotateClientSecret", key_admin_pb2.RotateClientSecretRequest(client_id="root")),
]


@pytest.mark.parametrize(("method", "request_"), TENANT_RPCS, ids=[m for m, _ in TENANT_RPCS])
async def test_a_tenant_admin_cannot_manage_another_tenants_clients(
    rotor: Rotor, admin: Credentials, method: str, request_: Any
) -> None:
    acme_admin = await rotor.add_client("acme-admin", admin=True, tenant="acme")
    err = await failure(call(rotor, acme_admin, method, request_))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")
    assert ("acme-admin", "admin.denied", "denied") in await audit_actions(rotor, method)
    assert await rotor.server.store.get_client("root") is not None


async def test_a_tenant_admin_creates_and_lists_in_its_own_tenant(rotor: Rotor, admin: Credentials) -> None:
    acme_admin = await rotor.add_client("acme-admin", admin=True, tenant="acme")
    created = await call(rotor, acme_admin, "CreateClient", create_request("acme-worker"))
    assert created.client.tenant == "acme"  # empty tenant: the admin's own
    err = await failure(call(rotor, acme_admin, "CreateClient", create_request("sneaky", tenant="other")))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")
    listed = await call(rotor, acme_admin, "ListClients", key_admin_pb2.ListClientsRequest())
    assert [c.client_id for c in listed.clients] == ["acme-admin", "acme-worker"]
    everyone = await call(rotor, admin, "ListClients", key_admin_pb2.ListClientsRequest(tenant="acme"))
    assert [c.client_id for c in everyone.clients] == ["acme-admin", "acme-worker"]


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GetClient", key_admin_pb2.GetClientRequest(client_id="ghost")),
        ("UpdateClient", key_admin_pb2.UpdateClientRequest(client_id="ghost", update_mask=mask("admin"))),
        ("DeleteClient", key_admin_pb2.DeleteClientRequest(client_id="ghost")),
        ("RotateClientSecret", key_admin_pb2.RotateClientSecretRequest(client_id="ghost")),
    ],
    ids=["get", "update", "delete", "rotate"],
)
async def test_an_unknown_client_is_not_found(
    rotor: Rotor, admin: Credentials, method: str, request_: Any
) -> None:
    err = await failure(call(rotor, admin, method, request_))
    assert_error(err, grpc.StatusCode.NOT_FOUND, "CLIENT_NOT_FOUND")


async def test_an_empty_client_id_is_invalid(rotor: Rotor, admin: Credentials) -> None:
    err = await failure(call(rotor, admin, "GetClient", key_admin_pb2.GetClientRequest()))
    assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_REQUIRED")


# -- Get and List -------------------------------------------------------------------


async def test_list_clients_pages_by_client_id(rotor: Rotor, admin: Credentials) -> None:
    for name in ("c3", "c1", "c2", "c4"):
        await rotor.add_client(name)
    seen: list[str] = []
    token = ""
    while True:
        page = await call(
            rotor, admin, "ListClients", key_admin_pb2.ListClientsRequest(page_size=2, page_token=token)
        )
        assert len(page.clients) <= 2
        seen += [c.client_id for c in page.clients]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["c1", "c2", "c3", "c4", "root"]
    err = await failure(call(rotor, admin, "ListClients", key_admin_pb2.ListClientsRequest(page_size=5000)))
    assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VALUE")


async def test_get_client_shows_the_record(rotor: Rotor, admin: Credentials) -> None:
    await create(rotor, admin, "svc", admin=True, allow_any_subject=True)
    got = (await call(rotor, admin, "GetClient", key_admin_pb2.GetClientRequest(client_id="svc"))).client
    assert (got.client_id, got.admin, got.allow_any_subject, got.disabled) == ("svc", True, True, False)


# -- UpdateClient ---------------------------------------------------------------------


async def test_narrowing_scopes_applies_to_the_next_call_and_revokes_nothing(
    rotor: Rotor, admin: Credentials
) -> None:
    svc = await create(rotor, admin, "svc")
    before = await rotor.issue(svc, audience=[AUDIENCE], scope=list(SCOPES))
    update = key_admin_pb2.UpdateClientRequest(
        client_id="svc", update_mask=mask("scopes"), client=key_admin_pb2.Client(scopes=["orders.read"])
    )
    updated = (await call(rotor, admin, "UpdateClient", update)).client
    assert list(updated.scopes) == ["orders.read"]
    err = await failure(rotor.issue(svc, audience=[AUDIENCE], scope=["orders.write"]))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "SCOPE_NOT_ALLOWED")
    await rotor.issue(svc, audience=[AUDIENCE], scope=["orders.read"])
    # the refresh token issued before stays valid (only its scope is checked at refresh)
    refreshed = await rotor.tokens.Refresh(
        rotor_client.RefreshRequest(refresh_token=before.refresh_token, scope=["orders.read"]),
        metadata=svc.metadata,
        timeout=30,
    )
    assert refreshed.access_token
    assert ("root", "client.updated", "success") in await audit_actions(rotor, "svc")


async def test_revoke_tokens_ends_the_clients_grants(rotor: Rotor, admin: Credentials) -> None:
    svc = await create(rotor, admin, "svc")
    before = await rotor.issue(svc, audience=[AUDIENCE])
    update = key_admin_pb2.UpdateClientRequest(
        client_id="svc",
        update_mask=mask("audiences", "allow_any_subject"),
        client=key_admin_pb2.Client(audiences=[AUDIENCE, "billing"], allow_any_subject=True),
        revoke_tokens=True,
    )
    updated = (await call(rotor, admin, "UpdateClient", update)).client
    assert list(updated.audiences) == [AUDIENCE, "billing"] and updated.allow_any_subject
    err = await failure(
        rotor.tokens.Refresh(
            rotor_client.RefreshRequest(refresh_token=before.refresh_token), metadata=svc.metadata, timeout=30
        )
    )
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")
    await rotor.issue(svc, audience=["billing"], subject="someone-else")


@pytest.mark.parametrize(
    ("paths", "reason"),
    [(("secret_hash",), "INVALID_VALUE"), (("client_id",), "INVALID_VALUE"), ((), "FIELD_REQUIRED")],
    ids=["secret-hash", "client-id", "empty"],
)
async def test_a_bad_update_mask_is_refused(
    rotor: Rotor, admin: Credentials, paths: tuple[str, ...], reason: str
) -> None:
    await create(rotor, admin, "svc")
    update = key_admin_pb2.UpdateClientRequest(client_id="svc", update_mask=mask(*paths))
    err = await failure(call(rotor, admin, "UpdateClient", update))
    assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, reason)


async def test_an_admin_cannot_lock_itself_out(rotor: Rotor, admin: Credentials) -> None:
    demote = key_admin_pb2.UpdateClientRequest(
        client_id="root", update_mask=mask("admin"), client=key_admin_pb2.Client(admin=False)
    )
    assert_error(
        await failure(call(rotor, admin, "UpdateClient", demote)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SELF_LOCKOUT",
    )
    remove = key_admin_pb2.DeleteClientRequest(client_id="root")
    assert_error(
        await failure(call(rotor, admin, "DeleteClient", remove)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SELF_LOCKOUT",
    )
    stored = await rotor.server.store.get_client("root")
    assert stored is not None and stored.admin
    # another admin may
    other = await create(rotor, admin, "root2", admin=True)
    assert not (await call(rotor, other, "UpdateClient", demote)).client.admin


async def test_allowed_cidrs_can_be_set_and_cleared(rotor: Rotor, admin: Credentials) -> None:
    svc = await create(rotor, admin, "svc")
    bind = key_admin_pb2.UpdateClientRequest(
        client_id="svc",
        update_mask=mask("allowed_cidrs"),
        client=key_admin_pb2.Client(allowed_cidrs=["10.0.0.0/8"]),
    )
    await call(rotor, admin, "UpdateClient", bind)
    err = await failure(rotor.issue(svc, audience=[AUDIENCE]))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_NOT_ALLOWED")
    clear = key_admin_pb2.UpdateClientRequest(client_id="svc", update_mask=mask("allowed_cidrs"))
    await call(rotor, admin, "UpdateClient", clear)
    await rotor.issue(svc, audience=[AUDIENCE])


# -- DeleteClient and RotateClientSecret ---------------------------------------------------


async def test_delete_client_revokes_its_tokens_keeps_its_history_and_frees_the_name(
    rotor: Rotor, admin: Credentials
) -> None:
    svc = await create(rotor, admin, "svc")
    issued = await rotor.issue(svc, audience=[AUDIENCE])
    deleted = await call(rotor, admin, "DeleteClient", key_admin_pb2.DeleteClientRequest(client_id="svc"))
    assert deleted.families_revoked == 1 and deleted.not_before.seconds > 0
    assert_error(
        await failure(rotor.issue(svc, audience=[AUDIENCE])),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CLIENT",
    )
    actions = [a for _, a, _ in await audit_actions(rotor, "svc")]
    assert actions[0] == "client.created" and actions[-1] == "client.deleted"
    again = await create(rotor, admin, "svc")
    assert again.secret != svc.secret
    await rotor.issue(again, audience=[AUDIENCE])
    err = await failure(
        rotor.tokens.Refresh(
            rotor_client.RefreshRequest(refresh_token=issued.refresh_token),
            metadata=again.metadata,
            timeout=30,
        )
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED  # the old grant died with the old client


async def test_rotate_client_secret_with_and_without_overlap(rotor: Rotor, admin: Credentials) -> None:
    svc = await create(rotor, admin, "svc")
    rotated = await call(
        rotor,
        admin,
        "RotateClientSecret",
        key_admin_pb2.RotateClientSecretRequest(client_id="svc", overlap=duration_pb2.Duration(seconds=600)),
    )
    new = Credentials("svc", rotated.client_secret)
    await rotor.issue(new, audience=[AUDIENCE])
    await rotor.issue(svc, audience=[AUDIENCE])  # the old one, during the overlap
    again = await call(
        rotor, admin, "RotateClientSecret", key_admin_pb2.RotateClientSecretRequest(client_id="svc")
    )
    err = await failure(rotor.issue(new, audience=[AUDIENCE]))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    await rotor.issue(Credentials("svc", again.client_secret), audience=[AUDIENCE])
    assert ("root", "client.secret_rotated", "success") in await audit_actions(rotor, "svc")


async def test_disabling_through_update_client_stops_the_client(rotor: Rotor, admin: Credentials) -> None:
    svc = await create(rotor, admin, "svc")
    disable = key_admin_pb2.UpdateClientRequest(
        client_id="svc", update_mask=mask("disabled"), client=key_admin_pb2.Client(disabled=True)
    )
    assert (await call(rotor, admin, "UpdateClient", disable)).client.disabled
    err = await failure(rotor.issue(svc, audience=[AUDIENCE]))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "CLIENT_DISABLED")
