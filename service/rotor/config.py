"""Configuration: the TOML file, its defaults, and the policy it must obey.

`load_config` returns a `Config` or raises `ConfigError` listing every
violation, one line each, naming the key and the rule it breaks.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotor.core.validation import TENANT

ALGORITHMS = ("EdDSA", "ES256", "ES384", "PS256", "RS256")
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(Exception):
    """Raised when a configuration file cannot be read or breaks a policy."""

    def __init__(self, violations: list[str]) -> None:
        super().__init__("\n".join(violations))
        self.violations = violations


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "90s", "10m", "24h", "30d" or "250ms"."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (a number and one of ms, s, m, h, d, e.g. '10m')")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of `seconds` as a config duration."""
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


@dataclass(frozen=True, slots=True)
class KeysConfig:
    algorithm: str = "EdDSA"
    rotation_period: float = 24 * 3600.0
    publish_lead: float = 600.0
    max_cache_age: float = 300.0
    clock_skew: float = 60.0
    rsa_bits: int = 3072
    require_approval: bool = False
    kek_file: str = ""
    activation_requires_ack: bool = False  # a new key signs only once named watchers have it...
    max_ack_wait: float = 60.0  # ...or this long after it was due
    event_retention: float = 7 * 86400.0  # how long events stay replayable by after_sequence
    key_store: str = "sealed"  # where new keys' private halves live: "sealed" (KEK) or "pkcs11" (an HSM)


@dataclass(frozen=True, slots=True)
class Pkcs11Config:
    """The HSM of [keys] key_store = "pkcs11"; the PIN comes from the environment, never the file."""

    module: str = ""  # the vendor's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so
    token_label: str = ""
    pin_env: str = "ROTOR_PKCS11_PIN"  # the environment variable holding the user PIN


@dataclass(frozen=True, slots=True)
class TokensConfig:
    access_ttl: float = 300.0
    max_access_ttl: float = 3600.0
    refresh_ttl: float = 24 * 3600.0
    refresh_family_ttl: float = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    require_client_cert: bool = False


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    lease_ttl: float = 10.0  # a dead rotator's lease passes to another process after this
    pool_size: int = 10  # PostgreSQL connections per process
    replica: str = ""  # this replica's name in the fleet view; "" = HOST:PID


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Per-process caps on what one caller may ask for (a rate of 0 turns that limit off)."""

    issue_rate: float = 200.0  # Issue calls per second per client, sustained...
    issue_burst: int = 400  # ...and at once after a quiet spell
    refresh_rate: float = 200.0
    refresh_burst: int = 400
    watchers_per_client: int = 100  # WatchKeyRotations streams per client (or per address, anonymous)
    max_watchers: int = 20_000  # streams in all
    keepalive_time: float = 60.0  # the server pings a connection quiet this long...
    keepalive_timeout: float = 20.0  # ...and drops it when the ping is not answered in time
    idle_timeout: float = 600.0  # a connection with no call for this long is closed
    write_timeout: float = 10.0  # a watcher that takes no message for this long is cut off
    audit_refusals_per_minute: int = 60  # refusal entries per peer address a minute; 0 = no cap
    report_interval: float = 10.0  # named watchers report this often (ReportVerifications)


@dataclass(frozen=True, slots=True)
class TenantConfig:
    algorithm: str = ""  # "" = [keys] algorithm


@dataclass(frozen=True, slots=True)
class Config:
    issuer: str = "https://tokens.internal"
    listen: str = "127.0.0.1:50051"
    http_listen: str = ""
    data_dir: str = "./data"
    database_url: str = ""
    log_format: str = "json"
    log_level: str = "info"
    status_access: str = "admin"  # the side port's /status: "admin" (HTTP Basic, audit shown) or "public"
    keys: KeysConfig = field(default_factory=KeysConfig)
    pkcs11: Pkcs11Config = field(default_factory=Pkcs11Config)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    tenants: dict[str, TenantConfig] = field(default_factory=dict)  # [tenants.NAME]: per-tenant settings

    @property
    def sqlite_path(self) -> Path:
        return Path(self.data_dir) / "rotor.db"

    @property
    def kek_path(self) -> Path:
        return Path(self.keys.kek_file) if self.keys.kek_file else Path(self.data_dir) / "kek.key"


# key -> kind, per table ("" is the top level). Kinds: str, bool, int, duration.
_SCHEMA: dict[str, dict[str, str]] = {
    "": {
        "issuer": "str",
        "listen": "str",
        "http_listen": "str",
        "data_dir": "str",
        "database_url": "str",
        "log_format": "str",
        "log_level": "str",
        "status_access": "str",
    },
    "keys": {
        "algorithm": "str",
        "rotation_period": "duration",
        "publish_lead": "duration",
        "max_cache_age": "duration",
        "clock_skew": "duration",
        "rsa_bits": "int",
        "require_approval": "bool",
        "kek_file": "str",
        "activation_requires_ack": "bool",
        "max_ack_wait": "duration",
        "event_retention": "duration",
        "key_store": "str",
    },
    "pkcs11": {"module": "str", "token_label": "str", "pin_env": "str"},
    "tokens": {
        "access_ttl": "duration",
        "max_access_ttl": "duration",
        "refresh_ttl": "duration",
        "refresh_family_ttl": "duration",
    },
    "tls": {"cert_file": "str", "key_file": "str", "client_ca_file": "str", "require_client_cert": "bool"},
    "cluster": {"lease_ttl": "duration", "pool_size": "int", "replica": "str"},
    "limits": {
        "issue_rate": "number",
        "issue_burst": "int",
        "refresh_rate": "number",
        "refresh_burst": "int",
        "watchers_per_client": "int",
        "max_watchers": "int",
        "keepalive_time": "duration",
        "keepalive_timeout": "duration",
        "idle_timeout": "duration",
        "write_timeout": "duration",
        "audit_refusals_per_minute": "int",
        "report_interval": "duration",
    },
}
_TENANT_SCHEMA = {"algorithm": "str"}  # each [tenants.NAME] table


def _convert(name: str, kind: str, raw: Any, violations: list[str]) -> Any:
    if kind == "duration":
        if not isinstance(raw, str):
            violations.append(f'{name}: must be a duration string such as "10m", not {raw!r}')
            return None
        try:
            return parse_duration(raw)
        except ValueError as e:
            violations.append(f"{name}: {e}")
            return None
    expected, what = _KINDS[kind]
    if not isinstance(raw, expected) or (kind in ("int", "number") and isinstance(raw, bool)):
        violations.append(f"{name}: must be {what}, not {raw!r}")
        return None
    return float(raw) if isinstance(raw, int | float) and kind == "number" else raw


_KINDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "str": (str, "a string"),
    "int": (int, "an integer"),
    "number": ((int, float), "a number"),
    "bool": (bool, "true or false"),
}


def config_from_dict(doc: dict[str, Any]) -> Config:
    """A Config from parsed TOML, or ConfigError with every violation."""
    violations: list[str] = []
    values: dict[str, dict[str, Any]] = {table: {} for table in _SCHEMA}
    tenants: dict[str, TenantConfig] = {}
    for key, raw in doc.items():
        if key == "tenants":
            tenants = _tenants(raw, violations)
        elif key in _SCHEMA and key != "" and isinstance(raw, dict):
            for sub, sub_raw in raw.items():
                kind = _SCHEMA[key].get(sub)
                if kind is None:
                    violations.append(
                        f"{key}.{sub}: unknown key (known in [{key}]: {', '.join(_SCHEMA[key])})"
                    )
                    continue
                value = _convert(f"{key}.{sub}", kind, sub_raw, violations)
                if value is not None:
                    values[key][sub] = value
        elif key in _SCHEMA and key != "":
            violations.append(f"{key}: must be a table ([{key}] followed by its keys), not {raw!r}")
        elif key in _SCHEMA[""]:
            value = _convert(key, _SCHEMA[""][key], raw, violations)
            if value is not None:
                values[""][key] = value
        else:
            violations.append(
                f"{key}: unknown key (known: {', '.join([*_SCHEMA[''], *list(_SCHEMA)[1:], 'tenants'])})"
            )
    # Keys that failed to parse keep their defaults, so the policy is still checked and
    # every violation is reported at once, not one file edit at a time.
    config = Config(
        **values[""],
        keys=KeysConfig(**values["keys"]),
        pkcs11=Pkcs11Config(**values["pkcs11"]),
        tokens=TokensConfig(**values["tokens"]),
        tls=TlsConfig(**values["tls"]),
        cluster=ClusterConfig(**values["cluster"]),
        limits=LimitsConfig(**values["limits"]),
        tenants=tenants,
    )
    # a key that failed to parse keeps its default: rules naming it would judge that default, so
    # they are left out; an unknown key stands in for nothing, so it hides no rule
    unparsed = {line.split(":", 1)[0] for line in violations if "unknown key" not in line}
    violations += [v for v in policy_violations(config) if not any(_names(key, v) for key in unparsed)]
    if violations:
        raise ConfigError(violations)
    return config


def _names(key: str, line: str) -> bool:
    """Whether `line` names config key `key` (whole key names only: keys.rsa is not keys.rsa_bits)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", line) is not None


def _tenants(raw: Any, violations: list[str]) -> dict[str, TenantConfig]:
    """[tenants.NAME] tables: per-tenant settings."""
    if not isinstance(raw, dict):
        violations.append("tenants: must be tables, [tenants.NAME] followed by its keys")
        return {}
    out = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            violations.append(f"tenants.{name}: must be a table ([tenants.{name}] followed by its keys)")
            continue
        values = {}
        for sub, sub_raw in table.items():
            kind = _TENANT_SCHEMA.get(sub)
            if kind is None:
                violations.append(f"tenants.{name}.{sub}: unknown key (known: {', '.join(_TENANT_SCHEMA)})")
                continue
            value = _convert(f"tenants.{name}.{sub}", kind, sub_raw, violations)
            if value is not None:
                values[sub] = value
        out[name] = TenantConfig(**values)
    return out


def policy_violations(config: Config) -> list[str]:
    """Every rule the configuration breaks, one line each."""
    out: list[str] = []
    k, t = config.keys, config.tokens
    if k.algorithm not in ALGORITHMS:
        why = (
            "a shared secret or no signature defeats a public key set"
            if (k.algorithm.upper().startswith("HS") or k.algorithm.lower() == "none")
            else "unknown algorithm"
        )
        out.append(f"keys.algorithm: {k.algorithm!r} is refused ({why}); use one of {', '.join(ALGORITHMS)}")
    if k.rsa_bits < MIN_RSA_BITS:
        out.append(f"keys.rsa_bits: {k.rsa_bits} is under the minimum of {MIN_RSA_BITS}")
    elif k.rsa_bits > MAX_RSA_BITS:
        out.append(
            f"keys.rsa_bits: {k.rsa_bits} is over the maximum of {MAX_RSA_BITS} (key generation would stall)"
        )
    if k.publish_lead < k.max_cache_age:
        out.append(
            f"keys.publish_lead ({format_duration(k.publish_lead)}) must be at least keys.max_cache_age "
            f"({format_duration(k.max_cache_age)}): a verifier caching the key set could meet a key it never saw"
        )
    if k.rotation_period <= k.publish_lead:
        out.append(
            f"keys.rotation_period ({format_duration(k.rotation_period)}) must be longer than keys.publish_lead "
            f"({format_duration(k.publish_lead)})"
        )
    if k.rotation_period <= 0:
        out.append("keys.rotation_period: must be positive")
    if t.access_ttl <= 0:
        out.append("tokens.access_ttl: must be positive")
    if t.max_access_ttl < t.access_ttl:
        out.append(
            f"tokens.max_access_ttl ({format_duration(t.max_access_ttl)}) must be at least tokens.access_ttl "
            f"({format_duration(t.access_ttl)})"
        )
    if t.refresh_ttl > 0 and t.refresh_family_ttl < t.refresh_ttl:
        out.append(
            f"tokens.refresh_family_ttl ({format_duration(t.refresh_family_ttl)}) must be at least "
            f"tokens.refresh_ttl ({format_duration(t.refresh_ttl)})"
        )
    if not config.issuer:
        out.append("issuer: must not be empty (it is every token's `iss` claim)")
    if not _valid_listen(config.listen):
        out.append(f"listen: {config.listen!r} is not HOST:PORT")
    if config.http_listen and not _valid_listen(config.http_listen):
        out.append(f"http_listen: {config.http_listen!r} is not HOST:PORT")
    if config.http_listen and config.http_listen == config.listen and not config.listen.endswith(":0"):
        out.append("http_listen: must differ from listen (gRPC and HTTP need ports of their own)")
    out += _tls_violations(config.tls)
    if config.database_url and not config.database_url.startswith(("postgresql://", "postgres://")):
        out.append(
            f"database_url: {config.database_url[:40]!r} is not a postgresql:// URL "
            '(leave it "" for the embedded SQLite store)'
        )
    if k.event_retention < t.max_access_ttl + k.clock_skew:
        out.append(
            f"keys.event_retention ({format_duration(k.event_retention)}) must cover tokens.max_access_ttl + "
            f"keys.clock_skew ({format_duration(t.max_access_ttl + k.clock_skew)}): a watcher resuming later "
            "must still get every revocation of a token that could verify"
        )
    if k.max_ack_wait < 0:
        out.append("keys.max_ack_wait: must not be negative")
    out += _key_store_violations(config)
    for name, tenant in config.tenants.items():
        if not TENANT.fullmatch(name):
            out.append(f"tenants.{name[:40]}: a tenant name is 1-128 letters, digits, '.', '-' or '_'")
        if tenant.algorithm and tenant.algorithm not in ALGORITHMS:
            out.append(
                f"tenants.{name}.algorithm: {tenant.algorithm!r} is not allowed; use one of {', '.join(ALGORITHMS)}"
            )
    if config.log_format not in ("json", "text"):
        out.append(f'log_format: {config.log_format[:20]!r} is neither "json" nor "text"')
    if config.log_level not in ("debug", "info", "warning", "error"):
        out.append(f"log_level: {config.log_level[:20]!r} is not one of debug, info, warning, error")
    if config.status_access not in ("admin", "public"):
        out.append(
            f'status_access: {config.status_access[:20]!r} is neither "admin" (an admin client\'s credentials, '
            'audit events shown) nor "public" (no credentials, no audit events)'
        )
    if config.cluster.lease_ttl < 1:
        out.append("cluster.lease_ttl: must be at least 1s")
    if len(config.cluster.replica) > 128 or (
        config.cluster.replica and not config.cluster.replica.isprintable()
    ):
        out.append("cluster.replica: a replica name is at most 128 printable characters")
    if not 1 <= config.cluster.pool_size <= 1000:
        out.append(f"cluster.pool_size: {config.cluster.pool_size} is outside 1..1000")
    return out + _limits_violations(config.limits)


def _key_store_violations(config: Config) -> list[str]:
    k, p = config.keys, config.pkcs11
    if k.key_store not in ("sealed", "pkcs11"):
        return [f'keys.key_store: {k.key_store[:20]!r} is neither "sealed" nor "pkcs11"']
    if k.key_store != "pkcs11":
        return []
    out = []
    if not p.module:
        out.append('pkcs11.module: must name the HSM\'s PKCS#11 library (keys.key_store is "pkcs11")')
    if not p.token_label:
        out.append('pkcs11.token_label: must name the token the keys live on (keys.key_store is "pkcs11")')
    if not p.pin_env:
        out.append("pkcs11.pin_env: must name the environment variable that holds the token's user PIN")
    return out


def _limits_violations(limits: LimitsConfig) -> list[str]:
    out = []
    for kind in ("issue", "refresh"):
        rate, burst = getattr(limits, f"{kind}_rate"), getattr(limits, f"{kind}_burst")
        if rate < 0:
            out.append(f"limits.{kind}_rate: must not be negative (0 turns the limit off)")
        elif rate > 0 and burst < 1:
            out.append(f"limits.{kind}_burst: must be at least 1 while limits.{kind}_rate is on")
    if limits.audit_refusals_per_minute < 0:
        out.append("limits.audit_refusals_per_minute: must be 0 (no cap) or more")
    if limits.watchers_per_client < 1:
        out.append("limits.watchers_per_client: must be at least 1")
    if limits.max_watchers < limits.watchers_per_client:
        out.append(
            f"limits.max_watchers ({limits.max_watchers}) must be at least limits.watchers_per_client "
            f"({limits.watchers_per_client})"
        )
    for name in ("keepalive_time", "keepalive_timeout", "idle_timeout", "write_timeout"):
        if getattr(limits, name) < 0.01:
            out.append(f"limits.{name}: must be at least 10ms")
    if not 0.1 <= limits.report_interval <= 3600:
        out.append("limits.report_interval: must be between 100ms and 1h")
    return out


def _tls_violations(tls: TlsConfig) -> list[str]:
    out = []
    if bool(tls.cert_file) != bool(tls.key_file):
        out.append(
            "tls.cert_file and tls.key_file: give both (the server's certificate and its key) or neither"
        )
    if tls.client_ca_file and not tls.cert_file:
        out.append(
            "tls.client_ca_file: client certificates need TLS first; set tls.cert_file and tls.key_file"
        )
    if tls.require_client_cert and not tls.client_ca_file:
        out.append("tls.require_client_cert: needs tls.client_ca_file, the CA that signs client certificates")
    if tls.client_ca_file and not tls.require_client_cert:
        out.append(
            "tls.require_client_cert: must be true when tls.client_ca_file is set: the gRPC server cannot ask "
            "for an optional client certificate, so every client presents one (and may still add Basic "
            "credentials)"
        )
    return out


def _valid_listen(listen: str) -> bool:
    host, sep, port = listen.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 <= int(port) <= 65535)


def load_config(path: str | Path | None) -> Config:
    """The configuration in `path` (TOML), or the defaults when `path` is None."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None
    return config_from_dict(doc)
