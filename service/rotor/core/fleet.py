"""The fleet view: every named watcher of a tenant, on every replica, and how its verifications go.

A watcher names itself on its stream (metadata x-rotor-watcher) and in its
reports (ReportVerifications): the kids it holds, the newest sequence it
applied, and its verifiers' outcomes since its previous report. Each replica
collects what its own streams and the reports it takes say, and writes it to
the store in batches (a watcher's row at most once per report interval, but
at once when it appears or its stream ends). Everything that reads the fleet
(GetRotationStatus, the status page, the metrics, ack-gated activation) reads
the store, overlaid with this replica's own live streams, so every replica
sees the watchers of every other.

A watcher is present while it streams (its replica refreshes its row every
report interval) or reports; one silent for GONE_AFTER report intervals is
gone. Reported counts are kept per minute for WINDOW seconds (the status
views), and as running totals per outcome (rotor_fleet_verifications_total).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from rotor.clock import Clock
from rotor.core import validation
from rotor.core.errors import InvalidRequest, TooManyRequests, TooManyWatchers, quote
from rotor.core.propagation import WatcherRegistry, WatcherState

log = logging.getLogger("rotor.fleet")

# What a verifier may report: "OK", or the reason of the error the client library raised.
OUTCOMES = frozenset(
    {
        "OK",
        "TOKEN_EXPIRED",
        "TOKEN_NOT_YET_VALID",
        "TOKEN_MALFORMED",
        "INVALID_SIGNATURE",
        "UNKNOWN_KEY",
        "KEY_REVOKED",
        "TOKEN_REVOKED",
        "INVALID_AUDIENCE",
        "INVALID_ISSUER",
        "INSUFFICIENT_SCOPE",
        "CERTIFICATE_MISMATCH",
        "KEY_SET_STALE",
        "INVALID_TOKEN",
    }
)
REPORT_INTERVAL = 10.0  # seconds between a watcher's reports, unless configured otherwise
GONE_AFTER = 3  # report intervals of silence after which a watcher is gone
WINDOW = 15 * 60.0  # the span of the verification counts the status views show
BUCKET = 60.0  # counts are kept per minute
FORGET_AFTER = 86400.0  # a watcher gone this long leaves the store, totals and all
MAX_KIDS = 64  # kids in one report
MAX_COUNTS = 256  # count entries in one report
MAX_COUNT = 10**12  # one entry's count: more than any verifier does between two reports
MAX_SEQUENCE = 2**63 - 1
TICK = (0.05, 1.0)  # the writer's wake-up period: a quarter report interval, within these bounds
PRUNE_EVERY = 60.0


def default_replica() -> str:
    """This process as a replica, when the configuration names none: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class VerificationCount:
    """How many verifications at a watcher's verifiers ended with `outcome`, for tokens naming `kid`."""

    outcome: str
    kid: str
    count: int


@dataclass(frozen=True, slots=True)
class FleetWatcher:
    """One named watcher of a tenant, as the fleet sees it."""

    tenant: str
    name: str
    replica: str  # the replica holding its stream, or that took its latest report
    peer: str
    connected_at: float | None  # None while it has no stream
    sent_sequence: int  # the newest event sequence a replica sent it
    sent_kids: tuple[str, ...]  # the kids of the key set last sent to it
    reported_sequence: int  # the newest sequence it reported applying
    reported_kids: tuple[str, ...]  # the kids it reported holding
    last_seen: float  # its stream was alive, or it reported, at this instant
    last_report_at: float | None
    verifications: tuple[VerificationCount, ...] = ()  # the last WINDOW seconds, by outcome and kid

    @property
    def sequence(self) -> int:
        """How far it has got: the newest sequence sent to it or reported applied by it."""
        return max(self.sent_sequence, self.reported_sequence)

    @property
    def kids(self) -> tuple[str, ...]:
        """The kids it holds: as it last reported, else as last sent to it."""
        return self.reported_kids if self.last_report_at is not None else self.sent_kids

    def holds(self, kid: str) -> bool:
        return kid in self.sent_kids or kid in self.reported_kids

    def present(self, now: float, interval: float) -> bool:
        """Whether it streams or reports (silent for less than GONE_AFTER intervals)."""
        return now - self.last_seen < GONE_AFTER * interval and (
            self.connected_at is not None
            or (self.last_report_at is not None and now - self.last_report_at < GONE_AFTER * interval)
        )


@dataclass(frozen=True, slots=True)
class WatcherReport:
    """One ReportVerifications, validated."""

    tenant: str
    name: str
    sequence: int
    kids: tuple[str, ...]
    counts: tuple[VerificationCount, ...]


@dataclass(slots=True)
class FleetBatch:
    """What one replica writes to the store in one transaction."""

    streams: list[FleetWatcher] = field(default_factory=list)  # presence from this replica's streams
    closed: list[tuple[str, str]] = field(default_factory=list)  # (tenant, name): its stream here ended
    reports: list[FleetWatcher] = field(default_factory=list)  # presence from reports taken here
    counts: list[tuple[str, str, float, str, str, int]] = field(default_factory=list)
    # (tenant, name, bucket, outcome, kid, count) to add
    replica: str = ""
    now: float = 0.0
    prune: bool = False  # drop counts older than WINDOW and watchers gone for FORGET_AFTER

    def __bool__(self) -> bool:
        return bool(self.streams or self.closed or self.reports or self.counts or self.prune)


def check_report(
    tenant: str, name: str, sequence: int, kids: Sequence[str], counts: Iterable[tuple[str, str, int]]
) -> WatcherReport:
    """A report's fields, bounded (anyone may send one): InvalidRequest naming the field otherwise."""
    name = validation.identifier(name, "watcher")
    if not name:
        raise InvalidRequest(
            "watcher is required: the name the KeySetWatcher was given", "FIELD_REQUIRED", "watcher"
        )
    if sequence > MAX_SEQUENCE:
        raise InvalidRequest(f"sequence {sequence} is beyond any event sequence", "INVALID_VALUE", "sequence")
    if len(kids) > MAX_KIDS:
        raise InvalidRequest(
            f"kids lists {len(kids)} keys; a key set holds at most {MAX_KIDS}", "VALUE_TOO_LONG", "kids"
        )
    held = tuple(dict.fromkeys(validation.identifier(k, "kids") for k in kids if k))
    entries = list(counts)
    if len(entries) > MAX_COUNTS:
        raise InvalidRequest(
            f"counts has {len(entries)} entries; report at most {MAX_COUNTS} (outcome, kid) pairs at once",
            "VALUE_TOO_LONG",
            "counts",
        )
    merged: dict[tuple[str, str], int] = {}
    for outcome, kid, count in entries:
        if outcome not in OUTCOMES:
            raise InvalidRequest(
                f"counts: outcome {quote(outcome)} is not one a verifier reports (OK, or a client "
                f"library error reason such as TOKEN_EXPIRED or UNKNOWN_KEY)",
                "INVALID_VALUE",
                "counts.outcome",
            )
        kid = validation.identifier(kid, "counts.kid")
        if count > MAX_COUNT:
            raise InvalidRequest(
                f"counts: {count} verifications in one report is more than any verifier does",
                "INVALID_VALUE",
                "counts.count",
            )
        if count:
            merged[outcome, kid] = merged.get((outcome, kid), 0) + count
    return WatcherReport(
        tenant,
        name,
        sequence,
        held,
        tuple(VerificationCount(o, k, c) for (o, k), c in merged.items()),
    )


@dataclass(slots=True)
class _Written:
    """When this replica last wrote a watcher's row, and whether it streamed then."""

    at: float
    streaming: bool


class Fleet:
    """This replica's door to the fleet view: takes reports, writes presence, reads every replica's."""

    def __init__(
        self,
        store: FleetStore,
        clock: Clock,
        registry: WatcherRegistry,
        *,
        replica: str = "",
        report_interval: float = REPORT_INTERVAL,
        max_names: int = 20_000,
    ) -> None:
        self._store, self._clock, self._registry = store, clock, registry
        self.replica = replica or default_replica()
        self.report_interval = report_interval
        self._max_names = max_names
        self._cache: dict[str, list[FleetWatcher]] = {}  # tenant -> present watchers, as last read
        self._rows: list[FleetWatcher] = []  # every watcher seen within FORGET_AFTER, as last read
        self._latest: dict[str, int] = {}  # tenant -> its newest event sequence, as last read
        self._totals: list[tuple[str, str, str, int]] = []
        self._reports: dict[tuple[str, str], FleetWatcher] = {}  # taken here, not yet written
        self._counts: dict[tuple[str, str, float, str, str], int] = {}
        self._last_report: dict[tuple[str, str], float] = {}  # (tenant, name) -> when it last reported here
        self._written: dict[tuple[str, str], _Written] = {}  # rows of this replica's streams
        self._last_prune = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.failed_writes = 0

    # -- what readers call -----------------------------------------------------------------

    async def watchers(self, tenant: str) -> list[FleetWatcher]:
        """The tenant's present named watchers on every replica, by name, with their verification
        counts over the last WINDOW seconds. What GetRotationStatus and the status page serve."""
        now = self._clock.now()
        rows = await self._store.fleet_watchers(now - GONE_AFTER * self.report_interval, now - WINDOW, tenant)
        return self._overlay(tenant, rows, now)

    def unacknowledged(self, tenant: str, kid: str) -> list[str]:
        """Names of the tenant's present named watchers (any replica) that do not hold key `kid`:
        the ack gate of activation_requires_ack. Reads no store: the rows as last read, overlaid
        with this replica's live streams."""
        now = self._clock.now()
        return sorted(
            {w.name for w in self._overlay(tenant, self._cache.get(tenant, []), now) if not w.holds(kid)}
        )

    def present(self) -> dict[str, int]:
        """Present named watchers per tenant, as last read (rotor_fleet_watchers)."""
        counts: dict[str, int] = {}
        for watcher, present in self.known():
            counts[watcher.tenant] = counts.get(watcher.tenant, 0) + present
        return counts

    def known(self) -> list[tuple[FleetWatcher, bool]]:
        """Every watcher seen within FORGET_AFTER, of every tenant, and whether it is present, as
        last read (the per-watcher metrics; a gone watcher stays listed, not present)."""
        now = self._clock.now()
        tenants = {
            *(r.tenant for r in self._rows),
            *(w.tenant for w in self._registry.all()),
            *(t for t, _ in self._reports),
        }
        out: list[tuple[FleetWatcher, bool]] = []
        for tenant in sorted(tenants):
            present = {w.name: w for w in self._overlay(tenant, self._cache.get(tenant, []), now)}
            gone = [r for r in self._rows if r.tenant == tenant and r.name not in present]
            out += [(r, False) for r in gone] + [(w, True) for w in present.values()]
        return out

    def latest(self, tenant: str) -> int:
        """The tenant's newest event sequence, as last read."""
        return self._latest.get(tenant, 0)

    def totals(self) -> list[tuple[str, str, str, int]]:
        """(tenant, watcher, outcome, count) ever reported, as last read (rotor_fleet_verifications_total)."""
        return list(self._totals)

    def _overlay(self, tenant: str, rows: Iterable[FleetWatcher], now: float) -> list[FleetWatcher]:
        """Store rows with this replica's own streams as they are now: a stream opened here shows
        at once, and one that ended here is gone at once unless the watcher still reports."""
        live: dict[str, FleetWatcher] = {}
        for state in self._registry.named(tenant):
            live[state.name] = _merge_stream(live.get(state.name), self._from_stream(state, now))
        out: dict[str, FleetWatcher] = {}
        for row in rows:
            if row.tenant != tenant:
                continue
            pending = self._reports.get((tenant, row.name))
            if pending is not None:
                row = _with_report(row, pending)
            local = live.pop(row.name, None)
            if local is not None:
                row = replace(
                    row,
                    replica=self.replica,
                    peer=local.peer,
                    connected_at=local.connected_at,
                    sent_sequence=max(local.sent_sequence, row.sent_sequence),
                    sent_kids=local.sent_kids,
                    last_seen=now,
                )
            elif row.replica == self.replica and row.connected_at is not None:
                row = replace(row, connected_at=None)  # its stream here has ended
            if row.present(now, self.report_interval):
                out[row.name] = row
        for name, local in live.items():
            pending = self._reports.get((tenant, name))
            out[name] = _with_report(local, pending) if pending is not None else local
        for (t, name), pending in self._reports.items():
            if t == tenant and name not in out:
                out[name] = pending
        return [out[name] for name in sorted(out)]

    def _from_stream(self, state: WatcherState, now: float) -> FleetWatcher:
        return FleetWatcher(
            tenant=state.tenant,
            name=state.name,
            replica=self.replica,
            peer=state.peer,
            connected_at=state.connected_at,
            sent_sequence=state.sent_sequence,
            sent_kids=tuple(sorted(state.known_kids)),
            reported_sequence=0,
            reported_kids=(),
            last_seen=now,
            last_report_at=None,
        )

    # -- reports ---------------------------------------------------------------------------

    def report(self, report: WatcherReport) -> float:
        """Take a watcher's report (written with the next batch); the seconds until its next.

        TooManyRequests when the name reports faster than every half interval; TooManyWatchers
        when it is a new name and the fleet already tracks as many as allowed."""
        now = self._clock.now()
        key = (report.tenant, report.name)
        last = self._last_report.get(key)
        least = self.report_interval / 2  # room for the watcher's timer jitter and slow networks
        if last is not None and now - last < least:
            wait = least - (now - last)
            raise TooManyRequests(
                f"watcher {report.name!r} reported {now - last:.1f} s ago; report every "
                f"{self.report_interval:g} s (next_report_in says when), retry in {math.ceil(wait * 1000)} ms",
                retry_after=wait,
                reason="RATE_LIMITED",
            )
        if (
            last is None
            and not self._known(report.tenant, report.name)
            and self._tracked() >= self._max_names
        ):
            raise TooManyWatchers(
                f"Rotor tracks as many named watchers as it allows ({self._max_names}, [limits] "
                "max_watchers); reuse a watcher name per service, or raise the limit"
            )
        self._last_report.pop(key, None)  # re-inserted last: oldest first, for forgetting
        self._last_report[key] = now
        while len(self._last_report) > 2 * self._max_names:
            del self._last_report[next(iter(self._last_report))]
        previous = self._reports.get(key)
        self._reports[key] = FleetWatcher(
            tenant=report.tenant,
            name=report.name,
            replica=self.replica,
            peer="",
            connected_at=None,
            sent_sequence=0,
            sent_kids=(),
            reported_sequence=max(report.sequence, previous.reported_sequence if previous else 0),
            reported_kids=report.kids,
            last_seen=now,
            last_report_at=now,
        )
        bucket = math.floor(now / BUCKET) * BUCKET
        for c in report.counts:
            slot = (report.tenant, report.name, bucket, c.outcome, c.kid)
            self._counts[slot] = self._counts.get(slot, 0) + c.count
        self._wake.set()
        return self.report_interval

    def _known(self, tenant: str, name: str) -> bool:
        return any(w.name == name for w in self._cache.get(tenant, ())) or (tenant, name) in self._reports

    def _tracked(self) -> int:
        return sum(len(rows) for rows in self._cache.values()) + len(self._reports)

    # -- writing and reading the store -----------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rotor-fleet")

    async def stop(self) -> None:
        """Stop the writer, after one last batch (this replica's streams end with it)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Exception):
            await self.sync(final=True)

    async def _run(self) -> None:
        tick = min(max(self.report_interval / 4, TICK[0]), TICK[1])
        while True:
            try:
                await self.sync()
            except Exception:
                self.failed_writes += 1
                log.warning("could not write or read the fleet view; retrying", exc_info=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()
                    await asyncio.sleep(tick / 4)  # let a burst of reports join one batch

    async def sync(self, final: bool = False) -> None:
        """Write what is due (one transaction), then read every replica's present watchers."""
        batch = self._batch(final)
        if batch:
            try:
                await self._store.write_fleet(batch)
            except BaseException:
                self._restore(batch)
                raise
        now = self._clock.now()
        rows = await self._store.fleet_watchers(now - FORGET_AFTER, None, None)
        cache: dict[str, list[FleetWatcher]] = {}
        for row in rows:
            if row.present(now, self.report_interval):
                cache.setdefault(row.tenant, []).append(row)
        self._cache, self._rows = cache, rows
        self._totals = await self._store.fleet_totals()
        tenants = {r.tenant for r in rows} | {w.tenant for w in self._registry.all()}
        self._latest = {t: await self._store.last_sequence(t) for t in sorted(tenants)}

    def _batch(self, final: bool) -> FleetBatch:
        now = self._clock.now()
        batch = FleetBatch(replica=self.replica, now=now)
        streaming: dict[tuple[str, str], FleetWatcher] = {}
        if not final:
            for state in self._registry.all():
                key = (state.tenant, state.name)
                streaming[key] = _merge_stream(streaming.get(key), self._from_stream(state, now))
        for key, row in streaming.items():
            written = self._written.get(key)
            # new here, or due for its refresh: at most once per report interval per watcher
            if written is None or not written.streaming or now - written.at >= self.report_interval:
                batch.streams.append(row)
                self._written[key] = _Written(now, True)
        for key in [k for k, w in self._written.items() if k not in streaming]:
            if self._written[key].streaming:
                batch.closed.append(key)
            del self._written[key]
        batch.reports = list(self._reports.values())
        self._reports = {}
        batch.counts = [(*slot, count) for slot, count in self._counts.items()]
        self._counts = {}
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            batch.prune = True
        return batch

    def _restore(self, batch: FleetBatch) -> None:
        """A batch that could not be written goes out with the next one."""
        for row in batch.reports:
            key = (row.tenant, row.name)
            self._reports.setdefault(key, row)
        for tenant, name, bucket, outcome, kid, count in batch.counts:
            slot = (tenant, name, bucket, outcome, kid)
            self._counts[slot] = self._counts.get(slot, 0) + count
        for row in batch.streams:
            self._written.pop((row.tenant, row.name), None)
        for key in batch.closed:
            self._written.setdefault(key, _Written(batch.now, True))


def _merge_stream(a: FleetWatcher | None, b: FleetWatcher) -> FleetWatcher:
    """Two streams of one name on this replica: the earliest connection, the furthest progress."""
    if a is None:
        return b
    ahead = a if a.sent_sequence >= b.sent_sequence else b
    return replace(ahead, connected_at=min(a.connected_at or math.inf, b.connected_at or math.inf))


def _with_report(row: FleetWatcher, report: FleetWatcher) -> FleetWatcher:
    """A watcher's row with a report taken here and not yet written."""
    return replace(
        row,
        reported_sequence=max(row.reported_sequence, report.reported_sequence),
        reported_kids=report.reported_kids,
        last_report_at=report.last_report_at,
        last_seen=max(row.last_seen, report.last_seen),
    )


class FleetStore(Protocol):
    """What the fleet view needs of the store (rotor.store.Store provides it)."""

    async def write_fleet(self, batch: FleetBatch) -> None: ...

    async def fleet_watchers(
        self, seen_since: float, counts_since: float | None, tenant: str | None
    ) -> list[FleetWatcher]: ...

    async def fleet_totals(self) -> list[tuple[str, str, str, int]]: ...

    async def last_sequence(self, tenant: str | None = None) -> int: ...
