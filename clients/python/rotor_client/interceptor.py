"""VerifyingInterceptor: a grpc.aio server interceptor that admits only valid Rotor tokens.

    server = grpc.aio.server(interceptors=[VerifyingInterceptor(verifier)])

    async def Charge(self, request, context):
        claims = current_claims()            # the caller's verified token
        ...

A call without a valid `authorization: Bearer <token>` ends with
UNAUTHENTICATED (a token lacking a required scope with PERMISSION_DENIED, a
stale key set with UNAVAILABLE) and a `google.rpc.ErrorInfo` naming the reason.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio

from rotor_client.errors import InsufficientScope, InvalidTokenError, KeySetStale, RotorClientError
from rotor_client.verifier import Claims, Verifier

DOMAIN = "rotor"
_claims: contextvars.ContextVar[Claims] = contextvars.ContextVar("rotor_claims")
# methods every orchestrator probes without credentials
PUBLIC_BY_DEFAULT = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def current_claims() -> Claims:
    """The verified claims of the call being handled (inside a handler behind VerifyingInterceptor)."""
    try:
        return _claims.get()
    except LookupError:
        raise RotorClientError(
            "no verified token for this call: current_claims() works only inside a handler of a "
            "server built with VerifyingInterceptor, for a method that is not public"
        ) from None


def _status_of(error: RotorClientError) -> grpc.StatusCode:
    if isinstance(error, InsufficientScope):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(error, KeySetStale):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.UNAUTHENTICATED


def rejection(error: RotorClientError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """The status code, message and trailing metadata (a google.rpc.Status) for a rejected call."""
    code = _status_of(error)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(error), details=[detail])
    return code, str(error), (("grpc-status-details-bin", status.SerializeToString()),)


class VerifyingInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Verifies each call's bearer token before its handler runs.

    `method_scopes` maps full method names ("/pkg.Service/Method") to the
    scopes a call to them needs, on top of the verifier's required_scopes;
    `public_methods` need no token (by default the gRPC health service).
    """

    def __init__(
        self,
        verifier: Verifier,
        *,
        method_scopes: Mapping[str, Iterable[str]] | None = None,
        public_methods: Collection[str] = PUBLIC_BY_DEFAULT,
    ) -> None:
        self._verifier = verifier
        self._method_scopes = {m: tuple(s) for m, s in (method_scopes or {}).items()}
        self._public = frozenset(public_methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)  # a grpc.RpcMethodHandler namedtuple
        method: str = handler_call_details.method
        if handler is None or method in self._public:
            return handler
        scopes = self._method_scopes.get(method, ())
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap(handler.unary_unary, scopes))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._wrap(handler.stream_unary, scopes))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._wrap(handler.unary_stream, scopes))
        return handler._replace(stream_stream=self._wrap(handler.stream_stream, scopes))

    def _claims_for(self, context: aio.ServicerContext[Any, Any], scopes: tuple[str, ...]) -> Claims:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                token = value
        scheme, _, credential = token.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise InvalidTokenError(
                "the call carries no bearer token: send metadata 'authorization: Bearer <access token>' "
                "(TokenClient.call_credentials() does it)"
            )
        certificates = list(context.auth_context().get("x509_pem_cert") or ())
        peer = certificates[0] if certificates else None
        claims = self._verifier.verify(credential.strip(), peer_certificate=peer)
        if scopes:
            self._verifier.require_scopes(claims, scopes)
        return claims

    def _wrap(self, behavior: Callable[..., Any], scopes: tuple[str, ...]) -> Callable[..., Any]:
        """`behavior`, run only after the call's token verified, with its claims in current_claims()."""
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                claims = await self._admit(context, scopes)
                token = _claims.set(claims)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    with contextlib.suppress(ValueError):  # closed from another context
                        _claims.reset(token)

            return stream

        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            claims = await self._admit(context, scopes)
            token = _claims.set(claims)
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                _claims.reset(token)

        return call

    async def _admit(self, context: aio.ServicerContext[Any, Any], scopes: tuple[str, ...]) -> Claims:
        try:
            return self._claims_for(context, scopes)
        except RotorClientError as e:
            code, message, trailers = rejection(e)
            await context.abort(code, message, trailing_metadata=trailers)
            raise  # abort raises; this line is never reached
