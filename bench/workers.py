"""Issue RPC/s with `rotor serve --workers N` for N = 1, 2, 4, on SQLite and on PostgreSQL.

Each figure gets a fresh server (SQLite in a temporary directory, or a fresh
schema in the `test` database at 127.0.0.1:5432) and a registered client, and
Issue is driven by bench/load.py on the same machine. The figures are ratios
to 1 worker on the same backend, measured in the same run. `make bench` runs
the SQLite half; this script runs either on its own:

    python bench/workers.py [--seconds S] [--rounds R] [--concurrency C] [--no-refresh] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
from typing import Any

from harness import Rotor, load

POSTGRES = os.environ.get("ROTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c"]


def measure(
    workers: int,
    *,
    refresh_tokens: bool,
    concurrency: int,
    seconds: float,
    rounds: int,
    warmup: float,
    processes: int = 1,
    backend: str = "sqlite",
) -> dict[str, Any]:
    """Issue with `workers` workers on a fresh store: the median of `rounds` runs after a warm-up run."""
    schema = f"rotor_bench_{secrets.token_hex(6)}"
    database_url = f"{POSTGRES}?search_path={schema}" if backend == "postgres" else ""
    try:
        with Rotor(refresh_tokens=refresh_tokens, workers=workers, database_url=database_url) as rotor:
            rotor.start()
            client = rotor.add_client("bench")

            def issue(seconds: float) -> dict[str, Any]:
                return load(
                    rotor.address,
                    "issue",
                    concurrency=concurrency,
                    seconds=seconds,
                    credentials=client,
                    processes=processes,
                )

            if warmup:
                issue(warmup)
            runs = [issue(seconds) for _ in range(rounds)]
    finally:
        if backend == "postgres":
            subprocess.run([*PSQL, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'], capture_output=True)
    return {
        "workers": workers,
        "refresh_tokens": refresh_tokens,
        "rate": statistics.median(r["rate"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "first_error": next((r["first_error"] for r in runs if r["first_error"]), ""),
        "runs": [round(r["rate"], 1) for r in runs],
    }


def scale(counts: list[int], **options: Any) -> list[dict[str, Any]]:
    """`measure` for each worker count, each with its ratio to the first (1 worker)."""
    rows = [measure(n, **options) for n in counts]
    for row in rows:
        row["ratio_to_1_worker"] = row["rate"] / rows[0]["rate"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--no-refresh", action="store_true", help='refresh_ttl = "0s": Issue writes nothing')
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    options = {
        "refresh_tokens": not args.no_refresh,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "processes": args.processes,
    }
    out = []
    for backend in args.backends.split(","):
        for row in scale(counts, backend=backend, **options):
            out.append({"backend": backend, **row})
            if not args.json:
                print(
                    f"{backend:<9} {'refresh' if row['refresh_tokens'] else 'no refresh':<10} "
                    f"workers={row['workers']}  Issue {row['rate']:>8.1f}/s  x{row['ratio_to_1_worker']:.2f}  "
                    f"p50 {row['p50_ms']:.1f} ms  p99 {row['p99_ms']:.1f} ms  errors {row['errors']}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
