"""The benchmark harness (bench/) without servers: how it splits watchers, judges targets and writes its page.

No figure is measured here; `make bench-smoke` runs the harness end to end.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import harness  # noqa: E402 - bench/ is a directory of scripts, put on the path above
import report  # noqa: E402
import run  # noqa: E402


def results(**parts: Any) -> dict[str, Any]:
    base = {
        "generated_at": "2026-01-01 00:00 UTC",
        "command": "make bench",
        "machine": {
            "cpu": "a CPU",
            "cores": 2,
            "memory_gib": 4.0,
            "kernel": "Linux 6",
            "python": "3.11",
            "grpcio": "1.0",
            "loop": "uvloop",
            "rotor": "abc1234",
        },
        "settings": vars(run.parse_args([])) | {"json": "", "markdown": ""},
        "limits": {},
        "load_average": [0.5, 0.7],
        "failures": [],
    }
    return base | parts


def load_row(concurrency: int, ratio: float) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "rate": 100 * ratio,
        "baseline_rate": 100.0,
        "ratio": ratio,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "baseline_p50_ms": 0.5,
        "baseline_p99_ms": 1.0,
        "errors": 0,
        "first_error": "",
        "exhausted": False,
        "rounds": [],
    }


def fanout_row(watchers: int, workers: int, p99: float) -> dict[str, Any]:
    row = {
        "watchers": watchers,
        "workers": workers,
        "processes": 4,
        "channels_per_process": 4,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "max_ms": p99 + 10,
        "from_sent_p50_ms": p99 / 2 + 1,
        "from_sent_p99_ms": p99 + 1,
        "from_sent_max_ms": p99 + 11,
        "rotate_call_ms": 5.0,
        "cdf_ms": [float(i) for i in range(1, 101)],
        "bytes_per_watcher": 20_000.0,
        "server_cpu_ms": 300.0,
        "watchers_cpu_ms": 200.0,
    }
    if workers == 1:
        row["bare"] = {k: row[k] for k in run.BARE_FIGURES}
    return row


def every_part() -> dict[str, Any]:
    return {
        "load": {
            figure: {
                "method": method,
                "refresh_tokens": refresh,
                "rows": [load_row(1, 0.7), load_row(64, 0.55)],
            }
            for figure, (method, refresh) in run.FIGURES.items()
        },
        "fanout": [
            fanout_row(5000, 1, 300.0),
            fanout_row(10_000, 1, 350.0),
            fanout_row(5000, 2, 200.0),
            fanout_row(10_000, 2, 450.0),
        ],
        "profile": {
            "concurrency": 64,
            "seconds": 4.0,
            "rate": 200,
            "figures": {
                figure: {
                    "rate": 1000.0,
                    "calls": 4000,
                    "cpu_us_per_call": 500.0,
                    "samples": 800,
                    "stages_us": {
                        "transport and grpc.aio glue": 400.0,
                        "signing and signature checks": 100.0,
                    },
                }
                for figure in ("baseline", *run.FIGURES)
            },
        },
        "peer": {
            "concurrency": 64,
            "seconds": 3.0,
            "rounds": 3,
            "oidc_provider": "9.13.3",
            "sides": {
                side: {"rate": rate, "cpu_s_per_1000": cpu, "p50_ms": 10.0, "p99_ms": 20.0, "errors": 0}
                for side, rate, cpu in (
                    ("peer_http", 1000.0, 0.9),
                    ("rotor_http", 1100.0, 1.0),
                    ("rotor_grpc", 1200.0, 0.6),
                )
            },
            "ratios": {"grpc_tokens_per_cpu": 1.5, "http_tokens_per_cpu": 0.9, "http_throughput": 1.1},
        },
        "verify": [{"alg": "EdDSA", "verify_per_s": 900, "jwt_decode_per_s": 1000, "ratio": 0.9}],
        "startup": {"fresh_s": 1.2, "existing_s": 0.4, "fresh_runs": [1.2], "existing_runs": [0.4]},
        "workers": [
            {
                "workers": n,
                "refresh_tokens": refresh,
                "rate": 100.0 * n,
                "ratio_to_1_worker": float(n),
                "p50_ms": 1.0,
                "p99_ms": 2.0,
                "errors": 0,
            }
            for refresh in (False, True)
            for n in (1, 2)
        ],
    }


def test_a_run_that_measured_nothing_meets_no_target() -> None:
    judged = report.targets(results())
    assert len(judged) == len(report.TARGETS)
    assert all(t["measured"] is None and t["met"] is None for t in judged)


def test_each_target_is_judged_against_its_own_bound() -> None:
    met = {t["figure"]: t["met"] for t in report.targets(results(**every_part()))}
    assert met == {
        "Issue (no refresh token) / baseline, c=64": False,  # 0.55 < 0.6
        "Issue (with refresh token) / baseline, c=64": True,  # 0.55 >= 0.5
        "Refresh / baseline, c=64": True,
        "Revoke / baseline, c=64": True,  # 0.55 >= 0.35
        "GetKeySet / baseline, c=64": False,
        "rotation fan-out to 5,000 watchers, p99": False,  # 300 ms > 250 ms
        "rotation fan-out to 10,000 watchers, p99": True,  # 350 ms <= 400 ms
        "rotation fan-out to 5,000 watchers, p99 (`rotor serve --workers 2`)": True,  # 200 ms
        "rotation fan-out to 10,000 watchers, p99 (`rotor serve --workers 2`)": False,  # 450 ms
        "server memory per idle watcher (10,000 watchers)": True,  # 20 KB
        "tokens per server CPU-second: Rotor gRPC Issue / oidc-provider /token": True,  # 1.5
        "tokens per server CPU-second: Rotor /oauth2/token / oidc-provider /token": False,  # 0.9
        "HTTP throughput at c=64: Rotor /oauth2/token / oidc-provider /token": True,  # 1.1
        "client verify / raw jwt.decode (EdDSA)": True,
        "start-up to SERVING, fresh store": False,  # 1.2 s
        "start-up to SERVING, existing store": True,
    }


def test_the_page_says_it_is_generated_and_its_links_resolve(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "benchmarks.md"
    report.write(results(**every_part()), tmp_path / "results" / "latest.json", page)
    text = page.read_text()
    assert text.splitlines()[0].startswith("_Generated by `make bench`")
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert (page.parent / target).exists(), target
    assert text.count("| NOT met |") == 6 and "not measured" not in text
    assert "## Where the server's CPU goes" in text and "## Next to a real peer" in text


def test_smoke_mode_writes_neither_the_page_nor_latest_json() -> None:
    smoke, full = run.parse_args(["--smoke"]), run.parse_args([])
    assert full.json == ROOT / "bench/results/latest.json" and full.markdown == ROOT / "docs/benchmarks.md"
    assert smoke.json != full.json and smoke.markdown.parent != full.markdown.parent
    assert smoke.json.parent == ROOT / "bench/results"


@pytest.mark.parametrize(
    ("n", "processes", "per_client"), [(50, 2, 100), (5000, 4, 100), (5000, 4, 10_000), (7, 4, 3)]
)
def test_watchers_are_spread_over_processes_within_each_clients_cap(
    n: int, processes: int, per_client: int
) -> None:
    clients = [harness.Credentials(f"w{i}", "secret") for i in range(-(-n // per_client))]
    plans = run.watcher_plans(n, processes, clients, per_client)
    streams: dict[str, int] = {}
    per_process = []
    for plan in plans:
        counts = [arg.removeprefix("--client=").rsplit(":", 2) for arg in plan]
        per_process.append(sum(int(k) for _, _, k in counts))
        for client_id, _, k in counts:
            streams[client_id] = streams.get(client_id, 0) + int(k)
    assert sum(per_process) == n and len(plans) == processes
    assert max(per_process) - min(per_process) <= 1
    assert max(streams.values()) <= per_client


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert harness.percentile(values, 0.5) == 50.0
    assert harness.percentile(values, 0.99) == 99.0
    assert harness.percentile([7.0], 0.99) == 7.0
