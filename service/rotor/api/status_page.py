"""The live status page on the HTTP side port: one tenant's keys, watchers and audit events.

    GET /status[?tenant=T]          the page (HTML; it draws /status.json and follows /status/events)
    GET /status.json[?tenant=T]     the model (rotor.core.status), as JSON
    GET /status/events[?tenant=T]   server-sent events: one `key` event per key change, as it happens

`status_access = "admin"` (the default) asks for an admin client's credentials with HTTP Basic,
so a browser prompts for them, and shows the audit events; an admin of one tenant sees only that
tenant. `"public"` asks for nothing and leaves the audit events out. Neither shows anything secret:
kids and public timelines, watcher names and counts.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from importlib import resources
from typing import Any

from aiohttp import web

from rotor.api.auth import CallerAuth, basic_credentials_or_none
from rotor.clock import Clock
from rotor.core import audit, validation
from rotor.core.errors import AdminRequired, RotorError, TooManyRequests
from rotor.core.events import EventHub
from rotor.core.keys import KeyManager
from rotor.core.model import Client
from rotor.core.status import StatusView
from rotor.store import Store

log = logging.getLogger("rotor.http")

ACCESS_MODES = ("admin", "public")
REALM = 'Basic realm="rotor status", charset="UTF-8"'
KEEPALIVE = 15.0  # seconds between comments on an idle event stream (proxies drop silent ones)
MAX_STREAMS = 256  # open /status/events streams per process; past it the page polls instead
RETRY_MS = 2000  # how soon a browser reconnects a dropped event stream
MODEL_TTL = 1.0  # seconds a built model serves again, while no event has come

_HTML = resources.files("rotor.api").joinpath("status.html").read_text(encoding="utf-8")
_HTTP_STATUS = {
    "INVALID_CLIENT": 401,
    "CLIENT_DISABLED": 401,
    "ADMIN_REQUIRED": 403,
    "TENANT_NOT_FOUND": 404,
}


class StatusPages:
    """The /status routes of the HTTP side port."""

    def __init__(
        self,
        view: StatusView,
        *,
        access: str,
        keys: KeyManager,
        hub: EventHub[Any],
        auth: CallerAuth,
        store: Store,
        clock: Clock,
    ) -> None:
        if access not in ACCESS_MODES:
            raise ValueError(f"status_access must be one of {', '.join(ACCESS_MODES)}, not {access!r}")
        self._view, self._access, self._keys, self._hub = view, access, keys, hub
        self._auth, self._store, self._clock = auth, store, clock
        self._streams = 0
        self._models: dict[tuple[str, bool], tuple[int, float, dict[str, Any]]] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/status", self.page)
        app.router.add_get("/status.json", self.document)
        app.router.add_get("/status/events", self.events)

    async def _model(self, tenant: str, with_audit: bool) -> dict[str, Any]:
        """The tenant's model as JSON values; one built less than MODEL_TTL ago serves again while no
        event has come since (however many browsers poll, the store is read about once a second)."""
        generation, now = self._hub.generation, time.monotonic()
        cached = self._models.get((tenant, with_audit))
        if cached is not None and cached[0] == generation and now - cached[1] < MODEL_TTL:
            return cached[2]
        doc = (await self._view.tenant_status(tenant, with_audit=with_audit)).to_dict()
        if len(self._models) >= 1024:  # as many tenants as that: start again
            self._models.clear()
        self._models[tenant, with_audit] = (generation, now, doc)
        return doc

    async def page(self, request: web.Request) -> web.StreamResponse:
        tenant, admin = await self._viewer(request)
        model = await self._model(tenant, admin)
        nonce = secrets.token_urlsafe(16)
        initial = json.dumps(model, separators=(",", ":")).replace("<", "\\u003c")
        body = _HTML.replace("{{nonce}}", nonce).replace("{{initial}}", initial)
        return web.Response(
            text=body,
            content_type="text/html",
            headers={
                **_NO_STORE,
                "Content-Security-Policy": (
                    f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
                    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                    "frame-ancestors 'none'"
                ),
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def document(self, request: web.Request) -> web.StreamResponse:
        tenant, admin = await self._viewer(request)
        model = await self._model(tenant, admin)
        return web.Response(
            text=json.dumps(model, separators=(",", ":")),
            content_type="application/json",
            headers=_NO_STORE,
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: `key` with {sequence, type, kid} on every key change of the tenant."""
        tenant, _ = await self._viewer(request)
        if self._streams >= MAX_STREAMS:
            raise _error(
                429,
                "TOO_MANY_REQUESTS",
                f"this server holds {MAX_STREAMS} status event streams already; poll /status.json instead",
                {"Retry-After": "30"},
            )
        self._streams += 1
        sub = self._hub.subscribe(tenant)
        try:
            response = web.StreamResponse(
                headers={**_NO_STORE, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
            )
            await response.prepare(request)
            await response.write(f"retry: {RETRY_MS}\nevent: hello\ndata: {{}}\n\n".encode())
            while True:
                delivery = await sub.next(KEEPALIVE)
                if delivery is not None:
                    event = delivery.event
                    if event.key is None:  # token revocations: nothing the page shows
                        continue
                    data = json.dumps(
                        {"sequence": event.sequence, "type": event.type.value, "kid": event.key.kid}
                    )
                    await response.write(f"event: key\nid: {event.sequence}\ndata: {data}\n\n".encode())
                elif sub.closed:  # shutting down, or too slow: the browser reconnects
                    break
                else:
                    await response.write(b": keepalive\n\n")
            return response
        except ConnectionResetError:  # the browser went away
            return response
        finally:
            self._hub.unsubscribe(sub)
            self._streams -= 1

    async def _viewer(self, request: web.Request) -> tuple[str, bool]:
        """(tenant, whether the viewer sees audit events), or an HTTP error response raised."""
        asked = request.query.get("tenant")
        if self._access == "public":
            tenant = self._check_tenant(asked or "")
            return tenant, False
        admin = await self._admin(request)
        tenant = self._check_tenant(asked if asked is not None else admin.tenant)
        if admin.tenant and admin.tenant != tenant:
            await self._audit_refusal(request, admin.client_id, "TENANT_SCOPE", tenant)
            raise _failure(
                AdminRequired(
                    f"client {admin.client_id!r} is an admin of tenant {admin.tenant!r} only; it cannot see "
                    f"tenant {tenant[:64]!r}"
                )
            )
        return tenant, True

    def _check_tenant(self, tenant: str) -> str:
        try:
            return self._keys.check_tenant(validation.identifier(tenant, "tenant"))
        except RotorError as e:
            raise _failure(e) from None

    async def _admin(self, request: web.Request) -> Client:
        header = request.headers.get("Authorization")
        if header is None:
            raise _error(
                401,
                "INVALID_CLIENT",
                "the status page needs an admin client's credentials (HTTP Basic: client_id and secret)",
                {"WWW-Authenticate": REALM},
            )
        address = request.remote or ""
        try:
            client = await self._auth.basic(header, address)
        except TooManyRequests as e:
            wait = math.ceil(e.retry_after or 1)
            raise _error(429, e.error_reason, e.message, {"Retry-After": str(wait)}) from None
        except RotorError as e:
            claimed = basic_credentials_or_none((("authorization", header),)) or "anonymous"
            await self._audit_refusal(request, claimed, e.error_reason, "")
            raise _failure(e) from None
        if not client.admin:
            await self._audit_refusal(request, client.client_id, "ADMIN_REQUIRED", client.tenant)
            raise _failure(
                AdminRequired(f"client {client.client_id!r} is not an admin; the status page needs an admin")
            )
        return client

    async def _audit_refusal(self, request: web.Request, actor: str, reason: str, tenant: str) -> None:
        async with self._store.transaction() as tx:
            await tx.append_audit(
                self._clock.now(),
                actor,
                "admin.denied",
                f"GET {request.path}",
                "denied",
                tenant,
                audit.details(reason=reason, peer=request.remote or ""),
            )


_NO_STORE = {"Cache-Control": "no-store"}


def _error(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An HTTP error whose JSON body has the same reason as the gRPC API would give."""
    body = json.dumps({"error": reason, "message": message}, separators=(",", ":"))
    kinds: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        429: web.HTTPTooManyRequests,
        503: web.HTTPServiceUnavailable,
    }
    return kinds[status](text=body, content_type="application/json", headers={**_NO_STORE, **(headers or {})})


def _failure(error: RotorError) -> web.HTTPException:
    status = _HTTP_STATUS.get(error.error_reason, 400)
    headers = {"WWW-Authenticate": REALM} if status == 401 else None
    return _error(status, error.error_reason, error.message, headers)
