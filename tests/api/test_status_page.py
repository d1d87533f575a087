"""The live status page on the HTTP side port: /status, /status.json and /status/events."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import grpc
import pytest
import rotor_client
from rotor.core.status import AUDIT_SHOWN
from rotor.v1 import key_admin_pb2

from .conftest import MakeRotor
from .support import Credentials, Rotor

WATCHER_HEADER = "x-rotor-watcher"


@pytest.fixture
async def rotor(make_rotor: MakeRotor) -> Rotor:
    return await make_rotor(http_listen="127.0.0.1:0")


def base(rotor: Rotor) -> str:
    return f"http://127.0.0.1:{rotor.server.http_port}"


def basic(who: Credentials) -> dict[str, str]:
    token = base64.b64encode(f"{who.client_id}:{who.secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers or {}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def status_json(rotor: Rotor, who: Credentials | None, query: str = "") -> dict[str, Any]:
    code, _, body = await get(base(rotor) + "/status.json" + query, basic(who) if who else None)
    assert code == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


async def rotate(rotor: Rotor, admin: Credentials, reason: str = "status test") -> Any:
    response = await rotor.admin.RotateKeys(
        rotor_client.RotateKeysRequest(reason=reason), metadata=admin.metadata, timeout=30
    )
    return response.key


async def named_watcher(rotor: Rotor, name: str) -> Any:
    """A named WatchKeyRotations stream that has read its snapshot."""
    call = rotor.tokens.WatchKeyRotations(
        rotor_client.WatchKeyRotationsRequest(), metadata=((WATCHER_HEADER, name),)
    )
    await asyncio.wait_for(call.read(), 10)
    return call


def embedded(page: str) -> dict[str, Any]:
    """The model a page carries for its first drawing."""
    text = page.split('<script type="application/json" id="initial">')[1].split("</script>")[0]
    doc: dict[str, Any] = json.loads(text)
    return doc


async def until(check: Any, within: float = 10.0) -> Any:
    """Poll the coroutine function `check` until it returns something truthy."""
    last = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = await check()
                if last:
                    return last
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never got there; last: {last}") from None


async def test_status_json_shows_the_key_timeline_the_watchers_and_the_newest_audit_events(
    rotor: Rotor, ops: Credentials
) -> None:
    """After a scheduled rotation: the active and the pending key with their dates, the watcher holding
    both, up to date, and the rotation at the head of the audit events."""
    call = await named_watcher(rotor, "billing")
    pending = await rotate(rotor, ops, "status json")
    await asyncio.wait_for(call.read(), 10)  # KEY_PUBLISHED reached the watcher

    async def caught_up() -> dict[str, Any] | None:
        doc = await status_json(rotor, ops)
        return doc if doc["watchers"] and doc["watchers"][0]["holds_pending"] else None

    doc = await until(caught_up)
    assert doc["tenant"] == "" and doc["pending_kid"] == pending.kid
    states = {k["kid"]: k["state"] for k in doc["keys"]}
    assert states[pending.kid] == "pending" and doc["active_kid"] in states
    assert list(states.values()).count("active") == 1
    (line,) = [k for k in doc["keys"] if k["kid"] == pending.kid]
    assert line["short_kid"] == pending.kid[:8] and line["alg"] == pending.alg
    assert line["published_at"] < line["activates_at"] < line["retires_at"] < line["expires_at"]
    assert doc["next_rotation_at"] == line["activates_at"]  # the pending key signs next
    assert doc["now"].endswith("Z") and doc["latest_sequence"] > 0

    (watcher,) = doc["watchers"]
    assert watcher["name"] == "billing" and watcher["behind"] == 0
    assert watcher["sequence"] == doc["latest_sequence"]
    assert watcher["holds_active"] is True and watcher["holds_pending"] is True
    assert pending.kid in watcher["kids"]
    assert watcher["verifications"]["total"] == 0 and watcher["verifications"]["failure_ratio"] is None

    audit = doc["audit"]
    assert 0 < len(audit) <= AUDIT_SHOWN
    assert [a["sequence"] for a in audit] == sorted((a["sequence"] for a in audit), reverse=True)
    assert any(a["target"] == pending.kid and a["actor"] == ops.client_id for a in audit), audit
    call.cancel()


async def test_status_json_keeps_the_newest_twenty_audit_events(
    rotor: Rotor, ops: Credentials, svc: Credentials
) -> None:
    for _ in range(AUDIT_SHOWN + 5):  # each refusal is an audit event
        with pytest.raises(grpc.RpcError):
            await rotor.admin.ListKeys(rotor_client.ListKeysRequest(), metadata=svc.metadata, timeout=10)
    doc = await status_json(rotor, ops)
    assert len(doc["audit"]) == AUDIT_SHOWN
    listed = await rotor.admin.ListAuditEvents(
        key_admin_pb2.ListAuditEventsRequest(tenant="", page_size=1000), metadata=ops.metadata, timeout=10
    )
    newest = sorted((e.sequence for e in listed.events if e.tenant == ""), reverse=True)[:AUDIT_SHOWN]
    assert [a["sequence"] for a in doc["audit"]] == newest


async def test_the_page_asks_for_admin_credentials_and_refuses_others(
    rotor: Rotor, ops: Credentials, svc: Credentials
) -> None:
    """No credentials: 401 with a Basic challenge, so a browser prompts; a wrong secret: 401;
    a client that is not an admin: 403. The refusals with credentials are audited."""
    for path in ("/status", "/status.json", "/status/events"):
        code, headers, body = await get(base(rotor) + path)
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic realm="), (path, body)
        assert json.loads(body)["error"] == "INVALID_CLIENT"
    code, headers, body = await get(base(rotor) + "/status.json", basic(Credentials(ops.client_id, "wrong")))
    assert code == 401 and json.loads(body)["error"] == "INVALID_CLIENT"
    code, _, body = await get(base(rotor) + "/status.json", basic(svc))
    assert code == 403 and json.loads(body)["error"] == "ADMIN_REQUIRED"
    doc = await status_json(rotor, ops)
    denied = [a for a in doc["audit"] if a["action"] == "admin.denied" and a["target"] == "GET /status.json"]
    assert {a["actor"] for a in denied} == {ops.client_id, svc.client_id}


async def test_an_admin_of_one_tenant_sees_that_tenant_only(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(http_listen="127.0.0.1:0")
    await rotor.add_client("svc-acme", tenant="acme")
    await rotor.server.keys.discover_tenants()
    await rotor.server.rotator.tick()
    acme_admin = await rotor.add_client("acme-ops", admin=True, tenant="acme")
    doc = await status_json(rotor, acme_admin)  # no ?tenant: its own
    assert doc["tenant"] == "acme" and doc["active_kid"]
    code, _, body = await get(base(rotor) + "/status.json?tenant=", basic(acme_admin))
    assert code == 403 and json.loads(body)["error"] == "ADMIN_REQUIRED"


async def test_an_unknown_or_malformed_tenant_is_refused_with_its_reason(
    rotor: Rotor, ops: Credentials
) -> None:
    code, _, body = await get(base(rotor) + "/status.json?tenant=nope", basic(ops))
    assert code == 404 and json.loads(body)["error"] == "TENANT_NOT_FOUND"
    code, _, body = await get(base(rotor) + "/status.json?tenant=" + "x" * 5000, basic(ops))
    assert code == 400 and json.loads(body)["error"]


async def test_public_access_needs_no_credentials_and_shows_no_audit_events(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(http_listen="127.0.0.1:0", status_access="public")
    doc = await status_json(rotor, None)
    assert "audit" not in doc and doc["active_kid"]
    code, headers, body = await get(base(rotor) + "/status")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert "audit" not in embedded(body.decode())


async def test_the_page_embeds_the_model_and_loads_nothing_from_elsewhere(
    rotor: Rotor, ops: Credentials
) -> None:
    code, headers, body = await get(base(rotor) + "/status", basic(ops))
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    page = body.decode()
    doc = embedded(page)
    assert doc["active_kid"] and "audit" in doc
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page


async def test_the_event_stream_announces_a_key_change_at_once(rotor: Rotor, ops: Credentials) -> None:
    """/status/events says `hello`, then `key` with the new kid as soon as a rotation commits."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(base(rotor) + "/status/events", headers=basic(ops)) as resp,
    ):
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")

        async def next_event() -> tuple[str, str]:
            name, data = "", ""
            while True:
                line = (await asyncio.wait_for(resp.content.readline(), 10)).decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = line.removeprefix("data: ")
                elif not line and name:
                    return name, data

        assert (await next_event())[0] == "hello"
        pending = await rotate(rotor, ops)
        name, data = await next_event()
        assert name == "key"
        assert json.loads(data)["kid"] == pending.kid and json.loads(data)["type"] == "KEY_PUBLISHED"


async def test_an_open_event_stream_ends_when_the_server_stops(rotor: Rotor, ops: Credentials) -> None:
    """A browser following the page does not hold the server up: the stream ends, the stop completes."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(base(rotor) + "/status/events", headers=basic(ops)) as resp,
    ):
        assert (await asyncio.wait_for(resp.content.readline(), 10)).startswith(b"retry:")
        await asyncio.wait_for(rotor.stop(), 30)
        rest = await asyncio.wait_for(resp.content.read(), 10)  # EOF, not a hang
        assert b"event: key" not in rest
