"""The benchmark's report: results as JSON, and a Markdown page with its plots (matplotlib, Agg).

`write` puts the JSON at one path and the page at another, its PNGs in a
directory named after the page (docs/benchmarks.md -> docs/benchmarks/).
Each target is shown with the measured figure and met / not met; a figure the
run did not measure is "not measured", never met.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

TARGET_CONCURRENCY = 64
TARGET_WATCHERS = 5000
TARGET_WATCHERS_MANY = 10_000
TARGET_RATIOS = {"issue_no_refresh": 0.6, "issue_refresh": 0.5, "refresh": 0.5, "revoke": 0.35, "keyset": 0.9}
LABELS = {
    "issue_no_refresh": "Issue (no refresh token)",
    "issue_refresh": "Issue (with refresh token)",
    "refresh": "Refresh",
    "revoke": "Revoke",
    "keyset": "GetKeySet",
    "issue_pkcs11": "Issue (PKCS#11 signer, SoftHSM2)",
}


@dataclass(frozen=True, slots=True)
class Target:
    figure: str
    wanted: str  # as the table shows it
    value: Callable[[dict[str, Any]], float | None]
    met: Callable[[float], bool]
    unit: str = ""


def _load_ratio(figure: str) -> Callable[[dict[str, Any]], float | None]:
    def value(results: dict[str, Any]) -> float | None:
        rows = results.get("load", {}).get(figure, {}).get("rows", [])
        return next((r["ratio"] for r in rows if r["concurrency"] == TARGET_CONCURRENCY), None)

    return value


def _fanout(
    key: str, scale: float = 1.0, watchers: int = TARGET_WATCHERS, workers: int = 1
) -> Callable[[dict[str, Any]], float | None]:
    def value(results: dict[str, Any]) -> float | None:
        rows = results.get("fanout", [])
        return next(
            (r[key] * scale for r in rows if r["watchers"] == watchers and r.get("workers", 1) == workers),
            None,
        )

    return value


def _peer(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda results: results.get("peer", {}).get("ratios", {}).get(key)


def _verify(results: dict[str, Any]) -> float | None:
    return next((r["ratio"] for r in results.get("verify", []) if r["alg"] == "EdDSA"), None)


def _startup(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda results: results.get("startup", {}).get(key)


TARGETS = [
    *(
        Target(
            f"{LABELS[figure]} / baseline, c={TARGET_CONCURRENCY}",
            f">= {bound}",
            _load_ratio(figure),
            lambda v, b=bound: v >= b,
        )
        for figure, bound in TARGET_RATIOS.items()
    ),
    *(
        Target(
            f"rotation fan-out to {watchers:,} watchers, p99{where}",
            f"<= {bound} ms",
            _fanout("p99_ms", watchers=watchers, workers=workers),
            lambda v, b=bound: v <= b,
            " ms",
        )
        for watchers, bound in ((TARGET_WATCHERS, 250), (TARGET_WATCHERS_MANY, 400))
        for workers, where in ((1, ""), (2, " (`rotor serve --workers 2`)"))
    ),
    Target(
        f"server memory per idle watcher ({TARGET_WATCHERS_MANY:,} watchers)",
        "<= 25 KB",
        _fanout("bytes_per_watcher", 1 / 1000, TARGET_WATCHERS_MANY),
        lambda v: v <= 25,
        " KB",
    ),
    Target(
        "tokens per server CPU-second: Rotor gRPC Issue / oidc-provider /token",
        ">= 1.2",
        _peer("grpc_tokens_per_cpu"),
        lambda v: v >= 1.2,
    ),
    Target(
        "tokens per server CPU-second: Rotor /oauth2/token / oidc-provider /token",
        ">= 1.0",
        _peer("http_tokens_per_cpu"),
        lambda v: v >= 1.0,
    ),
    Target(
        f"HTTP throughput at c={TARGET_CONCURRENCY}: Rotor /oauth2/token / oidc-provider /token",
        ">= 1.0",
        _peer("http_throughput"),
        lambda v: v >= 1.0,
    ),
    Target("client verify / raw jwt.decode (EdDSA)", ">= 0.8", _verify, lambda v: v >= 0.8),
    Target("start-up to SERVING, fresh store", "<= 1 s", _startup("fresh_s"), lambda v: v <= 1, " s"),
    Target("start-up to SERVING, existing store", "<= 1 s", _startup("existing_s"), lambda v: v <= 1, " s"),
]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        value = t.value(results)
        out.append(
            {
                "figure": t.figure,
                "target": t.wanted,
                "measured": None if value is None else f"{value:.3g}{t.unit}" if t.unit else f"{value:.2f}",
                "met": None if value is None else t.met(value),
            }
        )
    return out


def summary(results: dict[str, Any]) -> str:
    """The targets as a plain-text table, for the terminal."""
    rows = [(t["figure"], t["target"], t["measured"] or "-", _verdict(t["met"])) for t in targets(results)]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{f:<{width}}  {w:<10} {m:>10}  {v}" for f, w, m, v in rows)


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else "met" if met else "NOT met"


# -- the page ----------------------------------------------------------------------


def write(results: dict[str, Any], json_path: Path, markdown_path: Path) -> None:
    results = {**results, "targets": targets(results)}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    plots = markdown_path.parent / markdown_path.stem
    plots.mkdir(parents=True, exist_ok=True)
    images = draw(results, plots)
    links = {name: f"{plots.name}/{file.name}" for name, file in images.items()}
    markdown_path.write_text(page(results, links, os.path.relpath(json_path, markdown_path.parent)))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def page(results: dict[str, Any], images: dict[str, str], json_link: str) -> str:
    m = results["machine"]
    out = [
        f"_Generated by `{results['command']}` (bench/run.py) on {results['generated_at']}: do not edit "
        f"this page, run the command again. The raw figures: [{Path(json_link).name}]({json_link})._",
        "",
        "# Benchmarks",
        "",
        "Every throughput figure is a ratio to a baseline measured in the same run on the same machine, "
        "so the machine's speed cancels out; absolute rates are shown for scale only. The load "
        "generators, the watchers and the server share the machine's cores.",
        "",
    ]
    if results["failures"]:
        out += ["**The harness broke in this run:**", "", *(f"- {f}" for f in results["failures"]), ""]
    out += ["## Machine", ""]
    out += _table(
        [
            "CPU",
            "cores",
            "memory",
            "kernel",
            "Python",
            "grpcio",
            "loop",
            "Rotor",
            "load average at start / end",
        ],
        [
            [
                m["cpu"],
                str(m["cores"]),
                f"{m['memory_gib']:.1f} GiB",
                m["kernel"],
                m["python"],
                m["grpcio"],
                m["loop"],
                f"`{m['rotor']}`",
                " / ".join(f"{v:.2f}" for v in results["load_average"]),
            ]
        ],
    )
    out += ["## Targets", ""]
    out += _table(
        ["figure", "target", "measured", "met"],
        [[t["figure"], t["target"], t["measured"] or "-", _verdict(t["met"])] for t in results["targets"]],
    )
    out += _load_section(results, images)
    out += _profile_section(results)
    out += _peer_section(results)
    out += _fanout_section(results, images)
    out += _verify_section(results)
    out += _startup_section(results)
    out += _workers_section(results, images)
    out += _method_section(results)
    return "\n".join(out).rstrip() + "\n"


def _load_section(results: dict[str, Any], images: dict[str, str]) -> list[str]:
    if "load" not in results:
        return []
    s = results["settings"]
    out = [
        "## Throughput and latency",
        "",
        f"Each figure runs on a fresh Rotor (SQLite, fresh store). At each concurrency, {s['rounds']} "
        f"rounds of {s['seconds']} s alternate a baseline run and a Rotor run; the ratio is the median "
        "of the rounds' ratios (each Rotor run to the baseline run just before it), the other columns "
        "are medians of the rounds. Latency is per call, as the load generator sees it.",
        "",
    ]
    rows = []
    for figure, data in results["load"].items():
        for r in data["rows"]:
            note = f"{r['errors']} errors ({r['first_error'][:60]})" if r["errors"] else ""
            note += " token pool ran out" if r["exhausted"] else ""
            rows.append(
                [
                    LABELS[figure],
                    str(r["concurrency"]),
                    f"{r['rate']:.0f}",
                    f"{r['baseline_rate']:.0f}",
                    f"**{r['ratio']:.2f}**",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    f"{r['baseline_p50_ms']:.2f} / {r['baseline_p99_ms']:.2f}",
                    note,
                ]
            )
    out += _table(
        [
            "figure",
            "concurrency",
            "calls/s",
            "baseline calls/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "baseline p50 / p99 ms",
            "notes",
        ],
        rows,
    )
    out += [f"![Ratios to the baseline]({images['throughput']})", "", f"![Latency]({images['latency']})", ""]
    return out


def _fanout_section(results: dict[str, Any], images: dict[str, str]) -> list[str]:
    if "fanout" not in results:
        return []
    out = [
        "## Rotation fan-out",
        "",
        "N watchers hold WatchKeyRotations streams (several watcher processes, each a few connections "
        "carrying many streams, each process opening at most 100 streams at a time: gRPC cancels calls "
        "that wait too long for the server to take them, `grpc.server.max_pending_requests`, so thousands "
        "opened at once would not all start); each has its SNAPSHOT before an admin calls RotateKeys, whose event "
        "(KEY_PUBLISHED) every watcher must receive. Delay is measured from the event's own `occurred_at`, "
        "stamped inside the rotation's transaction just before it commits (so the figure includes the "
        "commit), to the moment each watcher's process reads the event (wall clock, same machine); the "
        "delay from the moment RotateKeys was sent is shown too. Watchers keep their streams open after "
        "the event, as real ones do. Memory per idle watcher is the server's "
        "RSS growth (/proc/PID/status) from before the streams opened to after they settled, divided by N. "
        "CPU is the server's and the watcher processes' user + system time from the rotation until the last "
        "watcher read its event: both share the machine's cores, so the watchers' share slows the delivery "
        "too. Rows with 2 server processes run `rotor serve --workers 2` (one per core, sharing the port "
        "and the store: the rotation's own worker delivers at once, the other reads the event from the "
        "store within 50 ms); their memory and CPU are both workers'. "
        "Each round with one server process first measures the same way a bare grpc.aio server that only fans out "
        "(bench/fanout_floor.py: no authentication, no store, one queue per stream, on Rotor's loop and "
        "options), then a fresh Rotor; each count runs several rounds, and the row is the round whose "
        "p99 is the median.",
        "",
    ]
    rows = [
        [
            f"{r['watchers']:,}",
            str(r.get("workers", 1)),
            f"{r['processes']} x {r['channels_per_process']}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            " / ".join(f"{p:.0f}" for p in r.get("rounds_p99_ms", [r["p99_ms"]])),
            f"{r['max_ms']:.1f}",
            f"{r['from_sent_p50_ms']:.1f} / {r['from_sent_p99_ms']:.1f} / {r['from_sent_max_ms']:.1f}",
            f"{r['rotate_call_ms']:.1f}",
            f"{r['bytes_per_watcher'] / 1000:.1f}",
            _cpu(r),
            *_bare(r),
        ]
        for r in results["fanout"]
    ]
    out += _table(
        [
            "watchers",
            "server processes",
            "watcher processes x connections",
            "p50 ms",
            "p99 ms",
            "p99 of each round ms",
            "max ms",
            "from RotateKeys sent: p50 / p99 / max ms",
            "RotateKeys call ms",
            "server KB per idle watcher",
            "CPU ms: server / watchers",
            "bare grpc.aio: p50 / p99 ms",
            "bare grpc.aio: KB per idle watcher",
            "bare grpc.aio CPU ms: server / watchers",
        ],
        rows,
    )
    out += [f"![Fan-out delay]({images['fanout']})", ""]
    return out


def _cpu(r: dict[str, Any]) -> str:
    if "server_cpu_ms" not in r:  # results from before the harness measured it
        return "-"
    return f"{r['server_cpu_ms']:.0f} / {r['watchers_cpu_ms']:.0f}"


def _bare(r: dict[str, Any]) -> list[str]:
    bare = r.get("bare")
    if bare is None:
        return ["-", "-", "-"]
    return [
        f"{bare['p50_ms']:.1f} / {bare['p99_ms']:.1f}",
        f"{bare['bytes_per_watcher'] / 1000:.1f}",
        _cpu(bare),
    ]


PROFILE_LABELS = {"baseline": "no-op baseline", **LABELS}
PROFILE_BEFORE = Path(__file__).resolve().parent / "results/profile-before.json"


def _profile_section(results: dict[str, Any]) -> list[str]:
    """Server CPU per call by stage, now and (bench/results/profile-before.json) before the cuts."""
    if "profile" not in results:
        return []
    now = results["profile"]
    before = json.loads(PROFILE_BEFORE.read_text()) if PROFILE_BEFORE.exists() else None
    figures = list(now["figures"])
    stages = list(next(iter(now["figures"].values()))["stages_us"])

    def cell(stage: str | None, figure: str) -> str:
        def value(profile: dict[str, Any]) -> float | None:
            f = profile["figures"].get(figure)
            if f is None:
                return None
            return f["cpu_us_per_call"] if stage is None else f["stages_us"].get(stage, 0.0)

        v = value(now)
        shown = "-" if v is None else f"{v:.0f}"
        if before is not None:
            b = value(before)
            shown = f"{'-' if b is None else f'{b:.0f}'} → {shown}"
        return f"**{shown}**" if stage is None else shown

    out = [
        "## Where the server's CPU goes",
        "",
        f"Each RPC at concurrency {now['concurrency']} for {now['seconds']:g} s on a fresh server, py-spy "
        f"sampling every server thread {now['rate']} times a second without pausing it (bench/attribution.py, "
        "`make bench-profile`). Each thread's CPU time over the window (/proc/PID/task/TID/stat) is shared "
        "among the stages its samples fell in; threads with no Python frames (gRPC core's event engine) "
        "count as transport. Figures are µs of server CPU per call. A sample's stage is that of its "
        "innermost frame a rule names (bench/attribution.py `STAGES`); the event loop, grpc.aio's own "
        "Python and asyncio are transport and glue. The server shares the cores with the load generator "
        "and py-spy, so the absolute µs are higher than on a quiet machine; compare rows within a column "
        "and each column with the baseline's.",
        "",
    ]
    if before is not None:
        out += [
            f"Each cell is before → now: before is bench/results/profile-before.json, measured the same way "
            f"on the code before the cuts of issue 17 ({before.get('rotor', 'main')}).",
            "",
        ]
    rows = [[s, *(cell(s, f) for f in figures)] for s in stages]
    rows.append(["**total**", *(cell(None, f) for f in figures)])
    rows.append(["calls/s while sampled", *(f"{now['figures'][f]['rate']:.0f}" for f in figures)])
    out += _table(["stage", *(PROFILE_LABELS.get(f, f) for f in figures)], rows)
    return out


PEER_SIDES = {
    "peer_http": "oidc-provider `/token` (HTTP, wrk)",
    "rotor_http": "Rotor `/oauth2/token` (HTTP, wrk)",
    "rotor_grpc": "Rotor gRPC Issue (bench/load.py)",
}


def _peer_section(results: dict[str, Any]) -> list[str]:
    if "peer" not in results:
        return []
    p = results["peer"]
    out = [
        "## Next to a real peer",
        "",
        f"node oidc-provider {p['oidc_provider']} (npm; bench/peer/, "
        "pinned by package-lock.json) issues RFC 9068 JWT access tokens signed with EdDSA for "
        "client_credentials with client_secret_basic; so does Rotor's `/oauth2/token`, on a server with "
        '`refresh_ttl = "0s"` (neither gives a refresh token). Debian\'s wrk drives both HTTP endpoints '
        f"(1 thread, {p['concurrency']} connections, keep-alive), bench/load.py drives Rotor's gRPC Issue at the "
        f"same concurrency; the three runs of {p['seconds']:g} s alternate, {p['rounds']} rounds, each "
        "figure the median of its rounds. CPU is the server process's user + system time "
        "(/proc/PID/stat, every thread) over the run, per 1,000 tokens answered. One token from each "
        "peer is verified against its own JWKS before measuring (bench/peer.py).",
        "",
    ]
    peer_cpu = p["sides"]["peer_http"]["cpu_s_per_1000"]
    peer_rate = p["sides"]["peer_http"]["rate"]
    out += _table(
        [
            "server",
            "tokens/s",
            "throughput / oidc-provider",
            "server CPU-s per 1,000 tokens",
            "tokens per CPU-s / oidc-provider",
            "p50 / p99 ms",
            "errors",
        ],
        [
            [
                label,
                f"{side['rate']:.0f}",
                f"**{side['rate'] / peer_rate:.2f}**",
                f"{side['cpu_s_per_1000']:.3f}",
                f"**{peer_cpu / side['cpu_s_per_1000']:.2f}**",
                f"{side['p50_ms']:.1f} / {side['p99_ms']:.1f}",
                str(side["errors"]),
            ]
            for name, label in PEER_SIDES.items()
            for side in [p["sides"][name]]
        ],
    )
    return out


def _verify_section(results: dict[str, Any]) -> list[str]:
    if "verify" not in results:
        return []
    s = results["settings"]
    out = [
        "## Local verification",
        "",
        "`rotor_client.Verifier.verify` against raw `jwt.decode` with the known public key, on the same "
        f"Rotor-shaped token, in one process, in {s['verify_rounds']} alternating rounds of "
        f"{s['verify_seconds']} s (bench/verify.py); the ratio of the median rates.",
        "",
    ]
    out += _table(
        ["alg", "Verifier verify/s", "jwt.decode/s", "ratio"],
        [
            [r["alg"], str(r["verify_per_s"]), str(r["jwt_decode_per_s"]), f"**{r['ratio']:.2f}**"]
            for r in results["verify"]
        ],
    )
    return out


def _startup_section(results: dict[str, Any]) -> list[str]:
    if "startup" not in results:
        return []
    r = results["startup"]

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    out = [
        "## Start-up",
        "",
        "From spawning `rotor serve --config FILE` to gRPC health answering SERVING (polled every 10 ms "
        "on a fresh connection), the median of the runs.",
        "",
    ]
    out += _table(
        ["store", "median s", "runs s"],
        [
            [
                "fresh (migrations, key-encryption key, first key)",
                f"**{r['fresh_s']:.2f}**",
                runs(r["fresh_runs"]),
            ],
            ["existing (a restart)", f"**{r['existing_s']:.2f}**", runs(r["existing_runs"])],
        ],
    )
    return out


def _workers_section(results: dict[str, Any], images: dict[str, str]) -> list[str]:
    if "workers" not in results:
        return []
    s = results["settings"]
    concurrency = max(int(c) for c in s["concurrency"].split(","))
    out = [
        "## Workers",
        "",
        f"Issue with `rotor serve --workers N` on SQLite, at concurrency {concurrency}, the median of "
        f"{s['rounds']} runs of {s['seconds']} s per worker count (bench/workers.py); the ratio is to 1 worker "
        "with the same refresh-token setting.",
        "",
    ]
    out += _table(
        ["refresh tokens", "workers", "calls/s", "ratio to 1 worker", "p50 ms", "p99 ms", "errors"],
        [
            [
                "yes" if r["refresh_tokens"] else 'no (`refresh_ttl = "0s"`)',
                str(r["workers"]),
                f"{r['rate']:.0f}",
                f"**{r['ratio_to_1_worker']:.2f}**",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                str(r["errors"]),
            ]
            for r in results["workers"]
        ],
    )
    out += [f"![Workers]({images['workers']})", ""]
    return out


def _method_section(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    return [
        "## How it is measured",
        "",
        "- Baseline: bench/baseline.py, a bare grpc.aio server with one no-op unary method (a few bytes "
        "each way, generic handler, no serialization), on Rotor's event loop (`rotor.loop.run`) with "
        "Rotor's server options (`rotor.app.GRPC_OPTIONS`).",
        f"- Load: bench/load.py in {s['load_processes']} process(es) per run, grpc.aio on the same loop, a "
        f"fixed number of calls in flight over up to {s['channels']} connections per process. Channels "
        "connect and each caller makes one untimed call before the timed window opens.",
        '- Issue without refresh tokens runs on a server configured with `refresh_ttl = "0s"`: refresh '
        "tokens are a server setting, not a per-client one, so the two Issue figures use two servers.",
        "- Refresh: each caller keeps its own chain (each Refresh spends the token the previous one returned).",
        "- Revoke: the access tokens are issued before the timed window (for as long as the window lasts, "
        "at the same concurrency), one Revoke per token.",
        "- The machine may run other work at the same time; the load average at the start and the end "
        "of the run says how much. Pairing each Rotor run with a baseline run just before it keeps the "
        "ratios fair; absolute rates and latencies move with that work.",
        "- Rate limits are off and the watcher caps raised in the benchmark's config "
        f"(`[limits]`: {', '.join(f'{k} = {v}' for k, v in results.get('limits', {}).items()) or 'none known'}).",
        "",
    ]


# -- plots -------------------------------------------------------------------------


def draw(results: dict[str, Any], where: Path) -> dict[str, Path]:
    """The PNGs of the parts the run measured; name -> file."""
    drawn = {}
    for name, part, plot in PLOTS:
        if part in results:
            fig = plot(results)
            path = where / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            drawn[name] = path
    return drawn


def _throughput(results: dict[str, Any]) -> Any:
    load = results["load"]
    concurrencies = [r["concurrency"] for r in next(iter(load.values()))["rows"]]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(load)
    for i, (figure, data) in enumerate(load.items()):
        xs = [j + i * width for j in range(len(concurrencies))]
        ax.bar(xs, [r["ratio"] for r in data["rows"]], width, label=LABELS[figure])
        if figure in TARGET_RATIOS and TARGET_CONCURRENCY in concurrencies:
            x = xs[concurrencies.index(TARGET_CONCURRENCY)]
            ax.hlines(TARGET_RATIOS[figure], x - width / 2, x + width / 2, colors="black", linewidth=2)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(concurrencies))], [f"c={c}" for c in concurrencies])
    ax.set_ylabel("calls/s as a ratio to the baseline")
    ax.set_title(
        f"Throughput relative to a bare grpc.aio server (dashed); targets at c={TARGET_CONCURRENCY} in black"
    )
    ax.legend(fontsize="small")
    return fig


def _latency(results: dict[str, Any]) -> Any:
    load = results["load"]
    concurrencies = [r["concurrency"] for r in next(iter(load.values()))["rows"]]
    fig, axes = plt.subplots(1, len(concurrencies), figsize=(4 * len(concurrencies), 4), squeeze=False)
    for ax, c in zip(axes[0], concurrencies, strict=True):
        names = ["baseline", *(LABELS[f] for f in load)]
        rows = [next(r for r in data["rows"] if r["concurrency"] == c) for data in load.values()]
        base = [
            statistics.median(r["baseline_p50_ms"] for r in rows),
            statistics.median(r["baseline_p99_ms"] for r in rows),
        ]
        p50 = [base[0], *(r["p50_ms"] for r in rows)]
        p99 = [base[1], *(r["p99_ms"] for r in rows)]
        ys = range(len(names))
        ax.barh([y - 0.2 for y in ys], p50, 0.4, label="p50")
        ax.barh([y + 0.2 for y in ys], p99, 0.4, label="p99")
        ax.set_yticks(list(ys), names if ax is axes[0][0] else [""] * len(names))
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ms per call")
        ax.set_title(f"c={c}")
    axes[0][0].legend(fontsize="small")
    fig.suptitle("Latency per call, as the load generator sees it")
    return fig


def _fanout_plot(results: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4))
    shares = [i / 100 for i in range(1, 101)]
    for r in results["fanout"]:
        workers = r.get("workers", 1)
        label = f"{r['watchers']:,} watchers" + (f", {workers} workers" if workers > 1 else "")
        (line,) = ax.plot(r["cdf_ms"], shares, label=label, linestyle="-." if workers > 1 else "-")
        if "cdf_ms" in r.get("bare", {}):
            ax.plot(r["bare"]["cdf_ms"], shares, color=line.get_color(), linestyle=":", label="bare grpc.aio")
    ax.axvline(250, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("ms from the event's commit to its arrival (target for p99: 250 ms, dashed)")
    ax.set_title("Rotation fan-out (dotted: the bare grpc.aio server, same watchers)")
    ax.set_ylabel("share of watchers")
    ax.legend()
    return fig


def _workers_plot(results: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4))
    for refresh_tokens, label in ((False, "no refresh tokens"), (True, "refresh tokens")):
        rows = [r for r in results["workers"] if r["refresh_tokens"] is refresh_tokens]
        ax.plot([r["workers"] for r in rows], [r["ratio_to_1_worker"] for r in rows], marker="o", label=label)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(sorted({r["workers"] for r in results["workers"]}))
    ax.set_xlabel("workers (rotor serve --workers N)")
    ax.set_ylabel("Issue calls/s as a ratio to 1 worker")
    ax.set_title("Issue with workers sharing the port")
    ax.legend()
    return fig


PLOTS: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [  # (PNG name, part, drawing)
    ("throughput", "load", _throughput),
    ("latency", "load", _latency),
    ("fanout", "fanout", _fanout_plot),
    ("workers", "workers", _workers_plot),
]
