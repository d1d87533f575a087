"""Processes for the e2e tests: `rotor serve` on a free loopback port, the `rotor` CLI, grpcurl.

Everything runs the installed console scripts found next to the running
interpreter (an unactivated venv's bin/), as a user would.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import rotor_client
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from host import exclusive, free_port

BIN = pathlib.Path(sys.executable).parent
ROTOR = shutil.which("rotor", path=str(BIN)) or shutil.which("rotor")
ISSUER = "https://rotor.test"
DEV_ADDRESS = ("127.0.0.1", 50051)
POSTGRES = os.environ.get("ROTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PSQL = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", "test", "-At", "-q"]

BASE_CONFIG: dict[str, Any] = {
    "issuer": ISSUER,
    "keys": {"rotation_period": "1h", "publish_lead": "2s", "max_cache_age": "1s", "clock_skew": "1s"},
    "tokens": {"access_ttl": "10m", "max_access_ttl": "1h", "refresh_ttl": "1h"},
}

# Reconnect quickly after a restart: the default backoff starts at 1 s and grows to 2 min.
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


def psql(sql: str) -> str:
    done = subprocess.run([*PSQL, "-c", sql], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@contextlib.contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """The URL of a fresh schema named PREFIX_<random>, dropped afterwards. PostgreSQL must be
    there in CI; elsewhere its absence skips."""
    try:
        psql("SELECT 1")
    except (AssertionError, FileNotFoundError) as e:
        if os.environ.get("CI"):
            raise AssertionError(f"PostgreSQL at 127.0.0.1:5432 is required in CI: {e}") from None
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({e})")
    schema = f"{prefix}_{os.urandom(6).hex()}"
    try:
        yield f"{POSTGRES}?search_path={schema}"
    finally:
        psql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def rotor_exe() -> str:
    assert ROTOR, f"no `rotor` command next to {sys.executable} or on PATH: pip install -e . first"
    return ROTOR


def env_with_bin(**extra: str) -> dict[str, str]:
    """The environment with the venv's bin/ first on PATH (grpcurl, rotor, python3)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTOR_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def to_toml(config: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        return json.dumps(v)

    top = [f"{k} = {value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    tables = [
        f"[{name}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in table.items())
        for name, table in config.items()
        if isinstance(table, dict)
    ]
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(base))
    for k, v in overrides.items():
        if isinstance(v, dict):
            out.setdefault(k, {}).update(v)
        else:
            out[k] = v
    return out


def run_rotor(
    *args: str, cwd: pathlib.Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [rotor_exe(), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or env_with_bin(),
        timeout=timeout,
    )


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo in a failed call's google.rpc.Status, if any."""
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    return None


def wait_serving(address: str, proc: subprocess.Popen[Any], timeout: float, log: Any) -> None:
    """Until health says SERVING; fails if the process exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address, options=FAST_RECONNECT) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"rotor serve exited with {proc.returncode}:\n{log()}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"rotor serve was not SERVING within {timeout}s:\n{log()}")


class RotorProcess:
    """One `rotor serve --config FILE` process on a private data dir and a free port."""

    def __init__(
        self,
        workdir: pathlib.Path,
        overrides: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: variables the process gets beyond PATH (the ROTOR_* of this one are not passed on)."""
        self.workdir = workdir
        self.env = env or {}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        config = merged(BASE_CONFIG, {"listen": self.address, "data_dir": str(workdir / "data")})
        self.config = merged(config, overrides or {})
        self.config_path = workdir / "rotor.toml"
        self.config_path.write_text(to_toml(self.config))
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._channels: list[grpc.Channel] = []

    def start(self, timeout: float = 30.0) -> RotorProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [rotor_exe(), "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env_with_bin(**self.env),
            )
        wait_serving(self.address, self.proc, timeout, self.log)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9, and wait until it is gone."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address, options=FAST_RECONNECT)
        self._channels.append(channel)
        return channel

    def tokens(self) -> rotor_client.TokenServiceStub:
        return rotor_client.TokenServiceStub(self.channel())

    def admin(self) -> rotor_client.KeyAdminStub:
        return rotor_client.KeyAdminStub(self.channel())

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`rotor ARGS... --config FILE`."""
        return run_rotor(*args, "--config", str(self.config_path), cwd=self.workdir, env=env)

    def add_client(self, name: str, *options: str) -> dict[str, str]:
        done = self.cli("clients", "add", name, "--json", *options)
        assert done.returncode == 0, f"clients add {name} failed:\n{done.stdout}\n{done.stderr}"
        client: dict[str, str] = json.loads(done.stdout)
        return client

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self.running():
            self.kill()


def basic(client: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return rotor_client.basic_auth(client["client_id"], client["client_secret"])


# -- the dev server ----------------------------------------------------------------


def assert_dev_port_free() -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no owner
        try:
            s.bind(DEV_ADDRESS)
        except OSError as e:
            raise AssertionError(
                f"127.0.0.1:{DEV_ADDRESS[1]} is busy ({e.strerror}): `rotor serve --dev` always listens "
                "there; stop whatever holds the port and run the test again"
            ) from None


class DevServer:
    """`rotor serve --dev` in `workdir` (so ./data is private), with its banner parsed.

    Its ports are fixed, so from start to stop it holds a machine-wide lock: a dev server of another
    xdist worker (or of another checkout's tests) waits for this one to stop."""

    GRPCURL = re.compile(r"^\s*(grpcurl .*)$", re.M)
    SECRET = re.compile(r"client_secret:\s*(\S+)")
    EXPORT = re.compile(r"^\s*(export ROTOR=.*)$", re.M)

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "dev-server.log"
        self.banner = ""
        self.proc: subprocess.Popen[str] | None = None
        self._port_lock = contextlib.ExitStack()

    def start(self, timeout: float = 30.0) -> DevServer:
        self._port_lock.enter_context(exclusive(f"dev-server-{DEV_ADDRESS[1]}"))
        assert_dev_port_free()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [rotor_exe(), "serve", "--dev"],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=self.workdir,
                env=env_with_bin(),
            )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.GRPCURL.search(self.banner):
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no grpcurl line within {timeout}s:\n{self.banner}\n{self.log()}"
                ) from None
            if line is None:
                raise AssertionError(f"rotor serve --dev exited:\n{self.banner}\n{self.log()}")
            self.banner += line
        with contextlib.suppress(queue.Empty):  # the rest of the banner, printed in the same write
            while (line := lines.get(timeout=0.5)) is not None:
                self.banner += line
        return self

    @property
    def grpcurl_line(self) -> str:
        match = self.GRPCURL.search(self.banner)
        assert match, self.banner
        return match.group(1).strip()

    @property
    def secret(self) -> str:
        match = self.SECRET.search(self.banner)
        assert match, self.banner
        return match.group(1)

    @property
    def export_line(self) -> str | None:
        match = self.EXPORT.search(self.banner)
        return match.group(1).strip() if match else None

    @property
    def auth(self) -> str:
        """The Basic credential in the grpcurl line."""
        match = re.search(r"authorization: Basic ([A-Za-z0-9+/=]+)", self.grpcurl_line)
        assert match, self.grpcurl_line
        return match.group(1)

    @property
    def address(self) -> str:
        return f"{DEV_ADDRESS[0]}:{DEV_ADDRESS[1]}"

    def credentials(self) -> tuple[str, str]:
        client_id, _, secret = base64.b64decode(self.auth).decode().partition(":")
        return client_id, secret

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> int | None:
        with self._port_lock:  # released once the process is gone
            if self.proc is None or self.proc.poll() is not None:
                return None if self.proc is None else self.proc.returncode
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("rotor serve --dev ignored SIGTERM for 30 s") from None

    def __enter__(self) -> DevServer:
        try:
            return self.start()
        except BaseException:
            with self._port_lock:
                if self.proc is not None and self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bash(
    script: str, env: dict[str, str], cwd: pathlib.Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )
