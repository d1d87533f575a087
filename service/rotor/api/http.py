"""The HTTP side port (`http_listen`): for gateways, meshes and Prometheus, which speak HTTP, not gRPC.

    GET /.well-known/jwks.json[?tenant=T]     the key set GetKeySet returns, as a JWK Set
    GET /.well-known/openid-configuration     issuer, jwks_uri, algorithms, the OAuth 2.0 endpoints
    GET /.well-known/oauth-authorization-server   the same document (RFC 8414)
    POST /oauth2/token, /oauth2/revoke, /oauth2/introspect   OAuth 2.0 (rotor.api.oauth)
    GET /metrics                              Prometheus text format
    GET /healthz                              the process answers
    GET /readyz                               it can sign: every tenant has an active key, the HSM answers
    GET /status, /status.json, /status/events the live status page (rotor.api.status_page)

The JWKS carries `Cache-Control: max-age` no longer than `max_cache_age`
(publish_lead >= max_cache_age, so a cache that honours it has every key
before the key signs) and a strong `ETag` for conditional requests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from rotor.api.oauth import OAuthEndpoints
from rotor.api.status_page import StatusPages
from rotor.core import validation
from rotor.core.errors import RotorError
from rotor.core.keys import KeyManager
from rotor.metrics import Metrics
from rotor.store import StoreError
from rotor.v1 import keys_pb2

log = logging.getLogger("rotor.http")

JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"
AS_METADATA_PATH = "/.well-known/oauth-authorization-server"


class KeySetSource:
    """The encoded KeySet per tenant (shared with GetKeySet's cache) and its JWKS body and ETag."""

    def __init__(self, encoded: Callable[[str], Awaitable[bytes]]) -> None:
        self._encoded = encoded
        self._bodies: dict[bytes, tuple[bytes, str, list[str]]] = {}

    async def jwks(self, tenant: str) -> tuple[bytes, str, list[str]]:
        """(JWKS body, ETag, algorithms in it) for the tenant's current key set."""
        encoded = await self._encoded(tenant)
        cached = self._bodies.get(encoded)
        if cached is None:
            keyset = keys_pb2.KeySet.FromString(encoded)
            body = keyset.jwks_json.encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            algorithms = sorted({k.alg for k in keyset.keys})
            cached = self._bodies[encoded] = (body, etag, algorithms)
            if len(self._bodies) > 64:  # old key sets
                self._bodies = {encoded: cached}
        return cached


class HttpSide:
    """The aiohttp application and its listener."""

    def __init__(
        self,
        *,
        issuer: str,
        algorithm: str,
        max_cache_age: float,
        keys: KeyManager,
        keysets: KeySetSource,
        metrics: Metrics,
        ready: Callable[[], bool],
        mtls: bool = False,
        reuse_port: bool = False,
        oauth: OAuthEndpoints | None = None,
        status: StatusPages | None = None,
    ) -> None:
        self._mtls, self._reuse_port = mtls, reuse_port
        self._issuer, self._algorithm, self._max_age = issuer, algorithm, int(max_cache_age)
        self._keys, self._keysets, self._metrics, self._ready = keys, keysets, metrics, ready
        self._runner: web.AppRunner | None = None
        self.port = 0
        app = web.Application(middlewares=[self._errors])
        app.router.add_get(JWKS_PATH, self.jwks)
        app.router.add_get(DISCOVERY_PATH, self.discovery)
        app.router.add_get(AS_METADATA_PATH, self.discovery)
        self._oauth = oauth
        if oauth is not None:
            oauth.add_routes(app.router)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        if status is not None:
            status.add_routes(app)
        self.app = app

    async def start(self, listen: str, ssl_context: ssl.SSLContext | None = None) -> int:
        host, _, port = listen.rpartition(":")
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            host.strip("[]"),
            int(port),
            ssl_context=ssl_context,
            reuse_port=self._reuse_port or None,
        )
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise OSError(f"cannot listen on {listen} (http_listen): {e.strerror or e}") from None
        sockets = self._runner.addresses
        self.port = int(sockets[0][1]) if sockets else int(port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[..., object]) -> web.StreamResponse:
        """Errors as JSON with the same reasons as the gRPC API."""
        try:
            response: web.StreamResponse = await handler(request)  # type: ignore[misc]
            return response
        except RotorError as e:
            status = 404 if e.error_reason == "TENANT_NOT_FOUND" else 400
            return _json({"error": e.error_reason, "message": e.message}, status)
        except StoreError:
            return _json(
                {"error": "STORE_UNAVAILABLE", "message": "the token store is unavailable; retry"}, 503
            )

    async def jwks(self, request: web.Request) -> web.Response:
        tenant = self._keys.check_tenant(validation.identifier(request.query.get("tenant", ""), "tenant"))
        body, etag, _ = await self._keysets.jwks(tenant)
        headers = {"Cache-Control": f"public, max-age={self._max_age}", "ETag": etag}
        if etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type="application/jwk-set+json", headers=headers)

    async def discovery(self, request: web.Request) -> web.Response:
        _, _, algorithms = await self._keysets.jwks("")
        signing = sorted({self._algorithm, *algorithms})
        base = f"{request.scheme}://{request.host}"
        document = {
            "issuer": self._issuer,
            "jwks_uri": f"{base}{JWKS_PATH}",
            "grant_types_supported": ["client_credentials", "refresh_token"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                *(["tls_client_auth"] * self._mtls),
            ],
            "id_token_signing_alg_values_supported": signing,
            "access_token_signing_alg_values_supported": signing,
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "tls_client_certificate_bound_access_tokens": self._mtls,
        }
        if self._oauth is not None:
            document |= self._oauth.metadata(base)
        return _json(document, 200, {"Cache-Control": f"public, max-age={self._max_age}"})

    async def metrics(self, request: web.Request) -> web.Response:
        body = self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"}, 200)

    async def readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return _json({"status": "ready"}, 200)
        return _json(
            {
                "status": "not ready",
                "message": "no active signing key yet, the key store (HSM) cannot sign, or shutting down",
            },
            503,
        )


def _json(document: object, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(document, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")} if header else set()
