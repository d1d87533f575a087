"""`rotor serve --workers 2` with the HTTP side port: both workers start, and one scrape of
/metrics on either counts every Issue the whole server answered."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import time
import urllib.request

import grpc
import rotor_client

from .support import (
    BASE_CONFIG,
    basic,
    env_with_bin,
    free_port,
    merged,
    rotor_exe,
    run_rotor,
    to_toml,
    wait_serving,
)

ISSUES = 40
SAMPLE = re.compile(r'^rotor_tokens_issued_total\{client="svc",outcome="ok"\} ([0-9.e+]+)$', re.MULTILINE)


def issued_count(http: str) -> float:
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = SAMPLE.findall(text)
    assert len(found) <= 1, f"one sample per series, summed over workers; got {found}"
    return float(found[0]) if found else 0.0


def test_two_workers_share_the_side_port_and_one_scrape_counts_every_issue(tmp_path: pathlib.Path) -> None:
    address, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = tmp_path / "rotor.toml"
    config.write_text(
        to_toml(
            merged(BASE_CONFIG, {"listen": address, "http_listen": http, "data_dir": str(tmp_path / "data")})
        )
    )
    log_path = tmp_path / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [rotor_exe(), "serve", "--config", str(config), "--workers", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env_with_bin(),
            cwd=tmp_path,
        )
    try:
        wait_serving(address, proc, 60, lambda: log_path.read_text(errors="replace")[-6000:])
        deadline = time.monotonic() + 60
        while (
            log_path.read_text(errors="replace").count("serving rotor.v1") < 2
        ):  # both workers, side port too
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text(errors="replace")[
                -6000:
            ]
            time.sleep(0.1)
        added = run_rotor(
            "clients", "add", "svc", "--audience", "api", "--json", "--config", str(config), cwd=tmp_path
        )
        assert added.returncode == 0, added.stderr
        client = json.loads(added.stdout)
        for _ in range(ISSUES):  # a connection each: SO_REUSEPORT spreads them over the workers
            with grpc.insecure_channel(address) as channel:
                issued = rotor_client.TokenServiceStub(channel).Issue(
                    rotor_client.IssueRequest(), metadata=basic(client), timeout=30
                )
                assert issued.access_token
        deadline = time.monotonic() + 30
        while (count := issued_count(http)) < ISSUES and time.monotonic() < deadline:
            time.sleep(0.1)
        assert count == ISSUES
        for _ in range(6):  # whichever worker answers the scrape, it counts the whole server
            assert issued_count(http) == ISSUES
        assert proc.poll() is None, log_path.read_text(errors="replace")[-6000:]
        logged = log_path.read_text(errors="replace")
        assert "worker 1" in logged and "exited" not in logged, logged[-6000:]
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log_path.read_text(errors="replace")[-6000:]
