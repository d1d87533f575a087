"""Prometheus metrics, prefix `rotor_`, in one registry per server (served on /metrics).

They answer the questions an operator asks of a token service: is a key
active and when does the next one take over; how many tokens are issued,
refreshed and revoked, by client and outcome; which errors callers meet, by
reason; is anyone replaying refresh tokens; how many watchers listen, and
how late do events reach them; how long each RPC takes.

Client ids are labels: they are registered names (a bounded set), and a call
that failed to authenticate is counted under client "" so nothing a caller
sends can create a series.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rotor.core import lifecycle
from rotor.core.fleet import FleetWatcher
from rotor.core.lifecycle import KeyPolicy
from rotor.core.model import KeyState, SigningKey
from rotor.store._shared_tx import AUDIT_WRITE_FAILURES

# the authenticated caller of the RPC being handled, for labels ("" until authenticated)
caller: contextvars.ContextVar[str] = contextvars.ContextVar("rotor_caller", default="")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
AUTH_FAILURES = frozenset({"INVALID_CLIENT", "CLIENT_DISABLED"})
# a refresh token presented again, or by another client: either ends its family
THEFT = frozenset({"REFRESH_TOKEN_REUSED", "REFRESH_TOKEN_CLIENT_MISMATCH"})
TOKEN_RPCS = {"Issue": "issued", "Refresh": "refreshed", "Revoke": "revoked"}


class Metrics:
    """Every metric Rotor exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[Any, ...], Any] = {}
        r = self.registry
        self.rpc_duration = Histogram(
            "rotor_rpc_duration_seconds",
            "Unary RPC latency by method and status code.",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rpc_errors = Counter(
            "rotor_rpc_errors_total",
            "RPCs that ended in an error, by method and google.rpc.ErrorInfo reason.",
            ["method", "reason"],
            registry=r,
        )
        self.tokens = {
            verb: Counter(
                f"rotor_tokens_{verb}_total",
                f"Tokens {verb}, by client and outcome (ok, or the error reason).",
                ["client", "outcome"],
                registry=r,
            )
            for verb in TOKEN_RPCS.values()
        }
        self.refresh_reuse = Counter(
            "rotor_refresh_reuse_detected_total",
            "Refresh tokens presented again after use, or by another client (a stolen token, or a client bug): each ends a family.",
            ["client"],
            registry=r,
        )
        self.auth_failures = Counter(
            "rotor_auth_failures_total",
            "Calls refused for missing, wrong or disabled client credentials, by reason.",
            ["reason"],
            registry=r,
        )
        self.key_events = Counter(
            "rotor_key_events_total",
            "Events seen in the event log by this process, by tenant and type.",
            ["tenant", "type"],
            registry=r,
        )
        self.watchers = Gauge("rotor_watchers_connected", "Open WatchKeyRotations streams.", registry=r)
        self.delivery_lag = Histogram(
            "rotor_event_delivery_lag_seconds",
            "From an event's commit to its sending on a watcher's stream.",
            buckets=LAG_BUCKETS,
            registry=r,
        )

    def watch_rotator(self, leading: Callable[[], bool], failures: Callable[[], int]) -> None:
        """Export whether this process runs the key schedule, and its failed ticks."""
        self.registry.register(_RotatorCollector(leading, failures))

    def watch_audit(self) -> None:
        """Export the audit appends that failed in this process (each failed its change too)."""
        self.registry.register(_AuditCollector())

    def watch_keys(
        self,
        tenants: Callable[[], Iterable[str]],
        live: Callable[[str], Sequence[SigningKey]],
        can_sign: Callable[[str], bool],
        policy: KeyPolicy,
        now: Callable[[], float],
    ) -> None:
        """Export the key timeline, read from the key ring at each scrape."""
        self.registry.register(_KeyCollector(tenants, live, can_sign, policy, now))

    def watch_fleet(
        self,
        known: Callable[[], Iterable[tuple[FleetWatcher, bool]]],
        totals: Callable[[], Iterable[tuple[str, str, str, int]]],
        live: Callable[[str], Sequence[SigningKey]],
        latest: Callable[[str], int],
    ) -> None:
        """Export the fleet view, as this process last read it from the store (every replica's)."""
        self.registry.register(_FleetCollector(known, totals, live, latest))

    def observe(self, method: str, code: str, seconds: float | None, reason: str) -> None:
        """One finished RPC (seconds None for streams), labelled with the caller in `caller`."""
        if seconds is not None:
            self._child(self.rpc_duration, method, code).observe(seconds)
        client = caller.get()
        if code != "OK":
            self._child(self.rpc_errors, method, reason or code).inc()
            if reason in AUTH_FAILURES:
                self._child(self.auth_failures, reason).inc()
            elif reason in THEFT:
                self._child(self.refresh_reuse, client).inc()
        verb = TOKEN_RPCS.get(method)
        if verb is not None:
            self._child(self.tokens[verb], client, "ok" if code == "OK" else reason or code).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), remembered: the lookup is on every call's path."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


class _RotatorCollector(Collector):
    def __init__(self, leading: Callable[[], bool], failures: Callable[[], int]) -> None:
        self._leading, self._failures = leading, failures

    def collect(self) -> Iterable[Metric]:
        leader = GaugeMetricFamily(
            "rotor_rotator_leader",
            "1 on the process holding the rotator lease (it runs the key schedule); across replicas, "
            "the sum should be 1.",
        )
        leader.add_metric([], 1 if self._leading() else 0)
        failures = CounterMetricFamily(
            "rotor_rotator_failures", "Key-schedule ticks that failed (retried at once; the log says why)."
        )
        failures.add_metric([], self._failures())
        return [leader, failures]


class _AuditCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        failures = CounterMetricFamily(
            "rotor_audit_write_failures",
            "Audit entries that could not be written; the change each belonged to did not happen.",
        )
        failures.add_metric([], AUDIT_WRITE_FAILURES.count)
        return [failures]


class _FleetCollector(Collector):
    """Every replica's named watchers and their reported verifications, read from the store: each
    replica exports the same fleet-wide values (aggregate with max, not sum, across replicas)."""

    def __init__(
        self,
        known: Callable[[], Iterable[tuple[FleetWatcher, bool]]],
        totals: Callable[[], Iterable[tuple[str, str, str, int]]],
        live: Callable[[str], Sequence[SigningKey]],
        latest: Callable[[str], int],
    ) -> None:
        self._known, self._totals, self._live, self._latest = known, totals, live, latest

    def collect(self) -> Iterable[Metric]:
        watchers = GaugeMetricFamily(
            "rotor_fleet_watchers",
            "Named watchers of the tenant, on every replica, streaming or reporting.",
            labels=["tenant"],
        )
        up = GaugeMetricFamily(
            "rotor_fleet_watcher_up",
            "1 while a named watcher streams or reports; 0 once silent for three report intervals "
            "(listed for a day after).",
            labels=["tenant", "watcher"],
        )
        behind = GaugeMetricFamily(
            "rotor_fleet_watcher_events_behind",
            "Events of its tenant a present named watcher has not been sent or applied yet.",
            labels=["tenant", "watcher"],
        )
        missing = GaugeMetricFamily(
            "rotor_fleet_watcher_missing_keys",
            "Keys of its tenant's key set (pending, active, retired) a present named watcher does not hold.",
            labels=["tenant", "watcher"],
        )
        counts: dict[str, int] = {}
        for watcher, present in self._known():
            tenant = watcher.tenant
            counts[tenant] = counts.get(tenant, 0) + present
            up.add_metric([tenant, watcher.name], 1 if present else 0)
            if present:
                behind.add_metric([tenant, watcher.name], max(self._latest(tenant) - watcher.sequence, 0))
                held = set(watcher.kids)
                missing.add_metric(
                    [tenant, watcher.name], sum(1 for k in self._live(tenant) if k.kid not in held)
                )
        for tenant, count in counts.items():
            watchers.add_metric([tenant], count)
        verifications = CounterMetricFamily(
            "rotor_fleet_verifications",
            "Token verifications reported by named watchers' verifiers, by outcome (OK, or the "
            "client library's error reason), fleet-wide.",
            labels=["tenant", "watcher", "outcome"],
        )
        for tenant, name, outcome, count in self._totals():
            verifications.add_metric([tenant, name, outcome], count)
        return [watchers, up, behind, missing, verifications]


class _KeyCollector(Collector):
    """Gauges of each tenant's key timeline, computed when scraped."""

    def __init__(
        self,
        tenants: Callable[[], Iterable[str]],
        live: Callable[[str], Sequence[SigningKey]],
        can_sign: Callable[[str], bool],
        policy: KeyPolicy,
        now: Callable[[], float],
    ) -> None:
        self._tenants, self._live, self._can_sign = tenants, live, can_sign
        self._policy, self._now = policy, now

    def collect(self) -> Iterable[Metric]:
        active_keys = GaugeMetricFamily(
            "rotor_active_keys",
            "1 when this process holds the tenant's active key and can sign with it; 0 is an outage.",
            labels=["tenant"],
        )
        pending_keys = GaugeMetricFamily(
            "rotor_pending_keys",
            "Keys published and waiting to sign (the next rotation's successor).",
            labels=["tenant"],
        )
        age = GaugeMetricFamily(
            "rotor_active_key_age_seconds", "Seconds since the active key started signing.", labels=["tenant"]
        )
        retires_in = GaugeMetricFamily(
            "rotor_active_key_retires_in_seconds",
            "Seconds until the active key is due to stop signing.",
            labels=["tenant"],
        )
        next_rotation = GaugeMetricFamily(
            "rotor_next_rotation_seconds",
            "Seconds until the next key starts signing (negative: overdue).",
            labels=["tenant"],
        )
        now = self._now()
        for tenant in self._tenants():
            keys = self._live(tenant)
            active = lifecycle.active_key(keys)
            active_keys.add_metric([tenant], 1 if active is not None and self._can_sign(tenant) else 0)
            pending_keys.add_metric([tenant], sum(1 for k in keys if k.state is KeyState.PENDING))
            if active is not None:
                age.add_metric([tenant], now - active.activates_at)
                retires_in.add_metric([tenant], active.retires_at - now)
            next_at = lifecycle.next_rotation_at(keys, self._policy)
            if next_at is not None:
                next_rotation.add_metric([tenant], next_at - now)
        return [active_keys, pending_keys, age, retires_in, next_rotation]
