"""Where a call's server CPU goes: each RPC under load with py-spy sampling the server.

For each figure a fresh server (the baseline, or Rotor as bench/run.py starts it) takes
bench/load.py's load for a while; py-spy samples every thread of the server meanwhile
(`--nonblocking`: the server is never paused). The server's CPU time over the window is read
per thread from /proc/PID/task/TID/stat, so:

- a Python thread's CPU is shared among the stages its samples fall in;
- a thread py-spy never saw in Python code (gRPC core's event_engine and timer threads) is
  counted whole as transport.

Dividing by the calls answered in the window gives µs of server CPU per call, by stage. Each
sample's stage is that of its innermost frame a rule names (STAGES, first rule first); a sample
in no rule's frames (the event loop, grpc.aio's own Python, asyncio) is transport and glue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
from harness import Baseline, Credentials, HarnessError, Rotor, load

PY_SPY = str(Path(sys.executable).parent / "py-spy")
TICKS = os.sysconf("SC_CLK_TCK")

# the RPC figures profiled, in the table's order, after the no-op baseline ("noop")
FIGURES: dict[str, tuple[str, bool]] = {
    "baseline": ("noop", False),
    **{f: harness.FIGURES[f] for f in ("keyset", "issue_no_refresh", "issue_refresh", "refresh", "revoke")},
}

TRANSPORT = "transport and grpc.aio glue"
# (stage, what a frame's "function (file:line)" text contains, whether only the innermost frame
# counts); the first stage whose rule matches the innermost matching frame wins
Rule = tuple[str, tuple[str, ...], bool]
STAGES: list[Rule] = [
    ("metrics and logging", ("rotor/metrics.py", "prometheus_client/", "logging/", "rotor/logs.py"), False),
    ("metrics and logging", ("_counted_unary.<locals>.call",), True),
    ("event hub", ("rotor/core/events.py", "KeySetCache"), False),
    (
        "commit",
        ("SqliteStore._commit", "SqliteStore._begin", "SqliteStore._open_group", "Connection.commit"),
        False,
    ),
    ("commit", ("concurrent/futures/thread.py",), False),  # BEGIN IMMEDIATE and COMMIT run there
    ("store statements", ("rotor/store/", "aiosqlite/", "sqlite3/", "asyncpg/"), False),
    (
        "signing and signature checks",
        ("jwt/algorithms.py", "cryptography/", "verify_signature", "public_key_from_jwk", "Signer.sign ("),
        True,
    ),
    ("signing and signature checks", ("verify_signature", "public_key_from_jwk"), False),
    (
        "claims and JSON",
        ("json/", "base64.py", "b64url", "decode_unverified", "Signer.sign", "_sign "),
        False,
    ),
    ("claims and JSON", ("secrets.py", "TokenService._sign"), False),
    ("response encoding", ("rotor/api/convert.py", "handlers.py:5", "encode (rotor/api/handlers"), False),
    ("request decoding", ("decoder.<locals>.decode", "_check_decoded"), False),
    ("authentication", ("rotor/api/auth.py", "rotor/core/clients.py", "AuthBackoff", "peer_address"), False),
    ("rate limiting", ("RateLimiter", "TokenCalls._admit"), False),
    ("domain rules (validation, tokens)", ("rotor/core/",), False),
    ("request decoding", ("rotor/api/servicers.py", "rotor/api/oauth.py"), True),
]
STAGE_ORDER = [
    TRANSPORT,
    "request decoding",
    "authentication",
    "rate limiting",
    "store statements",
    "commit",
    "signing and signature checks",
    "claims and JSON",
    "domain rules (validation, tokens)",
    "response encoding",
    "metrics and logging",
    "event hub",
]


def stage_of(frames: list[str]) -> str:
    """The stage of one sample's stack (outermost frame first)."""
    for depth, frame in enumerate(reversed(frames)):
        for stage, needles, innermost in STAGES:
            if innermost and depth:
                continue
            if any(n in frame for n in needles):
                return stage
    return TRANSPORT


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, from /proc/PID/task/TID/stat."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def parse_raw(text: str) -> dict[int, Counter[str]]:
    """py-spy's raw (collapsed) output with --threads: samples per thread, per stage."""
    per_thread: dict[int, Counter[str]] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.startswith("thread ("):
            continue
        thread, *frames = stack.split(";")
        tid = int(thread[len("thread (") :].split(")", 1)[0], 0)
        per_thread.setdefault(tid, Counter())[stage_of(frames)] += int(count)
    return per_thread


def attribute(cpu: dict[int, float], samples: dict[int, Counter[str]], calls: int) -> dict[str, float]:
    """µs of server CPU per call, by stage."""
    us: dict[str, float] = dict.fromkeys(STAGE_ORDER, 0.0)
    for tid, seconds in cpu.items():
        counts = samples.get(tid)
        if not counts:
            us[TRANSPORT] += seconds
            continue
        total = sum(counts.values())
        for stage, n in counts.items():
            us[stage] += seconds * n / total
    return {stage: s * 1e6 / calls for stage, s in us.items()}


def profile_window(
    pid: int, run: Callable[[Callable[[], None]], dict[str, Any]], rate: int
) -> dict[str, Any]:
    """Sample `pid` while `run` loads it; `run` calls its argument just before its timed window."""
    with tempfile.TemporaryDirectory(prefix="rotor-profile-") as tmp:
        raw = Path(tmp) / "raw.txt"
        state: dict[str, Any] = {}

        def start() -> None:
            state["spy"] = subprocess.Popen(
                [
                    *(PY_SPY, "record", "--pid", str(pid), "--rate", str(rate)),
                    *("--format", "raw", "--threads", "--nonblocking", "--output", str(raw)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.2)  # attached before the window opens
            state["cpu"] = thread_cpu(pid)

        result = run(start)
        after = thread_cpu(pid)
        spy = state["spy"]
        spy.send_signal(signal.SIGINT)  # it samples until told to stop, then writes what it saw
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw.exists():
            raise HarnessError(f"py-spy exited {spy.returncode}: {err.strip()[-500:]}")
        samples = parse_raw(raw.read_text())
    before = state["cpu"]
    cpu = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    calls = result["calls"]
    stages = attribute(cpu, samples, calls)
    return {
        "rate": result["rate"],
        "calls": calls,
        "cpu_us_per_call": sum(cpu.values()) * 1e6 / calls,
        "samples": sum(sum(c.values()) for c in samples.values()),
        "stages_us": stages,
    }


def measure_on(
    figures: list[str],
    target: str,
    client: Credentials | None,
    pid: int,
    *,
    concurrency: int,
    seconds: float,
    rate: int,
    warmup: float,
    processes: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Each of `figures`, one after the other, on the same running server."""
    out = {}
    for figure in figures:
        method = FIGURES[figure][0]

        def go(start: Callable[[], None], method: str = method) -> dict[str, Any]:
            return load(
                target,
                method,
                concurrency=concurrency,
                seconds=seconds,
                credentials=client,
                processes=processes,
                before_go=start,
            )

        if warmup:
            load(target, method, concurrency=concurrency, seconds=warmup, credentials=client)
        out[figure] = profile_window(pid, go, rate)
        log(f"profile {figure:<17} {out[figure]['cpu_us_per_call']:.0f} µs of server CPU per call")
    return out


def measure_all(
    *, concurrency: int, seconds: float, rate: int, warmup: float, processes: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Every figure: the baseline on its own server, Rotor's on one server per refresh-token setting."""
    options: dict[str, Any] = {
        "concurrency": concurrency,
        "seconds": seconds,
        "rate": rate,
        "warmup": warmup,
        "processes": processes,
        "log": log,
    }
    out: dict[str, Any] = {}
    with Baseline() as baseline:
        out |= measure_on(["baseline"], baseline.address, None, baseline.script.proc.pid, **options)
    for refresh_tokens in (True, False):
        figures = [f for f, (m, r) in FIGURES.items() if m != "noop" and r is refresh_tokens]
        with Rotor(refresh_tokens=refresh_tokens) as rotor:
            rotor.start()
            client = rotor.add_client("bench")
            out |= measure_on(figures, rotor.address, client, rotor.pid, **options)
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "rate": rate,
        "figures": {f: out[f] for f in FIGURES},
    }
