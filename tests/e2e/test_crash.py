"""kill -9 under load loses nothing the server confirmed, and leaves the store consistent."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections import Counter

import grpc
import rotor_client
from rotor.v1 import keys_pb2

from .conftest import MakeServer
from .support import FAST_RECONNECT, RotorProcess, basic

TOLERATED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def jti_of(token: str) -> str:
    claims = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["jti"])


class Load(threading.Thread):
    """Issue, Refresh and Revoke in a loop, recording what the server confirmed."""

    def __init__(self, address: str, client: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self._channel = grpc.insecure_channel(address, options=FAST_RECONNECT)
        self._tokens = rotor_client.TokenServiceStub(self._channel)
        self._auth = basic(client)
        self._halt = threading.Event()
        self.lock = threading.Lock()
        self.revoked: list[str] = []  # jtis whose Revoke answered revoked=true
        self.used: list[str] = []  # refresh tokens whose Refresh answered OK
        self.unexpected: Counter[str] = Counter()

    def run(self) -> None:
        refresh = ""
        while not self._halt.is_set():
            try:
                if not refresh:
                    refresh = self._tokens.Issue(
                        rotor_client.IssueRequest(), metadata=self._auth, timeout=5
                    ).refresh_token
                renewed = self._tokens.Refresh(
                    rotor_client.RefreshRequest(refresh_token=refresh), metadata=self._auth, timeout=5
                )
                with self.lock:
                    self.used.append(refresh)
                refresh = renewed.refresh_token
                revoke = rotor_client.RevokeRequest(token=renewed.access_token, reason="load")
                if self._tokens.Revoke(revoke, metadata=self._auth, timeout=5).revoked:
                    with self.lock:
                        self.revoked.append(jti_of(renewed.access_token))
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    refresh = ""  # e.g. a Refresh committed just before a kill, retried: its grant is gone
                elif e.code() not in TOLERATED:
                    with self.lock:
                        self.unexpected[f"{e.code().name}: {e.details()}"] += 1
                time.sleep(0.02)
            time.sleep(0.005)  # steady, not flat out: a few hundred events per round

    def progress(self) -> int:
        with self.lock:
            return len(self.revoked)

    def confirmed(self) -> tuple[list[str], list[str]]:
        with self.lock:
            return list(self.revoked), list(self.used)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=15)
        self._channel.close()


def wait_for_progress(load: Load, since: int, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while load.progress() < since + count:
        assert time.monotonic() < deadline, f"the load made no progress in {timeout}s"
        time.sleep(0.05)


def check_consistency(
    server: RotorProcess, client: dict[str, str], admin: dict[str, str], revoked: list[str], used: list[str]
) -> None:
    tokens, keys = server.tokens(), server.admin()

    listed = keys.ListKeys(
        rotor_client.ListKeysRequest(include_expired=True), metadata=basic(admin), timeout=10
    )
    active = [k.kid for k in listed.keys if k.state == keys_pb2.KEY_STATE_ACTIVE]
    assert len(active) == 1, f"{len(active)} active keys after a crash: {active}"

    stream = tokens.WatchKeyRotations(rotor_client.WatchKeyRotationsRequest(), timeout=30)
    snapshot = next(stream)
    stream.cancel()
    assert snapshot.type == keys_pb2.KEY_EVENT_TYPE_SNAPSHOT
    lost = set(revoked) - {r.jti for r in snapshot.revoked_tokens}
    assert not lost, f"{len(lost)} of {len(revoked)} confirmed revocations were lost in the crash"

    for token in used:
        try:
            tokens.Refresh(
                rotor_client.RefreshRequest(refresh_token=token), metadata=basic(client), timeout=10
            )
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, f"{e.code()}: {e.details()}"
        else:
            raise AssertionError("a refresh token that was used before the crash worked again")

    newest = tokens.GetKeySet(rotor_client.GetKeySetRequest(), timeout=10).sequence
    stream = tokens.WatchKeyRotations(rotor_client.WatchKeyRotationsRequest(after_sequence=1), timeout=30)
    expected = 2
    for event in stream:
        if event.type == keys_pb2.KEY_EVENT_TYPE_HEARTBEAT:
            continue
        assert event.type != keys_pb2.KEY_EVENT_TYPE_SNAPSHOT, "the log from sequence 1 on is no longer kept"
        assert event.sequence == expected, (
            f"sequence {event.sequence} after {expected - 1}: a gap or a repeat"
        )
        if event.sequence >= newest:
            break
        expected += 1
    stream.cancel()


def test_kill_9_under_load_loses_nothing_the_server_confirmed(make_server: MakeServer) -> None:
    started = time.monotonic()
    server = make_server()
    client = server.add_client("svc", "--audience", "api")
    admin = server.add_client("ops", "--admin")
    load = Load(server.address, client)
    load.start()
    rng = random.Random()
    checked = 0
    try:
        for _ in range(3):
            wait_for_progress(load, load.progress(), 5)
            time.sleep(rng.uniform(0.1, 1.5))
            server.kill()
            revoked, used = load.confirmed()  # nothing more can be confirmed: the server is gone
            server.start()
            check_consistency(server, client, admin, revoked, used[checked:])
            checked = len(used)
            assert time.monotonic() - started < 60, "the crash test is taking too long"
        wait_for_progress(load, load.progress(), 5)  # and it goes on serving
    finally:
        load.stop()
    assert not load.unexpected, f"errors other than UNAVAILABLE under crash and restart: {load.unexpected}"
    assert checked > 0, "no refresh token was ever used: the load did nothing"
