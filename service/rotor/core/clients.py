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
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

from rotor.clock import Clock
from rotor.core import audit, validation
from rotor.core.errors import ClientDisabled, InvalidClient, InvalidRequest, TooManyRequests, quote
from rotor.core.model import DEFAULT_TENANT, AuditEntry, Client
from rotor.store import AlreadyExists, Store, Tx

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
    """A fresh client secret: 256 random bits, base64url."""
    return secrets.token_urlsafe(32)


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


class ClientExists(Exception):
    """Raised when registering a client id that is taken."""


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
        """This process appended `entries`: drop the records if one concerns a client, or if the
        log moved in between (another process's entry, unseen); else the head just moves on."""
        if entries[0].sequence != self._head + 1 or any(e.action.startswith("client.") for e in entries):
            self.clear()
        self._head = max(self._head, entries[-1].sequence)

    def _check_head(self) -> None:
        head = self._store.audit_sequence_nowait()
        if head is not None and head != self._head:
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
