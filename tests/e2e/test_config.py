"""`rotor serve` refuses what it cannot honour: one line per problem, naming it, no traceback."""

from __future__ import annotations

import base64
import os
import pathlib
import subprocess
from typing import Any

import pytest

from .conftest import MakeServer
from .support import env_with_bin, rotor_exe, run_rotor, to_toml


def serve(
    tmp_path: pathlib.Path, config: dict[str, Any], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "rotor.toml"
    path.write_text(to_toml(config))
    return run_rotor("serve", "--config", str(path), cwd=tmp_path, timeout=timeout)


def lines_naming(output: str, *keys: str) -> dict[str, list[str]]:
    lines = [line for line in output.splitlines() if line.strip()]
    return {key: [line for line in lines if key in line] for key in keys}


def assert_refused(done: subprocess.CompletedProcess[str], *keys: str) -> None:
    said = done.stdout + done.stderr
    assert done.returncode != 0, f"rotor serve accepted the config:\n{said}"
    assert "Traceback" not in said, said
    for key, lines in lines_naming(said, *keys).items():
        assert lines, f"no line names {key}:\n{said}"


def test_every_policy_violation_is_reported_on_a_line_of_its_own(tmp_path: pathlib.Path) -> None:
    config = {
        "listen": "127.0.0.1:1",
        "keys": {"algorithm": "HS256", "rsa_bits": 1024, "publish_lead": "10s", "max_cache_age": "5m"},
        "tokens": {"access_ttl": "5m", "max_access_ttl": "1m"},
    }
    done = serve(tmp_path, config)
    named = ["keys.algorithm", "keys.rsa_bits", "keys.publish_lead", "tokens.max_access_ttl"]
    assert_refused(done, *named)
    said = (done.stdout + done.stderr).splitlines()
    assert len({next(i for i, line in enumerate(said) if key in line) for key in named}) == len(named), said


def test_every_ill_typed_or_unknown_key_is_reported(tmp_path: pathlib.Path) -> None:
    config = {
        "listen": 50051,
        "colour": "blue",
        "keys": {"rotation_perid": "1h", "publish_lead": "10 minutes", "rsa_bits": "big"},
        "tokens": {"refresh_ttl": 60},
    }
    assert_refused(
        serve(tmp_path, config),
        "listen",
        "colour",
        "keys.rotation_perid",
        "keys.publish_lead",
        "keys.rsa_bits",
        "tokens.refresh_ttl",
    )


def test_an_unknown_key_does_not_hide_a_policy_violation(tmp_path: pathlib.Path) -> None:
    config = {"keys": {"rotation_perid": "1h", "algorithm": "none"}, "tokens": {"max_access_ttl": "1m"}}
    assert_refused(serve(tmp_path, config), "keys.rotation_perid", "keys.algorithm", "tokens.max_access_ttl")


def test_an_unreadable_tls_file_stops_the_start_before_anything_is_written(tmp_path: pathlib.Path) -> None:
    """A missing certificate is one line naming the file, and no store or key is created."""
    done = serve(tmp_path, {"tls": {"cert_file": "server.pem", "key_file": "server.key"}})
    assert done.returncode != 0 and "tls.cert_file: cannot read server.pem" in done.stderr, done.stderr
    assert not (tmp_path / "data" / "rotor.db").exists(), "the store was opened before TLS was checked"


@pytest.mark.parametrize(
    "text, words",
    [("issuer = [\n", ["not valid TOML"]), (None, ["no such config file"])],
    ids=["not_toml", "missing_file"],
)
def test_an_unreadable_config_is_one_line(tmp_path: pathlib.Path, text: str | None, words: list[str]) -> None:
    path = tmp_path / "rotor.toml"
    if text is not None:
        path.write_text(text)
    done = run_rotor("serve", "--config", str(path), cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert all(w in done.stderr for w in words) and str(path) in done.stderr, done.stderr


# -- start-up failures ---------------------------------------------------------------


def test_a_busy_port_on_a_new_store_is_refused_in_one_line_and_the_process_exits(
    make_server: MakeServer, tmp_path: pathlib.Path
) -> None:
    running = make_server()
    config = {"listen": running.address, "data_dir": str(tmp_path / "new-data")}
    done = serve(tmp_path, config, timeout=10)  # it takes a second when it works
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert running.address in done.stderr, done.stderr
    assert running.running(), "the first server died"


def test_a_busy_port_on_an_existing_store_is_refused_in_one_line(make_server: MakeServer) -> None:
    server = make_server()
    assert server.terminate() == 0
    blocker = make_server()
    server.config_path.write_text(server.config_path.read_text().replace(server.address, blocker.address))
    done = server.cli("serve")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert blocker.address in done.stderr and len(done.stderr.strip().splitlines()) <= 3, done.stderr


def test_a_wrong_key_encryption_key_is_refused_in_one_line(make_server: MakeServer) -> None:
    server = make_server()
    assert server.terminate() == 0
    wrong = base64.b64encode(os.urandom(32)).decode()
    done = subprocess.run(
        [rotor_exe(), "serve", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        cwd=server.workdir,
        env=env_with_bin(ROTOR_KEK=wrong),
        timeout=60,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "ROTOR_KEK" in done.stderr, done.stderr
    server.start()  # the right key still opens the store
