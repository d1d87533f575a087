"""kill -9 at random moments under Issue, Refresh, Revoke and RotateKeys loses nothing the server
confirmed and leaves the store consistent.

After every restart: exactly one key is active; every rotation and every revocation (of an access
token or of a refresh grant) that returned OK is still there; every refresh token confirmed used is
refused; the event log has no gap; a watcher that followed across every restart, resuming with
after_sequence=last seen, got every event exactly once and in order; and `rotor audit verify`
passes. On SQLite, and on PostgreSQL when it is there. ROTOR_CRASH_KILLS sets the number of kills
(20 by default).
"""

from __future__ import annotations

import base64
import json
import os
import random
import threading
import time
from collections import Counter
from typing import Any

import grpc
import pytest
import rotor_client
from rotor.v1 import keys_pb2

from .conftest import MakeServer
from .support import FAST_RECONNECT, RotorProcess, basic, error_info
from .test_replicas import database_url  # noqa: F401  (the fixture: a fresh PostgreSQL schema)

KILLS = int(os.environ.get("ROTOR_CRASH_KILLS", "20"))
TOLERATED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
ROTATE_EVERY = 0.4  # seconds between the admin's RotateKeys calls
REVOKE_GRANT_EVERY = 5  # the token load revokes its refresh grant every this many refreshes

pytestmark = pytest.mark.long


def jti_of(token: str) -> str:
    claims = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["jti"])


def reason_of(err: grpc.RpcError) -> str:
    info = error_info(err)
    return info.reason if info is not None else ""


class Confirmed:
    """What the server answered OK to: nothing of it may be lost in a crash."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.revoked_jtis: list[str] = []  # Revoke of an access token answered revoked=true
        self.revoked_grants: list[str] = []  # Revoke of a refresh token answered revoked=true
        self.used: list[str] = []  # refresh tokens whose Refresh answered OK
        self.rotated: list[str] = []  # kids RotateKeys answered with

    def add(self, what: list[str], item: str) -> None:
        with self.lock:
            what.append(item)

    def copy(self) -> Confirmed:
        with self.lock:
            copy = Confirmed()
            copy.revoked_jtis, copy.revoked_grants = list(self.revoked_jtis), list(self.revoked_grants)
            copy.used, copy.rotated = list(self.used), list(self.rotated)
        return copy


class Worker(threading.Thread):
    """Calls `step` in a loop; UNAVAILABLE and deadlines are the crash's, anything else is recorded."""

    def __init__(self, address: str, confirmed: Confirmed) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(address, options=FAST_RECONNECT)
        self.confirmed = confirmed
        self.halt = threading.Event()
        self.unexpected: Counter[str] = Counter()
        self.steps = 0

    def step(self) -> None:
        raise NotImplementedError

    def failed(self, err: grpc.RpcError) -> None:
        self.unexpected[f"{err.code().name}: {err.details()}"] += 1

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.step()
                self.steps += 1
            except grpc.RpcError as err:
                if err.code() not in TOLERATED:
                    self.failed(err)
                time.sleep(0.02)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=15)
        self.channel.close()


class TokenLoad(Worker):
    """Issue, Refresh and Revoke of each new access token; now and then Revoke of the grant."""

    def __init__(self, address: str, confirmed: Confirmed, client: dict[str, str]) -> None:
        super().__init__(address, confirmed)
        self._tokens = rotor_client.TokenServiceStub(self.channel)
        self._auth = basic(client)
        self._refresh = ""

    def step(self) -> None:
        if not self._refresh:
            request = rotor_client.IssueRequest()
            self._refresh = self._tokens.Issue(request, metadata=self._auth, timeout=5).refresh_token
        used = self._refresh
        renewed = self._tokens.Refresh(
            rotor_client.RefreshRequest(refresh_token=used), metadata=self._auth, timeout=5
        )
        self.confirmed.add(self.confirmed.used, used)
        self._refresh = renewed.refresh_token
        revoke = rotor_client.RevokeRequest(token=renewed.access_token, reason="load")
        if self._tokens.Revoke(revoke, metadata=self._auth, timeout=5).revoked:
            self.confirmed.add(self.confirmed.revoked_jtis, jti_of(renewed.access_token))
        if self.steps % REVOKE_GRANT_EVERY == REVOKE_GRANT_EVERY - 1:
            grant = rotor_client.RevokeRequest(token=self._refresh, reason="load")
            if self._tokens.Revoke(grant, metadata=self._auth, timeout=5).revoked:
                self.confirmed.add(self.confirmed.revoked_grants, self._refresh)
            self._refresh = ""
        time.sleep(0.005)

    def failed(self, err: grpc.RpcError) -> None:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            # a Refresh committed just before a kill and retried, or the checks replaying a used
            # token: the grant is revoked either way; start a new one
            self._refresh = ""
        else:
            super().failed(err)


class Rotations(Worker):
    """An admin rotating keys every ROTATE_EVERY seconds, immediate and scheduled in turn."""

    def __init__(self, address: str, confirmed: Confirmed, admin: dict[str, str]) -> None:
        super().__init__(address, confirmed)
        self._keys = rotor_client.KeyAdminStub(self.channel)
        self._auth = basic(admin)

    def step(self) -> None:
        request = rotor_client.RotateKeysRequest(immediate=self.steps % 2 == 0, reason="crash drill")
        kid = self._keys.RotateKeys(request, metadata=self._auth, timeout=10).key.kid
        self.confirmed.add(self.confirmed.rotated, kid)
        time.sleep(ROTATE_EVERY)


class Follower(threading.Thread):
    """One watcher kept following across restarts: it resumes with after_sequence=last seen and
    records any event that is not exactly the next one."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self._channel = grpc.insecure_channel(address, options=FAST_RECONNECT)
        self._tokens = rotor_client.TokenServiceStub(self._channel)
        self._halt = threading.Event()
        self._call: Any = None
        self.lock = threading.Lock()
        self.last = 0
        self.resumed = 0
        self.problems: list[str] = []

    def run(self) -> None:
        while not self._halt.is_set():
            request = rotor_client.WatchKeyRotationsRequest(after_sequence=self.last)
            self._call = self._tokens.WatchKeyRotations(request)
            try:
                for event in self._call:
                    self._receive(event)
            except grpc.RpcError as err:
                if not self._halt.is_set() and err.code() not in TOLERATED:
                    self._problem(f"the stream failed with {err.code().name}: {err.details()}")
            if self.last:
                self.resumed += 1
            time.sleep(0.05)

    def _receive(self, event: keys_pb2.KeyEvent) -> None:
        if event.type == keys_pb2.KEY_EVENT_TYPE_HEARTBEAT:
            return
        if event.type == keys_pb2.KEY_EVENT_TYPE_SNAPSHOT:
            if self.last:
                self._problem(f"a SNAPSHOT instead of the events after {self.last}")
        elif event.sequence != self.last + 1:
            self._problem(f"sequence {event.sequence} right after {self.last}: a gap or a repeat")
        with self.lock:
            self.last = event.sequence

    def _problem(self, what: str) -> None:
        with self.lock:
            self.problems.append(what)

    def seen(self) -> tuple[int, list[str]]:
        with self.lock:
            return self.last, list(self.problems)

    def stop(self) -> None:
        self._halt.set()
        if self._call is not None:
            self._call.cancel()
        self.join(timeout=15)
        self._channel.close()


class Checker:
    """The invariants, checked over a channel of its own after each restart."""

    def __init__(self, server: RotorProcess, client: dict[str, str], admin: dict[str, str]) -> None:
        self._server = server
        self._channel = grpc.insecure_channel(server.address, options=FAST_RECONNECT)
        self._tokens = rotor_client.TokenServiceStub(self._channel)
        self._keys = rotor_client.KeyAdminStub(self._channel)
        self._client, self._admin = basic(client), basic(admin)
        self.checked = Confirmed()  # what earlier rounds already checked
        self.log_checked_through = 1

    def close(self) -> None:
        self._channel.close()

    def audit_chain_verifies(self) -> None:
        done = self._server.cli("audit", "verify")
        assert done.returncode == 0, f"rotor audit verify failed:\n{done.stdout}\n{done.stderr}"

    def one_active_key_and_every_rotation_kept(self, confirmed: Confirmed) -> None:
        listed = self._keys.ListKeys(
            rotor_client.ListKeysRequest(include_expired=True), metadata=self._admin, timeout=10
        ).keys
        active = [k.kid for k in listed if k.state == keys_pb2.KEY_STATE_ACTIVE]
        assert len(active) == 1, f"{len(active)} active keys after a crash: {active}"
        lost = set(confirmed.rotated) - {k.kid for k in listed}
        assert not lost, f"keys RotateKeys answered with are gone: {sorted(lost)}"
        served = self._tokens.GetKeySet(rotor_client.GetKeySetRequest(), timeout=10).keys
        active = [k.kid for k in served if k.state == keys_pb2.KEY_STATE_ACTIVE]
        assert len(active) == 1, f"{len(active)} active keys in the key set after a crash: {active}"

    def every_revocation_kept(self, confirmed: Confirmed) -> None:
        stream = self._tokens.WatchKeyRotations(rotor_client.WatchKeyRotationsRequest(), timeout=30)
        snapshot = next(stream)
        stream.cancel()
        assert snapshot.type == keys_pb2.KEY_EVENT_TYPE_SNAPSHOT
        lost = set(confirmed.revoked_jtis) - {r.jti for r in snapshot.revoked_tokens}
        assert not lost, f"{len(lost)} of {len(confirmed.revoked_jtis)} confirmed revocations were lost"
        for token in confirmed.revoked_grants[len(self.checked.revoked_grants) :]:
            assert self._refused(token) == "REFRESH_TOKEN_REVOKED", "a revoked grant was revived"

    def every_used_refresh_token_refused(self, confirmed: Confirmed) -> None:
        for token in confirmed.used[len(self.checked.used) :]:
            reason = self._refused(token)
            assert reason in ("REFRESH_TOKEN_REUSED", "REFRESH_TOKEN_REVOKED"), reason

    def _refused(self, token: str) -> str:
        request = rotor_client.RefreshRequest(refresh_token=token)
        try:
            self._tokens.Refresh(request, metadata=self._client, timeout=10)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, f"{err.code()}: {err.details()}"
            return reason_of(err)
        raise AssertionError("a refresh token used or revoked before the crash worked again")

    def newest_sequence(self) -> int:
        return int(self._tokens.GetKeySet(rotor_client.GetKeySetRequest(), timeout=10).sequence)

    def event_log_has_no_gap(self, through: int) -> None:
        """Replays the log from where the last round stopped to `through`: every sequence, once."""
        if through <= self.log_checked_through:
            return
        request = rotor_client.WatchKeyRotationsRequest(after_sequence=self.log_checked_through)
        stream = self._tokens.WatchKeyRotations(request, timeout=60)
        expected = self.log_checked_through + 1
        for event in stream:
            if event.type == keys_pb2.KEY_EVENT_TYPE_HEARTBEAT:
                continue
            assert event.type != keys_pb2.KEY_EVENT_TYPE_SNAPSHOT, "the log is no longer kept"
            assert event.sequence == expected, f"sequence {event.sequence} where {expected} was due"
            if expected == through:
                break
            expected += 1
        stream.cancel()
        self.log_checked_through = through

    def check(self, confirmed: Confirmed, follower: Follower) -> None:
        self.one_active_key_and_every_rotation_kept(confirmed)
        self.every_revocation_kept(confirmed)
        self.every_used_refresh_token_refused(confirmed)
        newest = self.newest_sequence()
        self.event_log_has_no_gap(newest)
        follower_caught_up(follower, newest)
        self.checked = confirmed


def follower_caught_up(follower: Follower, sequence: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        last, problems = follower.seen()
        assert not problems, f"the watcher that followed across restarts saw: {problems[:5]}"
        if last >= sequence:
            return
        assert time.monotonic() < deadline, f"the watcher is at {last}, not {sequence}, after {within}s"
        time.sleep(0.05)


def wait_for_progress(workers: list[Worker], within: float = 20.0) -> None:
    """Until every worker has got a call through since this was called."""
    before = [w.steps for w in workers]
    deadline = time.monotonic() + within
    while not all(w.steps > s for w, s in zip(workers, before, strict=True)):
        unexpected = [dict(w.unexpected) for w in workers]
        assert time.monotonic() < deadline, f"no progress within {within}s; errors: {unexpected}"
        time.sleep(0.02)


@pytest.fixture(params=["sqlite", "postgres", "sqlite-pkcs11"])
def crash_server(request: pytest.FixtureRequest, make_server: MakeServer) -> RotorProcess:
    """A server on SQLite, or on a fresh PostgreSQL schema (skipped where there is none, but in CI);
    sqlite-pkcs11: its keys on a SoftHSM2 token."""
    if request.param == "postgres":
        return make_server({"database_url": request.getfixturevalue("database_url")})
    if request.param == "sqlite-pkcs11":
        hsm = request.getfixturevalue("softhsm")
        pkcs11 = {"module": hsm.module, "token_label": hsm.label, "pin_env": "ROTOR_PKCS11_PIN"}
        return make_server({"keys": {"key_store": "pkcs11"}, "pkcs11": pkcs11}, env=hsm.env)
    return make_server()


def test_kill_9_at_random_moments_loses_nothing_the_server_confirmed(crash_server: RotorProcess) -> None:
    server = crash_server
    client = server.add_client("svc", "--audience", "api")
    admin = server.add_client("ops", "--admin")
    confirmed = Confirmed()
    workers = [TokenLoad(server.address, confirmed, client), Rotations(server.address, confirmed, admin)]
    follower = Follower(server.address)
    checker = Checker(server, client, admin)
    rng = random.Random()
    for thread in (*workers, follower):
        thread.start()
    try:
        for _ in range(KILLS):
            wait_for_progress(workers)
            time.sleep(rng.uniform(0.0, 1.0))
            server.kill()
            survived = confirmed.copy()  # nothing more can be confirmed: the server is gone
            checker.audit_chain_verifies()
            server.start()
            try:
                checker.check(survived, follower)
            except AssertionError as e:
                raise AssertionError(f"{e}\n--- the server's log ---\n{server.log()}") from None
        wait_for_progress(workers)
    finally:
        for thread in (*workers, follower):
            thread.stop()
        checker.close()
    unexpected = sum((w.unexpected for w in workers), Counter())
    assert not unexpected, (
        f"errors other than UNAVAILABLE under crash and restart: {unexpected}\n{server.log()}"
    )
    assert follower.resumed >= KILLS, f"the watcher resumed {follower.resumed} times for {KILLS} kills"
    assert checker.checked.used and checker.checked.rotated and checker.checked.revoked_grants
