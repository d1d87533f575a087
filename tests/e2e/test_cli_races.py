"""`rotor clients` writes racing a loaded `rotor serve` on the same SQLite store.

While threads issue tokens all along (as two load clients, and as the client being
disabled and enabled), `clients disable`, `enable`, `rotate-secret` and `add` run at the
same time as each other and as the load. Every command exits 0 (no "database is locked");
the server never answers INTERNAL or UNKNOWN and every refusal carries an ErrorInfo; the
load clients are always served (their secrets rotate with an overlap). An added client is
served at once; a disabled client is refused with UNAUTHENTICATED CLIENT_DISABLED, an
enabled one served again and a rotated secret accepted, each within the server's look at
changes made by other processes (a fraction of a second; see test_client_directory.py).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import rotor_client

from .conftest import MakeServer
from .support import RotorProcess, basic, error_info

ROUNDS = 3
LOAD_CLIENTS = ("load-a", "load-b")
VICTIM = "victim"
WITHIN = 5.0  # seconds for a change made by the CLI to reach the server, on a loaded machine
PACE = 0.01  # seconds between a load thread's calls: under half of a client's Issue rate limit
RATE_LIMITED = "RESOURCE_EXHAUSTED RATE_LIMITED"


def outcome_of(err: grpc.RpcError) -> str:
    info = error_info(err)
    return f"{err.code().name} {info.reason if info else '(no ErrorInfo)'}"


class Load:
    """A thread per client calling Issue until stopped, with the newest secret known to work."""

    def __init__(self, server: RotorProcess, secrets: dict[str, str]) -> None:
        self.server = server
        self.secrets = secrets
        self.answers: Counter[tuple[str, str]] = Counter()
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._issue, args=(client_id,), name=f"load-{client_id}")
            for client_id in (*LOAD_CLIENTS, VICTIM)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _issue(self, client_id: str) -> None:
        stub = self.server.tokens()
        while not self._stop.is_set():
            credentials = {"client_id": client_id, "client_secret": self.secrets[client_id]}
            try:
                stub.Issue(rotor_client.IssueRequest(), metadata=basic(credentials), timeout=60)
                outcome = "OK"
            except grpc.RpcError as err:
                outcome = outcome_of(err)
                if (
                    err.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
                    or error_info(err) is None
                ):
                    self.bad.append(f"{client_id}: {outcome}: {err.details()}")
            with self._lock:
                self.answers[client_id, outcome] += 1
            self._stop.wait(PACE)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def issue(server: RotorProcess, client: dict[str, str]) -> rotor_client.TokenResponse:
    return server.tokens().Issue(rotor_client.IssueRequest(), metadata=basic(client), timeout=60)


def served_within(server: RotorProcess, client: dict[str, str], refused_as: str) -> None:
    """Issue succeeds within WITHIN seconds, refused meanwhile only as `refused_as` (a few tries,
    spaced: a wrong secret counts towards the server's failed sign-in backoff)."""
    deadline = time.monotonic() + WITHIN
    while True:
        try:
            issue(server, client)
            return
        except grpc.RpcError as err:
            assert outcome_of(err) == refused_as, err
            assert time.monotonic() < deadline, f"{client['client_id']} still refused: {err.details()}"
        time.sleep(0.25)


def refused_within(server: RotorProcess, client: dict[str, str]) -> str:
    """The outcome Issue is refused with, once it is; the test fails if it is served past WITHIN s."""
    deadline = time.monotonic() + WITHIN
    while True:
        try:
            issue(server, client)
        except grpc.RpcError as err:
            return outcome_of(err)
        assert time.monotonic() < deadline, f"{client['client_id']} is still served"
        time.sleep(0.02)


def test_client_commands_racing_a_loaded_server_all_succeed_and_take_effect(make_server: MakeServer) -> None:
    server = make_server()
    clients = {name: server.add_client(name, "--audience", "api") for name in (*LOAD_CLIENTS, VICTIM)}
    secrets = {name: c["client_secret"] for name, c in clients.items()}
    victim = clients[VICTIM]

    def run(*args: str) -> dict[str, str]:
        document: dict[str, str] = json.loads(ok(server.cli("clients", *args, "--json")))
        return document

    with Load(server, secrets) as load, ThreadPoolExecutor(max_workers=3) as pool:
        for round_ in range(ROUNDS):
            rotating = LOAD_CLIENTS[round_ % 2]
            for phase, switch in enumerate(("disable", "enable")):
                switched, rotated, added = pool.map(
                    lambda args: run(*args),
                    [
                        (switch, VICTIM),
                        ("rotate-secret", rotating, "--overlap", "1h"),
                        ("add", f"new-{round_}-{phase}", "--audience", "api"),
                    ],
                )
                assert switched["client_id"] == VICTIM and switched["disabled"] is (switch == "disable")
                assert issue(server, added).access_token, "an added client is not served at once"
                if switch == "disable":
                    assert refused_within(server, victim) == "UNAUTHENTICATED CLIENT_DISABLED"
                    for _ in range(3):  # and stays refused
                        with pytest.raises(grpc.RpcError) as refused:
                            issue(server, victim)
                        assert outcome_of(refused.value) == "UNAUTHENTICATED CLIENT_DISABLED"
                else:
                    served_within(server, victim, "UNAUTHENTICATED CLIENT_DISABLED")
                served_within(server, rotated, "UNAUTHENTICATED INVALID_CLIENT")
                secrets[rotating] = rotated["client_secret"]

    assert not load.bad, load.bad[:10]
    outcomes = dict(load.answers)
    for client_id in LOAD_CLIENTS:
        assert outcomes.get((client_id, "OK"), 0) > 0, outcomes
        assert {o for c, o in outcomes if c == client_id} <= {"OK", RATE_LIMITED}, outcomes
    assert {o for c, o in outcomes if c == VICTIM} <= {
        "OK",
        "UNAUTHENTICATED CLIENT_DISABLED",
        RATE_LIMITED,
    }, outcomes
    assert server.running(), server.log()
