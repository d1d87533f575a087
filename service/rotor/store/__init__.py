"""The store: the single source of truth, behind one protocol.

Every backend MUST implement `Store` and `Tx` exactly as documented here, and
MUST pass the conformance suite in tests/store. Backends raise only the errors
defined in this module (never a driver's): `AlreadyExists` for a duplicate
primary key, `Unavailable` when the database cannot be reached or stays busy.

Consistency rules every backend MUST keep:

- A `Tx` is one transaction. Changes made through it become visible to
  others all at once on commit, or not at all. It need not be serializable
  (PostgreSQL runs READ COMMITTED): correctness under concurrency comes from
  the compare-and-set methods, the per-tenant key lock, row locks on what a
  transaction reads to write back whole (a client), and the event counter.
- Event sequences come from the store: `Tx.append_event` returns a sequence
  greater than every sequence committed before, and events become visible in
  sequence order (a reader that has seen sequence N never later finds a new
  event below N).
- Compare-and-set methods (`update_key`, `mark_refresh_token_used`,
  `revoke_family`, `update_operation`) return False, changing nothing, when
  the row is not in the expected state; concurrent callers see exactly one
  winner.
- Key changes of one tenant never interleave: `Tx.lock_keys` holds a
  per-tenant lock until the transaction ends, across processes and hosts.
- Commit listeners run after every commit that appended an event, in the
  committing task, and MUST NOT raise. A backend that can learn of other
  processes' commits (PostgreSQL's NOTIFY) also calls them then, from its
  own task; one that cannot relies on the event hub's polling.
- A lease has at most one unexpired holder; its fencing token grows each time
  it changes hands, so a holder that lost it can tell (`Tx.holds_lease`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from rotor.core.fleet import FleetBatch, FleetWatcher
from rotor.core.model import (
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
    StoredEvent,
)


class StoreError(Exception):
    """Root of the errors a store raises."""


class AlreadyExists(StoreError):
    """Raised when inserting a row whose primary key is taken."""


class Unavailable(StoreError):
    """Raised when the database cannot be reached or stays locked; retrying may succeed."""


class Tx(Protocol):
    """One read-write transaction. Obtain it from `Store.transaction()`."""

    # clients
    async def insert_client(self, client: Client) -> None:
        """Insert a client; AlreadyExists if its id is taken."""
        ...

    async def get_client(self, client_id: str) -> Client | None: ...

    async def update_client(self, client: Client) -> bool:
        """Replace a client's mutable fields (secret hash, grants, flags); False if it does not exist."""
        ...

    async def delete_client(self, client_id: str) -> bool:
        """Remove a client's row (its id may then be registered again); False if it does not exist.
        Its refresh families, revocations and audit entries are left as they are."""
        ...

    # keys
    async def insert_key(self, key: SigningKey) -> None: ...

    async def get_key(self, kid: str) -> SigningKey | None: ...

    async def list_keys(self, tenant: str, states: Collection[KeyState] | None = None) -> list[SigningKey]:
        """The tenant's keys, oldest first, optionally only those in `states`."""
        ...

    async def update_key(self, key: SigningKey, expected: KeyState) -> bool:
        """Write every field of `key` if its stored state is still `expected`."""
        ...

    # refresh tokens
    async def insert_family(self, family: RefreshFamily) -> None: ...

    async def get_family(self, family_id: str) -> RefreshFamily | None: ...

    async def revoke_family(self, family_id: str, at: float, reason: str) -> bool:
        """Mark the family revoked; False if it was already revoked or does not exist."""
        ...

    async def insert_refresh_token(self, token: RefreshToken) -> None: ...

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None: ...

    async def get_refresh_grant(self, token_hash: str) -> tuple[RefreshToken, RefreshFamily] | None:
        """A refresh token with its family, in one read; None if either is missing."""
        ...

    async def mark_refresh_token_used(self, token_hash: str, at: float) -> bool:
        """Mark the token used; False if it was already used or does not exist."""
        ...

    # access-token revocations
    async def insert_revoked_token(self, revoked: RevokedToken) -> bool:
        """Record a revocation; False (changing nothing) if the jti is already revoked."""
        ...

    # two-admin operations
    async def insert_operation(self, operation: Operation) -> None: ...

    async def get_operation(self, operation_id: str) -> Operation | None: ...

    async def update_operation(self, operation: Operation, expected_state: str) -> bool: ...

    # the event log
    async def append_event(self, tenant: str, type_: str, occurred_at: float, payload: str) -> int:
        """Append an event; returns its sequence."""
        ...

    # governance
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
        """Append to the audit chain (numbered and hashed here); appenders never interleave.
        Append events before audit entries in a transaction (one lock order for every writer)."""
        ...

    async def revoke_client_families(self, client_id: str, at: float, reason: str) -> int:
        """Revoke every live refresh family of the client; how many."""
        ...

    async def put_client_revocation(self, revocation: ClientRevocation) -> None:
        """Record (or move forward) a client-wide revocation."""
        ...

    # coordination between processes
    async def lock_keys(self, tenant: str) -> None:
        """Hold the tenant's key-change lock until this transaction ends (a no-op where
        transactions are exclusive anyway, as in SQLite). Call it before reading the keys."""
        ...

    async def holds_lease(self, name: str, holder: str, fencing: int, now: float) -> bool:
        """Whether `holder` still holds lease `name`, unexpired at `now`, under this fencing token."""
        ...

    # the fleet view
    async def write_fleet(self, batch: FleetBatch) -> None:
        """Write one replica's batch (rotor.core.fleet.FleetBatch): stream presence upserted (the
        stream's replica wins), closed streams of `batch.replica` marked so, reports upserted
        (moving the watcher to the reporting replica only while no stream holds it), counts added
        to their minute and to the running totals; with `prune`, counts older than the window and
        watchers gone for FORGET_AFTER (with their totals) deleted."""
        ...


class Store(Protocol):
    """A persistent store. Reads outside a transaction each see one consistent state."""

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A read-write transaction: committed on normal exit, rolled back on an exception."""
        ...

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each commit that appended an event."""
        ...

    def take_committed_events(self) -> list[StoredEvent]:
        """The events this process committed since the last call, as far as the store can tell
        them without reading (SQLite keeps them; [] where it cannot): the event hub delivers them
        without reading back what was just written. They may be out of order, or miss some (or
        other processes' events may lie between them): a reader checks that the sequences follow
        on from what it has read, and reads the log when they do not."""
        ...

    def audit_sequence_nowait(self) -> int | None:
        """The audit head's sequence if the backend can read it without waiting (no I/O wait, no
        thread hop), else None."""
        ...

    def add_audit_listener(self, listener: Callable[[tuple[AuditEntry, ...]], None]) -> None:
        """Call `listener` with the entries after each commit of this process that appended to the
        audit log (every change to a client does). It MUST NOT raise.

        A store that commits transactions in groups (SQLite) also calls it as each transaction
        joins its group, in the order their entries were appended, before the group's COMMIT
        (so a reader of the committed head never sees this process's own entries before the
        listener does), and with () when a group fails to commit: what it was told of that
        group is void."""
        ...

    async def close(self) -> None: ...

    async def get_client(self, client_id: str) -> Client | None: ...

    async def list_clients(self) -> list[Client]: ...

    async def get_client_by_cert_san(self, uri: str) -> Client | None:
        """The client a client certificate with this URI SAN authenticates (at most one)."""
        ...

    async def get_key(self, kid: str) -> SigningKey | None: ...

    async def list_keys(
        self, tenant: str, states: Collection[KeyState] | None = None
    ) -> list[SigningKey]: ...

    async def list_tenants(self) -> list[str]:
        """Every tenant that has a key or a client, the default tenant always included."""
        ...

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None: ...

    async def get_family(self, family_id: str) -> RefreshFamily | None: ...

    async def get_revoked_token(self, jti: str) -> RevokedToken | None: ...

    async def get_client_revocation(self, client_id: str) -> ClientRevocation | None:
        """The client's RevokeClientTokens cut-off, while it is kept (every token of the client
        issued before `not_before` is revoked); None when there is none."""
        ...

    async def snapshot(self, tenant: str, now: float) -> Snapshot:
        """Live keys, unexpired revocations and the newest event sequence, read together."""
        ...

    async def last_sequence(self, tenant: str | None = None) -> int:
        """The newest event sequence of `tenant` (of every tenant when None); 0 when none."""
        ...

    async def events_after(
        self, after: int, tenant: str | None = None, limit: int = 500
    ) -> list[StoredEvent]:
        """Events with sequence > `after`, oldest first, at most `limit`."""
        ...

    async def audit_head(self) -> tuple[int, str]:
        """The audit chain's last sequence and hash (0 and the genesis hash when empty)."""
        ...

    async def audit_after(
        self, after: int, *, since: float = 0.0, tenant: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """Audit entries with sequence > `after` that occurred at or after `since`, oldest first."""
        ...

    async def pruned_through(self) -> int:
        """The highest sequence ever pruned from the log; events above it are all kept."""
        ...

    async def write_fleet(self, batch: FleetBatch) -> None:
        """Tx.write_fleet in a transaction of its own."""
        ...

    async def fleet_watchers(
        self, seen_since: float, counts_since: float | None, tenant: str | None
    ) -> list[FleetWatcher]:
        """Fleet watchers last seen at or after `seen_since`, of `tenant` (every tenant when None),
        by tenant and name; for one tenant, each with the sum of its counts per (outcome, kid) in
        minutes starting at or after `counts_since` (no counts when None). Read together."""
        ...

    async def fleet_totals(self) -> list[tuple[str, str, str, int]]:
        """(tenant, watcher, outcome, count): every count ever reported, per watcher still stored."""
        ...

    async def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> int | None:
        """Take or renew lease `name` for `holder` until `now + ttl`: its fencing token, or None
        while another holder's lease is unexpired. The token grows each time the lease changes hands."""
        ...

    async def release_lease(self, name: str, holder: str) -> None:
        """End `holder`'s lease at once (if it holds it), so another may take it without waiting."""
        ...

    async def prune(self, now: float, event_horizon: float) -> int:
        """Drop revocations and families expired by `now` (with their refresh tokens), unused
        refresh tokens expired by `now` (a used one stays with its family, so a replay is still
        caught), and events older than `event_horizon` (each tenant's newest kept); returns rows removed."""
        ...


async def open_store(database_url: str, sqlite_path: Path, *, pool_size: int = 10) -> Store:
    """The configured store: PostgreSQL when `database_url` is set, else SQLite at `sqlite_path`."""
    if database_url:
        from rotor.store.postgres import PostgresStore

        return await PostgresStore.open(database_url, pool_size=pool_size)
    from rotor.store.sqlite import SqliteStore

    return await SqliteStore.open(sqlite_path)


def describe_store(database_url: str, sqlite_path: Path) -> str:
    """Where the store is, for logs: never a password."""
    if not database_url:
        return f"SQLite at {sqlite_path}"
    url = urlsplit(database_url)
    return f"PostgreSQL at {url.hostname or 'localhost'}:{url.port or 5432}{url.path}"
