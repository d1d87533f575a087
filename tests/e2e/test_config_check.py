"""`rotor config check FILE`: the effective settings as JSON, or one line per violation."""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import pytest
from rotor.config import parse_duration

from .support import run_rotor, to_toml

GOOD: dict[str, Any] = {
    "issuer": "https://rotor.test",
    "database_url": "postgresql://rotor:s3cret-pw@db.internal:5433/rotor",
    "keys": {
        "publish_lead": "10m",
        "rotation_period": "36h",
        "activation_requires_ack": True,
        "max_ack_wait": "90s",
        "event_retention": "61m",  # exactly tokens.max_access_ttl + keys.clock_skew: allowed
    },
    "tokens": {"access_ttl": "5m", "max_access_ttl": "1h"},
    "tenants": {"acme": {"algorithm": "ES256"}},
}
BAD: dict[str, Any] = {
    "keys": {"event_retention": "30m", "clock_skew": "1m", "rsa_bits": 1024},
    "tokens": {"max_access_ttl": "1h"},
    "tenants": {"acme": {"algorithm": "HS256", "colour": "blue"}},
}


def write(tmp_path: pathlib.Path, config: dict[str, Any] | str, name: str = "rotor.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else to_toml_with_tenants(config))
    return path


def to_toml_with_tenants(config: dict[str, Any]) -> str:
    """support.to_toml, plus [tenants.NAME] tables (to_toml writes one level of tables)."""
    tenants = config.get("tenants", {})
    text = to_toml({k: v for k, v in config.items() if k != "tenants"})
    for name, table in tenants.items():
        text += f"\n[tenants.{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    return text


def check(tmp_path: pathlib.Path, path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return run_rotor("config", "check", str(path), cwd=tmp_path, timeout=30)


def violation_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def test_a_good_file_prints_the_effective_settings(tmp_path: pathlib.Path) -> None:
    """Exit 0 and JSON: durations spelled as in the file, defaults filled in, no password."""
    done = check(tmp_path, write(tmp_path, GOOD))
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    keys, tokens = settings["keys"], settings["tokens"]
    assert keys["publish_lead"] == "10m" and keys["rotation_period"] == "36h"
    assert keys["max_ack_wait"] == "90s" and keys["event_retention"] == "61m"
    assert keys["activation_requires_ack"] is True
    # defaults, filled in
    assert keys["algorithm"] == "EdDSA" and keys["rsa_bits"] == 3072 and keys["max_cache_age"] == "5m"
    assert (
        keys["clock_skew"] == "1m" and tokens["refresh_ttl"] == "1d" and tokens["refresh_family_ttl"] == "30d"
    )
    assert settings["listen"] == "127.0.0.1:50051"
    for table in ("keys", "tokens"):
        for name, value in settings[table].items():
            if isinstance(value, str) and name not in ("algorithm", "kek_file", "key_store"):
                assert parse_duration(value) >= 0, f"{table}.{name} = {value!r} is not a duration"
    assert settings["tenants"] == {"acme": {"algorithm": "ES256"}}
    # the database, without its password
    assert "s3cret-pw" not in done.stdout and "s3cret-pw" not in done.stderr
    assert "db.internal" in settings["database_url"] and "5433" in settings["database_url"]
    assert not (tmp_path / "data").exists(), "checking a config opened the store"


def test_defaults_alone_are_a_good_file(tmp_path: pathlib.Path) -> None:
    """An empty file checks out, with every default printed and no database URL to hide."""
    done = check(tmp_path, write(tmp_path, ""))
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert settings["keys"]["rotation_period"] == "1d" and settings["keys"]["event_retention"] == "7d"
    assert settings["database_url"] == "" and settings["tenants"] == {}


def test_a_bad_file_gives_one_line_per_violation_naming_the_key_and_the_rule(tmp_path: pathlib.Path) -> None:
    """Non-zero, no JSON, and exactly one line for each broken rule, naming the key it concerns."""
    done = check(tmp_path, write(tmp_path, BAD))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert not done.stdout.strip().startswith("{"), "settings were printed for a bad file"
    lines = violation_lines(done)
    expected = {
        "keys.event_retention": ("tokens.max_access_ttl", "keys.clock_skew"),
        "tenants.acme.algorithm": ("HS256", "EdDSA"),
        "tenants.acme.colour": ("unknown",),
        "keys.rsa_bits": ("2048",),
    }
    assert len(lines) == len(expected), "\n".join(lines)
    for key, rule in expected.items():
        naming = [line for line in lines if key in line]
        assert len(naming) == 1, f"{len(naming)} lines name {key}:\n" + "\n".join(lines)
        line = naming[0]
        assert all(word in line for word in rule), f"the line for {key} does not state the rule: {line}"


@pytest.mark.parametrize("content", [None, "[keys\nalgorithm = "], ids=["missing-file", "not-toml"])
def test_an_unreadable_file_is_one_line(tmp_path: pathlib.Path, content: str | None) -> None:
    """A missing or malformed file is one line naming the file, and a non-zero exit."""
    path = tmp_path / "rotor.toml" if content is None else write(tmp_path, content)
    done = check(tmp_path, path)
    assert done.returncode != 0
    lines = violation_lines(done)
    assert len(lines) == 1 and "rotor.toml" in lines[0], lines


def test_serve_refuses_the_file_check_refuses(tmp_path: pathlib.Path) -> None:
    """The same policy runs at start-up: `rotor serve` exits non-zero with the same lines."""
    path = write(tmp_path, {**BAD, "listen": "127.0.0.1:0"})
    checked, served = check(tmp_path, path), run_rotor("serve", "--config", str(path), cwd=tmp_path)
    assert served.returncode != 0
    assert set(violation_lines(checked)) <= set(violation_lines(served)), served.stderr
    assert not (tmp_path / "data" / "rotor.db").exists()


@pytest.mark.parametrize(
    ("config", "hidden"),
    [
        ({"keys": {"rsa": 1, "rsa_bits": 1024}}, "keys.rsa_bits"),
        ({"keys": {"clock": "1m", "event_retention": "30m"}}, "keys.event_retention"),
        ({"tenants": {"acme": {"alg": "ES256", "algorithm": "HS256"}}}, "tenants.acme.algorithm"),
    ],
    ids=["keys.rsa", "keys.clock", "tenants.acme.alg"],
)
def test_an_unknown_key_does_not_hide_the_violation_of_a_key_it_prefixes(
    tmp_path: pathlib.Path, config: dict[str, Any], hidden: str
) -> None:
    """An unknown key whose name begins another key's must not suppress that key's violation."""
    lines = violation_lines(check(tmp_path, write(tmp_path, config)))
    assert any(hidden in line and "unknown key" not in line for line in lines), (
        f"the violation of {hidden} is missing:\n" + "\n".join(lines)
    )
