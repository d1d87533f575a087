"""`rotor status` and `rotor drill` against a running server, over gRPC as an admin client.

The command runs in a thread of this process (it is synchronous gRPC), the server in the loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import rotor_client
from rotor.cli import main
from rotor.v1 import key_admin_pb2, keys_pb2, token_service_pb2
from rotor_client import KeySetWatcher

from .conftest import MakeRotor
from .support import Credentials, Rotor

WATCHER_HEADER = "x-rotor-watcher"
# A watcher that stops reading fills its HTTP/2 window after a few events (see test_watch.py).
TIGHT_WINDOW = (("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0))


@pytest.fixture
async def rotor(make_rotor: MakeRotor) -> Rotor:
    return await make_rotor(http_listen="127.0.0.1:0")


def run_main(argv: list[str]) -> int:
    """`rotor ARGV...`'s exit status, also when argparse exits (its message is on stderr)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


async def rotor_cli(
    capsys: pytest.CaptureFixture[str], admin: Credentials, *argv: str
) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `rotor ARGV... --client-id --client-secret`."""
    capsys.readouterr()
    code = await asyncio.to_thread(
        run_main, [*argv, "--client-id", admin.client_id, f"--client-secret={admin.secret}"]
    )
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


@contextlib.asynccontextmanager
async def watchers(rotor: Rotor, *names: str) -> AsyncIterator[list[KeySetWatcher]]:
    """Named rotor_client watchers, each with the key set in hand."""
    started = [await KeySetWatcher(rotor.address, name=name).start() for name in names]
    try:
        async with asyncio.timeout(10):
            while True:
                if all(w.keyset is not None for w in started):
                    break
                await asyncio.sleep(0.02)
        yield started
    finally:
        for w in started:
            await w.close()


async def listed_watchers(rotor: Rotor, admin: Credentials, count: int) -> None:
    """Until GetRotationStatus lists `count` named watchers."""
    async with asyncio.timeout(10):
        while True:
            status = await rotor.admin.GetRotationStatus(
                key_admin_pb2.GetRotationStatusRequest(), metadata=admin.metadata, timeout=10
            )
            if len(status.watchers) >= count:
                return
            await asyncio.sleep(0.02)


async def status_json(rotor: Rotor, admin: Credentials) -> dict[str, Any]:
    token = base64.b64encode(f"{admin.client_id}:{admin.secret}".encode()).decode()
    url = f"http://127.0.0.1:{rotor.server.http_port}/status.json"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Basic {token}"}) as resp,
    ):
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc


async def test_status_json_prints_the_model_status_json_serves(
    rotor: Rotor, ops: Credentials, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same keys, sequence, next rotation, watchers and audit events as /status.json."""
    async with watchers(rotor, "billing"):
        await listed_watchers(rotor, ops, 1)
        await rotor.admin.RotateKeys(
            rotor_client.RotateKeysRequest(reason="status cli"), metadata=ops.metadata, timeout=30
        )
        code, out, _ = await rotor_cli(capsys, ops, "status", "--target", rotor.address, "--json")
        served = await status_json(rotor, ops)
    assert code == 0
    printed = json.loads(out)
    for doc in (printed, served):
        del doc["now"]
    assert printed["keys"] == served["keys"] and len(printed["keys"]) == 2
    assert printed["audit"] == served["audit"] and printed["audit"][0]["action"] == "key.published"
    for field in ("tenant", "latest_sequence", "next_rotation_at", "active_kid", "pending_kid"):
        assert printed[field] == served[field], field
    assert printed["watchers"] == served["watchers"] and printed["watchers"][0]["name"] == "billing"
    assert printed["watchers"][0]["replica"] == rotor.server.fleet.replica


async def test_reported_verifications_show_in_status_json_and_rotor_status_alike(
    make_rotor: MakeRotor, capsys: pytest.CaptureFixture[str]
) -> None:
    """A watcher that reports (ReportVerifications, no stream): its kids, sequence, outcomes over the last
    15 minutes and failure ratios, the same at both doors; UNKNOWN_KEY counts as a failure beyond expiry."""
    rotor = await make_rotor(http_listen="127.0.0.1:0")
    ops = await rotor.add_client("ops", admin=True)
    keyset = await rotor.key_set()
    (active,) = [k.kid for k in keyset.keys]
    counts = [("OK", active, 90), ("TOKEN_EXPIRED", active, 6), ("UNKNOWN_KEY", "stranger-kid", 4)]
    await rotor.tokens.ReportVerifications(
        token_service_pb2.ReportVerificationsRequest(
            watcher="cron",
            sequence=keyset.sequence,
            kids=[active],
            counts=[keys_pb2.VerificationCount(outcome=o, kid=k, count=n) for o, k, n in counts],
        ),
        timeout=10,
    )

    async def reported() -> dict[str, Any] | None:
        doc = await status_json(rotor, ops)
        return doc if doc["watchers"] and doc["watchers"][0]["verifications"]["total"] == 100 else None

    served = await until(reported)
    code, out, _ = await rotor_cli(capsys, ops, "status", "--target", rotor.address, "--json")
    assert code == 0
    printed = json.loads(out)
    assert printed["watchers"] == served["watchers"]
    (cron,) = printed["watchers"]
    assert (cron["name"], cron["replica"], cron["connected_at"]) == ("cron", rotor.server.fleet.replica, None)
    assert (cron["kids"], cron["holds_active"], cron["behind"]) == ([active], True, 0)
    assert cron["last_report_at"] is not None
    v = cron["verifications"]
    assert v["outcomes"] == {"OK": 90, "TOKEN_EXPIRED": 6, "UNKNOWN_KEY": 4}
    assert (v["failure_ratio"], v["other_failure_ratio"]) == (0.1, 0.04)
    code, out, _ = await rotor_cli(capsys, ops, "status", "--target", rotor.address)
    (row,) = [line for line in out.splitlines() if line.startswith("cron ")]
    assert "UNKNOWN_KEY=4" in row and "10.0% (4.0% not expiry)" in row, row


async def until(check: Any, within: float = 10.0) -> Any:
    """Poll the coroutine function `check` until it returns something truthy."""
    async with asyncio.timeout(within):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.05)


async def test_status_prints_tables_of_keys_watchers_and_audit_events(
    rotor: Rotor, ops: Credentials, capsys: pytest.CaptureFixture[str]
) -> None:
    async with watchers(rotor, "billing"):
        await listed_watchers(rotor, ops, 1)
        code, out, _ = await rotor_cli(capsys, ops, "status", "--target", rotor.address)
    assert code == 0
    listed = await rotor.admin.ListKeys(rotor_client.ListKeysRequest(), metadata=ops.metadata, timeout=10)
    (kid,) = [k.kid for k in listed.keys]
    lines = out.splitlines()
    assert lines[0].startswith("tenant (default)")
    assert any(line.split()[:3] == [kid[:8], "EdDSA", "active"] for line in lines), out
    assert any(line.startswith("billing ") for line in lines), out
    assert "audit (newest first)" in lines and any("key.activated" in line for line in lines)


async def test_status_needs_admin_credentials(
    rotor: Rotor, svc: Credentials, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await rotor_cli(capsys, svc, "status", "--target", rotor.address)
    assert code == 1 and not out
    assert err.startswith("rotor: GetRotationStatus failed: PERMISSION_DENIED"), err


async def test_a_drill_passes_when_every_named_watcher_gets_the_new_key(
    rotor: Rotor, ops: Credentials, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each watcher's time is printed; the rotation is audited with reason "drill"."""
    async with watchers(rotor, "billing", "orders") as running:
        await listed_watchers(rotor, ops, 2)
        code, out, err = await rotor_cli(
            capsys, ops, "drill", "--target", rotor.address, "--timeout", "30s", "--json"
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["passed"] is True and report["missing"] == []
        assert {w["name"] for w in report["watchers"]} == {"billing", "orders"}
        assert all(0 <= w["seconds"] <= 30 for w in report["watchers"]), report
        for watcher in running:  # they really have it
            assert watcher.keyset is not None
            assert report["kid"] in {k.kid for k in watcher.keyset.keys}
    listed = await rotor.admin.ListKeys(rotor_client.ListKeysRequest(), metadata=ops.metadata, timeout=10)
    assert {k.kid: k.state for k in listed.keys}[report["kid"]] == keys_pb2.KEY_STATE_PENDING
    audit = await rotor.admin.ListAuditEvents(
        key_admin_pb2.ListAuditEventsRequest(page_size=1000), metadata=ops.metadata, timeout=10
    )
    (entry,) = [e for e in audit.events if e.action == "key.published" and e.target == report["kid"]]
    assert entry.actor == ops.client_id and json.loads(entry.details_json).get("reason") == "drill"


async def test_a_drill_fails_naming_a_stalled_watcher(
    rotor: Rotor, ops: Credentials, svc: Credentials, capsys: pytest.CaptureFixture[str]
) -> None:
    """A named watcher that stopped reading never gets the key: exit 1, and it is named."""
    stalled = rotor_client.TokenServiceStub(rotor.channel(options=TIGHT_WINDOW)).WatchKeyRotations(
        rotor_client.WatchKeyRotationsRequest(), metadata=((WATCHER_HEADER, "stalled"),)
    )
    await asyncio.wait_for(stalled.read(), 10)  # from now on it reads nothing; its window fills
    for _ in range(60):
        token = (await rotor.issue(svc)).access_token
        assert await rotor.revoke(svc, token)
    async with watchers(rotor, "healthy"):
        await listed_watchers(rotor, ops, 2)
        code, out, err = await rotor_cli(capsys, ops, "drill", "--target", rotor.address, "--timeout", "2s")
    assert code == 1
    lines = {line.split()[0].rstrip(":"): line for line in out.splitlines() if line.startswith("  ")}
    assert "had it after" in lines["healthy"], out
    assert "NOT within 2s" in lines["stalled"], out
    (line,) = err.strip().splitlines()
    assert line.startswith("rotor: drill failed: stalled did not get key"), err
    stalled.cancel()
