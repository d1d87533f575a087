"""Three `rotor serve` replicas on one PostgreSQL behave as one service.

Each test gets a schema of its own in the `test` database at 127.0.0.1:5432
(dropped afterwards); the replicas share it and one key-encryption key file,
as real replicas share a database and a KEK.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import rotor_client
from rotor.core.crypto import verify_signature

from .support import (
    FAST_RECONNECT,
    RotorProcess,
    basic,
    error_info,
    postgres_schema,
    psql,
    rotor_exe,
    wait_serving,
)

LEASE_TTL = 2.0


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh schema; PostgreSQL must be there in CI, elsewhere its absence skips."""
    with postgres_schema("rotor_replicas") as url:
        yield url


def replica_config(database_url: str, kek: pathlib.Path, **keys: str) -> dict[str, Any]:
    return {
        "database_url": database_url,
        "keys": {"kek_file": str(kek), **keys},
        "cluster": {"lease_ttl": f"{LEASE_TTL:g}s"},
    }


@pytest.fixture(params=["sealed", "pkcs11"])
def start_replicas(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, database_url: str
) -> Iterator[Any]:
    """Replicas on one PostgreSQL schema, with keys sealed under one KEK or on one SoftHSM2 token."""
    started: list[RotorProcess] = []
    config, env = replica_config(database_url, tmp_path / "kek.key"), {}
    if request.param == "pkcs11":
        hsm = request.getfixturevalue("softhsm")
        config["keys"]["key_store"] = "pkcs11"
        config["pkcs11"] = {"module": hsm.module, "token_label": hsm.label, "pin_env": "ROTOR_PKCS11_PIN"}
        env = hsm.env

    def start(n: int = 3, **keys: str) -> list[RotorProcess]:
        for _ in range(n):
            workdir = tmp_path / f"replica{len(started)}"
            workdir.mkdir()
            replica = RotorProcess(workdir, {**config, "keys": {**config["keys"], **keys}}, env)
            started.append(replica.start())  # one after another: the first creates the KEK file
        return started[-n:]

    yield start
    for replica in started:
        replica.close()


class Stream:
    """WatchKeyRotations on one replica, read by a thread into a queue."""

    def __init__(self, replica: RotorProcess, after_sequence: int = 0) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        request = rotor_client.WatchKeyRotationsRequest(after_sequence=after_sequence)
        self._call = replica.tokens().WatchKeyRotations(request)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for event in self._call:
                self.events.put((time.monotonic(), event))
        except grpc.RpcError:
            pass

    def until(self, predicate: Any, within: float = 10.0) -> tuple[float, Any]:
        """The first (arrival, event) matching `predicate`."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                arrived, event = self.events.get(timeout=left)
            except queue.Empty:
                break
            if predicate(event):
                return arrived, event
        raise AssertionError(f"no matching event within {within}s")

    def cancel(self) -> None:
        self._call.cancel()


def is_type(name: str) -> Any:
    value = rotor_client.KeyEventType.Value(f"KEY_EVENT_TYPE_{name}")
    return lambda event: event.type == value


def test_a_rotation_on_one_replica_reaches_watchers_on_the_others(start_replicas: Any) -> None:
    """RotateKeys on replica 1: watchers on replicas 2 and 3 get its KEY_PUBLISHED (NOTIFY, not polling)."""
    first, second, third = start_replicas(3)
    ops = first.add_client("ops", "--admin")
    streams = [Stream(second), Stream(third)]
    try:
        for stream in streams:
            stream.until(is_type("SNAPSHOT"))
        latencies = []
        for _ in range(3):
            request = rotor_client.RotateKeysRequest(reason="test", immediate=True)  # a new key each time
            response = first.admin().RotateKeys(request, metadata=basic(ops), timeout=30)
            committed = time.monotonic()
            kid = response.key.kid
            for stream in streams:
                arrived, event = stream.until(
                    lambda e, kid=kid: is_type("KEY_PUBLISHED")(e) and e.key.kid == kid
                )
                assert event.keyset.keys and kid in {k.kid for k in event.keyset.keys}
                latencies.append(arrived - committed)
        print(f"cross-replica delivery after RotateKeys returned: max {max(latencies) * 1000:.0f} ms")
    finally:
        for stream in streams:
            stream.cancel()


def test_a_key_made_on_one_replica_signs_on_another(start_replicas: Any) -> None:
    """RotateKeys on replica 1; Issue on replica 2 signs with the new key (on one token, with pkcs11)."""
    first, second = start_replicas(2)
    ops = first.add_client("ops", "--admin")
    svc = first.add_client("svc", "--audience", "api")
    request = rotor_client.RotateKeysRequest(reason="test", immediate=True)
    kid = first.admin().RotateKeys(request, metadata=basic(ops), timeout=30).key.kid
    deadline = time.monotonic() + 30
    while True:  # replica 2 installs the key when the event reaches it
        issued = second.tokens().Issue(rotor_client.IssueRequest(), metadata=basic(svc), timeout=30)
        if issued.key_id == kid or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert issued.key_id == kid
    keys = second.admin().ListKeys(rotor_client.ListKeysRequest(), metadata=basic(ops), timeout=30).keys
    key = next(k for k in keys if k.kid == kid)
    assert verify_signature(issued.access_token, key.public_jwk_json, key.alg)


def test_a_watcher_resumes_by_sequence_on_another_replica(start_replicas: Any) -> None:
    """Events missed while away are replayed by any replica: the log is shared, sequences are global."""
    first, second, third = start_replicas(3)
    ops = first.add_client("ops", "--admin")
    away = Stream(second)
    _, snapshot = away.until(is_type("SNAPSHOT"))
    away.cancel()
    missed = []
    for _ in range(3):
        request = rotor_client.RotateKeysRequest(reason="while away", immediate=True)
        missed.append(first.admin().RotateKeys(request, metadata=basic(ops), timeout=30).key.kid)
    back = Stream(third, after_sequence=snapshot.sequence)
    try:
        published = []
        while len(published) < len(missed):
            _, event = back.until(
                lambda e: e.type != rotor_client.KeyEventType.Value("KEY_EVENT_TYPE_HEARTBEAT")
            )
            assert event.type != rotor_client.KeyEventType.Value("KEY_EVENT_TYPE_SNAPSHOT"), (
                "resumed with a snapshot"
            )
            assert event.sequence > snapshot.sequence
            if is_type("KEY_PUBLISHED")(event):
                published.append(event.key.kid)
        assert published == missed
    finally:
        back.cancel()


def leader_pid(database_url: str) -> int | None:
    """The pid of the replica holding the rotator lease (holder names are host:pid:random)."""
    schema = database_url.rsplit("search_path=", 1)[1]
    holder = psql(
        f"SELECT holder FROM \"{schema}\".leases WHERE name = 'rotator' AND expires_at > extract(epoch FROM now())"
    )
    return int(holder.split(":")[1]) if holder else None


def wait_for(condition: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {within}s")


def test_killing_the_leader_hands_rotation_to_another_replica(start_replicas: Any, database_url: str) -> None:
    """kill -9 the lease holder: another takes the lease within lease_ttl, and scheduled rotation goes on."""
    replicas = start_replicas(3, rotation_period="4s", publish_lead="1s", max_cache_age="1s")
    by_pid = {r.proc.pid: r for r in replicas if r.proc is not None}
    leader = by_pid[wait_for(lambda: leader_pid(database_url), 10, "no replica took the rotator lease")]
    survivors = [r for r in replicas if r is not leader]
    stream = Stream(survivors[0])
    try:
        stream.until(is_type("SNAPSHOT"))
        leader.kill()
        killed = time.monotonic()
        new_pid = wait_for(
            lambda: (pid := leader_pid(database_url)) in {r.proc.pid for r in survivors if r.proc} and pid,
            LEASE_TTL + 10,
            "no surviving replica took the lease",
        )
        took_over = time.monotonic() - killed
        assert by_pid[new_pid] in survivors
        # the schedule goes on under the new holder: a key is activated after the takeover
        stream.until(is_type("KEY_ACTIVATED"), within=15)
        print(f"lease taken over {took_over:.1f} s after the leader died (lease_ttl {LEASE_TTL:g} s)")
    finally:
        stream.cancel()


def race_refresh(stubs: list[Any], token: str, metadata: Any) -> list[Any]:
    """Refresh `token` on every stub at the same moment; each response or RpcError."""
    barrier = threading.Barrier(len(stubs))
    outcomes: list[Any] = [None] * len(stubs)

    def refresh(i: int) -> None:
        barrier.wait()
        try:
            request = rotor_client.RefreshRequest(refresh_token=token)
            outcomes[i] = stubs[i].Refresh(request, metadata=metadata, timeout=30)
        except grpc.RpcError as e:
            outcomes[i] = e

    threads = [threading.Thread(target=refresh, args=(i,)) for i in range(len(stubs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_one_refresh_token_on_two_replicas_at_once_has_one_winner(start_replicas: Any) -> None:
    """The same refresh token sent to two replicas at the same moment: one wins, the family dies."""
    _, second, third = start_replicas(3)
    client = second.add_client("svc", "--audience", "api")
    stubs = [second.tokens(), third.tokens()]
    for _ in range(5):
        issued = stubs[0].Issue(
            rotor_client.IssueRequest(audience=["api"]), metadata=basic(client), timeout=30
        )
        outcomes = race_refresh(stubs, issued.refresh_token, basic(client))
        winners = [o for o in outcomes if isinstance(o, rotor_client.TokenResponse)]
        losers = [o for o in outcomes if isinstance(o, grpc.RpcError)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert losers[0].code() == grpc.StatusCode.UNAUTHENTICATED, losers[0]
        info = error_info(losers[0])
        assert info is not None and info.reason == "REFRESH_TOKEN_REUSED", info
        # the reuse ended the whole family: the winner's fresh refresh token is dead too
        with pytest.raises(grpc.RpcError) as dead:
            stubs[1].Refresh(
                rotor_client.RefreshRequest(refresh_token=winners[0].refresh_token),
                metadata=basic(client),
                timeout=30,
            )
        assert dead.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- rotor serve --workers N --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_workers_share_one_port_and_stop_together(
    tmp_path: pathlib.Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """--workers 2: two processes answer on one port; a killed worker is restarted; SIGTERM stops all (0)."""
    overrides: dict[str, Any] = {}
    if backend == "postgres":
        overrides = {"database_url": request.getfixturevalue("database_url")}
    server = RotorProcess(tmp_path, overrides)  # listens on a fixed free port, as workers need
    with open(server.log_path, "ab") as log:
        proc = subprocess.Popen(
            [rotor_exe(), "serve", "--config", str(server.config_path), "--workers", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    server.proc = proc  # type: ignore[assignment]
    try:
        wait_serving(server.address, proc, 60, server.log)
        wait_for(lambda: server.log().count("serving rotor.v1") >= 2, 30, "two workers did not start")
        client = server.add_client("svc", "--audience", "api")
        for _ in range(20):  # new connections: the kernel spreads them over the workers
            with grpc.insecure_channel(server.address, options=FAST_RECONNECT) as channel:
                stub = rotor_client.TokenServiceStub(channel)
                stub.Issue(rotor_client.IssueRequest(audience=["api"]), metadata=basic(client), timeout=30)
        pids = [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)", server.log())]
        assert len(pids) == 2, server.log()
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: "starting it again" in server.log(), 10, "the killed worker was not restarted")
        wait_for(
            lambda: server.log().count("serving rotor.v1") >= 3, 30, "the restarted worker did not serve"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, server.log()
        assert '"worker": 1' in server.log() and "all workers stopped" in server.log()
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
