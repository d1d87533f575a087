"""The status views see the whole fleet: two replicas on one PostgreSQL store, a watcher on each.

/status.json of either replica, `rotor status` and `rotor drill` list both watchers with their
replicas and their verifiers' outcomes; the drill follows the new key to a watcher connected to
the other replica.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from client.test_watcher import foreign_token
from rotor.app import RotorServer
from rotor.cli import main
from rotor.config import ClusterConfig, Config, LimitsConfig, TlsConfig
from rotor_client import KeySetWatcher, UnknownKey, Verifier

from .support import AUDIENCE, BASE_KEYS, BASE_TOKENS, ISSUER, Credentials, Rotor

POSTGRES = os.environ.get("ROTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REPORT_INTERVAL = 0.5


@pytest.fixture
async def replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Rotor, Rotor]]:
    """Two started servers, replica-a and replica-b, on a fresh PostgreSQL schema (dropped afterwards);
    absent PostgreSQL skips, except in CI."""
    try:
        admin = await asyncpg.connect(POSTGRES, timeout=5)
    except (OSError, asyncpg.PostgresError) as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {POSTGRES} is required in CI: {e}")
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {e}")
    monkeypatch.setenv("ROTOR_KEK", base64.b64encode(os.urandom(32)).decode())  # one KEK for both
    schema = f"rotor_status_{os.urandom(6).hex()}"
    base = Config(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        tls=TlsConfig(),
        issuer=ISSUER,
        keys=BASE_KEYS,
        tokens=BASE_TOKENS,
        database_url=f"{POSTGRES}?search_path={schema}",
        limits=LimitsConfig(report_interval=REPORT_INTERVAL),
    )
    started: list[Rotor] = []
    try:
        for name in ("replica-a", "replica-b"):
            config = replace(base, data_dir=str(tmp_path / name), cluster=ClusterConfig(replica=name))
            server = RotorServer(config)
            await server.start()
            started.append(Rotor(server))
        yield started[0], started[1]
    finally:
        for rotor in started:
            await rotor.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


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


def run_main(argv: list[str]) -> int:
    """`rotor ARGV...`'s exit status, also when argparse exits (its message is on stderr)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


async def rotor_cli(capsys: pytest.CaptureFixture[str], admin: Credentials, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(
        run_main, [*argv, "--client-id", admin.client_id, f"--client-secret={admin.secret}"]
    )
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out


def placement(doc: dict[str, Any]) -> dict[str, str]:
    return {w["name"]: w["replica"] for w in doc["watchers"]}


async def test_every_replica_shows_every_watcher_and_a_drill_follows_them_all(
    replicas: tuple[Rotor, Rotor], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = replicas
    ops = await a.add_client("ops", admin=True)
    svc = await a.add_client("svc-orders")
    expected = {"billing": "replica-a", "orders": "replica-b"}
    watchers = [
        await KeySetWatcher(a.address, name="billing", report_interval=REPORT_INTERVAL).start(),
        await KeySetWatcher(b.address, name="orders", report_interval=REPORT_INTERVAL).start(),
    ]
    try:
        async with asyncio.timeout(10):
            while not all(w.keyset is not None for w in watchers):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        token = (await a.issue(svc, audience=[AUDIENCE])).access_token
        billing, orders = (Verifier(w, issuer=ISSUER, audience=AUDIENCE) for w in watchers)
        billing.verify(token)
        billing.verify(token)
        orders.verify(token)
        with pytest.raises(UnknownKey):
            orders.verify(foreign_token("stranger"))
        outcomes = {"billing": {"OK": 2}, "orders": {"OK": 1, "UNKNOWN_KEY": 1}}

        def seen(doc: dict[str, Any]) -> dict[str, Any]:
            return {w["name"]: (w["replica"], w["verifications"]["outcomes"]) for w in doc["watchers"]}

        wanted = {name: (expected[name], outcomes[name]) for name in expected}
        for rotor in (a, b):  # within a few report intervals, each replica sees the other's watcher
            async with asyncio.timeout(30):
                while seen(await status_json(rotor, ops)) != wanted:  # noqa: ASYNC110
                    await asyncio.sleep(REPORT_INTERVAL / 2)

        code, out = await rotor_cli(capsys, ops, "status", "--target", b.address, "--json")
        printed = json.loads(out)
        assert code == 0 and seen(printed) == wanted
        (line,) = [w for w in printed["watchers"] if w["name"] == "orders"]
        assert line["verifications"]["other_failure_ratio"] == 0.5 and line["holds_active"] is True

        code, out = await rotor_cli(capsys, ops, "drill", "--target", a.address, "--timeout", "30s", "--json")
        report = json.loads(out)
        assert code == 0 and report["passed"] is True, out
        assert {w["name"]: w["replica"] for w in report["watchers"]} == expected
        for watcher in watchers:
            assert watcher.keyset is not None and report["kid"] in {k.kid for k in watcher.keyset.keys}
    finally:
        for watcher in watchers:
            await watcher.close()
