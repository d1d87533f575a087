"""The store is the one truth: what another process or store handle writes reaches the server."""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import rotor_client
from rotor.clock import SystemClock
from rotor.core.clients import register_client
from rotor.store.sqlite import SqliteStore

from .support import Credentials, Rotor, assert_error, event_type, failure, jwt_part, states

# Another process on the same store: its own connection, key manager and key ring.
ROTATE_ELSEWHERE = """
import asyncio, json, sys
from pathlib import Path

from rotor.clock import SystemClock
from rotor.core.crypto import AesGcmSealer, load_kek
from rotor.core.keys import KeyManager, KeyRing
from rotor.core.keystore import KeyStores, SealedKeyStore
from rotor.core.lifecycle import KeyPolicy
from rotor.store.sqlite import SqliteStore


async def main(db, kek_path, policy):
    store = await SqliteStore.open(db)
    try:
        kek, _ = load_kek(None, Path(kek_path), create=False)
        stores = KeyStores(SealedKeyStore(AesGcmSealer(kek)))
        keys = KeyManager(store, stores, KeyRing(store, stores), SystemClock(), KeyPolicy(**policy))
        key = await keys.rotate(tenant="", immediate=True, reason="other process")
        print(key.kid)
    finally:
        await store.close()


asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
"""


async def test_a_rotation_by_another_process_reaches_watchers_and_the_signer(
    rotor: Rotor, svc: Credentials
) -> None:
    watcher = await rotor.watch()
    snapshot = await watcher.next()
    old = next(kid for kid, state in states(snapshot.keyset.keys).items() if state == "ACTIVE")
    assert (await rotor.issue(svc)).key_id == old

    keys, tokens = rotor.config.keys, rotor.config.tokens
    policy = {
        "rotation_period": keys.rotation_period,
        "publish_lead": keys.publish_lead,
        "max_access_ttl": tokens.max_access_ttl,
        "clock_skew": keys.clock_skew,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ROTATE_ELSEWHERE,
        str(rotor.config.sqlite_path),
        str(rotor.config.kek_path),
        json.dumps(policy),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    kid = out.decode().strip()
    assert kid and kid != old

    published = await watcher.next(within=5)
    activated = await watcher.next(within=5)
    retired = await watcher.next(within=5)
    assert [(event_type(e), e.key.kid) for e in (published, activated, retired)] == [
        ("KEY_PUBLISHED", kid),
        ("KEY_ACTIVATED", kid),
        ("KEY_RETIRED", old),
    ]
    assert states(activated.keyset.keys) == {old: "RETIRED", kid: "ACTIVE"}

    issued = await rotor.issue(svc)
    assert issued.key_id == kid, "the server kept signing with the key another process retired"
    assert jwt_part(issued.access_token, 0)["kid"] == kid
    assert (await rotor.key_set()).sequence == retired.sequence


async def test_a_client_registered_on_another_store_handle_can_issue_at_once(rotor: Rotor) -> None:
    warm = await rotor.add_client("warm")
    assert (await rotor.issue(warm)).access_token  # the server has authenticated someone already

    early = await failure(rotor.issue(Credentials("late-joiner", "guessed")))
    assert_error(early, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")

    other = await SqliteStore.open(rotor.config.sqlite_path)
    try:
        registration = await register_client(other, SystemClock(), "late-joiner", audiences=("api",))
    finally:
        await other.close()

    late = Credentials("late-joiner", registration.secret)
    issued = await rotor.tokens.Issue(rotor_client.IssueRequest(), metadata=late.metadata, timeout=30)
    assert jwt_part(issued.access_token, 1)["client_id"] == "late-joiner"
