"""Wiring: one running Rotor server, from a Config to a listening gRPC port.

Start-up order matters: the store and the key-encryption key first, then the
first tick of the rotator (which creates the first key on a new store), then
the hub, then the port; health says SERVING only once a key is active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from grpc import aio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rotor.api import reflection
from rotor.api.auth import CallerAuth
from rotor.api.convert import KeySetEncoder
from rotor.api.http import HttpSide, KeySetSource
from rotor.api.limits import AuthBackoff, RateLimiter, WatcherLimits
from rotor.api.oauth import OAuthEndpoints
from rotor.api.servicers import HEARTBEAT_INTERVAL, KeyAdminServicer, KeySetCache, TokenServicer
from rotor.api.status_page import StatusPages
from rotor.clock import Clock, SystemClock
from rotor.config import Config
from rotor.core.audit import RefusalBudget
from rotor.core.clients import Authenticator, ClientDirectory
from rotor.core.crypto import AesGcmSealer, load_kek
from rotor.core.events import EventHub
from rotor.core.fleet import Fleet
from rotor.core.keys import KeyManager, KeyRing
from rotor.core.keystore import PKCS11, SEALED, KeyStore, KeyStores, SealedKeyStore
from rotor.core.lifecycle import KeyPolicy
from rotor.core.model import DEFAULT_TENANT, Event
from rotor.core.propagation import WatcherRegistry
from rotor.core.rotation import Rotator
from rotor.core.status import StatusView
from rotor.core.tokens import TokenPolicy, TokenService
from rotor.metrics import Metrics
from rotor.store import open_store
from rotor.tls import TlsMaterial

log = logging.getLogger("rotor.server")

SERVICES = ("rotor.v1.TokenService", "rotor.v1.KeyAdmin")
MAX_MESSAGE = 4 * 1024 * 1024
MAX_METADATA = 8 * 1024

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_metadata_size", MAX_METADATA),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),  # clients' pings, at most this often
    ("grpc.keepalive_permit_without_calls", 1),
    # calls waiting to be accepted: every watcher reconnecting at once after a restart must not
    # be cancelled by gRPC's default cap of 1,000
    ("grpc.server.max_pending_requests", 30_000),
    ("grpc.server.max_pending_requests_hard_limit", 30_000),
]
POLL = 0.5  # seconds between looks at the event log for other processes' writes
REFUSAL_FLUSH = 10.0  # seconds between writes of refusal summaries (see RefusalBudget)
KEY_STORE_CHECK = 1.0  # seconds between looks at whether an HSM answers (readiness)
POLL_SHARED = 0.05  # the same, for workers sharing a port: a watcher may be on any of them


def key_policy(config: Config) -> KeyPolicy:
    k, t = config.keys, config.tokens
    return KeyPolicy(
        rotation_period=k.rotation_period,
        publish_lead=k.publish_lead,
        max_access_ttl=t.max_access_ttl,
        clock_skew=k.clock_skew,
    )


def server_options(config: Config, reuse_port: bool = False) -> list[tuple[str, int]]:
    """gRPC server options: size limits, and [limits]' keepalive and idle timeouts."""
    limits = config.limits
    return [
        *GRPC_OPTIONS,
        ("grpc.keepalive_time_ms", round(limits.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", round(limits.keepalive_timeout * 1000)),
        ("grpc.http2.ping_timeout_ms", round(limits.keepalive_timeout * 1000)),  # what enforces it
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle watcher's connection
        ("grpc.max_connection_idle_ms", round(limits.idle_timeout * 1000)),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


class RotorServer:
    """Everything one server process runs, started and stopped together."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        reuse_port: bool = False,
    ):
        """`reuse_port` lets several processes share the listening port (rotor serve --workers N)."""
        self.config = config
        self._reuse_port = reuse_port
        self.clock = clock or SystemClock()
        self._heartbeat_interval = heartbeat_interval
        self.port = 0
        self.http_port = 0
        self.kek_created = False
        self._stopping = False
        self._serving = False  # what gRPC health last said
        self._running = contextlib.AsyncExitStack()  # what start() set going, stopped in reverse

    async def start(self) -> None:
        """Open the store, make sure a key signs, and listen; on failure nothing is left running."""
        config = self.config
        self._tls = TlsMaterial.load(config.tls)  # before anything is opened or written: fail fast
        self.store = await open_store(
            config.database_url, config.sqlite_path, pool_size=config.cluster.pool_size
        )
        self._running.push_async_callback(self.store.close)
        try:
            await self._start()
        except BaseException:
            await self._running.aclose()
            raise

    async def _start(self) -> None:
        config = self.config
        self.keystores = await self._open_key_stores()
        policy = key_policy(config)
        self.keyring = KeyRing(self.store, self.keystores)
        self.watchers = WatcherRegistry()
        # every replica's named watchers, through the store (GetRotationStatus, the ack gate, metrics)
        self.fleet = Fleet(
            self.store,
            self.clock,
            self.watchers,
            # workers sharing a port each hold streams of their own: each is a replica of its own
            replica=f"{config.cluster.replica}:{os.getpid()}"
            if config.cluster.replica and self._reuse_port
            else config.cluster.replica,
            report_interval=config.limits.report_interval,
            max_names=config.limits.max_watchers,
        )
        self.keys = KeyManager(
            self.store,
            self.keystores,
            self.keyring,
            self.clock,
            policy,
            algorithm=config.keys.algorithm,
            rsa_bits=config.keys.rsa_bits,
            require_approval=config.keys.require_approval,
            tenants=sorted({"", *config.tenants, *await self.store.list_tenants()}),
            tenant_algorithms={name: t.algorithm for name, t in config.tenants.items() if t.algorithm},
            ack_gate=self.fleet.unacknowledged if config.keys.activation_requires_ack else None,
            max_ack_wait=config.keys.max_ack_wait,
        )
        self.tokens = TokenService(
            self.store,
            self.keyring,
            self.clock,
            TokenPolicy(
                issuer=config.issuer,
                access_ttl=config.tokens.access_ttl,
                max_access_ttl=config.tokens.max_access_ttl,
                refresh_ttl=config.tokens.refresh_ttl,
                refresh_family_ttl=config.tokens.refresh_family_ttl,
                clock_skew=config.keys.clock_skew,
            ),
        )
        self.encoder = KeySetEncoder(config.issuer, policy, config.keys.max_cache_age)
        # other processes' events: PostgreSQL wakes the hub (NOTIFY); SQLite sharers are polled for
        poll = POLL_SHARED if self._reuse_port else POLL
        self.hub: EventHub[bytes] = EventHub(
            self.store, self.encoder.event, poll_interval=poll, on_event=self._on_event
        )
        self.rotator = Rotator(
            self.keys,
            self.store,
            self.clock,
            lease_ttl=config.cluster.lease_ttl,
            event_retention=config.keys.event_retention,
        )

        self.metrics = Metrics()
        self.metrics.watch_audit()
        self.metrics.watch_rotator(lambda: self.rotator.lease is not None, lambda: self.rotator.failed_ticks)
        self.metrics.watch_keys(
            lambda: self.keys.tenants, self.keyring.live, self.keyring.has_active, policy, self.clock.now
        )
        self.metrics.watch_fleet(self.fleet.known, self.fleet.totals, self.keyring.live, self.fleet.latest)
        self.health = health_aio.HealthServicer()
        await self._set_health()
        # The hub first: from here on, a key change by any process reaches the key ring.
        await self.hub.start()
        self._running.push_async_callback(self.hub.close)
        for tenant in self.keys.tenants:
            await self.keyring.refresh(tenant)
        await self.keys.sweep()  # private halves a process that died right after a commit left behind
        await self.fleet.sync()  # the ack gate sees every replica's watchers from the first tick
        self.fleet.start()
        self._running.push_async_callback(self.fleet.stop)
        await self.rotator.tick()  # the first key on a new store, and anything due while we were down
        self.rotator.start()
        self._running.push_async_callback(self.rotator.stop)

        self.server = aio.server(options=server_options(config, self._reuse_port))
        limits = config.limits
        directory = ClientDirectory(self.store)
        await directory.start()
        self._running.push_async_callback(directory.stop)
        mtls = self._tls is not None and self._tls.client_ca is not None
        auth = CallerAuth(Authenticator(directory, self.clock), AuthBackoff(self.clock), mtls=mtls)
        self.watcher_limits = WatcherLimits(limits.watchers_per_client, limits.max_watchers)
        self.refusals = refusals = RefusalBudget(
            limits.audit_refusals_per_minute, self.metrics.audit_refusals_suppressed.inc
        )
        rates = (
            RateLimiter("Issue", limits.issue_rate, limits.issue_burst, self.clock),
            RateLimiter("Refresh", limits.refresh_rate, limits.refresh_burst, self.clock),
        )
        self.key_admin = key_admin = KeyAdminServicer(
            auth,
            self.keys,
            self.tokens,
            self.store,
            self.watchers,
            self.clock,
            self.metrics,
            refusals=refusals,
            fleet=self.fleet,
        )
        token_servicer = TokenServicer(
            auth,
            self.tokens,
            self.keys,
            self.store,
            self.hub,
            self.encoder,
            self.clock,
            self.watcher_limits,
            rates,
            self._heartbeat_interval,
            self.metrics,
            self.watchers,
            limits.write_timeout,
            refusals=refusals,
            fleet=self.fleet,
        )
        self.server.add_generic_rpc_handlers((token_servicer.handler(), key_admin.handler()))
        flusher = asyncio.create_task(self._flush_refusals(key_admin), name="rotor-refusal-summaries")
        self._running.push_async_callback(_cancel, flusher)
        if config.keys.key_store == PKCS11:
            checker = asyncio.create_task(self._watch_key_stores(), name="rotor-key-store-check")
            self._running.push_async_callback(_cancel, checker)
        if self.metrics.shared:  # one of several workers: keep the shared metric files current
            syncer = asyncio.create_task(self._sync_metrics(), name="rotor-metrics-sync")
            self._running.push_async_callback(_cancel, syncer)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable(
            self.server, [*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        )
        tls = self._tls
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(config.listen)
            else:
                self.port = self.server.add_secure_port(config.listen, tls.grpc_credentials())
        except RuntimeError:
            raise OSError(
                f"cannot listen on {config.listen}: the address is in use or not available"
            ) from None
        await self.server.start()
        self._running.push_async_callback(self.server.stop, None)
        if config.http_listen:
            keysets = KeySetCache(self.store, self.hub, self.encoder, self.clock)
            self.http = HttpSide(
                issuer=config.issuer,
                algorithm=config.keys.algorithm,
                max_cache_age=config.keys.max_cache_age,
                keys=self.keys,
                keysets=KeySetSource(keysets.get),
                metrics=self.metrics,
                ready=self.ready,
                mtls=tls is not None and tls.client_ca is not None,
                reuse_port=self._reuse_port,  # every worker serves it: each its own /metrics
                oauth=OAuthEndpoints(
                    auth,
                    token_servicer.calls,
                    self.clock,
                    self.metrics,
                    mtls=tls is not None and tls.client_ca is not None,
                ),
                status=StatusPages(
                    StatusView(self.keys, self.store, self.fleet, self.clock),
                    access=config.status_access,
                    keys=self.keys,
                    hub=self.hub,
                    auth=auth,
                    store=self.store,
                    clock=self.clock,
                ),
            )
            ssl_context = tls.ssl_context(config.tls) if tls is not None else None
            self.http_port = await self.http.start(config.http_listen, ssl_context)
            self._running.push_async_callback(self.http.stop)
        await self._set_health()

    async def _open_key_stores(self) -> KeyStores:
        """The key store new keys are made in (keys.key_store), and the sealed store for keys sealed
        before a move to an HSM (they sign until they retire, and verify until they expire)."""
        config = self.config
        # a new KEK only for a new store: one that already holds sealed keys needs the KEK that sealed them
        fresh = await self.store.last_sequence() == 0
        env_kek = os.environ.get("ROTOR_KEK")
        if config.keys.key_store != PKCS11:
            kek, self.kek_created = load_kek(env_kek, config.kek_path, create=fresh)
            if self.kek_created:
                log.warning(
                    "generated a key-encryption key at %s (mode 0600); keep it off the database's backups, "
                    "or set ROTOR_KEK",
                    config.kek_path,
                )
            return KeyStores(SealedKeyStore(AesGcmSealer(kek)))
        from rotor.core.hsm import Pkcs11SetupError, open_token  # loads the PKCS#11 binding only when used

        p = config.pkcs11
        pin = os.environ.get(p.pin_env, "")
        if not pin:
            raise Pkcs11SetupError(
                f"set the environment variable {p.pin_env} to the user PIN of token {p.token_label!r} "
                "(pkcs11.pin_env names it; the PIN is never read from the config file)"
            )
        algorithms = {config.keys.algorithm, *(t.algorithm for t in config.tenants.values() if t.algorithm)}
        loop = asyncio.get_running_loop()
        hsm = await loop.run_in_executor(None, open_token, p.module, p.token_label, pin, algorithms)
        self._running.callback(hsm.close)
        log.info("signing keys are made on PKCS#11 token %r (%s)", p.token_label, p.module)
        others: dict[str, KeyStore] = {}
        if env_kek or config.kek_path.exists():  # sealed keys from before the move to the HSM
            kek, _ = load_kek(env_kek, config.kek_path, create=False)
            others[SEALED] = SealedKeyStore(AesGcmSealer(kek))
        return KeyStores(hsm, others)

    async def _watch_key_stores(self) -> None:
        """Readiness follows the key stores: an HSM that stops answering makes the server not ready,
        and its recovery (the check re-initialises the module) makes it ready again."""
        while True:
            await asyncio.sleep(KEY_STORE_CHECK)
            for keystore in self.keystores.all:
                await keystore.check()
            if self.ready() != self._serving:  # a failed call may have seen it first
                await self._set_health()

    async def _flush_refusals(self, key_admin: KeyAdminServicer) -> None:
        """Write the summary of each closed minute in which refused calls were left out of the log."""
        while True:
            await asyncio.sleep(REFUSAL_FLUSH)
            try:
                await key_admin.flush_refusal_summaries()
            except Exception as e:  # the store away: the summaries wait for the next round
                log.warning("cannot write refusal summaries to the audit log: %s", e)

    async def _sync_metrics(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.metrics.sync()

    def ready(self) -> bool:
        """Whether this server can do its job: not stopping, and every tenant has a key that signs."""
        # a tenant that has no key yet (just created, its first key on the way) does not count
        tenants = (t for t in self.keys.tenants if t == DEFAULT_TENANT or self.keyring.live(t))
        return (
            not self._stopping
            and all(self.keyring.has_active(t) for t in tenants)
            and all(keystore.healthy for keystore in self.keystores.all)
        )

    async def _on_event(self, event: Event) -> None:
        self.metrics.key_events.labels(event.tenant, event.type.value).inc()
        if event.key is None:
            return
        # A key changed in another process (this one's changes are installed at commit): sign with the right one.
        if event.sequence > self.keyring.sequence(event.tenant):
            await self.keyring.refresh(event.tenant)
        await self._set_health()

    async def _set_health(self) -> None:
        self._serving = serving = self.ready()
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICES):
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop gracefully: streams end with UNAVAILABLE, unary calls in flight finish."""
        self._stopping = True
        await self.health.enter_graceful_shutdown()
        await self.hub.close()
        await asyncio.sleep(0.05)  # let the streams send their final status
        await self.server.stop(grace)
        await self._running.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def address(listen: str, port: int) -> str:
    host = listen.rpartition(":")[0]
    return f"{host}:{port}"
