"""OAuth 2.0 on the HTTP side port: the door for curl, stock OAuth libraries and API gateways.

    POST /oauth2/token        RFC 6749 client_credentials and refresh_token grants
    POST /oauth2/revoke       RFC 7009
    POST /oauth2/introspect   RFC 7662

Requests are `application/x-www-form-urlencoded`. The client authenticates with
client_secret_basic (RFC 6749 §2.3.1: `Authorization: Basic`, id and secret
form-urlencoded first), client_secret_post (`client_id` and `client_secret`
in the body), or, over mTLS, tls_client_auth (RFC 8705: its certificate,
registered with `--cert-san`); a client certificate binds the access token
(`cnf.x5t#S256`) whichever way the client authenticated.

This module only parses, authenticates and maps errors in OAuth's terms: the
calls go through the same CallerAuth (failed-sign-in backoff), TokenCalls
(call-rate limits) and core TokenService (rules, audit, events) as the gRPC
servicers, and are counted in the same metrics under the same method names.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from multidict import MultiDictProxy

from rotor.api.auth import CallerAuth, parse_basic, unregistered_certificate
from rotor.api.calls import TokenCalls
from rotor.api.errors import STATUS_OF, oauth_error_of
from rotor.api.limits import address_of_ip
from rotor.clock import Clock
from rotor.core.errors import InvalidClient, InvalidRequest, RotorError, TooManyRequests, quote
from rotor.core.model import Client
from rotor.core.tokens import Introspection, IssuedTokens
from rotor.logs import new_request_id, request_id
from rotor.metrics import Metrics, caller
from rotor.store import StoreError
from rotor.tls import PeerCertificate, peer_certificate_der

log = logging.getLogger("rotor.oauth")

TOKEN_PATH = "/oauth2/token"
REVOKE_PATH = "/oauth2/revoke"
INTROSPECT_PATH = "/oauth2/introspect"
FORM = "application/x-www-form-urlencoded"
MAX_FORM = 64 * 1024  # far above any real request: a token is at most 16 KiB
# parameters RFC 6749 §3.2 allows once only (audience and resource may repeat: RFC 8707)
SINGLE = ("grant_type", "scope", "refresh_token", "client_id", "client_secret", "token", "subject")

_HOW = (
    "authenticate with `Authorization: Basic base64(client_id:client_secret)` (client_secret_basic), "
    "or client_id and client_secret in the form body (client_secret_post)"
)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
BASIC_CHALLENGE = 'Basic realm="rotor", charset="UTF-8"'

Handler = Callable[[web.Request, "_Call"], Awaitable[web.Response]]


class _Call:
    """One request's form, the way its client authenticated, and what it comes from."""

    def __init__(self, form: MultiDictProxy[str], address: str, certificate: PeerCertificate | None) -> None:
        self.form, self.address, self.certificate = form, address, certificate
        self.used_basic = False
        self.method = ""  # the gRPC method this call counts as in the metrics

    def one(self, name: str) -> str:
        """A parameter sent at most once; "" when absent."""
        values = self.form.getall(name, [])
        if len(values) > 1:
            raise InvalidRequest(f"{name} was sent {len(values)} times; send it once", "INVALID_VALUE", name)
        return values[0] if values else ""


class OAuthEndpoints:
    """The three endpoints, and what discovery says of them."""

    def __init__(
        self, auth: CallerAuth, calls: TokenCalls, clock: Clock, metrics: Metrics, *, mtls: bool
    ) -> None:
        self._auth, self._calls, self._clock, self._metrics = auth, calls, clock, metrics
        methods = ["client_secret_basic", "client_secret_post", *(["tls_client_auth"] * mtls)]
        grants = ["client_credentials", *(["refresh_token"] * calls.refresh_tokens)]
        self._metadata: dict[str, Any] = {
            "grant_types_supported": grants,
            "token_endpoint_auth_methods_supported": methods,
            "revocation_endpoint_auth_methods_supported": methods,
            "introspection_endpoint_auth_methods_supported": methods,
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(TOKEN_PATH, self._endpoint(self._token, "Issue"))
        router.add_post(REVOKE_PATH, self._endpoint(self._revoke, "Revoke"))
        router.add_post(INTROSPECT_PATH, self._endpoint(self._introspect, "Introspect"))

    def metadata(self, base: str) -> dict[str, Any]:
        """The endpoints' part of the discovery documents (RFC 8414), for a server at `base`."""
        return {
            "token_endpoint": base + TOKEN_PATH,
            "revocation_endpoint": base + REVOKE_PATH,
            "introspection_endpoint": base + INTROSPECT_PATH,
            **self._metadata,
        }

    # -- the endpoints -----------------------------------------------------------

    async def _token(self, request: web.Request, call: _Call) -> web.Response:
        grant_type = call.one("grant_type")
        if grant_type == "client_credentials":
            client = await self._client(request, call)
            issued = await self._calls.issue(
                client,
                call.address,
                audiences=(*call.form.getall("audience", []), *call.form.getall("resource", [])),
                scopes=_scopes(call.one("scope")),
                ttl=None,
                subject=call.one("subject"),
                bound_to=call.certificate.thumbprint if call.certificate else None,
            )
        elif grant_type == "refresh_token":
            call.method = "Refresh"
            client = await self._client(request, call)
            refresh_token = call.one("refresh_token")
            if not refresh_token:
                raise InvalidRequest(
                    "refresh_token is required with grant_type=refresh_token",
                    "FIELD_REQUIRED",
                    "refresh_token",
                )
            issued = await self._calls.refresh(
                client,
                call.address,
                refresh_token=refresh_token,
                scopes=_scopes(call.one("scope")),
                bound_to=call.certificate.thumbprint if call.certificate else None,
            )
        elif not grant_type:
            raise InvalidRequest(
                "grant_type is required: client_credentials, or refresh_token", "FIELD_REQUIRED", "grant_type"
            )
        else:
            raise InvalidRequest(
                f"grant_type {quote(grant_type)} is not supported; use client_credentials or refresh_token",
                "UNSUPPORTED_GRANT_TYPE",
                "grant_type",
            )
        return _json(self._token_body(issued), 200)

    def _token_body(self, issued: IssuedTokens) -> dict[str, Any]:
        """The RFC 6749 §5.1 response."""
        now = int(self._clock.now())
        body: dict[str, Any] = {
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "expires_in": max(issued.expires_at - now, 0),
        }
        if issued.refresh_token:
            body["refresh_token"] = issued.refresh_token
            if issued.refresh_expires_at is not None:
                body["refresh_expires_in"] = max(int(issued.refresh_expires_at) - now, 0)
        if issued.scopes:  # none granted: no scope member, as RFC 6749 §5.1 allows
            body["scope"] = " ".join(issued.scopes)
        return body

    async def _revoke(self, request: web.Request, call: _Call) -> web.Response:
        client = await self._client(request, call)
        token = call.one("token")
        if not token:
            raise InvalidRequest("token is required: the token to revoke", "FIELD_REQUIRED", "token")
        # token_type_hint is only a hint (RFC 7009 §2.1): both kinds are told apart by their form
        await self._calls.revoke(
            client, call.address, token=token, reason=call.one("reason") or "revoked over HTTP"
        )
        return web.Response(status=200, headers=NO_STORE)  # also for a token unknown or expired (§2.2)

    async def _introspect(self, request: web.Request, call: _Call) -> web.Response:
        client = await self._client(request, call)
        token = call.one("token")
        if not token:
            raise InvalidRequest("token is required: the token to introspect", "FIELD_REQUIRED", "token")
        return _json(_introspection(await self._calls.introspect(client, call.address, token=token)), 200)

    # -- authentication ------------------------------------------------------------

    async def _client(self, request: web.Request, call: _Call) -> Client:
        """The authenticated client, by exactly one of the methods discovery lists."""
        header = request.headers.get("Authorization")
        form_id, form_secret = call.one("client_id"), call.one("client_secret")
        credentials: tuple[str, str] | None = None
        if header is not None:
            call.used_basic = True
            if form_secret:
                raise InvalidRequest(
                    "the client authenticated twice (Authorization header and client_secret); use one method",
                    "INVALID_VALUE",
                    "client_secret",
                )
            client_id, secret = parse_basic(header, _HOW)
            credentials = (_form_decoded(client_id), _form_decoded(secret))
            if form_id and form_id != credentials[0]:
                raise InvalidRequest(
                    "client_id in the body names another client than the Authorization header",
                    "INVALID_VALUE",
                    "client_id",
                )
        elif form_secret:
            if not form_id:
                raise InvalidClient(f"client_secret was sent without client_id; {_HOW}")
            credentials = (form_id, form_secret)
        client = await self._auth.identify(credentials, call.address, call.certificate)
        if client is None:
            if call.certificate is not None:
                raise unregistered_certificate(call.certificate)
            raise InvalidClient(f"this endpoint needs client authentication; {_HOW}")
        if form_id and form_id != client.client_id:
            raise InvalidRequest(
                f"client_id {quote(form_id)} is not the client the certificate or credentials belong to",
                "INVALID_VALUE",
                "client_id",
            )
        return client

    # -- every request -------------------------------------------------------------

    def _endpoint(
        self, handler: Handler, method: str = ""
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """`handler` with the form read, errors mapped to RFC 6749 §5.2, and the call counted."""

        async def endpoint(request: web.Request) -> web.Response:
            start = time.perf_counter()
            who = caller.set("")
            rid = request_id.set(new_request_id((("x-request-id", request.headers.get("X-Request-Id")),)))
            call: _Call | None = None
            code, reason = "OK", ""
            try:
                call = await self._read(request)
                call.method = method
                return await handler(request, call)
            except RotorError as error:
                code, reason = STATUS_OF[type(error)].name, error.error_reason
                return self._error(error, call)
            except StoreError:
                code, reason = "UNAVAILABLE", "STORE_UNAVAILABLE"
                return _oauth_error(
                    503,
                    "temporarily_unavailable",
                    "the token store is unavailable; retry with backoff",
                    reason,
                    {"Retry-After": "1"},
                )
            except web.HTTPException:  # aiohttp's own refusals: a body over its size limit
                code, reason = "INVALID_ARGUMENT", "MALFORMED_REQUEST"
                raise
            except Exception:
                incident = uuid.uuid4().hex[:12]
                log.exception("unexpected error in %s (incident %s)", request.path, incident)
                code, reason = "INTERNAL", "INTERNAL"
                return _oauth_error(
                    500,
                    "server_error",
                    f"internal error (incident {incident}); the server log has the details",
                )
            finally:
                # a token request too malformed to name its grant counts as Issue
                name = call.method if call is not None else method
                self._metrics.observe(name, code, time.perf_counter() - start, reason)
                caller.reset(who)
                request_id.reset(rid)

        return endpoint

    async def _read(self, request: web.Request) -> _Call:
        if request.content_type != FORM:
            raise InvalidRequest(
                f"the body must be {FORM} (RFC 6749 §4.4), not {quote(request.content_type)}",
                "MALFORMED_REQUEST",
            )
        if request.content_length is not None and request.content_length > MAX_FORM:
            raise InvalidRequest(f"the body is over {MAX_FORM} bytes", "MALFORMED_REQUEST")
        try:
            form = await request.post()
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest("the body is not form-urlencoded UTF-8 text", "MALFORMED_REQUEST") from None
        for name, value in form.items():
            if not isinstance(value, str):
                raise InvalidRequest(f"{quote(name)} must be a form field, not a file", "MALFORMED_REQUEST")
        strings: MultiDictProxy[str] = form  # type: ignore[assignment]  # checked above
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return _Call(strings, address_of_ip(request.remote or ""), peer_certificate_der(der))

    def _error(self, error: RotorError, call: _Call | None) -> web.Response:
        status, code = oauth_error_of(error)
        headers: dict[str, str] = {}
        if code == "invalid_client" and (call is None or call.used_basic or not _sent_secret(call)):
            headers["WWW-Authenticate"] = BASIC_CHALLENGE
        if isinstance(error, TooManyRequests) or status == 503:
            wait = error.retry_after if isinstance(error, TooManyRequests) else None
            headers["Retry-After"] = str(max(1, math.ceil(wait)) if wait is not None else 1)
        return _oauth_error(status, code, error.message, error.error_reason, headers)


def _sent_secret(call: _Call) -> bool:
    return bool(call.form.getall("client_secret", []))


def _scopes(value: str) -> tuple[str, ...]:
    """RFC 6749 §3.3: space-delimited scope tokens."""
    return tuple(value.split())


def _form_decoded(value: str) -> str:
    """RFC 6749 §2.3.1 form-urlencodes id and secret inside Basic; most clients send them plain,
    and neither a client id nor a secret of ours holds '%', so decode only when one is there."""
    return unquote(value.replace("+", " ")) if "%" in value else value


def _introspection(found: Introspection | None) -> dict[str, Any]:
    """The RFC 7662 §2.2 response."""
    if found is None:
        return {"active": False}
    body: dict[str, Any] = {
        "active": True,
        "token_type": found.token_type,
        "client_id": found.client_id,
        "sub": found.subject,
        "aud": found.audiences[0] if len(found.audiences) == 1 else list(found.audiences),
        "iss": found.issuer,
        "exp": int(found.expires_at),
        "iat": int(found.issued_at),
    }
    if found.scopes:
        body["scope"] = " ".join(found.scopes)
    if found.not_before is not None:
        body["nbf"] = int(found.not_before)
    if found.jti:
        body["jti"] = found.jti
    if found.bound_to:
        body["cnf"] = {"x5t#S256": found.bound_to}  # RFC 8705 §3.2
    return body


def _oauth_error(
    status: int, error: str, description: str, reason: str = "", headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": error, "error_description": description}
    if reason:
        body["error_reason"] = reason  # the gRPC API's ErrorInfo reason: branch on this
    return _json(body, status, headers)


def _json(document: object, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(document, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )
