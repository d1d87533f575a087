"""The status page in a real browser: headless Debian chromium, driven over the DevTools protocol.

It loads /status (answering the Basic prompt with an admin's credentials), finds the key timeline
and the watchers drawn, then a key is rotated and the page shows it without being reloaded.
Set ROTOR_STATUS_SCREENSHOT=PATH to keep a screenshot of the page (docs/status-page.png).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import rotor_client
from rotor.v1 import keys_pb2, token_service_pb2

from .browser import Browser, chromium_or_skip
from .conftest import MakeRotor
from .support import Rotor

WATCHER_HEADER = "x-rotor-watcher"


@pytest.fixture
async def browser(tmp_path: pathlib.Path) -> AsyncIterator[Browser]:
    chromium_or_skip()
    started = await Browser.start(tmp_path / "profile")
    try:
        yield started
    finally:
        await started.close()


async def named_watcher(rotor: Rotor, name: str) -> Any:
    call = rotor.tokens.WatchKeyRotations(
        rotor_client.WatchKeyRotationsRequest(), metadata=((WATCHER_HEADER, name),)
    )
    await asyncio.wait_for(call.read(), 10)
    return call


def js(value: str) -> str:
    """A string literal for a page expression."""
    return json.dumps(value)


async def test_the_page_draws_keys_and_watchers_and_follows_a_rotation_without_a_reload(
    make_rotor: MakeRotor, browser: Browser
) -> None:
    rotor = await make_rotor(http_listen="127.0.0.1:0", keys={"publish_lead": 600, "max_cache_age": 300})
    ops = await rotor.add_client("ops", admin=True)
    first = (
        await rotor.admin.ListKeys(rotor_client.ListKeysRequest(), metadata=ops.metadata, timeout=10)
    ).keys
    replaced = await rotor.admin.RotateKeys(  # the first key retires: three states to draw in the end
        rotor_client.RotateKeysRequest(reason="compromise drill", immediate=True),
        metadata=ops.metadata,
        timeout=30,
    )
    active = replaced.key.kid
    watchers = [await named_watcher(rotor, name) for name in ("billing", "orders", "search")]
    keyset = await rotor.key_set()
    for name, counts in (
        ("billing", [("OK", active, 1840), ("TOKEN_EXPIRED", active, 12)]),
        ("orders", [("OK", active, 960), ("TOKEN_EXPIRED", active, 3)]),
        (
            "search",
            [("OK", active, 410), ("UNKNOWN_KEY", first[0].kid, 37)],
        ),  # missing a key: a broken rollout
    ):
        await rotor.tokens.ReportVerifications(
            token_service_pb2.ReportVerificationsRequest(
                watcher=name,
                sequence=keyset.sequence,
                kids=[k.kid for k in keyset.keys],
                counts=[keys_pb2.VerificationCount(outcome=o, kid=k, count=n) for o, k, n in counts],
            ),
            timeout=10,
        )
    url = f"http://127.0.0.1:{rotor.server.http_port}/status"

    await browser.goto(url, credentials=(ops.client_id, ops.secret))
    assert browser.auth_challenges >= 1, "the page did not ask for credentials"

    # the timeline: one row per key, with its short kid, and the marks for now and the next rotation
    rows = await browser.until(
        "Array.from(document.querySelectorAll('#timeline .key-row'))"
        ".map(r => [r.dataset.kid, r.dataset.state, r.textContent])"
    )
    assert [(kid, state) for kid, state, _ in rows] == [(first[0].kid, "retired"), (active, "active")]
    assert active[:8] in rows[1][2]
    assert await browser.evaluate("!!document.querySelector('#timeline #now-mark line')")
    assert await browser.evaluate("!!document.querySelector('#timeline #next-mark line')")
    assert await browser.evaluate("document.querySelectorAll('#timeline .key-row rect.seg').length") >= 1
    # the watchers: the named one, holding the active key
    holds = await browser.until(
        "(r => r && r.querySelector('.holds-active').textContent)"
        "(document.querySelector('#watchers tr[data-watcher=\"billing\"]'))"
    )
    assert "holds" in holds
    # their verifications over the last 15 minutes: search's unknown keys stand out
    assert await browser.until(
        "(r => r && r.classList.contains('unknown-key') && r.textContent)"
        "(document.querySelector('#watchers tr[data-watcher=\"search\"]'))"
    )
    failures = await browser.evaluate(
        "document.querySelector('#watchers tr[data-watcher=\"search\"] .failures').textContent"
    )
    assert failures == "8.3% (8.3% not expiry)", failures
    # the audit events (an admin sees them)
    assert await browser.until("document.querySelectorAll('#audit tbody tr').length")
    assert await browser.until("document.getElementById('live').classList.contains('on')")

    await browser.evaluate("window.notReloaded = true")
    rotated = await rotor.admin.RotateKeys(
        rotor_client.RotateKeysRequest(reason="browser test"), metadata=ops.metadata, timeout=30
    )
    pending = rotated.key.kid
    state = await browser.until(
        "(r => r && r.dataset.state)(Array.from(document.querySelectorAll('#timeline .key-row'))"
        f".find(r => r.dataset.kid === {js(pending)}))"
    )
    assert state == "pending"
    assert await browser.evaluate("window.notReloaded === true"), "the page was reloaded"
    assert await browser.evaluate("document.getElementById('pending-kid').textContent") == pending[:8]
    for watcher in watchers:  # each has KEY_PUBLISHED: the page says so
        await asyncio.wait_for(watcher.read(), 10)
    assert "holds" in await browser.until(
        "(r => r && r.querySelector('.holds-pending').textContent.includes('holds')"
        " && r.querySelector('.holds-pending').textContent)"
        "(document.querySelector('#watchers tr[data-watcher=\"billing\"]'))"
    )

    keep = os.environ.get("ROTOR_STATUS_SCREENSHOT")
    shot = pathlib.Path(keep) if keep else pathlib.Path(rotor.config.data_dir) / "status.png"
    await browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for watcher in watchers:
        watcher.cancel()


async def test_public_access_shows_the_page_with_no_prompt_and_no_audit(
    make_rotor: MakeRotor, browser: Browser
) -> None:
    rotor = await make_rotor(http_listen="127.0.0.1:0", status_access="public")
    await browser.goto(f"http://127.0.0.1:{rotor.server.http_port}/status")
    assert await browser.until("document.querySelectorAll('#timeline .key-row').length") == 1
    assert browser.auth_challenges == 0
    assert await browser.evaluate("document.getElementById('audit-section').hidden") is True
