"""The `rotor` command: clients on the store, keys over gRPC as an admin client."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import rotor_client
from rotor.v1 import keys_pb2

from .conftest import MakeServer
from .support import RotorProcess, basic, env_with_bin, run_rotor


def admin_env(client: dict[str, str]) -> dict[str, str]:
    return env_with_bin(ROTOR_CLIENT_ID=client["client_id"], ROTOR_CLIENT_SECRET=client["client_secret"])


def keys_cmd(
    server: RotorProcess, admin: dict[str, str], command: str, *options: str, arg: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`rotor keys COMMAND [ARG] OPTIONS... --target ADDRESS`, admin credentials from the environment.

    An ARG that starts with "-" (kids and operation ids are base64url) goes after "--": without
    it argparse takes the value for an option; `rotor keys revoke -AbC` itself works too (tested below).
    """
    positional = [] if arg is None else ["--", arg] if arg.startswith("-") else [arg]
    if positional[:1] == ["--"]:
        args = [command, *options, "--target", server.address, *positional]
    else:
        args = [command, *positional, *options, "--target", server.address]
    return run_rotor("keys", *args, cwd=server.workdir, env=admin_env(admin))


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode != 0, f"succeeded:\n{done.stdout}"
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.stderr.strip() and len(done.stderr.strip().splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr, f"{word!r} not in {done.stderr!r}"
    return done.stderr


def table(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.strip().splitlines()]


def test_clients_add_prints_one_json_object_and_refuses_a_taken_name(make_server: MakeServer) -> None:
    server = make_server(start=False)
    done = server.cli("clients", "add", "svc-orders", "--scope", "orders.read", "--audience", "api", "--json")
    added = json.loads(ok(done))  # the whole of stdout is one JSON document
    assert set(added) == {"client_id", "client_secret"} and added["client_id"] == "svc-orders"
    assert len(added["client_secret"]) >= 32
    assert len(done.stdout.strip().splitlines()) == 1

    again = server.cli("clients", "add", "svc-orders", "--json")
    refused(again, "svc-orders", "exists")
    assert again.stdout == ""

    bad_name = server.cli("clients", "add", "no spaces please", "--json")
    refused(bad_name)


def test_clients_list_shows_every_client_as_json_and_as_a_table(make_server: MakeServer) -> None:
    server = make_server(start=False)
    server.add_client("svc-orders", "--scope", "orders.read", "--scope", "orders.write", "--audience", "api")
    server.add_client("ops", "--admin")

    listed = json.loads(ok(server.cli("clients", "list", "--json")))
    by_id = {c["client_id"]: c for c in listed}
    assert set(by_id) == {"svc-orders", "ops"}
    assert by_id["svc-orders"]["scopes"] == ["orders.read", "orders.write"]
    assert by_id["svc-orders"]["audiences"] == ["api"] and not by_id["svc-orders"]["admin"]
    assert by_id["ops"]["admin"] is True
    assert all("secret" not in json.dumps(c) for c in listed), "a secret (or its hash) in the listing"

    rows = table(ok(server.cli("clients", "list")))
    assert rows[0][0] == "client_id" and {r[0] for r in rows[1:]} == {"svc-orders", "ops"}


def test_a_client_added_by_the_cli_works_at_once_on_a_running_server(make_server: MakeServer) -> None:
    server = make_server()
    client = server.add_client("late", "--audience", "api")
    issued = server.tokens().Issue(rotor_client.IssueRequest(), metadata=basic(client), timeout=10)
    assert issued.access_token


def test_keys_list_rotate_and_revoke_as_an_admin(make_server: MakeServer) -> None:
    # the pending key must still be pending when the immediate rotation supersedes it, however long
    # the CLI calls in between take on a loaded machine: a publish lead far longer than the test
    server = make_server({"keys": {"publish_lead": "10m"}})
    admin = server.add_client("ops", "--admin")

    (first,) = json.loads(ok(keys_cmd(server, admin, "list", "--json")))
    assert first["state"] == "active" and first["alg"] == "EdDSA" and first["key_store"] == "sealed"
    rows = table(ok(keys_cmd(server, admin, "list")))
    assert rows[0][:4] == ["kid", "alg", "state", "key_store"]
    assert rows[1][:4] == [first["kid"], "EdDSA", "active", "sealed"]
    via_config = json.loads(ok(server.cli("keys", "list", "--json", env=admin_env(admin))))  # listen from it
    assert [k["kid"] for k in via_config] == [first["kid"]]

    (pending,) = json.loads(ok(keys_cmd(server, admin, "rotate", "--reason", "scheduled", "--json")))
    assert pending["state"] == "pending" and pending["kid"] != first["kid"]
    rows = table(ok(keys_cmd(server, admin, "rotate", "--immediate", "--reason", "drill")))
    assert rows[1][2] == "active"
    now_active = rows[1][0]

    states = {k["kid"]: k["state"] for k in json.loads(ok(keys_cmd(server, admin, "list", "--json")))}
    assert states[now_active] == "active" and states[first["kid"]] == "retired"
    assert pending["kid"] not in states, "the superseded pending key is still listed as live"
    expired = json.loads(ok(keys_cmd(server, admin, "list", "--include-expired", "--json")))
    assert {k["kid"]: k["state"] for k in expired}[pending["kid"]] == "expired"

    revoked = json.loads(
        ok(keys_cmd(server, admin, "revoke", "--reason", "leaked", "--json", arg=first["kid"]))
    )
    assert revoked["kid"] == first["kid"] and revoked["state"] == "revoked"
    assert revoked["pending_approval"] is False and revoked["revocation_reason"] == "leaked"
    said = ok(keys_cmd(server, admin, "revoke", "--reason", "leaked too", arg=now_active))
    assert said.strip() == f"revoked {now_active}"

    key_set = server.tokens().GetKeySet(rotor_client.GetKeySetRequest(), timeout=10)
    live = {k.kid: k.state for k in key_set.keys}
    assert first["kid"] not in live and now_active not in live
    assert list(live.values()) == [keys_pb2.KEY_STATE_ACTIVE]


def test_keys_commands_refuse_clearly_without_admin_rights(make_server: MakeServer) -> None:
    server = make_server()
    plain = server.add_client("svc", "--audience", "api")

    no_credentials = run_rotor("keys", "list", "--target", server.address, cwd=server.workdir)
    refused(no_credentials, "ROTOR_CLIENT_ID")
    refused(keys_cmd(server, plain, "list"), "PERMISSION_DENIED")
    wrong = {"client_id": "svc", "client_secret": "wrong"}
    refused(keys_cmd(server, wrong, "rotate"), "UNAUTHENTICATED")
    refused(keys_cmd(server, plain | {"client_id": "ops"}, "revoke", arg="some-kid"), "UNAUTHENTICATED")


def test_revoking_a_key_with_require_approval_takes_a_second_admin(make_server: MakeServer) -> None:
    server = make_server({"keys": {"require_approval": True}})
    first = server.add_client("admin-a", "--admin")
    second = server.add_client("admin-b", "--admin")
    (key,) = json.loads(ok(keys_cmd(server, first, "list", "--json")))

    said = ok(keys_cmd(server, first, "revoke", "--reason", "suspected leak", arg=key["kid"]))
    match = re.search(r"(rotor keys approve \S+)", said)
    assert match, f"no approve command in {said!r}"
    *_, approve, operation_id = shlex.split(match.group(1))  # what the operator pastes
    assert [k["state"] for k in json.loads(ok(keys_cmd(server, first, "list", "--json")))] == ["active"]

    refused(keys_cmd(server, first, approve, arg=operation_id), "PERMISSION_DENIED")  # not one's own
    approved = table(ok(keys_cmd(server, second, approve, arg=operation_id)))
    assert approved[1][:3] == [key["kid"], "EdDSA", "revoked"]

    listed = {k["kid"]: k["state"] for k in json.loads(ok(keys_cmd(server, second, "list", "--json")))}
    assert listed.pop(key["kid"]) == "revoked" and list(listed.values()) == ["active"]
    key_set = server.tokens().GetKeySet(rotor_client.GetKeySetRequest(), timeout=10)
    assert {k.kid for k in key_set.keys} == set(listed), "the revoked key is still in the key set"
    refused(keys_cmd(server, second, approve, arg=operation_id), "FAILED_PRECONDITION")


# -- values that start with a dash ---------------------------------------------------


def test_a_kid_starting_with_a_dash_is_revoked_as_documented(make_server: MakeServer) -> None:
    server = make_server()
    admin = server.add_client("ops", "--admin")
    keys = server.admin()
    for _ in range(2000):  # each new kid starts with "-" with probability 1/64
        request = rotor_client.RotateKeysRequest(immediate=True, reason="looking for a dash")
        kid = keys.RotateKeys(request, metadata=basic(admin), timeout=30).key.kid
        if kid.startswith("-"):
            break
    assert kid.startswith("-")
    done = run_rotor(
        "keys", "revoke", kid, "--target", server.address, cwd=server.workdir, env=admin_env(admin)
    )
    assert ok(done).strip() == f"revoked {kid}"


def test_the_printed_approve_command_works_as_printed(make_server: MakeServer) -> None:
    server = make_server({"keys": {"require_approval": True}})
    first = server.add_client("admin-a", "--admin")
    second = server.add_client("admin-b", "--admin")
    kid = server.tokens().GetKeySet(rotor_client.GetKeySetRequest(), timeout=10).keys[0].kid
    said = ok(
        run_rotor("keys", "revoke", kid, "--target", server.address, cwd=server.workdir, env=admin_env(first))
    )
    printed = said[said.index("rotor keys approve") :].strip()
    operation_id = printed.split()[-1]
    assert re.fullmatch(r"[0-9a-f]{32}", operation_id), "operation ids are hex, so never taken for an option"
    done = run_rotor(
        *shlex.split(printed)[1:], "--target", server.address, cwd=server.workdir, env=admin_env(second)
    )
    assert ok(done)
