"""Rotor next to a real peer: node oidc-provider (bench/peer/) issuing the same kind of token.

Both issue RFC 9068 JWT access tokens signed with EdDSA for client_credentials, the client
authenticating with client_secret_basic. Debian's wrk drives oidc-provider's /token and Rotor's
/oauth2/token at the same concurrency, and bench/load.py drives Rotor's gRPC Issue; the three
runs alternate, --rounds times, and each figure is the median of its rounds:

- throughput (tokens answered per second, as the load generator counts them);
- server CPU-seconds per 1,000 tokens, from the server process's /proc/PID/stat (user +
  system, every thread) over the run.

Before measuring, one token from each peer is verified against that peer's own JWKS (signature,
`typ` at+jwt, audience, issuer). Rotor runs with `refresh_ttl = "0s"`: oidc-provider gives no
refresh token for client_credentials either, so both do the same work per token.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from harness import HERE, Credentials, HarnessError, Rotor, free_port, load, stop

PEER_DIR = HERE / "peer"
PEER_AUDIENCE = "https://api.bench.internal"  # a resource indicator must be an absolute URI
PEER_CLIENT = Credentials("bench-peer", "bench-peer-secret-0123456789")
TICKS = os.sysconf("SC_CLK_TCK")
FORM = "grant_type=client_credentials"
# wrk's script: POST the form with Basic credentials; print the summary as JSON at the end
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = "{form}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic {basic}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests":%d,"duration_us":%d,"errors":%d,"status_errors":%d,"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (every thread), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def basic(credentials: Credentials) -> str:
    return base64.b64encode(f"{credentials.client_id}:{credentials.client_secret}".encode()).decode()


def post_token(url: str, credentials: Credentials) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (our own http:// URL)
        url,
        data=FORM.encode(),
        headers={
            "Authorization": f"Basic {basic(credentials)}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (our own http:// URL)
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def verify_one(token_url: str, jwks_url: str, credentials: Credentials, audience: str, issuer: str) -> None:
    """Get one token and check it against the issuer's JWKS; HarnessError if it does not verify."""
    token = post_token(token_url, credentials)["access_token"]
    header = jwt.get_unverified_header(token)
    with urllib.request.urlopen(jwks_url, timeout=10) as response:  # noqa: S310 (our own http:// URL)
        keys = jwt.PyJWKSet.from_dict(json.loads(response.read()))
    key = next((k for k in keys.keys if k.key_id == header.get("kid")), None)
    if key is None or header.get("alg") != "EdDSA" or header.get("typ") != "at+jwt":
        raise HarnessError(f"{token_url}: token header {header} names no EdDSA key of {jwks_url}")
    try:
        jwt.decode(token, key.key, algorithms=["EdDSA"], audience=audience, issuer=issuer)
    except jwt.PyJWTError as e:
        raise HarnessError(f"{token_url}: its token does not verify: {e}") from e


class Peer:
    """node bench/peer/server.mjs: oidc-provider on a port of its own."""

    def __enter__(self) -> Peer:
        if not (PEER_DIR / "node_modules/oidc-provider").exists():
            raise HarnessError("bench/peer/node_modules is missing: run `make bench-peer` (npm ci)")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                "node",
                "server.mjs",
                str(port),
                PEER_CLIENT.client_id,
                PEER_CLIENT.client_secret,
                PEER_AUDIENCE,
            ],
            cwd=PEER_DIR,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            stop(self.proc)
            self._stderr.seek(0)
            raise HarnessError(f"oidc-provider did not start: {self._stderr.read().decode()[-1000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def wrk(url: str, credentials: Credentials, concurrency: int, seconds: float) -> dict[str, Any]:
    """One wrk run POSTing the client_credentials form; its summary."""
    with tempfile.TemporaryDirectory(prefix="rotor-bench-") as tmp:
        script = Path(tmp) / "token.lua"
        script.write_text(WRK_SCRIPT.format(form=FORM, basic=basic(credentials)))
        run = subprocess.run(
            [
                *("wrk", "-t", "1", "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s"),
                *("--timeout", "10s", "-s", str(script), url),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    if run.returncode != 0:
        raise HarnessError(f"wrk exited {run.returncode}: {run.stderr.strip()[-500:]}")
    summary: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    tokens = summary["requests"] - summary["status_errors"]
    if tokens <= 0:
        raise HarnessError(f"wrk on {url}: no token answered ({summary})")
    seconds_run = summary["duration_us"] / 1e6
    return {
        "tokens": tokens,
        "rate": tokens / seconds_run,
        "errors": summary["errors"] + summary["status_errors"],
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
    }


def timed(pid: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`run`, with the server's CPU-seconds per 1,000 tokens over it."""
    before = cpu_seconds(pid)
    result = run()
    spent = cpu_seconds(pid) - before
    tokens = result.get("tokens", result.get("calls", 0))
    return {**result, "cpu_s": spent, "cpu_s_per_1000": spent * 1000 / tokens}


def measure(*, concurrency: int, seconds: float, rounds: int, warmup: float) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise HarnessError("wrk is not installed: `make system-packages` installs it")
    with Peer() as peer, Rotor(refresh_tokens=False, http=True) as rotor:
        rotor.start()
        client = rotor.add_client("bench")
        assert rotor.proc is not None and rotor.http_url
        peer_token, rotor_token = f"{peer.url}/token", f"{rotor.http_url}/oauth2/token"
        verify_one(peer_token, f"{peer.url}/jwks", PEER_CLIENT, PEER_AUDIENCE, peer.url)
        verify_one(rotor_token, f"{rotor.http_url}/.well-known/jwks.json", client, "bench", rotor.issuer)
        runs: dict[str, Callable[[float], dict[str, Any]]] = {
            "peer_http": lambda s: timed(peer.proc.pid, lambda: wrk(peer_token, PEER_CLIENT, concurrency, s)),
            "rotor_http": lambda s: timed(rotor.pid, lambda: wrk(rotor_token, client, concurrency, s)),
            "rotor_grpc": lambda s: timed(
                rotor.pid,
                lambda: load(rotor.address, "issue", concurrency=concurrency, seconds=s, credentials=client),
            ),
        }
        if warmup:
            for run in runs.values():
                run(warmup)
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                measured[name].append(run(seconds))
                time.sleep(0.2)  # the last connections close before the next run
    sides = {
        name: {
            "rate": statistics.median(r["rate"] for r in rs),
            "cpu_s_per_1000": statistics.median(r["cpu_s_per_1000"] for r in rs),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "rounds": [{"rate": r["rate"], "cpu_s_per_1000": r["cpu_s_per_1000"]} for r in rs],
        }
        for name, rs in measured.items()
    }
    peer_cpu, peer_rate = sides["peer_http"]["cpu_s_per_1000"], sides["peer_http"]["rate"]
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "rounds": rounds,
        "oidc_provider": _installed_version(),
        "sides": sides,
        "ratios": {
            "grpc_tokens_per_cpu": peer_cpu / sides["rotor_grpc"]["cpu_s_per_1000"],
            "http_tokens_per_cpu": peer_cpu / sides["rotor_http"]["cpu_s_per_1000"],
            "http_throughput": sides["rotor_http"]["rate"] / peer_rate,
        },
    }


def _installed_version() -> str:
    package = PEER_DIR / "node_modules/oidc-provider/package.json"
    return str(json.loads(package.read_text())["version"])
