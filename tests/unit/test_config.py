"""Configuration: durations, defaults, and every policy violation named on its own line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rotor.config import (
    Config,
    ConfigError,
    KeysConfig,
    TokensConfig,
    config_from_dict,
    format_duration,
    load_config,
    parse_duration,
)

CONTRACT_EXAMPLE = """
issuer = "https://tokens.internal"
listen = "127.0.0.1:50051"
http_listen = ""
data_dir = "./data"
database_url = ""

[keys]
algorithm = "EdDSA"
rotation_period = "24h"
publish_lead = "10m"
max_cache_age = "5m"
clock_skew = "60s"
rsa_bits = 3072
require_approval = false

[tokens]
access_ttl = "5m"
max_access_ttl = "1h"
refresh_ttl = "24h"
refresh_family_ttl = "30d"

[tls]
cert_file = ""
key_file = ""
client_ca_file = ""
require_client_cert = false
"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("90s", 90.0),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("30d", 30 * 86400.0),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        (" 5m ", 300.0),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "10x", "", "m", "-5s", "1e3s", "5 minutes", "10M", "1h30m"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(86400.0, "1d"), (3600.0, "1h"), (600.0, "10m"), (90.0, "90s"), (0.25, "250ms"), (1.5, "1500ms")],
)
def test_format_duration_picks_the_largest_exact_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.25, 1.0, 59.0, 90.0, 600.0, 5400.0, 86400.0, 30 * 86400.0])
def test_format_then_parse_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_defaults_are_the_contracts() -> None:
    config = load_config(None)
    assert config == Config()
    assert (config.issuer, config.listen, config.http_listen, config.data_dir, config.database_url) == (
        "https://tokens.internal",
        "127.0.0.1:50051",
        "",
        "./data",
        "",
    )
    assert config.keys == KeysConfig(
        algorithm="EdDSA",
        rotation_period=86400.0,
        publish_lead=600.0,
        max_cache_age=300.0,
        clock_skew=60.0,
        rsa_bits=3072,
        require_approval=False,
    )
    assert config.tokens == TokensConfig(
        access_ttl=300.0, max_access_ttl=3600.0, refresh_ttl=86400.0, refresh_family_ttl=30 * 86400.0
    )
    assert config.sqlite_path == Path("./data") / "rotor.db"


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rotor.toml"
    path.write_text("")
    assert load_config(path) == Config()


def test_the_contracts_example_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "rotor.toml"
    path.write_text(CONTRACT_EXAMPLE)
    assert load_config(path) == Config()


def test_values_in_the_file_override_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rotor.toml"
    path.write_text('issuer = "https://x"\n[keys]\nalgorithm = "ES256"\nrotation_period = "2h"\n')
    config = load_config(path)
    assert (config.issuer, config.keys.algorithm, config.keys.rotation_period) == (
        "https://x",
        "ES256",
        7200.0,
    )
    assert config.keys.publish_lead == 600.0


def test_limits_take_rates_as_integers_or_fractions_and_zero_turns_one_off() -> None:
    config = config_from_dict({"limits": {"issue_rate": 2.5, "refresh_rate": 0, "refresh_burst": 0}})
    assert (config.limits.issue_rate, config.limits.refresh_rate) == (2.5, 0.0)
    assert config_from_dict({"limits": {"issue_rate": 10}}).limits.issue_rate == 10.0


def violations(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        config_from_dict(doc)
    lines = raised.value.violations
    assert str(raised.value) == "\n".join(lines)
    assert all(line and "\n" not in line for line in lines)
    return lines


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        pytest.param({"keys": {"algorithm": "XYZ256"}}, "keys.algorithm", id="unknown-algorithm"),
        pytest.param({"keys": {"algorithm": "none"}}, "keys.algorithm", id="none"),
        pytest.param({"keys": {"algorithm": "HS256"}}, "keys.algorithm", id="HS256"),
        pytest.param({"keys": {"algorithm": "hs512"}}, "keys.algorithm", id="hs512"),
        pytest.param({"keys": {"rsa_bits": 1024}}, "keys.rsa_bits", id="rsa-under-2048"),
        pytest.param({"keys": {"rsa_bits": 2047}}, "keys.rsa_bits", id="rsa-2047"),
        pytest.param({"keys": {"rsa_bits": 65536}}, "keys.rsa_bits", id="rsa-over-8192"),
        pytest.param(
            {"keys": {"publish_lead": "4m", "max_cache_age": "5m"}},
            "keys.publish_lead",
            id="lead-under-cache-age",
        ),
        pytest.param(
            {"keys": {"rotation_period": "10m", "publish_lead": "10m"}},
            "keys.rotation_period",
            id="rotation-equal-to-lead",
        ),
        pytest.param(
            {"keys": {"rotation_period": "5m", "publish_lead": "10m"}},
            "keys.rotation_period",
            id="rotation-under-lead",
        ),
        pytest.param(
            {"tokens": {"access_ttl": "10m", "max_access_ttl": "5m"}},
            "tokens.max_access_ttl",
            id="max-ttl-under-ttl",
        ),
        pytest.param({"keys": {"bogus": 1}}, "keys.bogus", id="unknown-key-in-table"),
        pytest.param({"tokens": {"acces_ttl": "5m"}}, "tokens.acces_ttl", id="misspelt-key-in-table"),
        pytest.param({"bogus": 1}, "bogus", id="unknown-top-level-key"),
        pytest.param({"keys": {"rsa_bits": "4096"}}, "keys.rsa_bits", id="int-as-string"),
        pytest.param({"keys": {"rsa_bits": True}}, "keys.rsa_bits", id="int-as-bool"),
        pytest.param({"keys": {"require_approval": "yes"}}, "keys.require_approval", id="bool-as-string"),
        pytest.param({"keys": {"rotation_period": 3600}}, "keys.rotation_period", id="duration-as-int"),
        pytest.param({"tokens": {"access_ttl": "5 min"}}, "tokens.access_ttl", id="bad-duration"),
        pytest.param({"issuer": 5}, "issuer", id="string-as-int"),
        pytest.param({"keys": "EdDSA"}, "keys", id="table-as-string"),
        pytest.param({"limits": {"issue_rate": -1}}, "limits.issue_rate", id="negative-rate"),
        pytest.param({"limits": {"issue_rate": "10"}}, "limits.issue_rate", id="rate-as-string"),
        pytest.param({"limits": {"refresh_rate": True}}, "limits.refresh_rate", id="rate-as-bool"),
        pytest.param({"limits": {"refresh_burst": 0}}, "limits.refresh_burst", id="zero-burst"),
        pytest.param({"limits": {"watchers_per_client": 0}}, "limits.watchers_per_client", id="no-watchers"),
        pytest.param(
            {"limits": {"watchers_per_client": 50, "max_watchers": 10}},
            "limits.max_watchers",
            id="total-under-per-client",
        ),
        pytest.param({"limits": {"keepalive_time": "1ms"}}, "limits.keepalive_time", id="keepalive-1ms"),
        pytest.param({"limits": {"write_timeout": 10}}, "limits.write_timeout", id="timeout-as-int"),
        pytest.param({"status_access": "everyone"}, "status_access", id="unknown-status-access"),
        pytest.param({"keys": {"key_store": "kms"}}, "keys.key_store", id="unknown-key-store"),
        pytest.param(
            {"keys": {"key_store": "pkcs11"}, "pkcs11": {"token_label": "rotor"}},
            "pkcs11.module",
            id="pkcs11-without-module",
        ),
        pytest.param(
            {"keys": {"key_store": "pkcs11"}, "pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so"}},
            "pkcs11.token_label",
            id="pkcs11-without-token",
        ),
        pytest.param({"pkcs11": {"pin": "1234"}}, "pkcs11.pin", id="pin-in-the-file"),
    ],
)
def test_each_violation_is_one_line_naming_the_key(doc: dict[str, Any], key: str) -> None:
    [line] = violations(doc)
    assert line.startswith(key)


def test_refused_algorithms_say_why() -> None:
    [line] = violations({"keys": {"algorithm": "HS256"}})
    assert "shared secret" in line and "EdDSA" in line


def test_several_policy_violations_are_reported_together() -> None:
    lines = violations(
        {
            "keys": {"algorithm": "none", "rsa_bits": 1024, "publish_lead": "1m", "max_cache_age": "5m"},
            "tokens": {"access_ttl": "2h", "max_access_ttl": "1h"},
        }
    )
    assert [line.split(" ")[0].rstrip(":") for line in lines] == [
        "keys.algorithm",
        "keys.rsa_bits",
        "keys.publish_lead",
        "tokens.max_access_ttl",
    ]


def test_several_type_errors_and_unknown_keys_are_reported_together() -> None:
    lines = violations({"bogus": 1, "keys": {"rsa_bits": "big", "nope": 2}, "tokens": {"access_ttl": 5}})
    assert sorted(line.split(":")[0] for line in lines) == sorted(
        ["bogus", "keys.rsa_bits", "keys.nope", "tokens.access_ttl"]
    )


def test_unknown_keys_and_policy_violations_are_reported_together() -> None:
    lines = violations({"keys": {"algorithm": "HS256", "bogus": 1}})
    assert sorted(line.split(":")[0] for line in lines) == ["keys.algorithm", "keys.bogus"]


def test_bad_toml_gives_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rotor.toml"
    path.write_text('issuer = "unterminated\n[keys\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    [line] = raised.value.violations
    assert str(path) in line and "TOML" in line and "\n" not in line


def test_missing_file_gives_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    [line] = raised.value.violations
    assert str(path) in line and "\n" not in line


def test_a_value_that_failed_to_parse_is_not_blamed_again_by_a_policy_rule() -> None:
    [line] = violations({"keys": {"publish_lead": "soon", "max_cache_age": "20m"}})
    assert line.startswith("keys.publish_lead: ") and "not a duration" in line
