"""KeySetWatcher against a real Rotor: rotations, revocations, restarts, staleness, fallbacks.

Every test runs a real server in this process and talks to it over loopback gRPC.
Tokens are issued by the server and verified locally by a Verifier on the watcher.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
import rotor_client
from api.support import (
    AUDIENCE,
    BASE_KEYS,
    BASE_TOKENS,
    ISSUER,
    Credentials,
    Rotor,
    event_type,
    jwt_part,
    states,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from host import free_port
from rotor.app import RotorServer
from rotor.config import Config
from rotor.v1 import keys_pb2
from rotor_client import (
    KeyRevoked,
    KeySetStale,
    KeySetWatcher,
    TokenRevoked,
    UnknownKey,
    Verifier,
)

MakeRotor = Callable[..., Any]
FAST_ROTATION = {"rotation_period": 2, "publish_lead": 1, "max_cache_age": 1, "clock_skew": 1}


# -- helpers ------------------------------------------------------------------------


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll `condition` every 10 ms; fail the test if it is not true within `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what}")
        await asyncio.sleep(0.01)


def raises(verifier: Verifier, token: str, error: type[Exception]) -> bool:
    """Whether verifying `token` now raises `error` (any other outcome is False)."""
    try:
        verifier.verify(token)
    except error:
        return True
    except Exception:
        return False
    return False


def verifies(verifier: Verifier, token: str) -> bool:
    try:
        verifier.verify(token)
    except Exception:
        return False
    return True


def verifier_for(watcher: Any) -> Verifier:
    return Verifier(watcher, issuer=ISSUER, audience=AUDIENCE)


def foreign_token(kid: str = "not-a-rotor-key") -> str:
    """A well-formed access token for this service, signed by a key Rotor never had."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "svc",
        "aud": AUDIENCE,
        "exp": now + 60,
        "iat": now,
        "jti": "foreign",
        "client_id": "svc",
    }
    return jwt.encode(
        claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"}
    )


async def rotate(rotor: Rotor, admin: Credentials, *, immediate: bool) -> str:
    response = await rotor.admin.RotateKeys(
        rotor_client.RotateKeysRequest(immediate=immediate, reason="test"),
        metadata=admin.metadata,
        timeout=30,
    )
    return str(response.key.kid)


async def issue_and_revoke(rotor: Rotor, client: Credentials) -> str:
    token = (await rotor.issue(client)).access_token
    assert await rotor.revoke(client, token, reason="test")
    return token


def active_kid(keyset: keys_pb2.KeySet) -> str:
    (kid,) = [kid for kid, state in states(keyset.keys).items() if state == "ACTIVE"]
    return kid


def key_events(applied: list[keys_pb2.KeyEvent]) -> list[keys_pb2.KeyEvent]:
    """The applied events that come from the server's log (not SNAPSHOT, not HEARTBEAT)."""
    return [e for e in applied if event_type(e) not in ("SNAPSHOT", "HEARTBEAT")]


class RestartableRotor:
    """A Rotor on a fixed port and data dir, which a test stops and starts again."""

    def __init__(self, data_dir: Path, port: int, server_options: dict[str, Any]) -> None:
        self.config = Config(
            listen=f"127.0.0.1:{port}",
            data_dir=str(data_dir),
            issuer=ISSUER,
            keys=BASE_KEYS,
            tokens=BASE_TOKENS,
        )
        self.address = f"127.0.0.1:{port}"
        self._options = server_options
        self.handles: list[Rotor] = []

    @property
    def current(self) -> Rotor:
        return self.handles[-1]

    async def start(self) -> Rotor:
        server = RotorServer(self.config, **self._options)
        await server.start()
        self.handles.append(Rotor(server))
        assert self.current.address == self.address
        return self.current

    async def stop(self) -> None:
        await self.current.stop(grace=1.0)

    async def close(self) -> None:
        for rotor in self.handles:
            await rotor.close()


@pytest.fixture
async def restartable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., RestartableRotor]]:
    """Factory: restartable(**RotorServer options) -> a RestartableRotor, not yet started."""
    monkeypatch.delenv("ROTOR_KEK", raising=False)
    made: list[RestartableRotor] = []

    def make(**server_options: Any) -> RestartableRotor:
        rotor = RestartableRotor(tmp_path / f"fixed{len(made)}", free_port(), server_options)
        made.append(rotor)
        return rotor

    yield make
    for rotor in made:
        await rotor.close()


class FetchCounter:
    """Counts the watcher's GetKeySet fetches (wraps its `_fetch`)."""

    def __init__(self, watcher: KeySetWatcher, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = 0
        self.finished = 0
        fetch = watcher._fetch

        async def counted() -> bool:
            self.started += 1
            try:
                return await fetch()
            finally:
                self.finished += 1

        monkeypatch.setattr(watcher, "_fetch", counted)


# -- continuous verification across rotations ----------------------------------------


async def test_tokens_verify_continuously_across_twenty_scheduled_rotations(make_rotor: MakeRotor) -> None:
    """Issue-and-verify without pause across >= 20 scheduled rotations: no token is ever refused."""
    rotor = await make_rotor(keys=FAST_ROTATION)
    svc = await rotor.add_client("svc")
    activations: list[str] = []

    def on_change(event: keys_pb2.KeyEvent) -> None:
        if event_type(event) == "KEY_ACTIVATED":
            activations.append(event.key.kid)

    failures: list[str] = []
    signers: set[str] = set()
    issued: list[str] = []
    async with KeySetWatcher(rotor.address, on_change=on_change) as watcher:
        verifier = verifier_for(watcher)
        deadline = time.monotonic() + 120
        while len(activations) < 20:
            assert time.monotonic() < deadline, f"only {len(activations)} rotations in 120 s"
            response = await rotor.issue(svc)
            token = response.access_token
            signers.add(response.key_id)
            issued.append(token)
            # the newest token at once, and a few older ones that must still verify
            for checked in (token, *issued[-2:-40:-13]):
                try:
                    verifier.verify(checked)
                except Exception as e:
                    failures.append(f"{jwt_part(checked, 0)['kid']}: {type(e).__name__}: {e}")
            await asyncio.sleep(0.02)  # pacing, so the rotator and the stream share the loop

    assert failures == [], f"{len(failures)} of {len(issued)} verifications failed: {failures[:5]}"
    assert len(signers) >= 20, f"only {len(signers)} keys signed tokens"
    assert len(set(activations)) == len(activations)


# -- revocation ---------------------------------------------------------------------


async def test_a_token_revoked_on_the_server_is_rejected_within_a_second(
    rotor: Rotor, svc: Credentials
) -> None:
    """After Revoke returns, the local verifier refuses the token in under a second."""
    async with KeySetWatcher(rotor.address) as watcher:
        verifier = verifier_for(watcher)
        token = (await rotor.issue(svc)).access_token
        assert verifier.verify(token).client_id == svc.client_id

        assert await rotor.revoke(svc, token, reason="leaked")
        revoked_at = time.monotonic()
        while not raises(verifier, token, TokenRevoked):
            assert time.monotonic() - revoked_at < 1.0, "the revoked token still verifies after 1 s"
            await asyncio.sleep(0.01)
        assert time.monotonic() - revoked_at < 1.0


async def test_tokens_signed_by_a_revoked_key_raise_key_revoked(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """RevokeKey of the active key: its tokens raise KeyRevoked; its replacement's tokens verify."""
    async with KeySetWatcher(rotor.address) as watcher:
        verifier = verifier_for(watcher)
        issued = await rotor.issue(svc)
        old = issued.key_id
        assert old == active_kid(watcher.keyset)
        verifier.verify(issued.access_token)

        revoked = await rotor.admin.RevokeKey(
            rotor_client.RevokeKeyRequest(kid=old, reason="leaked"), metadata=ops.metadata, timeout=30
        )
        assert not revoked.pending_approval
        await until(
            lambda: raises(verifier, issued.access_token, KeyRevoked), "the old key's token is refused"
        )
        with pytest.raises(KeyRevoked, match=old):
            verifier.verify(issued.access_token)

        newest = (await rotor.key_set()).sequence
        await until(lambda: watcher.sequence >= newest, "the watcher caught up")
        replacement = await rotor.issue(svc)
        assert replacement.key_id != old
        assert verifier.verify(replacement.access_token).client_id == svc.client_id


# -- resume by sequence -------------------------------------------------------------


async def test_a_server_restart_mid_stream_loses_no_event(
    restartable: Callable[..., RestartableRotor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop and restart Rotor: the watcher resumes after its sequence and applies every event once, in order."""
    server = restartable()
    rotor = await server.start()
    svc = await rotor.add_client("svc")
    ops = await rotor.add_client("ops", admin=True)
    applied: list[keys_pb2.KeyEvent] = []

    async with KeySetWatcher(server.address, on_change=applied.append) as watcher:
        requests: list[rotor_client.WatchKeyRotationsRequest] = []
        assert watcher._stub is not None
        open_stream = watcher._stub.WatchKeyRotations

        def recording(request: rotor_client.WatchKeyRotationsRequest, **kwargs: Any) -> Any:
            requests.append(request)
            return open_stream(request, **kwargs)

        monkeypatch.setattr(watcher._stub, "WatchKeyRotations", recording)

        await issue_and_revoke(rotor, svc)  # events while connected, before the restart
        await rotate(rotor, ops, immediate=True)
        newest = (await rotor.key_set()).sequence
        await until(lambda: watcher.sequence == newest, "the watcher saw the events before the restart")
        before = watcher.sequence

        await server.stop()
        await until(lambda: not watcher.connected, "connected goes False while the server is down")

        rotor = await server.start()
        for _ in range(3):  # while the watcher is still backing off
            await rotate(rotor, ops, immediate=True)
        await issue_and_revoke(rotor, svc)
        await rotate(rotor, ops, immediate=False)
        newest = (await rotor.key_set()).sequence
        await until(lambda: watcher.sequence == newest, "the watcher caught up after the restart", within=20)
        assert watcher.connected

        log = await rotor.server.store.events_after(0, "")

    snapshots = [e for e in applied if event_type(e) == "SNAPSHOT"]
    assert snapshots == [applied[0]], "a second SNAPSHOT: the watcher did not resume by sequence"
    assert not any(event_type(e) == "HEARTBEAT" for e in applied)
    sequences = [e.sequence for e in key_events(applied)]
    expected = [e.sequence for e in log if e.sequence > snapshots[0].sequence]
    assert sequences == expected, f"applied {sequences}, the server's log has {expected}"
    assert sequences == sorted(set(sequences))
    assert [event_type(e) for e in key_events(applied)] == [
        e.type for e in log if e.sequence > snapshots[0].sequence
    ]
    assert requests, "the watcher never reconnected"
    assert {r.after_sequence for r in requests} == {before}, "a reconnect did not resume after its sequence"


async def test_sequence_is_the_last_applied_event_and_the_properties_follow_the_stream(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """`sequence`, `keyset`, `connected` and `last_update` track what the watcher applied."""
    applied: list[keys_pb2.KeyEvent] = []
    watcher = KeySetWatcher(rotor.address, on_change=applied.append)
    assert (watcher.keyset, watcher.sequence, watcher.connected, watcher.last_update) == (
        None,
        0,
        False,
        None,
    )

    started_at = time.time()
    await watcher.start()
    try:
        key_set = await rotor.key_set()
        assert watcher.connected
        assert watcher.sequence == applied[-1].sequence == key_set.sequence
        assert watcher.keyset is not None and watcher.keyset.sequence == key_set.sequence
        assert states(watcher.keyset.keys) == states(key_set.keys)
        assert watcher.last_update is not None and started_at <= watcher.last_update <= time.time()
        first_update, first_keyset = watcher.last_update, watcher.keyset

        await issue_and_revoke(rotor, svc)
        await until(lambda: watcher.sequence > key_set.sequence, "the revocation was applied")
        assert event_type(applied[-1]) == "TOKEN_REVOKED"
        assert watcher.sequence == applied[-1].sequence
        assert watcher.keyset is first_keyset, "a token revocation carries no key set"
        assert watcher.last_update > first_update

        new = await rotate(rotor, ops, immediate=True)
        newest = (await rotor.key_set()).sequence
        await until(lambda: watcher.sequence == newest, "the rotation was applied")
        assert watcher.sequence == applied[-1].sequence == watcher.keyset.sequence
        assert active_kid(watcher.keyset) == new
    finally:
        await watcher.close()
    assert not watcher.connected
    assert watcher.keyset is not None, "the last key set stays after close"


# -- fallbacks ----------------------------------------------------------------------


async def test_a_refused_stream_falls_back_to_get_key_set(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """A stream Rotor refuses (bad credentials): the watcher starts from GetKeySet and keeps polling it."""
    refused = rotor_client.basic_auth("nobody", "wrong-secret")
    async with KeySetWatcher(rotor.address, metadata=refused) as watcher:
        assert watcher.keyset is not None and not watcher.connected
        verifier = verifier_for(watcher)
        verifier.verify((await rotor.issue(svc)).access_token)

        new = await rotate(rotor, ops, immediate=True)
        await until(lambda: new in states(watcher.keyset.keys), "GetKeySet brought the new key")
        issued = await rotor.issue(svc)
        assert issued.key_id == new
        assert verifier.verify(issued.access_token).client_id == svc.client_id


async def test_poll_only_picks_up_a_rotation_within_max_cache_age(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """poll_only=True polls GetKeySet every max_cache_age and sees a rotation about that soon."""
    max_cache_age = rotor.config.keys.max_cache_age
    async with KeySetWatcher(rotor.address, poll_only=True) as watcher:
        assert watcher.connected, "poll_only is connected after a successful poll"
        assert watcher.keyset is not None
        new = await rotate(rotor, ops, immediate=True)
        await until(
            lambda: new in states(watcher.keyset.keys),
            "a poll brought the new key",
            within=max_cache_age + 2.0,
        )
        assert watcher.connected
        issued = await rotor.issue(svc)
        assert issued.key_id == new
        assert verifier_for(watcher).verify(issued.access_token).client_id == svc.client_id


async def test_an_unknown_kid_while_connected_is_invalid_and_fetches_nothing(
    rotor: Rotor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the stream is up, an unknown kid raises UnknownKey and triggers no GetKeySet."""
    async with KeySetWatcher(rotor.address) as watcher:
        fetches = FetchCounter(watcher, monkeypatch)
        verifier = verifier_for(watcher)
        for _ in range(10):
            with pytest.raises(UnknownKey, match="not-a-rotor-key") as caught:
                verifier.verify(foreign_token())
            assert "re-fetch" not in str(caught.value)
        assert not watcher._fetch_lock.locked()
        await rotor.key_set()  # a turn of the loop, where a scheduled fetch would start
        assert fetches.started == 0


async def test_an_unknown_kid_while_disconnected_causes_one_fetch_for_many_concurrent_verifies(
    rotor: Rotor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 verifies of an unknown kid from 8 threads while the stream is down: one GetKeySet, then a cooldown."""
    async with KeySetWatcher(rotor.address) as watcher:
        fetches = FetchCounter(watcher, monkeypatch)
        # The stream is down as far as the watcher knows. Its loop stays parked on the open
        # stream, so it fetches nothing by itself: every fetch counted is an unknown-kid one.
        monkeypatch.setattr(watcher, "_connected", False)
        verifier = verifier_for(watcher)
        token = foreign_token()
        barrier = threading.Barrier(8)

        def verify_many(count: int) -> list[Exception]:
            barrier.wait()
            errors: list[Exception] = []
            for _ in range(count):
                try:
                    verifier.verify(token)
                except Exception as e:
                    errors.append(e)
            return errors

        def all_threads() -> list[Exception]:
            with ThreadPoolExecutor(8) as pool:
                return [e for errors in pool.map(verify_many, [13] * 4 + [12] * 4) for e in errors]

        errors = await asyncio.to_thread(all_threads)
        assert len(errors) == 100 and all(isinstance(e, UnknownKey) for e in errors), {
            type(e).__name__ for e in errors
        }
        assert sum("re-fetching the key set" in str(e) for e in errors) == 1
        await until(
            lambda: fetches.finished == 1 and not watcher._fetch_lock.locked(), "the one fetch finished"
        )
        assert fetches.started == 1

        for _ in range(20):  # within the cooldown: no more fetches
            with pytest.raises(UnknownKey, match="moments ago"):
                verifier.verify(token)
        await rotor.key_set()
        assert fetches.started == 1


# -- staleness and start-up -----------------------------------------------------------


async def test_verify_raises_key_set_stale_past_max_staleness_and_recovers_on_reconnect(
    restartable: Callable[..., RestartableRotor],
) -> None:
    """Server gone: KeySetStale after max_staleness; server back: the watcher reconnects and verify works."""
    server = restartable(heartbeat_interval=0.2)  # contact well within max_staleness while connected
    rotor = await server.start()
    svc = await rotor.add_client("svc")
    token = (await rotor.issue(svc)).access_token

    async with KeySetWatcher(server.address, max_staleness=1.0) as watcher:
        verifier = verifier_for(watcher)
        await until(
            lambda: watcher.last_update is not None and time.time() - watcher.last_update < 0.5, "a heartbeat"
        )
        assert verifier.verify(token).client_id == svc.client_id

        await server.stop()
        await until(lambda: raises(verifier, token, KeySetStale), "verify raises KeySetStale")
        with pytest.raises(KeySetStale, match="max_staleness"):
            verifier.verify(token)
        assert not watcher.connected

        await server.start()
        await until(lambda: verifies(verifier, token), "verify works after the restart", within=20)
        await until(lambda: watcher.connected, "the watcher reconnected")


async def test_a_refused_connection_is_neither_contact_nor_connected(
    restartable: Callable[..., RestartableRotor],
) -> None:
    """While nothing listens, reconnect attempts leave `connected` False and `last_update` unchanged."""
    server = restartable()
    await server.start()
    async with KeySetWatcher(server.address) as watcher:
        await server.stop()
        await until(lambda: not watcher.connected, "the stream ended")
        last_contact = watcher.last_update
        seen: set[tuple[bool, float | None]] = set()
        window_end = time.monotonic() + 1.5  # several reconnect attempts
        while time.monotonic() < window_end:
            seen.add((watcher.connected, watcher.last_update))
            await asyncio.sleep(0.005)
        assert seen == {(False, last_contact)}, (
            f"a refused connection counted as contact: last_update moved {len(seen) - 1} times"
        )


async def test_start_raises_key_set_stale_within_start_timeout_when_nothing_listens() -> None:
    """start() against a port where nothing listens: KeySetStale naming the target, within start_timeout."""
    target = f"127.0.0.1:{free_port()}"
    watcher = KeySetWatcher(target, start_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(KeySetStale) as caught:
        await watcher.start()
    elapsed = time.monotonic() - began
    assert target in str(caught.value)
    assert elapsed < 1.0 + 2.0, f"start() took {elapsed:.1f} s with start_timeout=1.0"
    assert not watcher.connected and watcher.keyset is None


async def test_start_in_thread_gives_a_started_watcher_that_close_stops(
    rotor: Rotor, svc: Credentials
) -> None:
    """start_in_thread from synchronous code: the key set is there, a Verifier works, close() ends the thread."""
    token = (await rotor.issue(svc)).access_token

    def threaded_program() -> tuple[bool, str, bool, list[str]]:
        watcher = KeySetWatcher.start_in_thread(rotor.address)
        try:
            has_keyset = watcher.keyset is not None and watcher.connected
            client_id = Verifier(watcher, issuer=ISSUER, audience=AUDIENCE).verify(token).client_id
        finally:
            watcher.close()
        threads = [t.name for t in threading.enumerate() if t is watcher._thread]
        return has_keyset, client_id, watcher.connected, threads

    has_keyset, client_id, connected_after, threads_after = await asyncio.to_thread(threaded_program)
    assert has_keyset
    assert client_id == svc.client_id
    assert not connected_after
    assert threads_after == [], "the watcher's thread outlived close()"


# -- on_change -----------------------------------------------------------------------


async def drive_events(rotor: Rotor, svc: Credentials, ops: Credentials) -> None:
    """Three key events (an immediate rotation) and a token revocation."""
    await rotate(rotor, ops, immediate=True)
    await issue_and_revoke(rotor, svc)


async def test_on_change_sees_each_applied_event_once_and_never_a_heartbeat(make_rotor: MakeRotor) -> None:
    """on_change gets the SNAPSHOT first, then each logged event once, and no heartbeat."""
    rotor = await make_rotor(heartbeat_interval=0.2)
    svc = await rotor.add_client("svc")
    ops = await rotor.add_client("ops", admin=True)
    applied: list[keys_pb2.KeyEvent] = []
    async with KeySetWatcher(rotor.address, on_change=applied.append) as watcher:
        await drive_events(rotor, svc, ops)
        newest = (await rotor.key_set()).sequence
        await until(lambda: watcher.sequence == newest, "the events were applied")
        for _ in range(2):  # heartbeats arrive: each one refreshes last_update
            seen = watcher.last_update
            await until(lambda seen=seen: watcher.last_update != seen, "a heartbeat")
        log = await rotor.server.store.events_after(applied[0].sequence, "")

    assert event_type(applied[0]) == "SNAPSHOT"
    assert [event_type(e) for e in applied[1:]] == [
        "KEY_PUBLISHED",
        "KEY_ACTIVATED",
        "KEY_RETIRED",
        "TOKEN_REVOKED",
    ]
    assert [e.sequence for e in applied[1:]] == [e.sequence for e in log]


async def test_an_on_change_that_raises_does_not_stop_the_watcher(
    rotor: Rotor, svc: Credentials, ops: Credentials, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_change raising on every event: the watcher still applies each one."""
    calls: list[int] = []

    def failing(event: keys_pb2.KeyEvent) -> None:
        calls.append(event.sequence)
        raise RuntimeError("a broken callback")

    async with KeySetWatcher(rotor.address, on_change=failing) as watcher:
        verifier = verifier_for(watcher)
        await drive_events(rotor, svc, ops)
        token = await issue_and_revoke(rotor, svc)
        newest = (await rotor.key_set()).sequence
        await until(lambda: watcher.sequence == newest, "the events were applied")
        assert watcher.connected
        with pytest.raises(TokenRevoked):
            verifier.verify(token)
    assert len(calls) == 1 + 5 and calls == sorted(calls)
    assert "on_change failed" in caplog.text


async def test_an_async_on_change_is_awaited(rotor: Rotor, svc: Credentials, ops: Credentials) -> None:
    """A coroutine on_change runs to completion for every applied event."""
    completed: list[str] = []

    async def on_change(event: keys_pb2.KeyEvent) -> None:
        await asyncio.sleep(0)
        completed.append(event_type(event))

    async with KeySetWatcher(rotor.address, on_change=on_change) as watcher:
        await drive_events(rotor, svc, ops)
        newest = (await rotor.key_set()).sequence
        await until(lambda: watcher.sequence == newest, "the events were applied")
        await until(lambda: len(completed) == 5, "the callbacks completed")
    assert completed == ["SNAPSHOT", "KEY_PUBLISHED", "KEY_ACTIVATED", "KEY_RETIRED", "TOKEN_REVOKED"]


# -- publish before sign ------------------------------------------------------------


async def test_a_published_key_is_known_to_the_watcher_before_it_signs(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """After RotateKeys the watcher holds the PENDING key before any token is signed by it."""
    applied: list[keys_pb2.KeyEvent] = []
    async with KeySetWatcher(rotor.address, on_change=applied.append) as watcher:
        verifier = verifier_for(watcher)
        old = active_kid(watcher.keyset)
        new = await rotate(rotor, ops, immediate=False)
        await until(lambda: new in watcher.key_cache.keys, "the watcher received the published key")
        assert states(watcher.keyset.keys)[new] == "PENDING"
        assert (await rotor.issue(svc)).key_id == old, "the published key signs already"

        deadline = time.monotonic() + 10
        while True:
            issued = await rotor.issue(svc)
            verifier.verify(issued.access_token)  # every token, before and at the switch
            if issued.key_id == new:
                break
            assert time.monotonic() < deadline, "the published key never started to sign"
            await asyncio.sleep(0.02)

    kinds = [(event_type(e), e.key.kid) for e in applied]
    assert kinds.index(("KEY_PUBLISHED", new)) < kinds.index(("KEY_ACTIVATED", new))


async def test_a_named_watcher_is_listed_in_the_rotation_status(rotor: Any, ops: Any) -> None:
    """KeySetWatcher(name=...) sends x-rotor-watcher: Rotor lists it with the sequence it was sent."""
    from rotor.v1 import key_admin_pb2

    async with KeySetWatcher(rotor.address, name="billing-api") as watcher:
        status = await rotor.admin.GetRotationStatus(
            key_admin_pb2.GetRotationStatusRequest(), metadata=ops.metadata, timeout=10
        )
        (listed,) = [w for w in status.watchers if w.name == "billing-api"]
        assert listed.sent_sequence == watcher.sequence == status.latest_sequence
