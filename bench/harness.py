"""The processes a benchmark run starts, and how it talks to them.

A `Rotor` is `rotor serve --config FILE` on a fresh store of its own, its
clients registered with `rotor clients add`; a `Baseline` is bench/baseline.py;
`load` runs bench/load.py processes side by side and merges what they measured;
a `Script` is any bench script in a process of its own.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = Path(__file__).resolve().parent
ROTOR = str(Path(sys.executable).parent / "rotor")
AUDIENCE = "bench"
CONFIG = """\
issuer = "https://bench.internal"
listen = "{address}"
data_dir = "{data}"
database_url = "{database_url}"
{http}
[tokens]
refresh_ttl = "{refresh_ttl}"
"""
# Rate limits off and watcher caps far above any figure: the benchmark measures the work, not the
# limits. Each is written only if this Rotor's config knows it (`rotor config check`, one at a
# time, so each value must pass next to the others' defaults).
BENCH_LIMITS = {
    "issue_rate": 0,
    "refresh_rate": 0,
    "watchers_per_client": 10_000,
    "max_watchers": 100_000,
}
DEFAULT_WATCHERS_PER_CLIENT = 100  # the documented cap when [limits] cannot raise it
SERVING_LINE = "serving rotor.v1 on"  # each worker logs it once it listens


class HarnessError(Exception):
    """Raised when a part of the benchmark breaks: a process fails, a run gets no answers."""


SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


# figure -> (load.py method, whether the server issues refresh tokens), for every RPC figure
FIGURES: dict[str, tuple[str, bool]] = {
    "issue_no_refresh": ("issue", False),
    "issue_refresh": ("issue", True),
    "refresh": ("refresh", True),
    "revoke": ("revoke", False),
    "keyset": ("keyset", True),
    "issue_pkcs11": ("issue", False),
}
PKCS11_FIGURES = {"issue_pkcs11"}  # keys on a SoftHSM2 token: every signature a C_Sign


def softhsm_token(home: Path) -> dict[str, str]:
    """A fresh SoftHSM2 token labelled rotor-bench under `home`; the environment that reaches it."""
    util = shutil.which("softhsm2-util")
    if util is None or not Path(SOFTHSM2_MODULE).exists():
        raise HarnessError("the PKCS#11 figure needs SoftHSM2: install the Debian package softhsm2")
    tokens = home / "tokens"
    tokens.mkdir(parents=True)
    conf = home / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf), "ROTOR_PKCS11_PIN": "bench-pin"}
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            "rotor-bench",
            "--pin",
            "bench-pin",
            "--so-pin",
            "bench-so",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
    )
    return env


@dataclass(frozen=True, slots=True)
class Credentials:
    client_id: str
    client_secret: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> None:
    """Let this process and its children hold as many files (connections) as the system allows."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_bytes(pid: int) -> int:
    """A process's resident set size, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise HarnessError(f"no VmRSS for process {pid}")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise HarnessError("a percentile of nothing")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def serving(address: str) -> bool:
    """Whether gRPC health at `address` answers SERVING now (a fresh channel: no reconnect backoff)."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


class Script:
    """A bench script in a process of its own.

    It speaks in lines on stdout (`ready`, a port) and leaves its result as JSON in the file
    named by --out (a result of a few hundred KB printed to the pipe was seen cut short at
    128 KiB). Its stderr goes to a file, quoted when it fails.
    """

    def __init__(self, name: str, *argv: str, stdin: bool = False, result: bool = True) -> None:
        self.name = name
        self._files = tempfile.TemporaryDirectory(prefix="rotor-bench-")
        self._result = Path(self._files.name) / "result.json"
        self._stderr = Path(self._files.name) / "stderr"
        with open(self._stderr, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / name), *argv, *(["--out", str(self._result)] if result else [])],
                stdin=subprocess.PIPE if stdin else None,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )

    def line(self, timeout: float) -> str:
        """The next line it prints; HarnessError when it exits or stays silent."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise self._failed("no answer")
        return line.strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def result(self, timeout: float) -> Any:
        """Its result, once it has exited successfully."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._failed(f"not done within {timeout:.0f} s") from None
        if self.proc.returncode != 0 or not self._result.exists():
            raise self._failed(f"exited {self.proc.returncode}")
        return json.loads(self._result.read_text())

    def _failed(self, what: str) -> HarnessError:
        stop(self.proc)
        return HarnessError(f"{self.name}: {what}; its stderr ends:\n{self._stderr.read_text()[-2000:]}")

    def stop(self) -> None:
        stop(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._files.cleanup()


def stop(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@functools.cache
def accepted_limits() -> dict[str, int]:
    """The settings of BENCH_LIMITS that this Rotor's config accepts, each checked on its own."""
    accepted = {}
    with tempfile.TemporaryDirectory(prefix="rotor-bench-") as tmp:
        for key, value in BENCH_LIMITS.items():
            config = Path(tmp) / "check.toml"
            config.write_text(f"[limits]\n{key} = {value}\n")
            check = subprocess.run([ROTOR, "config", "check", str(config)], capture_output=True)
            if check.returncode == 0:
                accepted[key] = value
    return accepted


def watchers_per_client() -> int:
    return accepted_limits().get("watchers_per_client", DEFAULT_WATCHERS_PER_CLIENT)


class Rotor:
    """`rotor serve --config FILE` on a fresh store in a temporary directory of its own."""

    issuer = "https://bench.internal"

    def __init__(
        self,
        *,
        refresh_tokens: bool = True,
        workers: int = 1,
        database_url: str = "",
        http: bool = False,
        pkcs11: bool = False,
    ) -> None:
        """`pkcs11`: keys on a SoftHSM2 token of its own (Debian package softhsm2), signing by C_Sign."""
        self.workers = workers
        self.workdir = Path(tempfile.mkdtemp(prefix="rotor-bench-"))
        self.address = f"127.0.0.1:{free_port()}"
        self.http_url = f"http://127.0.0.1:{free_port()}" if http else ""  # the OAuth side port
        self.config = self.workdir / "rotor.toml"
        text = CONFIG.format(
            address=self.address,
            data=self.workdir / "data",
            database_url=database_url,
            http=f'http_listen = "{self.http_url.removeprefix("http://")}"\n' if http else "",
            refresh_ttl="24h" if refresh_tokens else "0s",  # "0s": the server issues none
        )
        self.env = dict(os.environ)
        if pkcs11:
            self.env.update(softhsm_token(self.workdir / "softhsm"))
            text += (
                '\n[keys]\nkey_store = "pkcs11"\n\n[pkcs11]\n'
                f'module = "{SOFTHSM2_MODULE}"\ntoken_label = "rotor-bench"\npin_env = "ROTOR_PKCS11_PIN"\n'
            )
        limits = accepted_limits()
        if limits:
            text += "\n[limits]\n" + "".join(f"{key} = {value}\n" for key, value in limits.items())
        self.config.write_text(text)
        self.log = self.workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> float:
        """Start the server; the seconds from spawning it until every worker is SERVING."""
        with open(self.log, "ab") as log:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                [ROTOR, "serve", "--config", str(self.config), "--workers", str(self.workers)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = started + timeout
        while not (serving(self.address) and self._serving_workers() >= self.workers):
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"rotor serve exited {self.proc.returncode}:\n{self.log.read_text()[-2000:]}"
                )
            if time.perf_counter() > deadline:
                raise HarnessError(f"rotor serve: not SERVING within {timeout} s")
            time.sleep(0.01)
        return time.perf_counter() - started

    def _serving_workers(self) -> int:
        if self.workers == 1:
            return 1
        return self.log.read_text(errors="replace").count(SERVING_LINE)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
        # a restart logs its own serving lines
        self.log.write_bytes(b"")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "started"
        return self.proc.pid

    def serving_pids(self) -> list[int]:
        """The processes that serve calls: this one, or with --workers N its N workers."""
        if self.workers == 1:
            return [self.pid]
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def add_client(self, name: str, *, admin: bool = False) -> Credentials:
        argv = [ROTOR, "clients", "add", name, "--audience", AUDIENCE, "--config", str(self.config), "--json"]
        added = subprocess.run([*argv, *(["--admin"] if admin else [])], capture_output=True, text=True)
        if added.returncode != 0:
            raise HarnessError(f"rotor clients add {name}: {added.stderr.strip()}")
        return Credentials(**json.loads(added.stdout))

    def __enter__(self) -> Rotor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Baseline:
    """A bare server a Rotor figure is a ratio to: bench/baseline.py (a no-op unary method) or,
    for the fan-out, bench/fanout_floor.py."""

    def __init__(self, script: str = "baseline.py") -> None:
        self.name = script

    def __enter__(self) -> Baseline:
        self.script = Script(self.name, result=False)
        self.address = f"127.0.0.1:{self.script.line(30)}"
        self.pid = self.script.proc.pid
        return self

    def __exit__(self, *exc: object) -> None:
        self.script.stop()


def load(
    target: str,
    method: str,
    *,
    concurrency: int,
    seconds: float,
    credentials: Credentials | None = None,
    processes: int = 1,
    channels: int = 64,
    before_go: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run bench/load.py in `processes` processes at once, sharing `concurrency`; merge their figures.

    `before_go` runs once every process is ready, just before the timed window opens.

    Raises HarnessError when the run got no answer at all.
    """
    argv = [f"--target={target}", f"--method={method}", f"--seconds={seconds}", f"--channels={channels}"]
    if credentials is not None:  # `=`: a secret may start with "-"
        argv += [f"--client-id={credentials.client_id}", f"--client-secret={credentials.client_secret}"]
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    scripts = [Script("load.py", *argv, f"--concurrency={n}", stdin=True) for n in shares if n]
    try:
        for script in scripts:
            if script.line(60 + seconds) != "ready":
                raise HarnessError("load.py: expected `ready`")
        if before_go is not None:
            before_go()
        for script in scripts:
            script.send("go\n")
        results = [script.result(60 + seconds) for script in scripts]
    finally:
        for script in scripts:
            script.stop()
    latencies = sorted(ms for r in results for ms in r["latencies_ms"])
    calls, errors = len(latencies), sum(r["errors"] for r in results)
    first_error = next((r["first_error"] for r in results if r["first_error"]), "")
    if not calls:
        raise HarnessError(f"{method} on {target}: no call succeeded ({errors} errors; {first_error})")
    elapsed = max(r["seconds"] for r in results)
    return {
        "rate": calls / elapsed,
        "calls": calls,
        "errors": errors,
        "first_error": first_error,
        "exhausted": any(r["exhausted"] for r in results),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
    }
