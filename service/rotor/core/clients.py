"""Client registration and authentication.

Secrets are stored only as scrypt hashes. Checking scrypt on every call would
cap throughput, so the `Authenticator` keeps verified credentials for a short
while, keyed by a SHA-256 of the secret and compared in constant time. A
server also keeps the client records it has read (`ClientDirectory`), dropped
whenever the audit log moves: every change to a client is audited.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from rotor.clock import Clock
from rotor.core import audit, validation
from rotor.core.errors import (
    AddressNotAllowed,
    ClientDisabled,
    ClientExists,
    ClientNotFound,
    InvalidClient,
    InvalidRequest,
    SelfLockout,
    TooManyRequests,
    quote,
)
from rotor.core.model import DEFAULT_TENANT, AuditEntry, Client, ClientRevocation, Event, EventType
from rotor.store import AlreadyExists, Store, Tx

__all__ = ["ClientExists"]  # raised by register_client; defined with the other domain errors

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
CACHE_TTL = 300.0  # how long a secret that matched its stored hash skips the slow check
CACHE_SIZE = 10_000
MAX_PENDING_CHECKS = 64  # slow secret checks queued at once; more is a flood, refused
# Slow secret checks get their own threads, so a flood of wrong secrets cannot
# delay other work that runs in threads (key generation above all).
_HASHING = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rotor-secret-check")
DIRECTORY_REFRESH = 0.05  # seconds between looks at the audit head for other processes' client changes

log = logging.getLogger("rotor.clients")


def new_secret() -> str:
    """A fresh client secret: 256 random bits, URL-safe base64. Never one that starts with "-",
    which a command line would take for an option (`--client-secret -x...`)."""
    while True:
        secret = secrets.token_urlsafe(32)
        if not secret.startswith("-"):
            return secret


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_secret(stored: str, secret: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            secret.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, UnicodeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True, slots=True)
class Registration:
    client: Client
    secret: str


async def register_client(
    store: Store,
    clock: Clock,
    client_id: str,
    *,
    scopes: Sequence[str] = (),
    audiences: Sequence[str] = (),
    admin: bool = False,
    allow_any_subject: bool = False,
    tenant: str = DEFAULT_TENANT,
    cert_san: str | None = None,
    expires_in: float | None = None,
    actor: str = audit.CLI,
    allowed_cidrs: Sequence[str] = (),
) -> Registration:
    """Register a client with a fresh secret; ClientExists if the id (or the certificate SAN) is taken.

    With `cert_san`, a client certificate carrying that URI SAN authenticates it too (mTLS).
    """
    if not validation.CLIENT_ID.fullmatch(client_id):
        raise InvalidRequest(
            f"client id {quote(client_id)} must be 1-128 letters, digits or ._:@/+- and start with a letter or digit",
            "INVALID_CLIENT_ID",
            "client_id",
        )
    if tenant and not validation.TENANT.fullmatch(tenant):
        raise InvalidRequest(
            f"tenant {quote(tenant)} must be 1-128 letters, digits, '.', '-' or '_'",
            "INVALID_VALUE",
            "tenant",
        )
    secret = new_secret()
    client = Client(
        client_id=client_id,
        tenant=tenant,
        secret_hash=await asyncio.to_thread(hash_secret, secret),
        scopes=validation.scopes(scopes),
        audiences=validation.audiences(audiences),
        admin=admin,
        allow_any_subject=allow_any_subject,
        created_at=clock.now(),
        cert_san=_cert_san(cert_san) if cert_san is not None else None,
        secret_expires_at=clock.now() + expires_in if expires_in is not None else None,
        allowed_cidrs=cidrs(allowed_cidrs),
    )
    try:
        async with store.transaction() as tx:
            await tx.insert_client(client)
            await tx.append_audit(
                client.created_at,
                actor,
                "client.created",
                client_id,
                "success",
                tenant,
                audit.details(
                    scopes=list(client.scopes),
                    audiences=list(client.audiences),
                    admin=client.admin or None,
                    cert_san=client.cert_san,
                    secret_expires_at=client.secret_expires_at,
                    allowed_cidrs=list(client.allowed_cidrs) or None,
                ),
            )
    except AlreadyExists:
        taken = f" or the certificate SAN {cert_san!r}" if cert_san else ""
        raise ClientExists(f"a client named {client_id!r}{taken} exists already") from None
    return Registration(client, secret)


async def rotate_secret(
    store: Store,
    clock: Clock,
    client_id: str,
    *,
    overlap: float = 0.0,
    expires_in: float | None = None,
    actor: str = audit.CLI,
) -> tuple[Client, str]:
    """Give a client a fresh secret; the old one keeps working for `overlap` seconds. Returns the
    client and the new secret (shown once: only its hash is stored)."""
    secret = new_secret()
    hashed = await asyncio.to_thread(hash_secret, secret)
    async with store.transaction() as tx:
        now = clock.now()
        client = await _existing(tx, client_id)
        # the old secret works on for the overlap, but never past its own expiry (nor comes back from it)
        old_until = now + overlap
        if client.secret_expires_at is not None:
            old_until = min(old_until, client.secret_expires_at)
        keep_old = overlap > 0 and old_until > now
        client = replace(
            client,
            secret_hash=hashed,
            secret_expires_at=now + expires_in if expires_in is not None else None,
            previous_secret_hash=client.secret_hash if keep_old else None,
            previous_secret_expires_at=old_until if keep_old else None,
        )
        await tx.update_client(client)
        await tx.append_audit(
            now,
            actor,
            "client.secret_rotated",
            client_id,
            "success",
            client.tenant,
            audit.details(overlap_seconds=overlap or None, secret_expires_at=client.secret_expires_at),
        )
    return client, secret


async def reset_secret(store: Store, clock: Clock, client_id: str) -> str:
    """Give an existing client a fresh secret at once (the old one stops working); returns it."""
    _, secret = await rotate_secret(store, clock, client_id)
    return secret


async def set_disabled(
    store: Store, clock: Clock, client_id: str, disabled: bool, *, actor: str = audit.CLI
) -> tuple[Client, int]:
    """Disable a client (it stops authenticating, and its refresh families are revoked at once) or
    enable it again (old families stay dead). Returns the client and the families revoked."""
    async with store.transaction() as tx:
        now = clock.now()
        client = replace(await _existing(tx, client_id), disabled=disabled)
        await tx.update_client(client)
        families = await tx.revoke_client_families(client_id, now, "client disabled") if disabled else 0
        await tx.append_audit(
            now,
            actor,
            "client.disabled" if disabled else "client.enabled",
            client_id,
            "success",
            client.tenant,
            audit.details(families_revoked=families or None),
        )
    return client, families


async def _existing(tx: Tx, client_id: str) -> Client:
    client = await tx.get_client(client_id)
    if client is None:
        raise InvalidClient(f"no client named {client_id!r}")
    return client


# -- client administration: the `rotor clients` command (on the store) and KeyAdmin's client RPCs -----

MAX_CIDRS = 64
UPDATABLE = ("scopes", "audiences", "admin", "allow_any_subject", "cert_sans", "allowed_cidrs", "disabled")
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NETWORK = ipaddress.IPv4Network | ipaddress.IPv6Network


def cidrs(values: Sequence[str], field: str = "allowed_cidrs") -> tuple[str, ...]:
    """Networks as registered: CIDRs (IPv4 or IPv6; a bare address is one host), normalized and
    de-duplicated in request order."""
    out: dict[str, None] = {}
    for i, value in enumerate(values):
        if i >= MAX_CIDRS:
            raise InvalidRequest(
                f"{field}: at most {MAX_CIDRS} networks are allowed", "TOO_MANY_VALUES", field
            )
        try:
            network = ipaddress.ip_network(value.strip(), strict=True) if len(value) <= 64 else None
        except ValueError as e:
            hint = ""
            if "host bits set" in str(e):
                hint = f" (host bits set: did you mean {ipaddress.ip_network(value.strip(), strict=False)}?)"
            raise InvalidRequest(
                f"{field}[{i}] {quote(value)} is not a network in CIDR notation such as 10.0.0.0/8 or "
                f"fd00::/8{hint}",
                "INVALID_VALUE",
                field,
            ) from None
        if network is None:
            raise InvalidRequest(f"{field}[{i}] is too long for a CIDR", "VALUE_TOO_LONG", field)
        out[str(network)] = None
    return tuple(out)


def _address(peer: str) -> _IP | None:
    """The IP address of a transport peer ("ipv4:10.0.0.7:51234", "ipv6:[::1]:51234", or a bare
    address); None when it has none (a Unix socket)."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rsplit(":", 1)[0] if rest.count(":") and not rest.endswith("]") else rest
        host = host.strip("[]").split("%", 1)[0]
    else:
        host = peer.strip("[]").split("%", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.7 is 10.0.0.7 (a dual-stack listener)
    return address


def peer_host(peer: str) -> str:
    """A peer's address without its port, as refusal budgets count it."""
    address = _address(peer)
    return str(address) if address is not None else peer[:128]


def address_allowed(client: Client, peer: str) -> bool:
    """Whether `client` may call from the transport peer `peer`: any address when it has no
    allowed_cidrs; otherwise one inside them (a peer with no IP address never is)."""
    if not client.allowed_cidrs:
        return True
    address = _address(peer)
    if address is None:
        return False
    networks: list[_NETWORK] = [ipaddress.ip_network(c) for c in client.allowed_cidrs]
    return any(address.version == n.version and address in n for n in networks)


async def check_address(
    store: Store, clock: Clock, client: Client, peer: str, rpc: str, budget: audit.RefusalBudget | None = None
) -> None:
    """AddressNotAllowed (after writing the refusal to the audit log, within `budget`) unless
    `client` may call from `peer`. Only the transport's peer counts: no header is trusted."""
    if address_allowed(client, peer):
        return
    now = clock.now()
    if budget is None or budget.admit(peer_host(peer), now):
        async with store.transaction() as tx:
            await tx.append_audit(
                now,
                client.client_id,
                "client.address_denied",
                rpc,
                "denied",
                client.tenant,
                audit.details(reason=AddressNotAllowed.reason, peer=peer[:128]),
            )
    raise AddressNotAllowed(
        f"client {client.client_id!r} may call only from {', '.join(client.allowed_cidrs)[:200]}; this call "
        f"came from {quote(peer)}: call from an allowed network, or ask an admin to change allowed_cidrs"
    )


async def revoke_tokens_in(
    tx: Tx, client: Client, now: float, reason: str, max_access_ttl: float
) -> tuple[int, float]:
    """Inside `tx`: end every refresh family of `client` and revoke its access tokens issued before
    now, at every verifier (a CLIENT_REVOKED event). Returns the families revoked and `not_before`.

    `not_before` is the next whole second: tokens carry whole-second `iat`, so a token issued in
    the same second, before or after, is refused too (never one issued before let through). The
    revocation is kept until the last token it covers has expired (readers add clock skew).
    """
    families = await tx.revoke_client_families(client.client_id, now, reason)
    not_before = float(math.floor(now) + 1)
    revocation = ClientRevocation(client.client_id, client.tenant, not_before, not_before + max_access_ttl)
    await tx.put_client_revocation(revocation)
    payload = Event.encode_payload(None, (), None, revocation)
    await tx.append_event(client.tenant, EventType.CLIENT_REVOKED.value, now, payload)
    return families, not_before


@dataclass(frozen=True, slots=True)
class ClientPage:
    clients: tuple[Client, ...]
    next_page_token: str  # "" on the last page


DEFAULT_PAGE, MAX_PAGE = 100, 1000


class ClientAdmin:
    """Every change an operator makes to clients, each audited in its own transaction.

    The `rotor clients` command (on the store, actor "cli") and KeyAdmin's client RPCs (actor: the
    calling admin) both come here. Who may manage which tenant is the api layer's to check; what
    no actor may do to itself (lose its admin flag, delete or disable itself) is checked here.
    """

    def __init__(self, store: Store, clock: Clock, max_access_ttl: float) -> None:
        self._store, self._clock, self._max_access_ttl = store, clock, max_access_ttl

    async def create(
        self,
        name: str,
        *,
        tenant: str = DEFAULT_TENANT,
        scopes: Sequence[str] = (),
        audiences: Sequence[str] = (),
        admin: bool = False,
        allow_any_subject: bool = False,
        cert_sans: Sequence[str] = (),
        allowed_cidrs: Sequence[str] = (),
        secret_ttl: float | None = None,
        actor: str = audit.CLI,
    ) -> Registration:
        """Register a client with a fresh secret (returned once; only its hash is kept)."""
        if not name:
            raise InvalidRequest("name is required: the new client's id", "FIELD_REQUIRED", "name")
        if len(cert_sans) > 1:
            raise InvalidRequest(
                "cert_sans: at most one certificate SAN per client", "TOO_MANY_VALUES", "cert_sans"
            )
        if secret_ttl is not None and secret_ttl <= 0:
            raise InvalidRequest("secret_ttl must be positive", "INVALID_DURATION", "secret_ttl")
        return await register_client(
            self._store,
            self._clock,
            name,
            scopes=scopes,
            audiences=audiences,
            admin=admin,
            allow_any_subject=allow_any_subject,
            tenant=tenant,
            cert_san=cert_sans[0] if cert_sans else None,
            expires_in=secret_ttl,
            actor=actor,
            allowed_cidrs=allowed_cidrs,
        )

    async def get(self, client_id: str) -> Client:
        client = await self._store.get_client(client_id) if client_id else None
        if client is None:
            raise ClientNotFound(f"no client named {quote(client_id)}; rotor clients list shows them")
        return client

    async def list(self, tenant: str | None, *, page_size: int = 0, page_token: str = "") -> ClientPage:
        """A page of clients by client_id: of `tenant`, or of every tenant when None."""
        size = page_size or DEFAULT_PAGE
        if not 0 < size <= MAX_PAGE:
            raise InvalidRequest(f"page_size must be 1..{MAX_PAGE}", "INVALID_VALUE", "page_size")
        if len(page_token) > 256:
            raise InvalidRequest(
                "page_token is not one this server gave: pass next_page_token unchanged",
                "INVALID_VALUE",
                "page_token",
            )
        found = sorted(
            (
                c
                for c in await self._store.list_clients()
                if (tenant is None or c.tenant == tenant) and c.client_id > page_token
            ),
            key=lambda c: c.client_id,
        )
        page = found[:size]
        return ClientPage(tuple(page), page[-1].client_id if len(found) > size else "")

    async def update(
        self,
        client_id: str,
        changes: Mapping[str, Any],
        *,
        revoke_tokens: bool = False,
        actor: str = audit.CLI,
        reason: str = "",
    ) -> Client:
        """Write the fields named in `changes` (any of UPDATABLE); they apply to the next call.

        Narrowing scopes or audiences revokes nothing already issued unless `revoke_tokens`; then
        every refresh family of the client ends and its access tokens issued before now are
        refused (as RevokeClientTokens). Disabling ends its refresh families, as `set_disabled`.
        """
        unknown = [f for f in changes if f not in UPDATABLE]
        if unknown:
            raise InvalidRequest(
                f"update_mask names {quote(unknown[0])}, which cannot be changed; it may name "
                + ", ".join(UPDATABLE),
                "INVALID_VALUE",
                "update_mask",
            )
        if not changes and not revoke_tokens:
            raise InvalidRequest(
                "update_mask is empty: name the fields to change (" + ", ".join(UPDATABLE) + ")",
                "FIELD_REQUIRED",
                "update_mask",
            )
        fields = _validated(changes)
        if actor == client_id and (fields.get("admin") is False or fields.get("disabled") is True):
            what = "remove its own admin flag" if fields.get("admin") is False else "disable itself"
            raise SelfLockout(
                f"client {client_id!r} may not {what}: that could lock its tenant out; another admin can"
            )
        async with self._store.transaction() as tx:
            now = self._clock.now()
            before = await tx.get_client(client_id) if client_id else None
            if before is None:
                raise ClientNotFound(f"no client named {quote(client_id)}; rotor clients list shows them")
            after = replace(before, **fields)
            try:
                await tx.update_client(after)
            except AlreadyExists:
                raise ClientExists(f"another client has the certificate SAN {after.cert_san!r}") from None
            families, not_before = 0, None
            if after.disabled and not before.disabled:
                families = await tx.revoke_client_families(client_id, now, "client disabled")
            if revoke_tokens:
                revoked, not_before = await revoke_tokens_in(
                    tx, after, now, reason or "client updated", self._max_access_ttl
                )
                families += revoked
            changed = {
                f: _shown(getattr(after, f)) for f in fields if getattr(after, f) != getattr(before, f)
            }
            await tx.append_audit(
                now,
                actor,
                "client.updated",
                client_id,
                "success",
                after.tenant,
                audit.details(
                    changed=changed or None,
                    previous={f: _shown(getattr(before, f)) for f in changed} or None,
                    families_revoked=families or None,
                    not_before=not_before,
                ),
            )
        return after

    async def delete(self, client_id: str, *, actor: str = audit.CLI, reason: str = "") -> tuple[int, float]:
        """Remove a client: its refresh families end and its access tokens are revoked (as
        RevokeClientTokens), its audit history stays, and its name may be registered again.
        Returns the families revoked and the revocation's `not_before`."""
        if actor == client_id:
            raise SelfLockout(
                f"client {client_id!r} may not delete itself: that could lock its tenant out; another admin can"
            )
        async with self._store.transaction() as tx:
            now = self._clock.now()
            client = await tx.get_client(client_id) if client_id else None
            if client is None:
                raise ClientNotFound(f"no client named {quote(client_id)}; rotor clients list shows them")
            families, not_before = await revoke_tokens_in(
                tx, client, now, reason or "client deleted", self._max_access_ttl
            )
            await tx.delete_client(client_id)
            await tx.append_audit(
                now,
                actor,
                "client.deleted",
                client_id,
                "success",
                client.tenant,
                audit.details(reason=reason, families_revoked=families, not_before=not_before),
            )
        log.warning("deleted client %s (%d refresh families revoked)", client_id, families)
        return families, not_before

    async def rotate_secret(
        self, client_id: str, *, overlap: float = 0.0, secret_ttl: float | None = None, actor: str = audit.CLI
    ) -> tuple[Client, str]:
        """A fresh secret (returned once); the old one works on for `overlap` seconds."""
        if overlap < 0:
            raise InvalidRequest("overlap must not be negative", "INVALID_DURATION", "overlap")
        if secret_ttl is not None and secret_ttl <= 0:
            raise InvalidRequest("secret_ttl must be positive", "INVALID_DURATION", "secret_ttl")
        await self.get(client_id)  # NOT_FOUND before any hashing
        return await rotate_secret(
            self._store, self._clock, client_id, overlap=overlap, expires_in=secret_ttl, actor=actor
        )

    async def set_disabled(
        self, client_id: str, disabled: bool, *, actor: str = audit.CLI
    ) -> tuple[Client, int]:
        """Disable (its refresh families end) or enable a client; returns it and the families revoked."""
        if disabled and actor == client_id:
            raise SelfLockout(f"client {client_id!r} may not disable itself: another admin can")
        await self.get(client_id)
        return await set_disabled(self._store, self._clock, client_id, disabled, actor=actor)


def _validated(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The Client fields to write for UpdateClient-style `changes`, each checked."""
    fields: dict[str, Any] = {}
    for name, value in changes.items():
        match name:
            case "scopes":
                fields["scopes"] = validation.scopes(value, "scopes")
            case "audiences":
                fields["audiences"] = validation.audiences(value, "audiences")
            case "allowed_cidrs":
                fields["allowed_cidrs"] = cidrs(value)
            case "cert_sans":
                sans = list(value)
                if len(sans) > 1:
                    raise InvalidRequest(
                        "cert_sans: at most one certificate SAN per client", "TOO_MANY_VALUES", "cert_sans"
                    )
                fields["cert_san"] = _cert_san(sans[0]) if sans else None
            case "admin" | "allow_any_subject" | "disabled":
                fields[name] = bool(value)
    return fields


def _shown(value: Any) -> Any:
    """A field's value for the audit log's details."""
    return list(value) if isinstance(value, tuple) else value


MAX_CERT_SAN = 2048  # characters of a URI SAN
_WRONG = "unknown client id or wrong secret: send `authorization: Basic base64(client_id:client_secret)`"


def _cert_san(uri: str) -> str:
    """A URI SAN as registered: an absolute URI such as spiffe://example.org/svc."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme.isascii() or not scheme.isalpha() or not rest or len(uri) > MAX_CERT_SAN:
        raise InvalidRequest(
            f"certificate SAN {quote(uri)} must be an absolute URI such as spiffe://example.org/svc",
            "INVALID_VALUE",
            "cert_san",
        )
    return uri


class ClientReader(Protocol):
    """Where the Authenticator reads clients: the store, or a ClientDirectory in front of it."""

    async def get_client(self, client_id: str) -> Client | None: ...

    async def get_client_by_cert_san(self, uri: str) -> Client | None: ...


class ClientDirectory:
    """The client records this process has read, so that authenticating a known client does not
    wait on the store.

    Every change to a client appends to the audit log in the same transaction, so the records
    are dropped whenever the log moves. Where the store can read the audit head without waiting
    (SQLite), every lookup checks it first, so another process's change (the CLI, another
    worker) applies to the very next call. Elsewhere (PostgreSQL) this process's own commits
    drop the records at once and other processes' within `refresh` seconds. Unknown ids are
    never remembered: a client registered a moment ago is found at once.
    """

    def __init__(self, store: Store, refresh: float = DIRECTORY_REFRESH) -> None:
        self._store, self._refresh = store, refresh
        self._by_id: dict[str, Client] = {}
        self._by_san: dict[str, Client] = {}
        self._generation = 0  # bumped on every drop: a read begun before one is not kept
        self._head = -1
        self._task: asyncio.Task[None] | None = None
        store.add_audit_listener(self._audited)

    def clear(self) -> None:
        self._generation += 1
        self._by_id.clear()
        self._by_san.clear()

    def _audited(self, entries: tuple[AuditEntry, ...]) -> None:
        """This process appended `entries` (a store may say so twice: as they are written and once
        committed): drop the records if one concerns a client, or if the log moved in between
        (another process's entry, unseen); else the head just moves on. () means that a group
        of entries it was told of never committed: start over from the committed head."""
        if not entries:
            self.clear()
            self._head = -1
            return
        if entries[0].sequence > self._head + 1 or any(e.action.startswith("client.") for e in entries):
            self.clear()
        self._head = max(self._head, entries[-1].sequence)

    def _check_head(self) -> None:
        # a committed head behind ours is this process's own entries, written but not yet
        # committed (the store tells of them first); one ahead is another process's
        head = self._store.audit_sequence_nowait()
        if head is not None and head > self._head:
            self._head = head
            self.clear()

    async def get_client(self, client_id: str) -> Client | None:
        return await self._lookup(self._by_id, client_id, self._store.get_client)

    async def get_client_by_cert_san(self, uri: str) -> Client | None:
        return await self._lookup(self._by_san, uri, self._store.get_client_by_cert_san)

    async def _lookup(
        self, cache: dict[str, Client], key: str, read: Callable[[str], Awaitable[Client | None]]
    ) -> Client | None:
        self._check_head()
        client = cache.get(key)
        if client is None:
            generation = self._generation
            client = await read(key)
            if client is not None and generation == self._generation and len(cache) < CACHE_SIZE:
                cache[key] = client  # unless the records were dropped while it was read
        return client

    async def start(self) -> None:
        self._head = (await self._store.audit_head())[0]
        if self._store.audit_sequence_nowait() is None:
            self._task = asyncio.create_task(self._watch(), name="rotor-client-directory")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._refresh)
            try:
                head = (await self._store.audit_head())[0]
            except Exception as e:
                if not failing:
                    log.warning("cannot read the audit head (%s); client records are read from the store", e)
                failing = True
                self.clear()  # while blind to changes, remember nothing
                continue
            failing = False
            if head != self._head:
                self._head = head
                self.clear()


class _NotVerified(Exception):
    """A secret not verified recently, met where no hashing is allowed."""


@dataclass(frozen=True, slots=True)
class _Verified:
    digest: bytes
    verified_at: float


class Authenticator:
    """Checks client credentials against the store.

    The client's record is read on every call, so a disabled client, changed
    grants or a reset secret take effect at once. Only the slow part is
    cached: a secret that matched a stored hash is remembered (as its SHA-256)
    for `cache_ttl` seconds, and concurrent first checks of one secret share
    a single scrypt run.
    """

    def __init__(self, store: ClientReader, clock: Clock, cache_ttl: float = CACHE_TTL) -> None:
        self._store = store
        self._clock = clock
        self._ttl = cache_ttl
        self._verified: dict[tuple[str, str], _Verified] = {}
        self._inflight: dict[tuple[str, str, bytes], asyncio.Future[bool]] = {}

    async def authenticate(self, client_id: str, secret: str, *, verify: bool = True) -> Client | None:
        """The client these credentials belong to; InvalidClient or ClientDisabled otherwise.

        During a secret rotation's overlap the previous secret works too; a secret past its
        expiry (--expires) does not. With `verify` false only a secret that matched recently
        is checked; any other gives None, having hashed nothing and told nothing.
        """
        try:
            return await self._authenticate(client_id, secret, verify)
        except _NotVerified:
            return None

    async def _authenticate(self, client_id: str, secret: str, verify: bool) -> Client:
        client = await self._store.get_client(client_id) if len(client_id) <= validation.MAX_NAME else None
        if client is None:
            if not verify:
                raise _NotVerified
            raise InvalidClient(_WRONG)
        now = self._clock.now()
        if await self._secret_matches(client, client.secret_hash, secret, verify):
            if client.secret_expires_at is not None and now >= client.secret_expires_at:
                raise InvalidClient(
                    f"the secret of client {client_id!r} expired; an operator rotates it with "
                    "`rotor clients rotate-secret`"
                )
        elif not (
            client.previous_secret_hash is not None
            and client.previous_secret_expires_at is not None
            and now < client.previous_secret_expires_at
            and await self._secret_matches(client, client.previous_secret_hash, secret, verify)
        ):
            raise InvalidClient(_WRONG)
        if client.disabled:
            raise ClientDisabled(
                f"client {client_id!r} is disabled; an operator can enable it again (rotor clients enable)"
            )
        return client

    async def client_for_certificate(self, uris: tuple[str, ...]) -> Client | None:
        """The client registered for one of a verified client certificate's URI SANs (RFC 8705
        tls_client_auth); None when there is none, ClientDisabled when it is disabled."""
        for uri in uris:
            client = await self._store.get_client_by_cert_san(uri) if len(uri) <= MAX_CERT_SAN else None
            if client is not None:
                if client.disabled:
                    raise ClientDisabled(
                        f"client {client.client_id!r} is disabled; an operator can enable it again"
                    )
                return client
        return None

    async def _secret_matches(self, client: Client, stored_hash: str, secret: str, verify: bool) -> bool:
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        key = (client.client_id, stored_hash)
        now = self._clock.now()
        hit = self._verified.get(key)
        if hit is not None and now - hit.verified_at < self._ttl and hmac.compare_digest(hit.digest, digest):
            return True
        if not verify:
            raise _NotVerified
        flight = (*key, digest)
        pending = self._inflight.get(flight)
        if pending is None:
            if len(self._inflight) >= MAX_PENDING_CHECKS:
                raise TooManyRequests("too many client authentications are being checked; retry with backoff")
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(_HASHING, verify_secret, stored_hash, secret)
            self._inflight[flight] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(flight, None))
        if not await asyncio.shield(pending):
            return False
        if len(self._verified) >= CACHE_SIZE:
            self._verified.clear()
        self._verified[key] = _Verified(digest, now)
        return True
