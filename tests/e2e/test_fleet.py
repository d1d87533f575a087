"""The fleet view end to end: three named watchers on two replicas over PostgreSQL, seen everywhere.

Two `rotor serve` replicas share one PostgreSQL schema. Three named watchers
verify tokens: `orders-py` (Python, streaming from replica A), `billing-py`
(Python, polling replica B: it learns keys only every max_cache_age) and
`node-svc` (the Node example, streaming from replica B). Each view of the
fleet (VIEWS: GetRotationStatus, /metrics, /status.json, `rotor status --json`) must show
every watcher's replica, kids, sequence and verification counts within two
report intervals, and a token signed by a key one watcher lacks must show up
as UNKNOWN_KEY for that watcher alone.
"""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
import rotor_client
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families
from rotor.v1 import key_admin_pb2
from rotor_client import KeySetWatcher, ThreadedKeySetWatcher, UnknownKey, Verifier

from .support import ISSUER, RotorProcess, basic, env_with_bin, free_port, postgres_schema, run_rotor
from .test_node import AUDIENCE, node, start_node  # noqa: F401  (node: the fixture)

REPORT_INTERVAL = 5.0  # [limits] report_interval of both replicas (seconds)
WITHIN = 2 * REPORT_INTERVAL  # what the fleet view promises
MAX_CACHE_AGE = 30  # seconds: how often billing-py polls; publish_lead must be at least this
ALERTS = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rotor-alerts.yml"


@dataclass
class Seen:
    """One watcher as a view of the fleet shows it."""

    replica: str = ""
    kids: frozenset[str] = frozenset()
    sequence: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # outcome -> count (the view's window)
    holds_every_key: bool | None = None  # for views that say only that
    caught_up: bool | None = None


@dataclass
class FleetStack:
    replicas: dict[str, RotorProcess]  # "replica-a", "replica-b"
    http: dict[str, str]  # replica name -> base URL of its HTTP side port
    app: dict[str, str]
    ops: dict[str, str]
    python: dict[str, tuple[ThreadedKeySetWatcher, Verifier]]  # "orders-py", "billing-py"
    node_url: str
    node_proc: subprocess.Popen[str]

    @property
    def a(self) -> RotorProcess:
        return self.replicas["replica-a"]

    def issue(self) -> str:
        request = rotor_client.IssueRequest(audience=[AUDIENCE], scope=["x"])
        response = self.a.tokens().Issue(request, metadata=basic(self.app), timeout=10)
        return str(response.access_token)

    def verify_at_node(self, token: str) -> str:
        """GET /orders at the Node service: "OK", or the reason it refused the token."""
        request = urllib.request.Request(
            f"{self.node_url}/orders", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                return "OK"
        except urllib.error.HTTPError as e:
            return str(json.loads(e.read())["reason"])

    def status(self) -> key_admin_pb2.GetRotationStatusResponse:
        response: key_admin_pb2.GetRotationStatusResponse = self.a.admin().GetRotationStatus(
            key_admin_pb2.GetRotationStatusRequest(), metadata=basic(self.ops), timeout=10
        )
        return response

    def key_set(self) -> tuple[int, frozenset[str]]:
        keyset = self.a.tokens().GetKeySet(rotor_client.GetKeySetRequest(), timeout=10)
        return int(keyset.sequence), frozenset(k.kid for k in keyset.keys)

    def metrics(self, replica: str = "replica-a") -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with urllib.request.urlopen(f"{self.http[replica]}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


# -- the views of the fleet -------------------------------------------------------------------


def from_rotation_status(stack: FleetStack) -> dict[str, Seen]:
    return {
        w.name: Seen(
            replica=w.replica,
            kids=frozenset(w.kids),
            sequence=w.sent_sequence,
            counts=_by_outcome(w),
        )
        for w in stack.status().watchers
    }


def _by_outcome(w: key_admin_pb2.WatcherStatus) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in w.verifications:
        out[c.outcome] = out.get(c.outcome, 0) + c.count
    return out


def from_metrics(stack: FleetStack) -> dict[str, Seen]:
    samples = stack.metrics()
    seen: dict[str, Seen] = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if not name.startswith("rotor_fleet_") or "watcher" not in label:
            continue
        watcher = seen.setdefault(label["watcher"], Seen())
        if name == "rotor_fleet_verifications_total":
            watcher.counts[label["outcome"]] = int(value)
        elif name == "rotor_fleet_watcher_missing_keys":
            watcher.holds_every_key = value == 0
        elif name == "rotor_fleet_watcher_events_behind":
            watcher.caught_up = value == 0
    return seen


def _from_status_model(doc: dict[str, Any]) -> dict[str, Seen]:
    return {
        w["name"]: Seen(
            replica=w["replica"],
            kids=frozenset(w["kids"]),
            sequence=w["sequence"],
            counts=dict(w["verifications"]["outcomes"]),
        )
        for w in doc["watchers"]
    }


def from_status_json(stack: FleetStack) -> dict[str, Seen]:
    """/status.json of replica B (the status page's model), as the admin."""
    token = base64.b64encode(f"{stack.ops['client_id']}:{stack.ops['client_secret']}".encode()).decode()
    request = urllib.request.Request(
        f"{stack.http['replica-b']}/status.json", headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return _from_status_model(json.loads(response.read()))


def from_rotor_status(stack: FleetStack) -> dict[str, Seen]:
    """`rotor status --json` against replica A."""
    env = env_with_bin(ROTOR_CLIENT_ID=stack.ops["client_id"], ROTOR_CLIENT_SECRET=stack.ops["client_secret"])
    done = run_rotor("status", "--target", stack.a.address, "--json", cwd=stack.a.workdir, env=env)
    assert done.returncode == 0, done.stderr
    return _from_status_model(json.loads(done.stdout))


# name -> how that view reads the fleet
VIEWS: dict[str, Callable[[FleetStack], dict[str, Seen]]] = {
    "GetRotationStatus": from_rotation_status,
    "metrics": from_metrics,
    "status.json": from_status_json,
    "rotor status --json": from_rotor_status,
}


def until(condition: Callable[[], Any], what: str, within: float) -> Any:
    """Poll `condition` until it returns something true; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = condition()
        except AssertionError as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what} (last: {last})")
        time.sleep(0.1)


# -- the stack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_database_url() -> Iterator[str]:
    """A fresh schema for the module; PostgreSQL must be there in CI, elsewhere its absence skips."""
    with postgres_schema("rotor_fleet") as url:
        yield url


@pytest.fixture(scope="module")
def fleet(
    node: str,  # noqa: F811
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FleetStack]:
    workdir = tmp_path_factory.mktemp("fleet")
    replicas: dict[str, RotorProcess] = {}
    http: dict[str, str] = {}
    started: list[Any] = []
    try:
        for name in ("replica-a", "replica-b"):
            (workdir / name).mkdir()
            port = free_port()
            http[name] = f"http://127.0.0.1:{port}"
            replicas[name] = RotorProcess(
                workdir / name,
                {
                    "database_url": module_database_url,
                    "http_listen": f"127.0.0.1:{port}",
                    "keys": {
                        "kek_file": str(workdir / "kek.key"),
                        "publish_lead": f"{MAX_CACHE_AGE}s",
                        "max_cache_age": f"{MAX_CACHE_AGE}s",
                    },
                    "cluster": {"replica": name, "lease_ttl": "2s"},
                    "limits": {"report_interval": f"{REPORT_INTERVAL:g}s"},
                },
            ).start()  # one after the other: the first creates the KEK file
        a, b = replicas["replica-a"], replicas["replica-b"]
        app = a.add_client("app", "--audience", AUDIENCE, "--scope", "x")
        ops = a.add_client("ops", "--admin")
        python: dict[str, tuple[ThreadedKeySetWatcher, Verifier]] = {}
        for name, replica, options in (
            ("orders-py", a, {}),
            ("billing-py", b, {"poll_only": True}),
        ):
            watcher = KeySetWatcher.start_in_thread(replica.address, name=name, **options)
            started.append(watcher)
            python[name] = (watcher, Verifier(watcher, issuer=ISSUER, audience=AUDIENCE))
        proc, url = start_node(node, b, workdir / "node.log", WATCHER_NAME="node-svc")
        started.append(proc)
        yield FleetStack(replicas, http, app, ops, python, url, proc)
    finally:
        for item in reversed(started):
            if isinstance(item, subprocess.Popen):
                item.terminate()
                try:
                    item.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    item.kill()
                    item.wait()
            else:
                item.close()
        for replica in replicas.values():
            replica.close()


WATCHERS = {"orders-py": "replica-a", "billing-py": "replica-b", "node-svc": "replica-b"}


def verify_everywhere(stack: FleetStack, token: str) -> dict[str, str]:
    """Present `token` to all three watchers' verifiers: each one's outcome."""
    outcomes = {"node-svc": stack.verify_at_node(token)}
    for name, (_, verifier) in stack.python.items():
        try:
            verifier.verify(token)
            outcomes[name] = "OK"
        except rotor_client.RotorClientError as e:
            outcomes[name] = e.reason
    return outcomes


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_watchers_counts_kids_and_sequence_show_within_two_report_intervals(
    fleet: FleetStack, view: str
) -> None:
    before = {name: seen.counts.get("OK", 0) for name, seen in VIEWS[view](fleet).items()}
    token = fleet.issue()
    assert verify_everywhere(fleet, token) == dict.fromkeys(WATCHERS, "OK")
    assert verify_everywhere(fleet, token) == dict.fromkeys(WATCHERS, "OK")
    sequence, kids = fleet.key_set()

    def shown() -> dict[str, Seen] | None:
        seen = VIEWS[view](fleet)
        for name, replica in WATCHERS.items():
            w = seen.get(name)
            if w is None or w.counts.get("OK", 0) < before.get(name, 0) + 2:
                return None
            if w.replica and w.replica != replica:
                raise AssertionError(f"{name} is shown on {w.replica}, not {replica}")
            if (w.kids and w.kids != kids) or (w.sequence and w.sequence != sequence):
                return None
            if w.holds_every_key is False or w.caught_up is False:
                return None
        return seen

    seen = until(shown, f"{view} shows every watcher's counts, kids and sequence", WITHIN)
    if view != "metrics":  # the views that show replica, kids and sequence
        assert {name: (w.replica, w.kids, w.sequence) for name, w in seen.items()} == {
            name: (replica, kids, sequence) for name, replica in WATCHERS.items()
        }


def test_a_token_signed_by_a_key_one_watcher_lacks_shows_as_unknown_key_for_it(fleet: FleetStack) -> None:
    """An immediate rotation reaches the streaming watchers at once; billing-py, which polls every
    max_cache_age, lacks the new key until its next poll, and refuses the new key's tokens."""
    billing, billing_verifier = fleet.python["billing-py"]
    orders = fleet.python["orders-py"][0]
    for _ in range(3):  # in the rare case its poll falls between the rotation and the verification
        rotated = fleet.a.admin().RotateKeys(
            rotor_client.RotateKeysRequest(immediate=True, reason="fleet test"),
            metadata=basic(fleet.ops),
            timeout=30,
        )
        kid = rotated.key.kid
        until(lambda k=kid: k in orders.key_cache.keys, "orders-py has the new key", 10)  # type: ignore[misc]
        token = fleet.issue()
        if kid not in billing.key_cache.keys:
            break
    else:
        pytest.fail("billing-py polled just after every rotation")
    assert fleet.python["orders-py"][1].verify(token)
    with pytest.raises(UnknownKey):
        billing_verifier.verify(token)

    def holds(name: str) -> bool:
        return any(w.name == name and kid in w.kids for w in fleet.status().watchers)

    # the Node service is shown the token only once it reported holding the key
    until(lambda: holds("node-svc"), "node-svc reports holding the new key", WITHIN)
    assert fleet.verify_at_node(token) == "OK"

    def unknown_key_for(name: str) -> dict[str, int]:
        (w,) = [w for w in fleet.status().watchers if w.name == name]
        return {c.kid: c.count for c in w.verifications if c.outcome == "UNKNOWN_KEY"}

    until(lambda: unknown_key_for("billing-py").get(kid), "UNKNOWN_KEY for the new kid at billing-py", WITHIN)
    assert kid not in unknown_key_for("orders-py") and kid not in unknown_key_for("node-svc")


def test_the_unknown_key_alert_matches_the_exported_series(fleet: FleetStack) -> None:
    """The rule's selector finds billing-py's UNKNOWN_KEY series in /metrics, with the labels the rule
    groups by, and the counter it watches grows when a watcher refuses a token for an unknown key."""
    (rule,) = [
        r
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for r in group["rules"]
        if r["alert"] == "RotorVerifiersUnknownKey"
    ]
    expr: str = rule["expr"]
    selector = 'rotor_fleet_verifications_total{outcome="UNKNOWN_KEY"}'
    assert selector in expr and "by (tenant, watcher)" in expr and expr.rstrip().endswith("> 0"), expr

    def unknown_keys() -> dict[str, float]:
        return {
            dict(labels)["watcher"]: value
            for (name, labels), value in fleet.metrics("replica-b").items()
            if name == "rotor_fleet_verifications_total" and dict(labels).get("outcome") == "UNKNOWN_KEY"
        }

    before = unknown_keys().get("billing-py", 0.0)
    forged = forged_token()
    with pytest.raises(UnknownKey):
        fleet.python["billing-py"][1].verify(forged)
    until(
        lambda: unknown_keys().get("billing-py", 0.0) > before,
        "billing-py's UNKNOWN_KEY counter grew",
        WITHIN,
    )
    # what `max by (tenant, watcher) (increase(<selector>[5m])) > 0` reads: the selected series carry
    # both grouping labels, and billing-py's grew (the other watchers' did not)
    matched = [
        dict(labels)
        for (name, labels), _ in fleet.metrics("replica-b").items()
        if name == "rotor_fleet_verifications_total" and dict(labels).get("outcome") == "UNKNOWN_KEY"
    ]
    assert matched and all({"tenant", "watcher"} <= set(labels) for labels in matched), matched
    after = unknown_keys()
    assert after["billing-py"] > before
    assert after.get("orders-py", 0.0) == 0.0 and after.get("node-svc", 0.0) == 0.0


def forged_token() -> str:
    """A token for this service signed by a key Rotor never had."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "x",
        "aud": AUDIENCE,
        "exp": now + 60,
        "iat": now,
        "jti": "f",
        "client_id": "x",
    }
    return jwt.encode(
        claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "forged", "typ": "at+jwt"}
    )
