"""KeySetWatcher: the current key set and revoked tokens, pushed by Rotor's WatchKeyRotations.

    async with KeySetWatcher("rotor:50051") as watcher:
        verifier = Verifier(watcher, issuer=..., audience=...)

or, in a threaded program:

    watcher = KeySetWatcher.start_in_thread("rotor:50051")
    ...
    watcher.close()

The watcher resumes with `after_sequence` after any disconnect (exponential
backoff with jitter), so no event is missed; while the stream is down it
keeps the key set fresh with GetKeySet, and a key it has never seen triggers
one fetch (single-flight, with a cooldown).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from rotor.v1 import keys_pb2, token_service_pb2
from rotor.v1.token_service_pb2_grpc import TokenServiceStub

from rotor_client._keys import KeyCache
from rotor_client._proto import seconds
from rotor_client._stats import merged
from rotor_client.errors import KeySetStale

log = logging.getLogger("rotor_client")

OnChange = Callable[[keys_pb2.KeyEvent], Awaitable[None] | None]
BACKOFF_BASE = 0.2  # seconds before the first retry; doubles per failure
BACKOFF_MAX = 30.0
IDLE_TIMEOUT = 50.0  # no message (Rotor sends a heartbeat every 15 s at most) -> the stream is dead
RPC_TIMEOUT = 10.0
MIN_POLL_INTERVAL = 1.0
REPORT_INTERVAL = 10.0  # seconds between a named watcher's verification reports, unless Rotor asks otherwise
MAX_REPORT_COUNTS = 256  # (outcome, kid) entries per report; the rest go with the next
MAX_REPORT_KIDS = 64


def _retry_after(error: aio.AioRpcError) -> float | None:
    """The google.rpc.RetryInfo delay Rotor attached to an error, if any."""
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                retry = error_details_pb2.RetryInfo()
                if detail.Unpack(retry):
                    return float(retry.retry_delay.ToNanoseconds()) / 1e9
    return None


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` consecutive failures: exponential, capped, full jitter above half."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(failures, 16))
    return float(ceiling * random.uniform(0.5, 1.0))


class KeySetWatcher:
    """Keeps one tenant's key set and revoked tokens current from WatchKeyRotations."""

    def __init__(
        self,
        target: str,
        *,
        tenant: str = "",
        channel_credentials: grpc.ChannelCredentials | None = None,
        max_staleness: float = 300.0,
        on_change: OnChange | None = None,
        poll_only: bool = False,
        metadata: Sequence[tuple[str, str]] = (),
        start_timeout: float = 10.0,
        fetch_cooldown: float = 5.0,
        name: str = "",
        report_interval: float = REPORT_INTERVAL,
    ) -> None:
        """`name` (metadata x-rotor-watcher) lists this watcher in Rotor's GetRotationStatus, and
        with activation_requires_ack a new key waits until it has been sent to it. A named watcher
        also reports, every `report_interval` seconds (or as Rotor asks), the kids it holds, the
        sequence it applied and the outcome counts of the Verifiers built on it
        (ReportVerifications)."""
        if max_staleness <= 0:
            raise ValueError("max_staleness must be positive (seconds)")
        if report_interval <= 0:
            raise ValueError("report_interval must be positive (seconds)")
        self.target = target
        self.tenant = tenant
        self.poll_only = poll_only
        self.key_cache = KeyCache(tenant, max_staleness)
        self.key_cache.on_unknown_kid = self._on_unknown_kid
        self._credentials = channel_credentials
        self._on_change = on_change
        self.name = name
        self.report_interval = report_interval
        self._metadata = (*metadata, *((("x-rotor-watcher", name),) if name else ()))
        self._start_timeout = start_timeout
        self._fetch_cooldown = fetch_cooldown
        self._keyset: keys_pb2.KeySet | None = None
        self._sequence = 0
        self._connected = False
        self._poll_interval = MIN_POLL_INTERVAL
        self._last_error = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: aio.Channel | None = None
        self._stub: Any = None  # TokenServiceStub over an aio channel (the stubs type it as sync)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._fetch_lock = threading.Lock()  # one unknown-kid fetch at a time, across threads
        self._last_fetch = -math.inf
        self._background: set[asyncio.Task[Any]] = set()
        self._unsent: dict[tuple[str, str], int] = {}  # counts of a report that did not go through
        self.reports_sent = 0

    # -- what callers read ---------------------------------------------------------------

    @property
    def keyset(self) -> keys_pb2.KeySet | None:
        """The newest KeySet received (None before the first)."""
        return self._keyset

    @property
    def sequence(self) -> int:
        """The sequence of the last event applied from the stream: where a reconnect resumes."""
        return self._sequence

    @property
    def connected(self) -> bool:
        """Whether the stream (or, with poll_only, the last poll) is up."""
        return self._connected

    @property
    def last_update(self) -> float | None:
        """When Rotor last confirmed the key set (Unix time), or None."""
        return self.key_cache.last_contact

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> Self:
        """Connect and wait for the first key set; KeySetStale if none comes within start_timeout."""
        if self._task is not None:
            raise RuntimeError("this KeySetWatcher was started already")
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        if self._credentials is not None:
            self._channel = aio.secure_channel(self.target, self._credentials)
        else:
            self._channel = aio.insecure_channel(self.target)
        self._stub = TokenServiceStub(self._channel)
        self._task = asyncio.create_task(self._run(), name=f"rotor key set watcher {self.target}")
        if self.name:
            reporting = asyncio.create_task(
                self._report_loop(), name=f"rotor verification reports {self.name}"
            )
            self._background.add(reporting)
            reporting.add_done_callback(self._background.discard)
        try:
            async with asyncio.timeout(self._start_timeout):
                await self._ready.wait()
        except TimeoutError:
            await self.close()
            raise KeySetStale(
                f"no key set from Rotor at {self.target} within {self._start_timeout:g} s "
                f"(last error: {self._last_error or 'none'}); check the address and that Rotor is running"
            ) from None
        return self

    async def close(self) -> None:
        """Stop watching and close the channel; verifiers keep the last key set until max_staleness."""
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._channel is not None:
            await self._channel.close(None)
        self._connected = False

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @classmethod
    def start_in_thread(cls, target: str, **kwargs: Any) -> ThreadedKeySetWatcher:
        """A started watcher running on its own event loop in a daemon thread, for threaded programs.

        Takes the same keyword arguments as the constructor. `on_change` runs on
        the watcher's thread. Call `close()` (or use it as a context manager) to stop.
        """
        watcher = cls(target, **kwargs)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="rotor-key-set-watcher", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(watcher.start(), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return ThreadedKeySetWatcher(watcher, loop, thread)

    # -- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            if self.poll_only:
                ok = await self._fetch()
                self._connected = ok
                failures = 0 if ok else failures + 1
                delay = self._poll_interval if ok else backoff(failures)
            else:
                failures = 0 if await self._watch() else failures + 1
                await self._fetch()  # keys stay fresh, and contact counted, while the stream is down
                delay = backoff(failures)
            await asyncio.sleep(delay)

    async def _watch(self) -> bool:
        """One WatchKeyRotations stream, until it fails; whether Rotor answered at all."""
        assert self._stub is not None
        request = token_service_pb2.WatchKeyRotationsRequest(
            tenant=self.tenant, after_sequence=self._sequence
        )
        call: Any = self._stub.WatchKeyRotations(request, metadata=self._metadata)
        answered = False
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):
                await call.initial_metadata()
            # a call that failed also "returns" (empty) metadata, but is done: only a live one counts
            if not call.done():
                answered = True
                self._connected = True
                self.key_cache.touch()
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    event = await call.read()
                if event is aio.EOF:  # type: ignore[attr-defined]
                    self._last_error = "the stream ended"
                    break
                await self._apply(event)
        except aio.AioRpcError as e:
            self._last_error = f"{e.code().name}: {e.details()}"
            log.log(
                logging.INFO if e.code() == grpc.StatusCode.UNAVAILABLE else logging.WARNING,
                "key set stream to %s failed (%s); resuming after sequence %d",
                self.target,
                self._last_error,
                self._sequence,
            )
        except TimeoutError:
            self._last_error = f"no message for {IDLE_TIMEOUT:g} s"
            log.warning("key set stream to %s went silent; reconnecting", self.target)
        finally:
            self._connected = False
            call.cancel()
        return answered

    async def _apply(self, event: keys_pb2.KeyEvent) -> None:
        cache = self.key_cache
        cache.touch()
        kind = event.type
        if kind == keys_pb2.KEY_EVENT_TYPE_HEARTBEAT:
            return
        if kind == keys_pb2.KEY_EVENT_TYPE_SNAPSHOT:
            cache.replace_revoked_jtis((r.jti, seconds(r.expires_at)) for r in event.revoked_tokens)
            cache.replace_client_revocations(
                (c.client_id, seconds(c.not_before)) for c in event.client_revocations
            )
        elif kind == keys_pb2.KEY_EVENT_TYPE_KEY_REVOKED:
            revoked_at = event.key.revoked_at if event.key.HasField("revoked_at") else event.occurred_at
            cache.revoke_key(event.key.kid, seconds(revoked_at))
        elif kind == keys_pb2.KEY_EVENT_TYPE_TOKEN_REVOKED:
            cache.revoke_jti(event.revoked_token.jti, seconds(event.revoked_token.expires_at))
        elif kind == keys_pb2.KEY_EVENT_TYPE_CLIENT_REVOKED:
            revocation = event.client_revocation
            cache.revoke_client(revocation.client_id, seconds(revocation.not_before))
        if event.HasField("keyset") and cache.install(event.keyset):
            self._keyset = event.keyset
            self._ready.set()
        self._sequence = max(self._sequence, event.sequence)
        if self._on_change is not None:
            try:
                result = self._on_change(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_change failed for event %d; the watcher goes on", event.sequence)

    async def _fetch(self) -> bool:
        """GetKeySet; whether it answered."""
        assert self._stub is not None
        try:
            keyset = await self._stub.GetKeySet(
                token_service_pb2.GetKeySetRequest(tenant=self.tenant),
                metadata=self._metadata,
                timeout=RPC_TIMEOUT,
            )
        except aio.AioRpcError as e:
            self._last_error = f"{e.code().name}: {e.details()}"
            return False
        if self.key_cache.install(keyset):
            self._keyset = keyset
        else:
            self.key_cache.touch()
        if keyset.HasField("max_cache_age"):
            self._poll_interval = max(MIN_POLL_INTERVAL, seconds(keyset.max_cache_age))
        self._ready.set()
        return True

    # -- reports (named watchers) ---------------------------------------------------------

    async def _report_loop(self) -> None:
        """Report at once once the key set is in, then every interval Rotor asks for."""
        await self._ready.wait()
        failures = 0
        while True:
            try:
                delay = await self.report()
                failures = 0
            except aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("Rotor at %s takes no verification reports (an older version)", self.target)
                    return
                failures += 1
                asked = _retry_after(e)
                delay = asked if asked is not None else min(backoff(failures), self.report_interval)
                log.log(
                    logging.INFO if e.code() == grpc.StatusCode.UNAVAILABLE else logging.WARNING,
                    "verification report to %s failed (%s: %s); retrying in %.1f s",
                    self.target,
                    e.code().name,
                    e.details(),
                    delay,
                )
            await asyncio.sleep(delay)

    async def report(self) -> float:
        """Send one report now (ReportVerifications); the seconds until the next is due.

        Counts that do not go through are sent with the next report."""
        assert self._stub is not None
        taken = merged([self._unsent, *(s.take() for s in list(self.key_cache.verifier_stats))])
        entries = sorted(taken.items(), key=lambda item: -item[1])
        sent, self._unsent = dict(entries[:MAX_REPORT_COUNTS]), dict(entries[MAX_REPORT_COUNTS:])
        request = token_service_pb2.ReportVerificationsRequest(
            tenant=self.tenant,
            watcher=self.name,
            sequence=max(self._sequence, self.key_cache.keyset_sequence),  # a poller applies key sets only
            kids=sorted(self.key_cache.keys)[:MAX_REPORT_KIDS],
            counts=[
                keys_pb2.VerificationCount(outcome=outcome, kid=kid, count=count)
                for (outcome, kid), count in sent.items()
            ],
        )
        try:
            response = await self._stub.ReportVerifications(
                request, metadata=self._metadata, timeout=RPC_TIMEOUT
            )
        except aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:  # a report Rotor refuses is not re-sent
                self._unsent = merged([self._unsent, sent])
            raise
        self.reports_sent += 1
        asked = seconds(response.next_report_in) if response.HasField("next_report_in") else 0.0
        return asked if asked > 0 else self.report_interval

    # -- unknown kids (called by verifiers, from any thread) ------------------------------

    def _on_unknown_kid(self, kid: str) -> str:
        if self._connected and not self.poll_only:
            return ""  # the stream would have told us: the kid is simply not Rotor's
        loop = self._loop
        if loop is None or loop.is_closed():
            return ""
        if time.monotonic() - self._last_fetch < self._fetch_cooldown:
            return "; the key set was re-fetched moments ago"
        if not self._fetch_lock.acquire(blocking=False):
            return "; a key set fetch is in progress: retry shortly"
        self._last_fetch = time.monotonic()
        try:
            loop.call_soon_threadsafe(self._spawn_fetch)
        except RuntimeError:  # the loop closed meanwhile
            self._fetch_lock.release()
            return ""
        return "; the watcher is not connected to Rotor, so it is re-fetching the key set: retry shortly"

    def _spawn_fetch(self) -> None:
        async def fetch_once() -> None:
            try:
                await self._fetch()
            finally:
                self._fetch_lock.release()

        task = asyncio.ensure_future(fetch_once())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class ThreadedKeySetWatcher:
    """A KeySetWatcher running in its own thread (see KeySetWatcher.start_in_thread)."""

    def __init__(
        self, watcher: KeySetWatcher, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self.watcher = watcher
        self.key_cache = watcher.key_cache
        self._loop = loop
        self._thread = thread

    @property
    def keyset(self) -> keys_pb2.KeySet | None:
        return self.watcher.keyset

    @property
    def sequence(self) -> int:
        return self.watcher.sequence

    @property
    def connected(self) -> bool:
        return self.watcher.connected

    @property
    def last_update(self) -> float | None:
        return self.watcher.last_update

    def report(self) -> float:
        """Send one verification report now (see KeySetWatcher.report)."""
        return asyncio.run_coroutine_threadsafe(self.watcher.report(), self._loop).result()

    def close(self) -> None:
        """Stop the watcher and its thread."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.watcher.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
