"""`make bench`: Rotor's performance figures, each next to a baseline measured in the same run.

    python bench/run.py [--smoke] [--parts load,profile,peer,fanout,verify,startup,workers] [--seconds S] ...

Parts:
  load     the baseline (bench/baseline.py) and a fresh Rotor per figure, driven by the same
           load generator (bench/load.py) at each concurrency, baseline and Rotor runs
           alternating, the median of --rounds each: ratios to the baseline, p50/p99 latency
  profile  each RPC under load at --profile-concurrency with py-spy sampling the server
           (bench/attribution.py): server CPU per call, by stage (`make bench-profile` runs it alone)
  peer     node oidc-provider's /token (bench/peer/) next to Rotor's /oauth2/token, both driven by
           wrk at --peer-concurrency, and Rotor's gRPC Issue by bench/load.py, alternating
           (bench/peer.py): throughput, and server CPU-seconds per 1,000 tokens
  fanout   N watchers (bench/watchers.py processes) on WatchKeyRotations, then RotateKeys:
           the time from the event's commit to its arrival at every watcher, the server's
           memory per idle watcher and the CPU the delivery took; the same watchers on a bare
           grpc.aio fan-out server (bench/fanout_floor.py) first, in each round
  verify   rotor_client.Verifier against raw jwt.decode, in this process (bench/verify.py)
  startup  spawn to SERVING, on a fresh store and on an existing one
  workers  Issue with `rotor serve --workers N` (bench/workers.py), as ratios to 1 worker

It writes bench/results/latest.json and docs/benchmarks.md with its plots (bench/report.py).
--smoke runs every part in seconds and writes under bench/results/ only (smoke.json, smoke/).
A run of some parts only keeps the other parts' figures from the JSON it rewrites.
It exits non-zero when a part of the harness breaks, never because a figure misses its target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attribution
import grpc
import peer
import report
import verify
import workers
from harness import (
    FIGURES,
    HERE,
    PKCS11_FIGURES,
    Baseline,
    Credentials,
    HarnessError,
    Rotor,
    Script,
    accepted_limits,
    load,
    percentile,
    raise_fd_limit,
    rss_bytes,
    watchers_per_client,
)
from rotor import loop
from rotor_client import KeyAdminStub, ListKeysRequest, RotateKeysRequest, basic_auth

ROOT = HERE.parent
PARTS = ("load", "profile", "peer", "fanout", "verify", "startup", "workers")
SMOKE = {
    "concurrency": "4",
    "seconds": 0.2,
    "rounds": 1,
    "warmup": 0.0,
    "watchers": "50",
    "watcher_processes": 2,
    "fanout_rounds": 1,
    "settle": 0.2,
    "startup_rounds": 1,
    "workers": "1",
    "verify_rounds": 1,
    "verify_seconds": 0.05,
    "profile_seconds": 0.3,
    "profile_concurrency": 16,
    "peer_seconds": 1.0,
    "peer_rounds": 1,
    "json": ROOT / "bench/results/smoke.json",
    "markdown": ROOT / "bench/results/smoke/benchmarks.md",
}


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n]


# -- load --------------------------------------------------------------------------


def measure_load(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure, each against the same baseline server."""
    with Baseline() as baseline:
        return {figure: measure_figure(figure, baseline.address, args) for figure in FIGURES}


def measure_figure(figure: str, baseline: str, args: argparse.Namespace) -> dict[str, Any]:
    """One figure on a fresh Rotor; per concurrency, --rounds of (baseline run, Rotor run)."""
    method, refresh_tokens = FIGURES[figure]
    with Rotor(refresh_tokens=refresh_tokens, pkcs11=figure in PKCS11_FIGURES) as rotor:
        rotor.start()
        client = rotor.add_client("bench")

        def run(target: str, method: str, concurrency: int, seconds: float) -> dict[str, Any]:
            return load(
                target,
                method,
                concurrency=concurrency,
                seconds=seconds,
                credentials=client,
                processes=args.load_processes,
                channels=args.channels,
            )

        if args.warmup:
            run(rotor.address, method, max(numbers(args.concurrency)), args.warmup)
        rows = []
        for concurrency in numbers(args.concurrency):
            pairs = []
            for _ in range(args.rounds):
                base = run(baseline, "noop", concurrency, args.seconds)
                pairs.append((base, run(rotor.address, method, concurrency, args.seconds)))
            rows.append(summarize(concurrency, pairs))
            log(f"{figure:<17} c={concurrency:<3} ratio {rows[-1]['ratio']:.3f}")
    return {"method": method, "refresh_tokens": refresh_tokens, "rows": rows}


def summarize(concurrency: int, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The medians of the rounds at one concurrency.

    The ratio is the median of each round's ratio (a Rotor run to the baseline run just before
    it), so a change in the machine's other work between rounds hits both sides of each ratio.
    """

    def median(side: int, key: str) -> float:
        return statistics.median(pair[side][key] for pair in pairs)

    return {
        "concurrency": concurrency,
        "rate": median(1, "rate"),
        "baseline_rate": median(0, "rate"),
        "ratio": statistics.median(ours["rate"] / base["rate"] for base, ours in pairs),
        "p50_ms": median(1, "p50_ms"),
        "p99_ms": median(1, "p99_ms"),
        "baseline_p50_ms": median(0, "p50_ms"),
        "baseline_p99_ms": median(0, "p99_ms"),
        "errors": sum(o["errors"] + b["errors"] for b, o in pairs),
        "first_error": next(
            (o["first_error"] or b["first_error"] for b, o in pairs if o["errors"] or b["errors"]), ""
        ),
        "exhausted": any(o["exhausted"] for _, o in pairs),
        "rounds": [{"rate": o["rate"], "baseline_rate": b["rate"]} for b, o in pairs],
    }


# -- fan-out -----------------------------------------------------------------------


def measure_fanout(n: int, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One round at N watchers on a fresh Rotor (`rotor serve --workers W`), each with N watchers
    over --watcher-processes processes and one rotation by an admin; with one worker, first the
    same on the bare fan-out server (bench/fanout_floor.py), a single process too."""
    bare = {}
    if workers == 1:
        with Baseline("fanout_floor.py") as floor:
            anyone = Credentials("floor", "-")  # the bare server checks no credentials
            plans = watcher_plans(n, args.watcher_processes, [anyone], n)
            bare = {
                "bare": {
                    k: v
                    for k, v in fan_out(floor.address, [floor.pid], anyone, plans, args).items()
                    if k in BARE_FIGURES
                }
            }
    with Rotor(workers=workers) as rotor:
        rotor.start()
        admin = rotor.add_client("bench-admin", admin=True)
        per_client = watchers_per_client()
        clients = [rotor.add_client(f"bench-watcher-{i}") for i in range(math.ceil(n / per_client))]
        plans = watcher_plans(n, args.watcher_processes, clients, per_client)
        figures = fan_out(rotor.address, rotor.serving_pids(), admin, plans, args)
    return {
        "watchers": n,
        "workers": workers,
        "processes": args.watcher_processes,
        "channels_per_process": args.watcher_channels,
        "clients": len(clients),
        **figures,
        **bare,
    }


BARE_FIGURES = ("p50_ms", "p99_ms", "cdf_ms", "bytes_per_watcher", "server_cpu_ms", "watchers_cpu_ms")


def fan_out(
    address: str, pids: list[int], admin: Credentials, plans: list[list[str]], args: argparse.Namespace
) -> dict[str, Any]:
    """Open the planned watchers on the server at `address` (served by processes `pids`), rotate
    once as `admin`, and measure the event's way to every watcher."""
    time.sleep(args.settle)
    rss_before = sum(map(rss_bytes, pids))
    scripts = [
        Script("watchers.py", f"--target={address}", f"--channels={args.watcher_channels}", *plan)
        for plan in plans
    ]
    try:
        for script in scripts:
            _, _, failed, *error = script.line(180).split(" ", 3)
            if int(failed):
                raise HarnessError(f"{failed} watchers failed before their snapshot: {' '.join(error)}")
        time.sleep(args.settle)
        rss_after = sum(map(rss_bytes, pids))
        server_cpu = sum(map(peer.cpu_seconds, pids))
        sent, answered = rotate(address, admin)
        results = [script.result(180) for script in scripts]
        server_cpu = sum(map(peer.cpu_seconds, pids)) - server_cpu
    finally:
        for script in scripts:
            script.stop()
    n = sum(len(r["received"]) + r["missing"] for r in results)
    missing = sum(r["missing"] for r in results)
    events = {(r["event"]["sequence"], r["event"]["occurred_at"]) for r in results}
    if missing or len(events) != 1 or any(r["distinct_events"] != 1 for r in results):
        errors = [e for r in results for e in r["errors"]]
        raise HarnessError(f"{missing} of {n} watchers never got the rotation's event; {errors[:3]}")
    occurred_at = results[0]["event"]["occurred_at"]
    arrivals = sorted(t for r in results for t in r["received"])
    from_commit = [(t - occurred_at) * 1000 for t in arrivals]
    from_sent = [(t - sent) * 1000 for t in arrivals]
    return {
        "event": results[0]["event"]["type"],
        "rotate_call_ms": (answered - sent) * 1000,
        "occurred_after_sent_ms": (occurred_at - sent) * 1000,
        "p50_ms": percentile(from_commit, 0.50),
        "p99_ms": percentile(from_commit, 0.99),
        "max_ms": from_commit[-1],
        "from_sent_p50_ms": percentile(from_sent, 0.50),
        "from_sent_p99_ms": percentile(from_sent, 0.99),
        "from_sent_max_ms": from_sent[-1],
        "cdf_ms": [percentile(from_commit, i / 100) for i in range(1, 101)],
        "rss_before": rss_before,
        "rss_after": rss_after,
        "bytes_per_watcher": (rss_after - rss_before) / n,
        # CPU from the rotation until every watcher read its event: where the delivery's time goes
        "server_cpu_ms": server_cpu * 1000,
        "watchers_cpu_ms": sum(r["cpu_s"] for r in results) * 1000,
    }


def median_fanout(n: int, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """--fanout-rounds rotations to N watchers, each on a fresh server: the round whose p99 is the
    median, with every round's p99 beside it."""
    rounds = sorted(
        (measure_fanout(n, workers, args) for _ in range(args.fanout_rounds)), key=lambda r: r["p99_ms"]
    )
    chosen = rounds[len(rounds) // 2]
    return {**chosen, "rounds_p99_ms": [r["p99_ms"] for r in rounds]}


def watcher_plans(n: int, processes: int, clients: list[Credentials], per_client: int) -> list[list[str]]:
    """Each process's --client ID:SECRET:STREAMS arguments: n streams in all, per_client at most per client."""
    owners = [clients[i // per_client] for i in range(n)]
    plans = []
    for p in range(processes):
        share = owners[p * n // processes : (p + 1) * n // processes]
        counts = {c: share.count(c) for c in dict.fromkeys(share)}
        plans.append([f"--client={c.client_id}:{c.client_secret}:{k}" for c, k in counts.items()])
    return [plan for plan in plans if plan]


def rotate(address: str, admin: Credentials) -> tuple[float, float]:
    """RotateKeys as `admin`, after an untimed ListKeys (the secret is checked once, then cached).

    Returns when the call was sent and when it was answered (wall clock).
    """
    metadata = basic_auth(admin.client_id, admin.client_secret)
    with grpc.insecure_channel(address) as channel:
        stub = KeyAdminStub(channel)
        stub.ListKeys(ListKeysRequest(), metadata=metadata, timeout=30)
        sent = time.time()
        stub.RotateKeys(RotateKeysRequest(reason="benchmark fan-out"), metadata=metadata, timeout=30)
        return sent, time.time()


# -- start-up, workers, verification -----------------------------------------------


def measure_startup(args: argparse.Namespace) -> dict[str, Any]:
    fresh, existing = [], []
    for _ in range(args.startup_rounds):
        with Rotor() as rotor:
            fresh.append(rotor.start())
            rotor.stop()
            existing.append(rotor.start())
    return {
        "fresh_s": statistics.median(fresh),
        "existing_s": statistics.median(existing),
        "fresh_runs": fresh,
        "existing_runs": existing,
    }


def measure_workers(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for refresh_tokens in (False, True):
        rows += workers.scale(
            numbers(args.workers),
            refresh_tokens=refresh_tokens,
            concurrency=max(numbers(args.concurrency)),
            seconds=args.seconds,
            rounds=args.rounds,
            warmup=args.warmup,
            processes=args.load_processes,
        )
    return rows


def measure_verify(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [verify.measure(alg, args.verify_rounds, args.verify_seconds) for alg in verify.KEYS]


# -- the run -----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), ""
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    )
    return {
        "cpu": model or platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "loop": loop.name(),
        "rotor": commit.stdout.strip(),
    }


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def run_part(name: str, measure: Callable[[], Any], results: dict[str, Any]) -> None:
    log(f"{name} ...")
    started = time.monotonic()
    try:
        results[name] = measure()
    except Exception as e:
        results["failures"].append(f"{name}: {e}")
        log(f"{name} FAILED: {e}\n{traceback.format_exc()}")
    log(f"{name}: {time.monotonic() - started:.0f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="every part in seconds; results under bench/results/"
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="the parts to run")
    parser.add_argument("--concurrency", default="1,16,64", help="calls in flight, per load run")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one load run")
    parser.add_argument(
        "--rounds", type=int, default=5, help="runs per figure and concurrency; the median counts"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="an untimed load run on each new server")
    parser.add_argument("--load-processes", type=int, default=1, help="load generator processes per run")
    parser.add_argument("--channels", type=int, default=64, help="connections per load process")
    parser.add_argument("--watchers", default="1000,5000,10000", help="watcher counts for the fan-out")
    parser.add_argument("--watcher-processes", type=int, default=4)
    parser.add_argument(
        "--fanout-workers", default="1,2", help="`rotor serve --workers` counts for the fan-out"
    )
    parser.add_argument(
        "--fanout-rounds", type=int, default=3, help="rotations per watcher count; the median p99 counts"
    )
    parser.add_argument("--watcher-channels", type=int, default=4, help="connections per watcher process")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before each memory reading")
    parser.add_argument("--startup-rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2,4", help="worker counts for `rotor serve --workers`")
    parser.add_argument("--verify-rounds", type=int, default=5)
    parser.add_argument("--verify-seconds", type=float, default=0.5)
    parser.add_argument("--profile-seconds", type=float, default=4.0, help="the sampled window per RPC")
    parser.add_argument("--profile-concurrency", type=int, default=64)
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--peer-seconds", type=float, default=3.0, help="the length of one peer run")
    parser.add_argument("--peer-rounds", type=int, default=3)
    parser.add_argument("--peer-concurrency", type=int, default=64)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/latest.json")
    parser.add_argument(
        "--markdown", type=Path, default=ROOT / "docs/benchmarks.md", help="plots go next to it"
    )
    smoke, _ = parser.parse_known_args(argv)
    if smoke.smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    return args


def keep_other_parts(results: dict[str, Any], path: Path, parts: list[str]) -> list[str]:
    """The parts this run left out, taken from the previous results at `path` (so `make
    bench-profile` rewrites the page without dropping the rest). Returns their names."""
    try:
        previous = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    kept = [name for name in PARTS if name not in parts and name in previous]
    for name in kept:
        results[name] = previous[name]
    if kept:
        results["kept_parts"] = {"parts": kept, "from": previous.get("generated_at", "")}
    return kept


def main() -> int:
    args = parse_args()
    raise_fd_limit()
    parts = args.parts.split(",")
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench-smoke" if args.smoke else "make bench",
        "machine": machine(),
        "settings": {
            k: os.path.relpath(v, ROOT) if isinstance(v, Path) else v for k, v in vars(args).items()
        },
        "load_average": [os.getloadavg()[0]],
        "limits": accepted_limits(),
        "failures": [],
    }
    measures: dict[str, Callable[[], Any]] = {
        "load": lambda: measure_load(args),
        "profile": lambda: attribution.measure_all(
            concurrency=args.profile_concurrency,
            seconds=args.profile_seconds,
            rate=args.profile_rate,
            warmup=args.warmup,
            processes=args.load_processes,
            log=log,
        ),
        "peer": lambda: peer.measure(
            concurrency=args.peer_concurrency,
            seconds=args.peer_seconds,
            rounds=args.peer_rounds,
            warmup=args.warmup,
        ),
        "fanout": lambda: [
            median_fanout(n, w, args) for w in numbers(args.fanout_workers) for n in numbers(args.watchers)
        ],
        "verify": lambda: measure_verify(args),
        "startup": lambda: measure_startup(args),
        "workers": lambda: measure_workers(args),
    }
    for name in PARTS:
        if name in parts:
            run_part(name, measures[name], results)
    kept = keep_other_parts(results, args.json, parts)
    if kept:
        log(f"kept from {args.json}: {', '.join(kept)}")
    results["load_average"].append(os.getloadavg()[0])
    report.write(results, args.json, args.markdown)
    print(report.summary(results))
    log(f"wrote {args.json} and {args.markdown}")
    if results["failures"]:
        log("the harness broke: " + "; ".join(results["failures"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
