"""`rotor clients add|list|show|update|delete|disable|enable|rotate-secret`, in both modes: on the
store (--config) and over gRPC as an admin client (--target), against a running server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import rotor_client

from .conftest import MakeServer
from .support import RotorProcess, basic, error_info, postgres_schema, run_rotor

MODES = ("store", "grpc")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Config overrides for a store: SQLite in the data dir, or a fresh PostgreSQL schema
    (required in CI, skipped elsewhere when there is none)."""
    if request.param == "sqlite":
        yield {}
        return
    with postgres_schema("rotor_clients") as url:
        yield {"database_url": url}


def clients(
    server: RotorProcess, mode: str, admin: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`rotor clients ARGS...` on the server's store, or over gRPC as `admin`."""
    if mode == "store":
        return server.cli("clients", *args)
    return run_rotor(
        "clients",
        *args,
        "--target",
        server.address,
        "--client-id",
        admin["client_id"],
        f"--client-secret={admin['client_secret']}",
        cwd=server.workdir,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode != 0, f"succeeded:\n{done.stdout}"
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr, f"{word!r} not in {done.stderr!r}"


def issue(server: RotorProcess, client: dict[str, str], **fields: Any) -> rotor_client.TokenResponse:
    request = rotor_client.IssueRequest(**fields)
    return server.tokens().Issue(request, metadata=basic(client), timeout=30)


def issue_reason(server: RotorProcess, client: dict[str, str]) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        issue(server, client)
    info = error_info(caught.value)
    assert info is not None, caught.value
    return info.reason


@pytest.mark.parametrize("mode", MODES)
def test_the_whole_client_lifecycle(make_server: MakeServer, mode: str) -> None:
    server = make_server()
    admin = server.add_client("ops", "--admin")
    added = json.loads(
        ok(
            clients(
                server,
                mode,
                admin,
                "add",
                "svc",
                "--scope",
                "a",
                "--scope",
                "b",
                "--audience",
                "api",
                "--allowed-cidr",
                "127.0.0.0/8",
                "--json",
            )
        )
    )
    assert set(added) == {"client_id", "client_secret"}
    svc = added
    assert issue(server, svc, scope=["a", "b"]).access_token

    shown = json.loads(ok(clients(server, mode, admin, "show", "svc", "--json")))
    assert shown["allowed_cidrs"] == ["127.0.0.0/8"] and shown["scopes"] == ["a", "b"]
    assert "hash" not in json.dumps(shown) and svc["client_secret"] not in json.dumps(shown)

    ok(
        clients(
            server,
            mode,
            admin,
            "update",
            "svc",
            "--remove-scope",
            "b",
            "--add-audience",
            "billing",
            "--allowed-cidr",
            "10.0.0.0/8",
        )
    )
    assert issue_reason(server, svc) == "ADDRESS_NOT_ALLOWED"
    updated = json.loads(
        ok(clients(server, mode, admin, "update", "svc", "--allowed-cidr", "127.0.0.1", "--admin", "--json"))
    )
    assert updated["scopes"] == ["a"] and updated["audiences"] == ["api", "billing"]
    assert updated["allowed_cidrs"] == ["127.0.0.1/32"] and updated["admin"] is True
    assert issue(server, svc, audience=["billing"], scope=["a"]).access_token

    listed = json.loads(ok(clients(server, mode, admin, "list", "--json")))
    assert {"ops", "svc"} <= {c["client_id"] for c in listed}
    table = ok(clients(server, mode, admin, "list")).splitlines()
    assert table[0].split()[0] == "client_id" and any(line.startswith("svc ") for line in table)

    rotated = json.loads(ok(clients(server, mode, admin, "rotate-secret", "svc", "--json")))
    assert rotated["client_secret"] != svc["client_secret"]
    assert issue_reason(server, svc) == "INVALID_CLIENT"
    svc = {"client_id": "svc", "client_secret": rotated["client_secret"]}
    assert issue(server, svc, audience=["api"]).access_token

    ok(clients(server, mode, admin, "disable", "svc"))
    assert issue_reason(server, svc) == "CLIENT_DISABLED"
    ok(clients(server, mode, admin, "enable", "svc"))
    assert issue(server, svc, audience=["api"]).access_token

    deleted = json.loads(ok(clients(server, mode, admin, "delete", "svc", "--json")))
    assert deleted["client_id"] == "svc" and deleted["families_revoked"] >= 1
    assert issue_reason(server, svc) == "INVALID_CLIENT"
    refused(clients(server, mode, admin, "show", "svc"), "svc")
    again = json.loads(ok(clients(server, mode, admin, "add", "svc", "--audience", "api", "--json")))
    assert issue(server, again).access_token  # the name is free again


@pytest.mark.parametrize("mode", MODES)
def test_a_new_tenants_first_issue_succeeds_at_once(
    make_server: MakeServer, mode: str, backend: dict[str, Any]
) -> None:
    server = make_server(backend)
    admin = server.add_client("ops", "--admin")
    added = json.loads(
        ok(clients(server, mode, admin, "add", "t-svc", "--tenant", "fresh", "--audience", "api", "--json"))
    )
    issued = issue(server, added)  # one try: no UNAVAILABLE window
    keys = server.tokens().GetKeySet(rotor_client.GetKeySetRequest(tenant="fresh"), timeout=30)
    assert issued.key_id in {k.kid for k in keys.keys}


def test_a_tenant_added_while_no_server_runs_issues_at_the_first_call(
    make_server: MakeServer, backend: dict[str, Any]
) -> None:
    server = make_server(backend, start=False)
    added = server.add_client("t-svc", "--tenant", "cold", "--audience", "api")
    server.start()
    assert issue(server, added).access_token


def test_over_grpc_a_non_admin_and_a_self_lockout_are_refused_in_one_line(make_server: MakeServer) -> None:
    server = make_server()
    admin = server.add_client("ops", "--admin")
    plain = server.add_client("plain", "--audience", "api")
    refused(clients(server, "grpc", plain, "list"), "PERMISSION_DENIED")
    refused(clients(server, "grpc", admin, "update", "ops", "--no-admin"), "FAILED_PRECONDITION")
    refused(clients(server, "grpc", admin, "delete", "ops"), "FAILED_PRECONDITION")
    refused(clients(server, "grpc", admin, "add", "x", "--allowed-cidr", "10.0.0.1/8"), "INVALID_ARGUMENT")
    refused(clients(server, "store", admin, "update", "plain"), "nothing to change")
    refused(
        run_rotor(
            "clients",
            "list",
            "--target",
            server.address,
            "--config",
            str(server.config_path),
            cwd=server.workdir,
        ),
        "not both",
    )
