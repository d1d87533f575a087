"""The rotor.v1 services: TokenService and KeyAdmin.

Each method authenticates, validates and converts, calls the core, and
converts back. Failures are mapped by `unary`, and for the stream by `service` (api/handlers.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from rotor.api import convert
from rotor.api.auth import CallerAuth, basic_credentials_or_none
from rotor.api.calls import TokenCalls
from rotor.api.handlers import Context, service, unary
from rotor.api.limits import RateLimiter, WatcherLimits
from rotor.api.streams import Stream, Streams
from rotor.clock import Clock
from rotor.core import audit, validation
from rotor.core.audit import RefusalBudget, Suppressed
from rotor.core.clients import ClientAdmin, peer_host
from rotor.core.errors import (
    AdminRequired,
    ClientDisabled,
    InvalidClient,
    InvalidRequest,
    ShuttingDown,
    WatcherTooSlow,
)
from rotor.core.events import EventHub
from rotor.core.fleet import Fleet, check_report
from rotor.core.keys import KeyManager
from rotor.core.model import Client, Event
from rotor.core.propagation import WatcherRegistry, WatcherState
from rotor.core.tokens import TokenService
from rotor.metrics import Metrics
from rotor.store import Store
from rotor.v1 import key_admin_pb2, token_service_pb2

HEARTBEAT_INTERVAL = 10.0  # the contract allows at most 15 s of silence
WRITE_TIMEOUT = 10.0  # a watcher that takes no message for this long is cut off


class KeySetCache:
    """GetKeySet's response per tenant, encoded once and rebuilt only after an event."""

    def __init__(
        self, store: Store, hub: EventHub[bytes], encoder: convert.KeySetEncoder, clock: Clock
    ) -> None:
        self._store, self._hub, self._encoder, self._clock = store, hub, encoder, clock
        self._cache: dict[str, tuple[int, bytes]] = {}

    async def get(self, tenant: str) -> bytes:
        generation = self._hub.generation
        cached = self._cache.get(tenant)
        if cached is not None and cached[0] == generation:
            return cached[1]
        snap = await self._store.snapshot(tenant, self._clock.now())
        encoded = self._encoder.keyset(tenant, snap.keys, snap.sequence).SerializeToString()
        self._cache[tenant] = (generation, encoded)
        return encoded


WATCHER_NAME_HEADER = "x-rotor-watcher"


def _watcher_name(metadata: Any) -> str:
    """The name a watcher gives itself (x-rotor-watcher); "" when it gives none."""
    for key, value in metadata or ():
        if key == WATCHER_NAME_HEADER:
            if not isinstance(value, str):
                raise InvalidRequest(
                    f"{WATCHER_NAME_HEADER} must be text", "INVALID_VALUE", WATCHER_NAME_HEADER
                )
            return validation.identifier(value, WATCHER_NAME_HEADER)
    return ""


def _kids(event: Event) -> Iterable[str] | None:
    """The kids of the key set an event carries (None for one that carries none)."""
    return (k.kid for k in event.keyset) if event.key is not None else None


class TokenServicer:
    """rotor.v1.TokenService."""

    def __init__(
        self,
        auth: CallerAuth,
        tokens: TokenService,
        keys: KeyManager,
        store: Store,
        hub: EventHub[bytes],
        encoder: convert.KeySetEncoder,
        clock: Clock,
        limits: WatcherLimits,
        rates: tuple[RateLimiter, RateLimiter] | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        metrics: Metrics | None = None,
        watchers: WatcherRegistry | None = None,
        write_timeout: float = WRITE_TIMEOUT,
        refusals: RefusalBudget | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self._auth, self._tokens, self._keys, self._store = auth, tokens, keys, store
        self._metrics = metrics
        self._watchers = watchers or WatcherRegistry()
        self._fleet = fleet or Fleet(store, clock, self._watchers)
        self._hub, self._encoder, self._clock, self._limits = hub, encoder, clock, limits
        self.calls = TokenCalls(tokens, keys, store, clock, rates, refusals)  # shared with the HTTP door
        self._keysets = KeySetCache(store, hub, encoder, clock)
        self._streams = Streams(heartbeat_interval, write_timeout)

    @unary
    async def issue(self, request: token_service_pb2.IssueRequest, context: Context) -> bytes:
        client = await self._auth.require(context)
        ttl = convert.seconds_of(request.ttl, "ttl") if request.HasField("ttl") else None
        issued = await self.calls.issue(
            client,
            context.peer(),
            audiences=tuple(request.audience),
            scopes=tuple(request.scope),
            ttl=ttl,
            subject=request.subject,
            bound_to=self._auth.bound_certificate(context),
        )
        return convert.token_response_bytes(issued)  # a TokenResponse

    @unary
    async def refresh(self, request: token_service_pb2.RefreshRequest, context: Context) -> bytes:
        client = await self._auth.require(context)
        issued = await self.calls.refresh(
            client,
            context.peer(),
            refresh_token=request.refresh_token,
            scopes=tuple(request.scope),
            bound_to=self._auth.bound_certificate(context),
        )
        return convert.token_response_bytes(issued)  # a TokenResponse

    @unary
    async def revoke(
        self, request: token_service_pb2.RevokeRequest, context: Context
    ) -> token_service_pb2.RevokeResponse:
        client = await self._auth.require(context)
        revoked = await self.calls.revoke(client, context.peer(), token=request.token, reason=request.reason)
        return token_service_pb2.RevokeResponse(revoked=revoked)

    @unary
    async def introspect(
        self, request: token_service_pb2.IntrospectRequest, context: Context
    ) -> token_service_pb2.IntrospectResponse:
        client = await self._auth.require(context)
        found = await self.calls.introspect(client, context.peer(), token=request.token)
        return convert.introspection(found)

    @unary
    async def get_key_set(self, request: token_service_pb2.GetKeySetRequest, context: Context) -> bytes:
        tenant = self._keys.check_tenant(validation.identifier(request.tenant, "tenant"))
        return await self._keysets.get(tenant)

    async def watch_key_rotations(
        self, request: token_service_pb2.WatchKeyRotationsRequest, context: Context
    ) -> None:
        # Kept lean: a server holds thousands of these for hours, so each holds one frame while
        # it waits (the stream's caps and registrations are plain calls, not context managers).
        tenant = self._keys.check_tenant(validation.identifier(request.tenant, "tenant"))
        client = await self._auth.optional(context)
        name = _watcher_name(context.invocation_metadata())
        peer = context.peer()
        holder = self._limits.take(client, peer)
        seen = self._watchers.add(name, peer, tenant, self._clock.now())
        sub = self._hub.subscribe(tenant)  # before reading: nothing committed from now on is missed
        stream = self._streams.open(sub)
        try:
            await context.send_initial_metadata(())  # the watcher knows it is connected before any event
            last = await self._catch_up(stream, context, tenant, request.after_sequence, seen)
            while True:  # each event as the hub delivers it, and a heartbeat when one is due
                delivery = sub.pop()
                if delivery is None and not sub.closed:
                    await sub.wait()
                    delivery = sub.pop()
                if delivery is not None:
                    if delivery.event.sequence > last:
                        if self._metrics is not None:
                            lag = self._clock.now() - delivery.event.occurred_at
                            self._metrics.delivery_lag.observe(max(lag, 0.0))
                        await self._streams.write(stream, context, delivery.encoded)
                        last = delivery.event.sequence
                        self._watchers.sent(seen, last, _kids(delivery.event))
                elif sub.closed == "shutdown":
                    raise ShuttingDown(f"the server is shutting down; reconnect with after_sequence={last}")
                elif sub.closed:
                    raise WatcherTooSlow(
                        f"this watcher fell too far behind and was cut off; reconnect with after_sequence={last}"
                    )
                else:  # woken for a heartbeat
                    await self._streams.write(
                        stream, context, self._encoder.heartbeat(last, self._clock.now())
                    )
        finally:
            self._streams.close(stream)
            self._hub.unsubscribe(sub)
            self._watchers.remove(seen)
            self._limits.give_back(holder)

    async def _catch_up(
        self, stream: Stream, context: Context, tenant: str, after: int, seen: WatcherState | None
    ) -> int:
        """Send what the watcher missed since `after` (or a snapshot when that is not in the log);
        returns the last sequence sent."""
        write = self._streams.write
        if await self._can_resume(tenant, after):
            last = after
            while events := await self._store.events_after(last, tenant):
                for stored in events:
                    event = stored.decode()
                    await write(stream, context, self._encoder.event(event))
                    last = stored.sequence
                    self._watchers.sent(seen, last, _kids(event))
            return last
        # a revoked token stays listed while a verifier allowing clock skew could still accept it
        snap = await self._store.snapshot(tenant, self._clock.now() - self._keys.policy.clock_skew)
        await write(stream, context, self._encoder.snapshot(snap, self._clock.now()))
        self._watchers.sent(seen, snap.sequence, (k.kid for k in snap.keys))
        return snap.sequence

    @unary
    async def report_verifications(
        self, request: token_service_pb2.ReportVerificationsRequest, context: Context
    ) -> token_service_pb2.ReportVerificationsResponse:
        tenant = self._keys.check_tenant(validation.identifier(request.tenant, "tenant"))
        report = check_report(
            tenant,
            request.watcher,
            request.sequence,
            request.kids,
            ((c.outcome, c.kid, c.count) for c in request.counts),
        )
        next_in = self._fleet.report(report)
        return token_service_pb2.ReportVerificationsResponse(next_report_in=convert.duration(next_in))

    async def _can_resume(self, tenant: str, after: int) -> bool:
        """Whether every event after `after` is still in the log (else the watcher gets a snapshot)."""
        if after == 0:
            return False
        return await self._store.pruned_through() <= after <= await self._store.last_sequence(tenant)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return service(
            "rotor.v1.TokenService",
            {
                "Issue": (self.issue, token_service_pb2.IssueRequest),
                "Refresh": (self.refresh, token_service_pb2.RefreshRequest),
                "Revoke": (self.revoke, token_service_pb2.RevokeRequest),
                "GetKeySet": (self.get_key_set, token_service_pb2.GetKeySetRequest),
                "Introspect": (self.introspect, token_service_pb2.IntrospectRequest),
                "ReportVerifications": (
                    self.report_verifications,
                    token_service_pb2.ReportVerificationsRequest,
                ),
            },
            {"WatchKeyRotations": (self.watch_key_rotations, token_service_pb2.WatchKeyRotationsRequest)},
            self._metrics,
        )


class KeyAdminServicer:
    """rotor.v1.KeyAdmin: admin clients only."""

    def __init__(
        self,
        auth: CallerAuth,
        keys: KeyManager,
        tokens: TokenService,
        store: Store,
        watchers: WatcherRegistry,
        clock: Clock,
        metrics: Metrics | None = None,
        refusals: RefusalBudget | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self._auth, self._keys, self._tokens, self._store = auth, keys, tokens, store
        self._watchers, self._clock, self._metrics = watchers, clock, metrics
        self._clients = ClientAdmin(store, clock, tokens.policy.max_access_ttl)
        self._refusals = refusals or RefusalBudget(0)
        self._fleet = fleet or Fleet(store, clock, watchers)

    async def _admin(self, context: Context, rpc: str) -> Client:
        """The calling admin; a refused attempt is written to the audit log, then refused."""
        try:
            client = await self._auth.require(context)
        except (InvalidClient, ClientDisabled) as refused:
            claimed = basic_credentials_or_none(context.invocation_metadata())
            await self._audit_refusal(claimed or "anonymous", rpc, refused.error_reason, context)
            raise
        if not client.admin:
            await self._audit_refusal(client.client_id, rpc, "ADMIN_REQUIRED", context)
            raise AdminRequired(
                f"client {client.client_id!r} is not an admin; KeyAdmin calls need an admin client"
            )
        return client

    async def _audit_refusal(
        self, actor: str, rpc: str, reason: str, context: Context, tenant: str = "", **details: str
    ) -> None:
        """Write a refusal to the audit log, within the caller's address's budget (a flood of
        refused calls adds a summary entry a minute, not an entry each)."""
        now = self._clock.now()
        if not self._refusals.admit(peer_host(context.peer()), now):
            return
        summaries = self._refusals.summaries()  # of windows closed since: written with this entry
        try:
            async with self._store.transaction() as tx:
                await tx.append_audit(
                    now,
                    actor[:128],
                    "admin.denied",
                    rpc,
                    "denied",
                    tenant,
                    audit.details(reason=reason, peer=context.peer()[:128], **details),
                )
                await self._write_summaries(tx, summaries, now)
        except BaseException:
            self._refusals.unwritten(summaries)
            raise

    async def flush_refusal_summaries(self) -> None:
        """Write the summaries of refusal windows that have closed (the server calls this often)."""
        summaries = self._refusals.summaries(self._clock.now())
        if summaries:
            try:
                async with self._store.transaction() as tx:
                    await self._write_summaries(tx, summaries, self._clock.now())
            except BaseException:
                self._refusals.unwritten(summaries)  # written at the next round instead
                raise

    async def _write_summaries(self, tx: Any, summaries: list[Suppressed], now: float) -> None:
        for s in summaries:
            await tx.append_audit(
                now,
                audit.SYSTEM,
                "audit.refusals_suppressed",
                s.address,
                "denied",
                "",
                audit.details(
                    suppressed=s.count,
                    since=s.since,
                    limit="[limits] audit_refusals_per_minute",
                ),
            )

    async def _within(self, admin: Client, tenant: str, rpc: str, context: Context) -> str:
        """`tenant`, if the admin may manage it: an admin of a tenant manages only that tenant (an
        admin of the default tenant manages every one). A refusal is audited."""
        if admin.tenant and admin.tenant != tenant:
            await self._audit_refusal(
                admin.client_id, rpc, "TENANT_SCOPE", context, tenant, admin_tenant=admin.tenant
            )
            raise AdminRequired(
                f"client {admin.client_id!r} is an admin of tenant {admin.tenant!r} only; it cannot manage "
                f"tenant {tenant[:64]!r}: use an admin of that tenant, or of the default tenant"
            )
        return tenant

    @unary
    async def rotate_keys(
        self, request: key_admin_pb2.RotateKeysRequest, context: Context
    ) -> key_admin_pb2.RotateKeysResponse:
        admin = await self._admin(context, "RotateKeys")
        tenant = self._keys.check_tenant(validation.identifier(request.tenant, "tenant"))
        await self._within(admin, tenant, "RotateKeys", context)
        reason = validation.reason(request.reason) or f"requested by {admin.client_id}"
        key = await self._keys.rotate(
            tenant, immediate=request.immediate, reason=reason, actor=admin.client_id
        )
        return key_admin_pb2.RotateKeysResponse(key=convert.admin_key(key))

    @unary
    async def revoke_key(
        self, request: key_admin_pb2.RevokeKeyRequest, context: Context
    ) -> key_admin_pb2.RevokeKeyResponse:
        admin = await self._admin(context, "RevokeKey")
        kid = _required(validation.identifier(request.kid, "kid"), "kid")
        key = await self._store.get_key(kid)
        if key is not None:
            await self._within(admin, key.tenant, "RevokeKey", context)
        revocation = await self._keys.revoke(
            kid, reason=validation.reason(request.reason), actor=admin.client_id
        )
        return key_admin_pb2.RevokeKeyResponse(
            key=convert.admin_key(revocation.key),
            operation_id=revocation.operation_id,
            pending_approval=revocation.pending_approval,
        )

    @unary
    async def approve_operation(
        self, request: key_admin_pb2.ApproveOperationRequest, context: Context
    ) -> key_admin_pb2.ApproveOperationResponse:
        admin = await self._admin(context, "ApproveOperation")
        operation_id = _required(validation.identifier(request.operation_id, "operation_id"), "operation_id")
        if admin.tenant:
            async with self._store.transaction() as tx:
                operation = await tx.get_operation(operation_id)
            if operation is not None:
                await self._within(admin, operation.tenant, "ApproveOperation", context)
        key = await self._keys.approve(operation_id, actor=admin.client_id)
        return key_admin_pb2.ApproveOperationResponse(key=convert.admin_key(key))

    @unary
    async def list_keys(
        self, request: key_admin_pb2.ListKeysRequest, context: Context
    ) -> key_admin_pb2.ListKeysResponse:
        admin = await self._admin(context, "ListKeys")
        tenant = self._keys.check_tenant(validation.identifier(request.tenant, "tenant"))
        await self._within(admin, tenant, "ListKeys", context)
        keys = await self._keys.list_keys(tenant, include_expired=request.include_expired)
        return key_admin_pb2.ListKeysResponse(keys=[convert.admin_key(k) for k in keys])

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return service(
            "rotor.v1.KeyAdmin",
            {
                "RotateKeys": (self.rotate_keys, key_admin_pb2.RotateKeysRequest),
                "RevokeKey": (self.revoke_key, key_admin_pb2.RevokeKeyRequest),
                "ApproveOperation": (self.approve_operation, key_admin_pb2.ApproveOperationRequest),
                "ListKeys": (self.list_keys, key_admin_pb2.ListKeysRequest),
                "ListAuditEvents": (self.list_audit_events, key_admin_pb2.ListAuditEventsRequest),
                "RevokeClientTokens": (self.revoke_client_tokens, key_admin_pb2.RevokeClientTokensRequest),
                "GetRotationStatus": (self.get_rotation_status, key_admin_pb2.GetRotationStatusRequest),
                "CreateClient": (self.create_client, key_admin_pb2.CreateClientRequest),
                "GetClient": (self.get_client, key_admin_pb2.GetClientRequest),
                "ListClients": (self.list_clients, key_admin_pb2.ListClientsRequest),
                "UpdateClient": (self.update_client, key_admin_pb2.UpdateClientRequest),
                "DeleteClient": (self.delete_client, key_admin_pb2.DeleteClientRequest),
                "RotateClientSecret": (self.rotate_client_secret, key_admin_pb2.RotateClientSecretRequest),
            },
            {},
            self._metrics,
        )

    @unary
    async def list_audit_events(
        self, request: key_admin_pb2.ListAuditEventsRequest, context: Context
    ) -> key_admin_pb2.ListAuditEventsResponse:
        admin = await self._admin(context, "ListAuditEvents")
        tenant = (
            validation.identifier(request.tenant, "tenant") or admin.tenant
        )  # a tenant's admin sees its own
        if tenant:
            await self._within(admin, tenant, "ListAuditEvents", context)
        size = request.page_size or DEFAULT_AUDIT_PAGE
        if not 0 < size <= MAX_AUDIT_PAGE:
            raise InvalidRequest(f"page_size must be 1..{MAX_AUDIT_PAGE}", "INVALID_VALUE", "page_size")
        after = _page_token(request.page_token)
        since = convert.seconds_of_timestamp(request.since) if request.HasField("since") else 0.0
        entries = await self._store.audit_after(after, since=since, tenant=tenant or None, limit=size + 1)
        page = entries[:size]
        more = len(entries) > size
        return key_admin_pb2.ListAuditEventsResponse(
            events=[convert.audit_event(a) for a in page],
            next_page_token=str(page[-1].sequence) if more and page else "",
        )

    @unary
    async def revoke_client_tokens(
        self, request: key_admin_pb2.RevokeClientTokensRequest, context: Context
    ) -> key_admin_pb2.RevokeClientTokensResponse:
        admin = await self._admin(context, "RevokeClientTokens")
        client_id = _required(validation.identifier(request.client_id, "client_id"), "client_id")
        target = await self._store.get_client(client_id)
        if target is not None:
            await self._within(admin, target.tenant, "RevokeClientTokens", context)
        families, not_before = await self._tokens.revoke_client(admin, client_id, request.reason)
        return key_admin_pb2.RevokeClientTokensResponse(
            families_revoked=families, not_before=convert.timestamp(not_before)
        )

    @unary
    async def get_rotation_status(
        self, request: key_admin_pb2.GetRotationStatusRequest, context: Context
    ) -> key_admin_pb2.GetRotationStatusResponse:
        admin = await self._admin(context, "GetRotationStatus")
        tenant = self._keys.check_tenant(validation.identifier(request.tenant, "tenant"))
        await self._within(admin, tenant, "GetRotationStatus", context)
        return key_admin_pb2.GetRotationStatusResponse(
            latest_sequence=await self._store.last_sequence(tenant),
            watchers=[convert.watcher_status(w) for w in await self._fleet.watchers(tenant)],
        )

    # -- clients ------------------------------------------------------------------

    async def _managed_client(self, admin: Client, client_id: str, rpc: str, context: Context) -> Client:
        """The client `client_id`, if the admin may manage it (its tenant's admins, or the default
        tenant's); NOT_FOUND when there is none, PERMISSION_DENIED (audited) for another tenant's."""
        client_id = _required(validation.identifier(client_id, "client_id"), "client_id")
        target = await self._clients.get(client_id)
        await self._within(admin, target.tenant, rpc, context)
        return target

    @unary
    async def create_client(
        self, request: key_admin_pb2.CreateClientRequest, context: Context
    ) -> key_admin_pb2.CreateClientResponse:
        admin = await self._admin(context, "CreateClient")
        tenant = validation.identifier(request.tenant, "tenant") or admin.tenant  # a tenant's admin: its own
        await self._within(admin, tenant, "CreateClient", context)
        ttl = convert.seconds_of(request.secret_ttl, "secret_ttl") if request.HasField("secret_ttl") else None
        registration = await self._clients.create(
            request.name,
            tenant=tenant,
            scopes=tuple(request.scopes),
            audiences=tuple(request.audiences),
            admin=request.admin,
            allow_any_subject=request.allow_any_subject,
            cert_sans=tuple(request.cert_sans),
            allowed_cidrs=tuple(request.allowed_cidrs),
            secret_ttl=ttl,
            actor=admin.client_id,
        )
        await self._keys.ensure_signing(tenant)  # a new tenant's first Issue must not wait for its key
        return key_admin_pb2.CreateClientResponse(
            client=convert.client(registration.client), client_secret=registration.secret
        )

    @unary
    async def get_client(
        self, request: key_admin_pb2.GetClientRequest, context: Context
    ) -> key_admin_pb2.GetClientResponse:
        admin = await self._admin(context, "GetClient")
        target = await self._managed_client(admin, request.client_id, "GetClient", context)
        return key_admin_pb2.GetClientResponse(client=convert.client(target))

    @unary
    async def list_clients(
        self, request: key_admin_pb2.ListClientsRequest, context: Context
    ) -> key_admin_pb2.ListClientsResponse:
        admin = await self._admin(context, "ListClients")
        tenant = validation.identifier(request.tenant, "tenant") or admin.tenant
        await self._within(admin, tenant, "ListClients", context)
        page = await self._clients.list(tenant, page_size=request.page_size, page_token=request.page_token)
        return key_admin_pb2.ListClientsResponse(
            clients=[convert.client(c) for c in page.clients], next_page_token=page.next_page_token
        )

    @unary
    async def update_client(
        self, request: key_admin_pb2.UpdateClientRequest, context: Context
    ) -> key_admin_pb2.UpdateClientResponse:
        admin = await self._admin(context, "UpdateClient")
        target = await self._managed_client(admin, request.client_id, "UpdateClient", context)
        changes = convert.client_changes(request.update_mask.paths, request.client)
        updated = await self._clients.update(
            target.client_id, changes, revoke_tokens=request.revoke_tokens, actor=admin.client_id
        )
        return key_admin_pb2.UpdateClientResponse(client=convert.client(updated))

    @unary
    async def delete_client(
        self, request: key_admin_pb2.DeleteClientRequest, context: Context
    ) -> key_admin_pb2.DeleteClientResponse:
        admin = await self._admin(context, "DeleteClient")
        target = await self._managed_client(admin, request.client_id, "DeleteClient", context)
        families, not_before = await self._clients.delete(target.client_id, actor=admin.client_id)
        return key_admin_pb2.DeleteClientResponse(
            families_revoked=families, not_before=convert.timestamp(not_before)
        )

    @unary
    async def rotate_client_secret(
        self, request: key_admin_pb2.RotateClientSecretRequest, context: Context
    ) -> key_admin_pb2.RotateClientSecretResponse:
        admin = await self._admin(context, "RotateClientSecret")
        target = await self._managed_client(admin, request.client_id, "RotateClientSecret", context)
        overlap = convert.seconds_of(request.overlap, "overlap") if request.HasField("overlap") else 0.0
        ttl = convert.seconds_of(request.secret_ttl, "secret_ttl") if request.HasField("secret_ttl") else None
        _, secret = await self._clients.rotate_secret(
            target.client_id, overlap=overlap, secret_ttl=ttl, actor=admin.client_id
        )
        return key_admin_pb2.RotateClientSecretResponse(client_secret=secret)


DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE = 100, 1000


def _page_token(token: str) -> int:
    """The sequence a page token continues after (tokens are what next_page_token gave)."""
    if not token:
        return 0
    if not (token.isascii() and token.isdigit()) or len(token) > 19 or int(token) >= 2**63:
        raise InvalidRequest(
            "page_token is not one this server gave: pass next_page_token unchanged",
            "INVALID_VALUE",
            "page_token",
        )
    return int(token)


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidRequest(f"{field} is required", "FIELD_REQUIRED", field)
    return value
