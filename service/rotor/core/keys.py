"""Signing keys: the in-memory key ring, and every change to a key.

`KeyManager` owns each transition (scheduled ones from `lifecycle.due`, and
the admin's rotate, revoke and approve). Each change and its events are
written in one transaction; slow work (key generation) happens before it and
the precondition is checked again inside, so a lost race with another
process is a no-op, not an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from rotor.clock import Clock
from rotor.core import audit, lifecycle
from rotor.core.crypto import CryptoError
from rotor.core.errors import (
    KeyNotFound,
    KeyNotRevocable,
    NoActiveKey,
    OperationAlreadyApplied,
    OperationExpired,
    OperationNotFound,
    SelfApproval,
    SignerUnavailable,
    TenantNotFound,
    quote,
)
from rotor.core.keystore import KeyStores, TokenSigner, probe
from rotor.core.lifecycle import KeyPolicy, Step
from rotor.core.model import (
    DEFAULT_TENANT,
    LIVE_STATES,
    Event,
    EventType,
    KeyState,
    Lease,
    Operation,
    OperationState,
    SigningKey,
)
from rotor.store import Store, Tx

log = logging.getLogger("rotor.keys")

APPROVAL_WINDOW = 3600.0  # how long a revocation waits for its second admin


class KeyRing:
    """Each tenant's live keys and the signer of its active key, held in memory.

    Installed straight from the transaction after every key change this
    process makes (no await in between, so a revoked key never signs again),
    and refreshed by the event hub for changes made elsewhere. Each view is
    tagged with the event sequence it reflects, and an older view never
    replaces a newer one.
    """

    def __init__(self, store: Store, keystores: KeyStores) -> None:
        self._store = store
        self._keystores = keystores
        self._live: dict[str, tuple[SigningKey, ...]] = {}
        self._signers: dict[str, TokenSigner] = {}
        self._sequence: dict[str, int] = {}

    async def refresh(self, tenant: str) -> None:
        snap = await self._store.snapshot(tenant, math.inf)  # keys and sequence, read together
        self.install(tenant, snap.keys, snap.sequence)

    def install(self, tenant: str, keys: Sequence[SigningKey], sequence: int) -> None:
        """Adopt `keys` (the tenant's live keys as of event `sequence`) unless a newer view is held."""
        if sequence < self._sequence.get(tenant, 0):
            return
        live = tuple(k for k in keys if k.state.in_key_set)
        active = lifecycle.active_key(live)
        signer = self._signers.get(tenant)
        if active is None:
            self._signers.pop(tenant, None)
        elif signer is None or signer.kid != active.kid:
            if active.sealed_private is None:
                log.error("active key %s has no private half; it cannot sign", active.kid)
                self._signers.pop(tenant, None)
            else:  # CryptoError (a wrong KEK, a store this server lacks): start-up refuses
                self._signers[tenant] = self._keystores.of(active).signer(
                    active.kid, active.alg, active.sealed_private
                )
        self._live[tenant] = live
        self._sequence[tenant] = sequence

    def live(self, tenant: str) -> tuple[SigningKey, ...]:
        """The tenant's keys in the key set (pending, active, retired), as this process last saw them."""
        return self._live.get(tenant, ())

    def sequence(self, tenant: str) -> int:
        """The event sequence the tenant's view reflects."""
        return self._sequence.get(tenant, 0)

    def signer(self, tenant: str) -> TokenSigner:
        signer = self._signers.get(tenant)
        if signer is None:
            raise NoActiveKey("no signing key is active yet; the server is starting, retry in a moment")
        return signer

    def find(self, kid: str) -> SigningKey | None:
        for keys in self._live.values():
            for key in keys:
                if key.kid == kid:
                    return key
        return None

    def has_active(self, tenant: str) -> bool:
        return tenant in self._signers


@dataclass(frozen=True, slots=True)
class Revocation:
    """The outcome of RevokeKey: the key, or the operation awaiting approval."""

    key: SigningKey
    operation_id: str = ""
    pending_approval: bool = False


class _NeedSpareKey(Exception):
    """Internal: a transaction found it must install a new key it did not prepare."""


ACK_POLL = 0.2  # seconds between looks at a held-back activation's acknowledgements


class KeyManager:
    """Every change to signing keys, each with its events in one transaction."""

    def __init__(
        self,
        store: Store,
        keystores: KeyStores,
        keyring: KeyRing,
        clock: Clock,
        policy: KeyPolicy,
        *,
        algorithm: str = "EdDSA",
        rsa_bits: int = 3072,
        require_approval: bool = False,
        tenants: Sequence[str] = (DEFAULT_TENANT,),
        tenant_algorithms: Mapping[str, str] | None = None,
        ack_gate: Callable[[str, str], list[str]] | None = None,
        max_ack_wait: float = 0.0,
    ) -> None:
        """`ack_gate(tenant, kid)` names the watchers that have not yet been sent a pending key;
        with it, a key activates once none is left, or `max_ack_wait` after it was due."""
        self._store = store
        self.keystores = keystores
        self.keyring = keyring
        self._clock = clock
        self.policy = policy
        self._algorithm = algorithm
        self._rsa_bits = rsa_bits
        self.require_approval = require_approval
        self.tenants = tuple(tenants)
        self._tenant_algorithms = dict(tenant_algorithms or {})
        self._ack_gate = ack_gate
        self._max_ack_wait = max_ack_wait
        self._notes: dict[str, str] = {}  # kid -> how its activation was acknowledged, for the audit log
        self.changed = asyncio.Event()  # set after every change; the rotator wakes on it
        self._first_keys: dict[str, asyncio.Lock] = {}  # one bootstrap at a time per tenant

    def check_tenant(self, tenant: str) -> str:
        if tenant not in self.tenants:
            raise TenantNotFound(
                f'no tenant named {tenant[:64]!r}; use "" for the default tenant (a tenant exists once a '
                "client is registered in it: rotor clients add NAME --tenant T)"
            )
        return tenant

    async def discover_tenants(self) -> tuple[str, ...]:
        """Every tenant in the store (a client registered with --tenant creates one); the new ones
        are returned, and the rotator gives them their first key."""
        known = set(self.tenants)
        found = await self._store.list_tenants()
        new = tuple(t for t in found if t not in known)
        if new:
            self.tenants = tuple(sorted(known | set(new)))
        return new

    async def ensure_signing(self, tenant: str) -> None:
        """Make sure the tenant has a key that signs, at once: a tenant created a moment ago (a
        client registered in it, by any process) gets its first key now rather than at the
        rotator's next tick. Another process may be doing the same: the key lock and the
        transition's re-check inside the transaction let exactly one key be made."""
        if self.keyring.has_active(tenant):
            return
        if tenant not in self.tenants:
            self.tenants = tuple(sorted({*self.tenants, tenant}))
        lock = self._first_keys.setdefault(tenant, asyncio.Lock())
        async with lock:
            if self.keyring.has_active(tenant):
                return
            await self.keyring.refresh(tenant)  # another process may have made it already
            if not self.keyring.has_active(tenant):
                await self.apply_due(tenant)
                self.changed.set()

    def algorithm(self, tenant: str) -> str:
        return self._tenant_algorithms.get(tenant, self._algorithm)

    # -- key material -----------------------------------------------------

    async def _prepare_key(self, tenant: str) -> SigningKey:
        """A new key in the current key store, probed; its state and timeline are set when it is
        installed. A key that fails its probe is destroyed."""
        keystore = self.keystores.current
        algorithm = self.algorithm(tenant)
        made = await keystore.make(algorithm, self._rsa_bits)
        try:
            await probe(keystore.signer(made.kid, algorithm, made.private_ref), made.jwk)
        except BaseException:
            await self._destroy_quietly(keystore.name, made.kid, made.private_ref)
            raise
        return SigningKey(
            kid=made.kid,
            tenant=tenant,
            alg=algorithm,
            state=KeyState.PENDING,
            public_jwk=json.dumps(made.jwk, separators=(",", ":")),
            sealed_private=made.private_ref,
            created_at=0.0,
            activates_at=0.0,
            retires_at=0.0,
            expires_at=0.0,
            key_store=keystore.name,
        )

    async def _destroy_quietly(self, store_name: str, kid: str, private_ref: bytes | None) -> None:
        """Destroy a private half; a device away leaves it to the next sweep (`sweep`)."""
        for keystore in self.keystores.all:
            if keystore.name == store_name:
                try:
                    await keystore.destroy(kid, private_ref)
                except (SignerUnavailable, CryptoError) as e:
                    log.warning(
                        "could not destroy the private half of key %s yet (%s); the next sweep will", kid, e
                    )

    async def _destroy_halves(
        self, changes: Sequence[tuple[EventType, SigningKey]], spare: SigningKey | None = None
    ) -> None:
        """After a commit: destroy the private halves the transaction let go (retired, revoked and
        expired keys), and a spare key no transaction installed."""
        installed = {k.kid for _, k in changes}
        for _, key in changes:
            if key.sealed_private is None:
                await self._destroy_quietly(key.key_store, key.kid, None)
        if spare is not None and spare.kid not in installed:
            await self._destroy_quietly(spare.key_store, spare.kid, spare.sealed_private)

    async def sweep(self) -> int:
        """Destroy private halves a store still holds for keys whose private half the database
        already let go (a process that died between the commit and the destroy). Keys the database
        does not know are left alone: another process may be about to install one. Returns how many."""
        destroyed = 0
        for keystore in self.keystores.all:
            held = await keystore.held()
            if not held:
                continue
            for tenant in self.tenants:
                for key in await self._store.list_keys(tenant):
                    if key.kid in held and key.sealed_private is None:
                        await self._destroy_quietly(keystore.name, key.kid, None)
                        destroyed += 1
        return destroyed

    def _install(self, key: SigningKey, state: KeyState, now: float, activates_at: float) -> SigningKey:
        retires_at, expires_at = lifecycle.planned_timeline(now, activates_at, self.policy)
        return key.evolve(
            state=state,
            created_at=now,
            activates_at=activates_at,
            retires_at=retires_at,
            expires_at=expires_at,
        )

    async def _append(
        self,
        tx: Tx,
        tenant: str,
        now: float,
        changes: list[tuple[EventType, SigningKey]],
        actor: str = audit.SYSTEM,
        reason: str = "",
    ) -> tuple[tuple[SigningKey, ...], int]:
        """Append one event per change, each carrying the key set as of the transaction's end, then
        one audit entry per change. Returns that key set and the last sequence written.
        """
        keyset = tuple(await tx.list_keys(tenant, LIVE_STATES))
        sequence = 0
        for type_, key in changes:
            sequence = await tx.append_event(
                tenant, type_.value, now, Event.encode_payload(key, keyset, None)
            )
        for type_, key in changes:  # after the events: one lock order for every writer
            await tx.append_audit(
                now,
                actor,
                "key." + type_.value.removeprefix("KEY_").lower(),
                key.kid,
                "success",
                tenant,
                audit.details(
                    reason=reason,
                    alg=key.alg,
                    state=key.state.value,
                    activates_at=key.activates_at,
                    acknowledgement=self._notes.pop(key.kid, None)
                    if type_ is EventType.KEY_ACTIVATED
                    else None,
                ),
            )
        return keyset, sequence

    def _after_change(self, tenant: str, keyset: tuple[SigningKey, ...], sequence: int) -> None:
        self.keyring.install(tenant, keyset, sequence)
        self.changed.set()

    # -- the schedule ------------------------------------------------------

    async def apply_due(self, tenant: str, lease: Lease | None = None) -> float | None:
        """Apply every transition due now; returns when the next one falls due.

        With `lease`, nothing is applied unless the lease is still held when the
        transaction runs (a rotator that lost it to another process stands down).
        """
        keys = await self._store.list_keys(tenant, LIVE_STATES)
        plan = lifecycle.due(keys, self._clock.now(), self.policy)
        if not plan:
            return lifecycle.next_change_at(keys, self.policy)
        spare = None
        if any(t.step in (Step.BOOTSTRAP, Step.PUBLISH_NEXT) for t in plan):
            spare = await self._prepare_key(tenant)
        committed: list[tuple[EventType, SigningKey]] = []
        try:
            async with self._store.transaction() as tx:
                await tx.lock_keys(tenant)
                now = self._clock.now()
                if lease is not None and not await tx.holds_lease(
                    lease.name, lease.holder, lease.fencing, now
                ):
                    log.warning("lost the %s lease; leaving tenant %r to its new holder", lease.name, tenant)
                    return None
                keys = await tx.list_keys(tenant, LIVE_STATES)
                changes: list[tuple[EventType, SigningKey]] = []
                for transition in lifecycle.due(
                    keys, now, self.policy
                ):  # again: another process may have acted
                    changes += await self._apply(tx, transition, keys, now, spare)
                keyset, sequence = await self._append(tx, tenant, now, changes)
            committed = changes
            if changes:
                log.info(
                    "key transitions for tenant %r: %s",
                    tenant,
                    ", ".join(f"{t.value} {k.kid}" for t, k in changes),
                )
                self._after_change(tenant, keyset, sequence)
        finally:  # after the key ring moved on: no signer of this process uses a destroyed half
            await self._destroy_halves(committed, spare)
        next_at = lifecycle.next_change_at(keyset, self.policy)
        if next_at is not None and next_at <= now:  # due but held back (an activation awaiting acks)
            next_at = now + ACK_POLL
        return next_at

    async def _apply(
        self,
        tx: Tx,
        transition: lifecycle.Transition,
        keys: Sequence[SigningKey],
        now: float,
        spare: SigningKey | None,
    ) -> list[tuple[EventType, SigningKey]]:
        by_kid = {k.kid: k for k in keys}
        active = lifecycle.active_key(keys)
        match transition.step:
            case Step.EXPIRE:
                expired = lifecycle.expire(by_kid[transition.kid])
                return (
                    [(EventType.KEY_EXPIRED, expired)]
                    if await tx.update_key(expired, KeyState.RETIRED)
                    else []
                )
            case Step.BOOTSTRAP:
                if spare is None:
                    return []
                key = self._install(spare, KeyState.ACTIVE, now, now)
                await tx.insert_key(key)
                return [(EventType.KEY_PUBLISHED, key), (EventType.KEY_ACTIVATED, key)]
            case Step.PUBLISH_NEXT:
                if spare is None:
                    return []
                key = self._install(
                    spare, KeyState.PENDING, now, lifecycle.successor_activates_at(active, now, self.policy)
                )
                await tx.insert_key(key)
                return [(EventType.KEY_PUBLISHED, key)]
            case Step.ACTIVATE:
                pending = by_kid[transition.kid]
                if not self._acknowledged(pending, now):
                    return []  # the next tick looks again
                return await self._activate(tx, pending, active, now)

    def _acknowledged(self, pending: SigningKey, now: float) -> bool:
        """Whether a due key may activate: every named watcher has it, or max_ack_wait ran out."""
        if self._ack_gate is None:
            return True
        waiting = self._ack_gate(pending.tenant, pending.kid)
        if not waiting:
            self._notes[pending.kid] = "every connected named watcher had been sent it"
            return True
        if now >= pending.activates_at + self._max_ack_wait:
            self._notes[pending.kid] = f"max_ack_wait ran out; not yet sent to: {', '.join(waiting)[:500]}"
            return True
        return False

    async def _activate(
        self, tx: Tx, pending: SigningKey, active: SigningKey | None, now: float
    ) -> list[tuple[EventType, SigningKey]]:
        changes: list[tuple[EventType, SigningKey]] = []
        retired = None
        if active is not None:  # retire first: at most one key of a tenant is ever active
            retired = lifecycle.retire(active, now, self.policy)
            if not await tx.update_key(retired, KeyState.ACTIVE):
                return []
        activated = lifecycle.activate(pending, now, self.policy)
        if not await tx.update_key(activated, KeyState.PENDING):
            return []
        changes.append((EventType.KEY_ACTIVATED, activated))
        if retired is not None:
            changes.append((EventType.KEY_RETIRED, retired))
        return changes

    # -- admin operations ----------------------------------------------------

    async def rotate(
        self, tenant: str, *, immediate: bool, reason: str, actor: str = audit.SYSTEM
    ) -> SigningKey:
        """Publish a new key: it signs after publish_lead, or at once when `immediate`.

        A non-immediate rotation while a key is already pending returns that key.
        An immediate one supersedes any pending key (it never signed: it expires).
        """
        self.check_tenant(tenant)
        if not immediate:
            pending = lifecycle.pending_key(await self._store.list_keys(tenant, (KeyState.PENDING,)))
            if pending is not None:
                return pending
        spare = await self._prepare_key(tenant)
        committed: list[tuple[EventType, SigningKey]] = []
        try:
            async with self._store.transaction() as tx:
                await tx.lock_keys(tenant)
                now = self._clock.now()
                keys = await tx.list_keys(tenant, LIVE_STATES)
                active, pending = lifecycle.active_key(keys), lifecycle.pending_key(keys)
                changes: list[tuple[EventType, SigningKey]] = []
                if not immediate:
                    if pending is not None:
                        return pending
                    key = self._install(spare, KeyState.PENDING, now, now + self.policy.publish_lead)
                    await tx.insert_key(key)
                    changes.append((EventType.KEY_PUBLISHED, key))
                else:
                    superseded = [lifecycle.expire(k) for k in keys if k.state is KeyState.PENDING]
                    for k in superseded:
                        await tx.update_key(k, KeyState.PENDING)
                    if active is not None:
                        retired = lifecycle.retire(active, now, self.policy)
                        await tx.update_key(retired, KeyState.ACTIVE)
                    key = self._install(spare, KeyState.ACTIVE, now, now)
                    await tx.insert_key(key)
                    changes += [(EventType.KEY_PUBLISHED, key), (EventType.KEY_ACTIVATED, key)]
                    if active is not None:
                        changes.append((EventType.KEY_RETIRED, retired))
                    changes += [(EventType.KEY_EXPIRED, k) for k in superseded]
                keyset, sequence = await self._append(tx, tenant, now, changes, actor, reason)
            committed = changes
            log.info(
                "rotated keys of tenant %r (immediate=%s): new key %s; reason: %s",
                tenant,
                immediate,
                key.kid,
                reason,
            )
            self._after_change(tenant, keyset, sequence)
        finally:
            await self._destroy_halves(committed, spare)
        return key

    async def revoke(self, kid: str, *, reason: str, actor: str) -> Revocation:
        """Revoke a key at once, or ask for a second admin when approval is required."""
        key = await self._store.get_key(kid)
        if key is None:
            raise KeyNotFound(f"no key with kid {quote(kid)}; ListKeys shows the kids")
        if key.state is KeyState.EXPIRED:
            raise KeyNotRevocable(f"key {kid} has already expired; nothing signed by it still verifies")
        if key.state is KeyState.REVOKED:
            return Revocation(key)
        if not self.require_approval:
            return Revocation(await self._revoke_now(kid, reason, actor))
        now = self._clock.now()
        operation = Operation(
            operation_id=secrets.token_hex(16),  # hex: never mistaken for a CLI option
            tenant=key.tenant,
            kind="revoke_key",
            target=kid,
            reason=reason,
            requested_by=actor,
            created_at=now,
            expires_at=now + APPROVAL_WINDOW,
        )
        async with self._store.transaction() as tx:
            await tx.insert_operation(operation)
            await tx.append_audit(
                now,
                actor,
                "approval.requested",
                kid,
                "success",
                key.tenant,
                audit.details(operation_id=operation.operation_id, operation="revoke_key", reason=reason),
            )
        log.info(
            "revocation of key %s requested by %s awaits approval (operation %s)",
            kid,
            actor,
            operation.operation_id,
        )
        return Revocation(key, operation.operation_id, pending_approval=True)

    async def approve(self, operation_id: str, *, actor: str) -> SigningKey:
        """Carry out an operation another admin asked for."""
        async with self._store.transaction() as tx:
            operation = self._check_approvable(await tx.get_operation(operation_id), operation_id, actor)
        return await self._revoke_now(
            operation.target, operation.reason, actor, approval=(operation_id, actor)
        )

    def _check_approvable(self, operation: Operation | None, operation_id: str, actor: str) -> Operation:
        if operation is None:
            raise OperationNotFound(f"no operation with id {quote(operation_id)}")
        if operation.state is OperationState.APPLIED:
            raise OperationAlreadyApplied(
                f"operation {operation_id} was already approved by {operation.approved_by}"
            )
        if self._clock.now() >= operation.expires_at:
            raise OperationExpired(f"operation {operation_id} expired unapproved; ask for it again")
        if operation.requested_by == actor:
            raise SelfApproval(
                "an operation must be approved by a different admin than the one who asked for it"
            )
        return operation

    async def _revoke_now(
        self, kid: str, reason: str, actor: str, approval: tuple[str, str] | None = None
    ) -> SigningKey:
        spare: SigningKey | None = None
        committed: list[tuple[EventType, SigningKey]] = []
        try:
            while True:
                try:
                    revoked, committed = await self._revoke_once(kid, reason, actor, approval, spare)
                    return revoked
                except _NeedSpareKey as need:
                    spare = await self._prepare_key(str(need))
        finally:
            await self._destroy_halves(committed, spare)

    async def _revoke_once(
        self, kid: str, reason: str, actor: str, approval: tuple[str, str] | None, spare: SigningKey | None
    ) -> tuple[SigningKey, list[tuple[EventType, SigningKey]]]:
        async with self._store.transaction() as tx:
            now = self._clock.now()
            if approval is not None:
                operation_id, approver = approval
                operation = self._check_approvable(
                    await tx.get_operation(operation_id), operation_id, approver
                )
                applied = replace(
                    operation, state=OperationState.APPLIED, approved_by=approver, applied_at=now
                )
                if not await tx.update_operation(applied, OperationState.PENDING.value):
                    raise OperationAlreadyApplied(f"operation {operation_id} was approved concurrently")
            key = await tx.get_key(kid)
            if key is not None:  # a key's tenant never changes: lock it, then read the key again
                await tx.lock_keys(key.tenant)
                key = await tx.get_key(kid)
            if key is None:
                raise KeyNotFound(f"no key with kid {quote(kid)}; ListKeys shows the kids")
            match key.state:
                case KeyState.REVOKED:
                    return key, []
                case KeyState.EXPIRED:
                    raise KeyNotRevocable(
                        f"key {kid} has already expired; nothing signed by it still verifies"
                    )
                case KeyState.PENDING | KeyState.ACTIVE | KeyState.RETIRED:
                    pass
            keys = await tx.list_keys(key.tenant, LIVE_STATES)
            successor = lifecycle.pending_key([k for k in keys if k.kid != kid])
            if key.state is KeyState.ACTIVE and successor is None and spare is None:
                raise _NeedSpareKey(key.tenant)
            revoked = lifecycle.revoke(key, now, reason)
            await tx.update_key(revoked, key.state)
            changes: list[tuple[EventType, SigningKey]] = [(EventType.KEY_REVOKED, revoked)]
            if key.state is KeyState.ACTIVE:
                if successor is not None:  # already published: it takes over now
                    activated = lifecycle.activate(successor, now, self.policy)
                    await tx.update_key(activated, KeyState.PENDING)
                    changes.append((EventType.KEY_ACTIVATED, activated))
                else:
                    assert spare is not None
                    fresh = self._install(spare, KeyState.ACTIVE, now, now)
                    await tx.insert_key(fresh)
                    changes += [(EventType.KEY_PUBLISHED, fresh), (EventType.KEY_ACTIVATED, fresh)]
            keyset, sequence = await self._append(tx, key.tenant, now, changes, actor, reason)
            if approval is not None:
                await tx.append_audit(
                    now,
                    actor,
                    "approval.given",
                    kid,
                    "success",
                    key.tenant,
                    audit.details(operation_id=approval[0], requested_by=operation.requested_by),
                )
        log.warning("revoked key %s of tenant %r: %s", kid, key.tenant, reason)
        self._after_change(key.tenant, keyset, sequence)
        return revoked, changes

    async def list_keys(self, tenant: str, *, include_expired: bool) -> list[SigningKey]:
        self.check_tenant(tenant)
        keys = await self._store.list_keys(tenant)
        return [k for k in keys if include_expired or k.state is not KeyState.EXPIRED]
