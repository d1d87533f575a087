"""What both SQL backends do alike, by rotor.store._sql's statements.

`SharedReads` and `SharedTx` are mixed into each backend's read and
transaction classes, whose `_one`, `_all`, `_count` and `_changed` run those
statements in that backend's dialect; `SharedStore` into each store, for its
own write transactions. What differs (event sequences, key locks, lease
checks, row locks on reads) stays in each backend.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from rotor.core.audit import chain_hash
from rotor.core.fleet import FORGET_AFTER, WINDOW, FleetBatch, FleetWatcher, VerificationCount
from rotor.core.model import (
    LIVE_STATES,
    AuditEntry,
    Client,
    ClientRevocation,
    KeyState,
    Operation,
    RefreshFamily,
    RefreshToken,
    RevokedToken,
    SigningKey,
    Snapshot,
)
from rotor.store import StoreError, _sql, rows


class _Counter:
    count = 0


# audit appends that failed in this process (rotor_audit_write_failures_total)
AUDIT_WRITE_FAILURES = _Counter()


class SharedReads:
    """Reads both SQL backends run alike, on a transaction's connection or a plain one."""

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        raise NotImplementedError  # the backend's

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        raise NotImplementedError

    async def get_client(self, client_id: str) -> Client | None:
        row = await self._one(_sql.GET_CLIENT, (client_id,))
        return rows.client(row) if row else None

    async def get_key(self, kid: str) -> SigningKey | None:
        row = await self._one(_sql.GET_KEY, (kid,))
        return rows.key(row) if row else None

    async def get_family(self, family_id: str) -> RefreshFamily | None:
        row = await self._one(_sql.GET_FAMILY, (family_id,))
        return rows.family(row) if row else None

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        row = await self._one(_sql.GET_REFRESH_TOKEN, (token_hash,))
        return rows.token(row) if row else None

    async def get_refresh_grant(self, token_hash: str) -> tuple[RefreshToken, RefreshFamily] | None:
        row = await self._one(_sql.GET_REFRESH_GRANT, (token_hash,))
        return rows.grant(row) if row else None

    async def get_revoked_token(self, jti: str) -> RevokedToken | None:
        row = await self._one(_sql.GET_REVOKED_TOKEN, (jti,))
        return rows.revoked(row) if row else None

    async def get_client_revocation(self, client_id: str) -> ClientRevocation | None:
        row = await self._one(_sql.GET_CLIENT_REVOCATION, (client_id,))
        return rows.client_revocation(row) if row else None

    async def get_operation(self, operation_id: str) -> Operation | None:
        row = await self._one(_sql.GET_OPERATION, (operation_id,))
        return rows.operation(row) if row else None

    async def list_keys(self, tenant: str, states: Collection[KeyState] | None = None) -> list[SigningKey]:
        raise NotImplementedError  # the backend's

    async def read_snapshot(self, tenant: str, now: float) -> Snapshot:
        """A tenant's Snapshot; the caller runs it inside one read transaction."""
        keys = await self.list_keys(tenant, LIVE_STATES)
        revocations = await self._all(_sql.LIVE_REVOCATIONS, (tenant, now))
        clients = await self._all(_sql.LIVE_CLIENT_REVOCATIONS, (tenant, now))
        return Snapshot(
            tenant,
            await self.last_sequence(tenant),
            tuple(keys),
            tuple(rows.revoked(r) for r in revocations),
            tuple(rows.client_revocation(r) for r in clients),
        )

    async def read_fleet(
        self, seen_since: float, counts_since: float | None, tenant: str | None
    ) -> list[FleetWatcher]:
        """Fleet watchers seen since `seen_since` (of one tenant, or all), with their counts since
        `counts_since` (one tenant's only; none when None); run inside one read transaction."""
        if tenant is None:
            return [rows.fleet_watcher(r) for r in await self._all(_sql.FLEET_WATCHERS, (seen_since,))]
        found = await self._all(_sql.FLEET_WATCHERS_OF_TENANT, (seen_since, tenant))
        counts: dict[str, list[VerificationCount]] = {}
        if counts_since is not None and found:
            for name, outcome, kid, total in await self._all(
                _sql.FLEET_COUNTS_OF_TENANT, (counts_since, tenant)
            ):
                counts.setdefault(name, []).append(VerificationCount(outcome, kid, int(total)))
        return [rows.fleet_watcher(r, tuple(counts.get(r[1], ()))) for r in found]

    async def read_fleet_totals(self) -> list[tuple[str, str, str, int]]:
        return [(r[0], r[1], r[2], int(r[3])) for r in await self._all(_sql.FLEET_TOTALS)]

    async def last_sequence(self, tenant: str | None = None) -> int:
        if tenant is None:
            row = await self._one(_sql.LAST_SEQUENCE)
        else:
            row = await self._one(_sql.LAST_SEQUENCE_OF_TENANT, (tenant,))
        return int(row[0])


class SharedTx(SharedReads):
    # appended to the head's SELECT where the backend needs a row lock to serialize appenders
    LOCK_HEAD = ""
    audited: tuple[AuditEntry, ...] = ()  # the audit entries this transaction appended (set on the instance)

    async def _count(self, sql: str, params: Iterable[Any], what: str = "row") -> int:
        raise NotImplementedError

    async def _changed(self, sql: str, params: Iterable[Any], what: str = "row") -> bool:
        raise NotImplementedError

    async def insert_client(self, client: Client) -> None:
        await self._changed(_sql.INSERT_CLIENT, rows.client_values(client), f"client {client.client_id!r}")

    async def update_client(self, client: Client) -> bool:
        values = (*rows.client_values(client), client.client_id)
        return await self._changed(_sql.UPDATE_CLIENT, values, "client")

    async def delete_client(self, client_id: str) -> bool:
        return await self._changed(_sql.DELETE_CLIENT, (client_id,))

    async def update_key(self, key: SigningKey, expected: KeyState) -> bool:
        # the one-active-key index refuses a second ACTIVE key of a tenant: AlreadyExists
        what = (
            f"an active key of tenant {key.tenant!r}" if key.state is KeyState.ACTIVE else f"key {key.kid!r}"
        )
        values = (*rows.key_values(key), key.kid, expected.value)
        return await self._changed(_sql.UPDATE_KEY, values, what)

    async def insert_family(self, family: RefreshFamily) -> None:
        await self._changed(_sql.INSERT_FAMILY, rows.family_values(family), "refresh family")

    async def revoke_family(self, family_id: str, at: float, reason: str) -> bool:
        return await self._changed(_sql.REVOKE_FAMILY, (at, reason, family_id))

    async def insert_refresh_token(self, token: RefreshToken) -> None:
        await self._changed(_sql.INSERT_REFRESH_TOKEN, rows.token_values(token), "refresh token")

    async def mark_refresh_token_used(self, token_hash: str, at: float) -> bool:
        return await self._changed(_sql.MARK_REFRESH_TOKEN_USED, (at, token_hash))

    async def insert_revoked_token(self, revoked: RevokedToken) -> bool:
        return await self._changed(_sql.INSERT_REVOKED_TOKEN, rows.revoked_values(revoked))

    async def insert_operation(self, operation: Operation) -> None:
        what = f"operation {operation.operation_id!r}"
        await self._changed(_sql.INSERT_OPERATION, rows.operation_values(operation), what)

    async def update_operation(self, operation: Operation, expected_state: str) -> bool:
        values = (*rows.operation_values(operation), operation.operation_id, expected_state)
        return await self._changed(_sql.UPDATE_OPERATION, values, "operation")

    async def append_audit(
        self,
        occurred_at: float,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        tenant: str,
        details_json: str,
    ) -> AuditEntry:
        try:
            head = await self._one(_sql.AUDIT_HEAD + self.LOCK_HEAD)
            sequence, prev_hash = int(head[0]) + 1, str(head[1])
            digest = chain_hash(
                prev_hash, sequence, occurred_at, actor, action, target, outcome, tenant, details_json
            )
            entry = AuditEntry(
                sequence, occurred_at, actor, action, target, outcome, tenant, details_json, prev_hash, digest
            )
            await self._changed(_sql.INSERT_AUDIT, rows.audit_values(entry), "audit entry")
            await self._changed(_sql.ADVANCE_AUDIT_HEAD, (sequence, digest))
            self.audited = (*self.audited, entry)
        except StoreError:
            AUDIT_WRITE_FAILURES.count += 1  # the change fails with it (fail closed); operators are alerted
            raise
        return entry

    async def _many(self, sql: str, values: Iterable[Iterable[Any]]) -> None:
        """Run one write per values (a backend may send them at once)."""
        for v in values:
            await self._changed(sql, v)

    async def write_fleet(self, batch: FleetBatch) -> None:
        """One replica's batch of the fleet view (see rotor.core.fleet), rows in key order: two
        replicas' batches touching the same rows lock them in the same order."""
        await self._many(
            _sql.FLEET_STREAM_UPSERT,
            (rows.fleet_watcher_values(w) for w in sorted(batch.streams, key=_fleet_key)),
        )
        await self._many(
            _sql.FLEET_STREAM_CLOSED, ((t, n, batch.replica, batch.now) for t, n in sorted(batch.closed))
        )
        await self._many(
            _sql.FLEET_REPORT_UPSERT,
            (rows.fleet_watcher_values(w) for w in sorted(batch.reports, key=_fleet_key)),
        )
        counts = sorted(batch.counts)
        await self._many(_sql.FLEET_ADD_COUNT, counts)
        totals: dict[tuple[str, str, str], int] = {}
        for tenant, name, _bucket, outcome, _kid, count in counts:
            totals[tenant, name, outcome] = totals.get((tenant, name, outcome), 0) + count
        await self._many(_sql.FLEET_ADD_TOTAL, ((*k, c) for k, c in sorted(totals.items())))
        if batch.prune:
            await self._count(_sql.FLEET_PRUNE_COUNTS, (batch.now - WINDOW - 60.0,))
            await self._count(_sql.FLEET_PRUNE_WATCHERS, (batch.now - FORGET_AFTER,))
            await self._count(_sql.FLEET_PRUNE_TOTALS, ())

    async def revoke_client_families(self, client_id: str, at: float, reason: str) -> int:
        return await self._count(_sql.REVOKE_CLIENT_FAMILIES, (at, reason, client_id))

    async def put_client_revocation(self, revocation: ClientRevocation) -> None:
        await self._changed(_sql.UPSERT_CLIENT_REVOCATION, rows.client_revocation_values(revocation))


def _fleet_key(w: FleetWatcher) -> tuple[str, str]:
    return (w.tenant, w.name)


class SharedStore:
    """Store methods that are one write transaction of shared statements, and audit listeners."""

    def __init__(self) -> None:
        self._audit_listeners: list[Callable[[tuple[AuditEntry, ...]], None]] = []

    def transaction(self) -> AbstractAsyncContextManager[SharedTx]:
        raise NotImplementedError  # the backend's

    def add_audit_listener(self, listener: Callable[[tuple[AuditEntry, ...]], None]) -> None:
        self._audit_listeners.append(listener)

    def _committed(self, tx: SharedTx) -> None:
        """Tell the audit listeners of a commit that appended to the audit log."""
        if tx.audited:
            for listener in self._audit_listeners:
                listener(tx.audited)

    async def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> int | None:
        async with self.transaction() as tx:
            row = await tx._one(_sql.LEASE_UPSERT, (name, holder, now + ttl, now))
        return int(row[0]) if row else None

    async def release_lease(self, name: str, holder: str) -> None:
        async with self.transaction() as tx:
            await tx._changed(_sql.RELEASE_LEASE, (name, holder))

    async def write_fleet(self, batch: FleetBatch) -> None:
        async with self.transaction() as tx:
            await tx.write_fleet(batch)

    async def prune(self, now: float, event_horizon: float) -> int:
        removed = 0
        async with self.transaction() as tx:
            for sql, at in (
                *((sql, now) for sql in _sql.PRUNE_EXPIRED),
                (_sql.PRUNE_OPERATIONS, now - _sql.OPERATION_RETENTION),
            ):
                removed += await tx._count(sql, (at,))
            doomed = await tx._one(_sql.PRUNABLE_THROUGH, (event_horizon,))
            if doomed and doomed[0] is not None:
                removed += await tx._count(_sql.PRUNE_EVENTS, (doomed[0],))
                await tx._changed(_sql.RAISE_PRUNED_THROUGH, (doomed[0],))
        return removed
