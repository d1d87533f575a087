"""Issue RPC/s with `rotor serve --workers N` for N = 1, 2, 4, on SQLite and on PostgreSQL.

Each run starts a fresh server (SQLite in a temporary directory, or a fresh
schema in the `test` database at 127.0.0.1:5432), registers a client, and
drives Issue from load processes (bench/load.py) on the same machine. The
figures are ratios to 1 worker on the same backend, measured in the same run.

    python bench/workers.py [--seconds S] [--concurrency C] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
POSTGRES = os.environ.get("ROTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c"]
CONFIG = """
issuer = "https://bench.internal"
listen = "{listen}"
data_dir = "{data}"
database_url = "{database_url}"
[keys]
kek_file = "{data}/kek.key"
[tokens]
refresh_ttl = "{refresh_ttl}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"rotor serve exited with {proc.returncode}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"not SERVING within {timeout} s")


def load(
    address: str, client: dict[str, str], seconds: float, concurrency: int, processes: int
) -> dict[str, Any]:
    """Run `processes` load generators at once; their summed rate and worst latencies."""
    argv = [
        sys.executable,
        str(HERE / "load.py"),
        "--target",
        address,
        "--client-id",
        client["client_id"],
        "--client-secret",
        client["client_secret"],
        "--seconds",
        str(seconds),
        "--concurrency",
        str(max(1, concurrency // processes)),
    ]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    results = [json.loads(p.communicate()[0]) for p in procs]
    return {
        "rate": round(sum(r["rate"] for r in results), 1),
        "errors": sum(r["errors"] for r in results),
        "p50_ms": max(r["p50_ms"] or 0 for r in results),
        "p99_ms": max(r["p99_ms"] or 0 for r in results),
    }


def measure(backend: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rotor-bench-"))
    schema = f"rotor_bench_{secrets.token_hex(6)}"
    database_url = f"{POSTGRES}?search_path={schema}" if backend == "postgres" else ""
    address = f"127.0.0.1:{free_port()}"
    config = workdir / "rotor.toml"
    refresh_ttl = "0s" if args.no_refresh else "24h"
    config.write_text(
        CONFIG.format(
            listen=address, data=workdir / "data", database_url=database_url, refresh_ttl=refresh_ttl
        )
    )
    rotor = str(BIN / "rotor")
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [rotor, "serve", "--config", str(config), "--workers", str(workers)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_serving(address, proc)
        time.sleep(1.0 if workers > 1 else 0.2)  # every worker up, not just the first
        added = subprocess.run(
            [rotor, "clients", "add", "bench", "--audience", "bench", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        client = json.loads(added.stdout)
        load(address, client, 1.0, args.concurrency, args.processes)  # warm up: caches, connections
        result = load(address, client, args.seconds, args.concurrency, args.processes)
        return {"backend": backend, "workers": workers, **result}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if backend == "postgres":
            subprocess.run([*PSQL, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument(
        "--no-refresh", action="store_true", help="Issue without refresh tokens (no store write)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for backend in args.backends.split(","):
        base = None
        for workers in (int(w) for w in args.workers.split(",")):
            row = measure(backend, workers, args)
            base = base or row["rate"]
            row["ratio_to_1_worker"] = round(row["rate"] / base, 2) if base else None
            rows.append(row)
            if not args.json:
                print(
                    f"{backend:<9} {'no refresh' if args.no_refresh else 'refresh':<10} workers={workers}  Issue {row['rate']:>8.1f}/s  x{row['ratio_to_1_worker']:<5} "
                    f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  errors {row['errors']}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
