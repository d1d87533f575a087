"""Verification outcome counts: what a Verifier's `verify` calls ended with, per kid.

`verify` counts every call, from any thread; a KeySetWatcher with a name
takes the counts not yet reported (`take`) and sends them to Rotor. The lock
is held for two dict updates, far below the cost of checking a signature.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

MAX_SERIES = 256  # (outcome, kid) pairs kept per verifier; past it, new kids count under ""
MAX_KID = 128  # longer (or unprintable) kids, as a forged token may carry, count under ""


def reportable_kid(kid: str) -> str:
    """`kid` as counted: "" for one no key set could hold (too long, or not printable)."""
    return kid if len(kid) <= MAX_KID and kid.isprintable() and " " not in kid else ""


class VerificationStats:
    """Cumulative counts, and those not yet reported, by (outcome, kid)."""

    __slots__ = ("__weakref__", "_lock", "_total", "_unreported")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total: dict[tuple[str, str], int] = {}
        self._unreported: dict[tuple[str, str], int] = {}

    def add(self, outcome: str, kid: str) -> None:
        key = (outcome, kid)
        with self._lock:
            total = self._total
            if key not in total and len(total) >= MAX_SERIES:
                key = (outcome, "")
            total[key] = total.get(key, 0) + 1
            unreported = self._unreported
            unreported[key] = unreported.get(key, 0) + 1

    def by_outcome(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            items = list(self._total.items())
        for (outcome, _kid), count in items:
            out[outcome] = out.get(outcome, 0) + count
        return out

    def by_outcome_and_kid(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._total)

    def take(self) -> dict[tuple[str, str], int]:
        """The counts since the previous take (for a report), and start anew."""
        with self._lock:
            taken, self._unreported = self._unreported, {}
        return taken

    def give_back(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Counts taken for a report that did not go through: reported with the next."""
        with self._lock:
            for key, count in counts.items():
                self._unreported[key] = self._unreported.get(key, 0) + count


def merged(parts: Iterable[Mapping[tuple[str, str], int]]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for part in parts:
        for key, count in part.items():
            out[key] = out.get(key, 0) + count
    return out
