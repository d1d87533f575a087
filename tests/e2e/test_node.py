"""The Node.js example (clients/node) verifies Rotor's tokens against a real server.

One `rotor serve` and one `node server.mjs` (PORT=0, its address read from its
ready line) serve the whole module; each test issues its own tokens, so the
tests do not depend on their order. The service is never restarted: rotations
and revocations reach it through WatchKeyRotations alone.

`npm ci` runs once in clients/node when node_modules is missing (or older than
package-lock.json), from the committed lockfile. Without node or npm the tests skip, except in CI
(CI set), where they must run.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import queue
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import rotor_client
from host import exclusive

from .support import ISSUER, RotorProcess, basic

NODE_DIR = pathlib.Path(__file__).resolve().parents[2] / "clients" / "node"
READY = re.compile(r"listening on (http://\S+)")
AUDIENCE = "api"
POLL_DEADLINE = 5.0  # seconds for a pushed change to reach the service


def node_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm must be installed in CI to test clients/node")
        pytest.skip("node or npm is not installed")
    return node, npm


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with clients/node's dependencies installed from the lockfile."""
    node, npm = node_tools()
    installed = NODE_DIR / "node_modules" / ".package-lock.json"  # npm writes it at each install
    lockfile = NODE_DIR / "package-lock.json"
    # one npm ci at a time in this checkout: it empties node_modules first
    with exclusive(f"npm-ci-{hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:12]}"):
        if not installed.exists() or installed.stat().st_mtime < lockfile.stat().st_mtime:
            done = subprocess.run(  # no install scripts: none of the dependencies needs one
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, f"npm ci failed in {NODE_DIR}:\n{done.stdout}\n{done.stderr}"
    return node


@dataclass
class Stack:
    rotor: RotorProcess
    app: dict[str, str]  # a client for audience "api" (and "other"), scope "x"
    ops: dict[str, str]  # an admin client
    url: str  # the Node service's base URL
    proc: subprocess.Popen[str]
    log_path: pathlib.Path

    def issue(self, audience: str = AUDIENCE) -> rotor_client.TokenResponse:
        request = rotor_client.IssueRequest(audience=[audience], scope=["x"])
        response: rotor_client.TokenResponse = self.rotor.tokens().Issue(
            request, metadata=basic(self.app), timeout=10
        )
        return response

    def get(self, token: str) -> tuple[int, dict[str, Any]]:
        """GET /orders with the token: (status, JSON body)."""
        request = urllib.request.Request(f"{self.url}/orders", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def until(self, token: str, status: int, reason: str | None = None) -> dict[str, Any]:
        """Poll GET /orders until it answers `status` (and `reason`), within POLL_DEADLINE."""
        deadline = time.monotonic() + POLL_DEADLINE
        while True:
            got, body = self.get(token)
            if got == status and (reason is None or body.get("reason") == reason):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"wanted {status} {reason or ''} within {POLL_DEADLINE} s, still {got} {body}\n{self.log()}"
                )
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def start_node(
    node: str, rotor: RotorProcess, log_path: pathlib.Path, **extra_env: str
) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTOR")}
    env.update(ROTOR=rotor.address, ROTOR_ISSUER=ISSUER, AUDIENCE=AUDIENCE, PORT="0", TENANT="", **extra_env)
    with open(log_path, "ab") as stderr:
        proc = subprocess.Popen(
            [node, "server.mjs"], cwd=NODE_DIR, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 20
    seen = ""
    while True:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            raise AssertionError(
                f"node server.mjs not ready within 20 s:\n{seen}{log_path.read_text()}"
            ) from None
        if line is None:
            proc.wait()
            raise AssertionError(
                f"node server.mjs exited with {proc.returncode}:\n{seen}{log_path.read_text()}"
            )
        seen += line
        if match := READY.search(line):
            return proc, match.group(1)


@pytest.fixture(scope="module")
def stack(node: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("node-e2e")
    rotor = RotorProcess(workdir)
    try:
        rotor.start()
        app = rotor.add_client("app", "--audience", AUDIENCE, "--audience", "other", "--scope", "x")
        ops = rotor.add_client("ops", "--admin")
        log_path = workdir / "node.log"
        proc, url = start_node(node, rotor, log_path)
        try:
            yield Stack(rotor, app, ops, url, proc, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        rotor.close()


def tampered(token: str) -> str:
    """The token with one character of its signature changed."""
    head, _, signature = token.rpartition(".")
    i = len(signature) // 2
    return f"{head}.{signature[:i]}{'B' if signature[i] == 'A' else 'A'}{signature[i + 1 :]}"


def test_a_token_from_rotor_is_accepted(stack: Stack) -> None:
    status, body = stack.get(stack.issue().access_token)
    assert status == 200, body
    assert body == {"client_id": "app", "sub": "app", "scopes": ["x"]}


def test_a_tampered_token_is_refused(stack: Stack) -> None:
    status, body = stack.get(tampered(stack.issue().access_token))
    assert (status, body["reason"]) == (401, "INVALID_SIGNATURE"), body
    assert body["message"]


def test_a_token_for_another_audience_is_refused(stack: Stack) -> None:
    status, body = stack.get(stack.issue(audience="other").access_token)
    assert (status, body["reason"]) == (401, "INVALID_AUDIENCE"), body


def test_a_revoked_token_is_refused_once_rotor_pushes_it(stack: Stack) -> None:
    token = stack.issue().access_token
    assert stack.get(token)[0] == 200
    revoked = stack.rotor.tokens().Revoke(
        rotor_client.RevokeRequest(token=token, reason="test"), metadata=basic(stack.app), timeout=10
    )
    assert revoked.revoked
    stack.until(token, 401, "TOKEN_REVOKED")
    assert stack.get(stack.issue().access_token)[0] == 200  # only that token


def test_rotation_and_key_revocation_apply_without_a_restart(stack: Stack) -> None:
    old = stack.issue()
    assert stack.get(old.access_token)[0] == 200

    admin = stack.rotor.admin()
    rotated = admin.RotateKeys(
        rotor_client.RotateKeysRequest(immediate=True, reason="test"), metadata=basic(stack.ops), timeout=10
    )
    assert rotated.key.kid != old.key_id
    new = stack.issue()
    assert new.key_id == rotated.key.kid
    assert stack.until(new.access_token, 200)["client_id"] == "app"
    assert stack.get(old.access_token)[0] == 200  # the retired key still verifies what it signed

    admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=old.key_id, reason="leaked"), metadata=basic(stack.ops), timeout=10
    )
    stack.until(old.access_token, 401, "KEY_REVOKED")
    assert stack.get(new.access_token)[0] == 200
    assert stack.proc.poll() is None, "the Node service restarted or died"


def test_a_clients_tokens_revoked_at_rotor_are_refused(stack: Stack) -> None:
    """RevokeClientTokens reaches the Node verifier too: the client's earlier tokens are refused."""
    from rotor.v1 import key_admin_pb2

    other = stack.rotor.add_client("app-revoked", "--audience", AUDIENCE, "--scope", "x")
    request = rotor_client.IssueRequest(audience=[AUDIENCE], scope=["x"])
    token = stack.rotor.tokens().Issue(request, metadata=basic(other), timeout=10).access_token
    assert stack.get(token)[0] == 200
    stack.rotor.admin().RevokeClientTokens(
        key_admin_pb2.RevokeClientTokensRequest(client_id="app-revoked", reason="test"),
        metadata=basic(stack.ops),
        timeout=10,
    )
    stack.until(token, 401, "TOKEN_REVOKED")
    assert stack.get(stack.issue().access_token)[0] == 200  # another client's tokens still pass


def test_the_watcher_reads_rotors_retry_info(node: str) -> None:
    """A refused report waits as long as Rotor's google.rpc.RetryInfo says (the watcher decodes it)."""
    import grpc
    from rotor.api.errors import rich_status

    details = rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", "RATE_LIMITED", retry_after=2.5)
    script = (
        "import { retryAfter } from './keyset-watcher.mjs';"
        f"const raw = Buffer.from('{details.hex()}', 'hex');"
        "const err = { metadata: { get: (key) => (key === 'grpc-status-details-bin' ? [raw] : []) } };"
        "console.log(JSON.stringify([retryAfter(err), retryAfter({ metadata: { get: () => [] } })]));"
    )
    done = subprocess.run(
        [node, "--input-type=module", "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [2.5, None]
