"""`rotor clients` lifecycle commands against a running `rotor serve` on the same store.

rotate-secret with and without an overlap, --expires, disable and enable, and
--tenant: each command works on the store while the server runs, and the
server honours the change at the client's next call.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import rotor_client
from rotor.v1 import keys_pb2

from .conftest import MakeServer
from .support import RotorProcess, basic, error_info

DAY = 86400


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def one_json_object(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The whole of stdout is exactly one JSON object on one line."""
    stdout = ok(done)
    assert len(stdout.strip().splitlines()) == 1, stdout
    document = json.loads(stdout)
    assert isinstance(document, dict), document
    return document


def refused_in_one_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode != 0, f"succeeded:\n{done.stdout}"
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr, not one:\n{done.stderr}"
    for word in words:
        assert word in done.stderr, f"{word!r} not in {done.stderr!r}"
    assert done.stdout == "", done.stdout
    return done.stderr


def issue(server: RotorProcess, client: dict[str, str]) -> rotor_client.TokenResponse:
    return server.tokens().Issue(rotor_client.IssueRequest(), metadata=basic(client), timeout=30)


def issue_fails(server: RotorProcess, client: dict[str, str]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        issue(server, client)
    return caught.value


def reason(err: grpc.RpcError) -> str:
    info = error_info(err)
    return info.reason if info is not None else f"no ErrorInfo ({err.code().name}: {err.details()})"


def refresh(server: RotorProcess, client: dict[str, str], token: str) -> rotor_client.TokenResponse:
    request = rotor_client.RefreshRequest(refresh_token=token)
    return server.tokens().Refresh(request, metadata=basic(client), timeout=30)


def instant(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def with_secret(client: dict[str, str], secret: str) -> dict[str, str]:
    return {"client_id": client["client_id"], "client_secret": secret}


# -- rotate-secret ------------------------------------------------------------------


def test_rotate_secret_with_overlap_prints_json_and_both_secrets_work(make_server: MakeServer) -> None:
    """rotate-secret --overlap 24h --json: one object; the old and the new secret both Issue at once."""
    server = make_server()
    old = server.add_client("svc", "--audience", "api")
    assert issue(server, old).access_token  # the server knows (and caches) the old secret

    before = time.time()
    rotated = one_json_object(server.cli("clients", "rotate-secret", "svc", "--overlap", "24h", "--json"))
    assert {"client_id", "client_secret", "previous_secret_valid_until"} <= set(rotated), rotated
    assert rotated["client_id"] == "svc"
    assert rotated["client_secret"] != old["client_secret"] and len(rotated["client_secret"]) >= 32
    valid_until = instant(rotated["previous_secret_valid_until"])
    assert before + DAY - 5 <= valid_until <= time.time() + DAY + 5

    new = with_secret(old, rotated["client_secret"])
    assert issue(server, old).access_token
    assert issue(server, new).access_token


def test_rotate_secret_without_overlap_stops_the_old_secret_at_once(make_server: MakeServer) -> None:
    """rotate-secret with no --overlap: the old secret is refused at its next call; the new one works."""
    server = make_server()
    old = server.add_client("svc", "--audience", "api")
    assert issue(server, old).access_token

    rotated = one_json_object(server.cli("clients", "rotate-secret", "svc", "--json"))
    assert rotated.get("previous_secret_valid_until") is None, rotated
    err = issue_fails(server, old)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and reason(err) == "INVALID_CLIENT"
    assert issue(server, with_secret(old, rotated["client_secret"])).access_token


def test_rotate_secret_expires_reports_when_the_new_secret_ends(make_server: MakeServer) -> None:
    """rotate-secret --expires 90d --json: secret_expires_at is 90 days ahead, and the new secret works."""
    server = make_server()
    old = server.add_client("svc", "--audience", "api")
    before = time.time()
    rotated = one_json_object(server.cli("clients", "rotate-secret", "svc", "--expires", "90d", "--json"))
    assert before + 90 * DAY - 5 <= instant(rotated["secret_expires_at"]) <= time.time() + 90 * DAY + 5
    assert issue(server, with_secret(old, rotated["client_secret"])).access_token


def test_clients_add_with_expires_prints_one_json_object_and_the_client_works(
    make_server: MakeServer,
) -> None:
    """clients add X --expires 90d --json: exactly {client_id, client_secret}; X can Issue."""
    server = make_server()
    added = one_json_object(
        server.cli("clients", "add", "svc-x", "--audience", "api", "--expires", "90d", "--json")
    )
    assert set(added) == {"client_id", "client_secret"} and added["client_id"] == "svc-x"
    assert issue(server, added).access_token


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("clients", "rotate-secret", "svc", "--overlap", "5x"), "--overlap"),
        (("clients", "rotate-secret", "svc", "--expires", "0s"), "--expires"),
        (("clients", "add", "svc-new", "--expires", "-1d"), "--expires"),
        (("clients", "add", "svc-new", "--expires", "90x"), "--expires"),
    ],
    ids=["overlap-5x", "rotate-expires-0s", "add-expires-minus-1d", "add-expires-90x"],
)
def test_a_bad_duration_is_refused_in_one_line_and_changes_nothing(
    make_server: MakeServer, args: tuple[str, ...], option: str
) -> None:
    """--overlap 5x, --expires -1d and the like: exit non-zero, one line naming the option, no change."""
    server = make_server(start=False)
    server.add_client("svc", "--audience", "api")
    refused_in_one_line(server.cli(*args, "--json"), option)
    listed = json.loads(ok(server.cli("clients", "list", "--json")))
    assert [c["client_id"] for c in listed] == ["svc"]


# -- disable and enable -------------------------------------------------------------


def test_disable_prints_the_families_revoked_and_the_server_refuses_the_client(
    make_server: MakeServer,
) -> None:
    """clients disable: prints the live families it revoked; the running server refuses the client next call."""
    server = make_server()
    svc = server.add_client("svc", "--audience", "api")
    grants = [issue(server, svc).refresh_token for _ in range(2)]

    done = server.cli("clients", "disable", "svc")
    out = ok(done)
    assert "svc" in out and "2" in out.split(), out  # "disabled svc; revoked 2 refresh families"

    err = issue_fails(server, svc)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and reason(err) == "CLIENT_DISABLED"
    as_json = one_json_object(server.cli("clients", "disable", "svc", "--json"))
    assert as_json["families_revoked"] == 0  # nothing left to revoke

    ok(server.cli("clients", "enable", "svc"))
    assert issue(server, svc).access_token
    with pytest.raises(grpc.RpcError) as caught:
        refresh(server, svc, grants[0])
    assert reason(caught.value) == "REFRESH_TOKEN_REVOKED"


def test_disable_and_enable_name_an_unknown_client_in_one_line(make_server: MakeServer) -> None:
    """clients disable/enable of a name nobody registered: exit non-zero, one line naming it."""
    server = make_server(start=False)
    for command in ("disable", "enable", "rotate-secret"):
        done = server.cli("clients", command, "nobody")
        assert done.returncode != 0 and "nobody" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


# -- tenants ------------------------------------------------------------------------


def test_a_client_added_to_a_new_tenant_issues_with_that_tenants_keys(make_server: MakeServer) -> None:
    """clients add Y --tenant acme: the running server brings up tenant acme on its own; Y's token is acme's."""
    server = make_server()
    y = one_json_object(
        server.cli("clients", "add", "svc-y", "--tenant", "acme", "--audience", "api", "--json")
    )
    tokens = server.tokens()

    deadline = time.monotonic() + 5
    while True:
        try:
            acme = tokens.GetKeySet(rotor_client.GetKeySetRequest(tenant="acme"), timeout=10)
            if any(k.state == keys_pb2.KEY_STATE_ACTIVE for k in acme.keys):
                break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
        assert time.monotonic() < deadline, "tenant acme did not appear within 5 s"
        time.sleep(0.05)

    issued = issue(server, y)
    default = tokens.GetKeySet(rotor_client.GetKeySetRequest(), timeout=10)
    assert issued.key_id in {k.kid for k in acme.keys}
    assert issued.key_id not in {k.kid for k in default.keys}
    assert acme.tenant == "acme"
