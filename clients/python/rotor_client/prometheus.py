"""Prometheus metrics for a service that verifies Rotor's tokens (needs prometheus-client).

    from rotor_client.prometheus import instrument
    instrument(verifier)                  # the default registry: served by your /metrics

exports `rotor_client_verifications_total{outcome}`: every `verify` outcome of
the given verifiers ("OK", or the reason it failed: TOKEN_EXPIRED,
UNKNOWN_KEY, ...), read from `Verifier.stats()` at each scrape, so `verify`
pays nothing more for it.
"""

from __future__ import annotations

from collections.abc import Iterable

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as missing:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "rotor_client.prometheus needs prometheus-client: pip install prometheus-client"
    ) from missing

from rotor_client.verifier import Verifier

__all__ = ["VerificationCollector", "instrument"]


class VerificationCollector(Collector):
    """rotor_client_verifications_total{outcome}, summed over some verifiers."""

    def __init__(self, verifiers: Iterable[Verifier]) -> None:
        self._verifiers = list(verifiers)

    def add(self, verifier: Verifier) -> None:
        self._verifiers.append(verifier)

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "rotor_client_verifications",
            "Access tokens verified by this process, by outcome (OK, or the reason verification failed).",
            labels=["outcome"],
        )
        totals: dict[str, int] = {}
        for verifier in self._verifiers:
            for outcome, count in verifier.stats().items():
                totals[outcome] = totals.get(outcome, 0) + count
        for outcome in sorted(totals):
            family.add_metric([outcome], totals[outcome])
        return [family]


def instrument(*verifiers: Verifier, registry: CollectorRegistry | None = None) -> VerificationCollector:
    """Export the verifiers' outcomes in `registry` (the default one if None); more may be added
    later with the returned collector's `add`."""
    collector = VerificationCollector(verifiers)
    (registry if registry is not None else REGISTRY).register(collector)
    return collector
