"""Method handlers: request decoding that never fails loudly, and error mapping.

Requests are decoded by us, not by gRPC, so an undecodable message becomes
INVALID_ARGUMENT with a reason instead of a logged traceback. Responses may be
messages or pre-encoded bytes (event fan-out and the key set encode once).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc import aio

from rotor.api.errors import abort, abort_internal, abort_with, failure
from rotor.core.errors import InvalidRequest, RotorError
from rotor.logs import new_request_id, request_id
from rotor.metrics import Metrics, caller
from rotor.store import StoreError

M = TypeVar("M", bound=Message)
Context = aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands in for a request whose bytes are not a valid message."""

    type_name: str
    error: str


def decoder(cls: type[M]) -> Callable[[bytes], M | Undecodable]:
    def decode(data: bytes) -> M | Undecodable:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as e:
            return Undecodable(cls.DESCRIPTOR.full_name, str(e)[:120])

    return decode


def encode(response: Message | bytes) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def _check_decoded(request: object) -> None:
    if isinstance(request, Undecodable):
        raise InvalidRequest(
            f"the request is not a valid {request.type_name} message ({request.error}); "
            "strings must be UTF-8 and fields must match the proto",
            "MALFORMED_REQUEST",
        )


async def _fail(context: Context, error: BaseException, method: str) -> None:
    match error:
        case RotorError():
            await abort_with(context, error)
        case StoreError():
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the token store is unavailable; retry with backoff",
                "STORE_UNAVAILABLE",
            )
        case _:
            await abort_internal(context, method)


Unary = Callable[[Any, Any, Context], Awaitable[Any]]
BoundUnary = Callable[[Any, Context], Awaitable[Any]]
BoundStreaming = Callable[[Any, Context], Awaitable[None]]


def unary(method: Unary) -> Unary:
    """Map every failure of a unary handler to a status with ErrorInfo."""

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: Context) -> Any:
        try:
            _check_decoded(request)
            return await method(self, request, context)
        except (asyncio.CancelledError, aio.AbortError):
            raise
        except Exception as error:
            await _fail(context, error, method.__qualname__)

    return handler


def _counted_unary(method: str, fn: BoundUnary, metrics: Metrics) -> BoundUnary:
    """`fn`, with its latency, outcome and caller recorded."""

    async def call(request: Any, context: Context) -> Any:
        outcome, who = failure.set(("OK", "")), caller.set("")
        rid = request_id.set(new_request_id(context.invocation_metadata()))
        start = time.perf_counter()
        try:
            return await fn(request, context)
        finally:
            code, reason = failure.get()
            if code == "OK" and context.cancelled():
                code = "CANCELLED"
            metrics.observe(method, code, time.perf_counter() - start, reason)
            failure.reset(outcome)
            caller.reset(who)
            request_id.reset(rid)

    return call


def _stream(method: str, fn: BoundStreaming, metrics: Metrics | None) -> BoundStreaming:
    """`fn`, a server-streaming handler that writes its own messages, with every failure mapped to
    a status with ErrorInfo and (given metrics) counted among the open streams with its outcome
    recorded. One wrapper, so one frame: a server holds thousands of streams for hours."""

    async def call(request: Any, context: Context) -> None:
        if metrics is not None:
            # `failure` and `caller` start at their defaults in the call's own task: setting them
            # here would only grow the context every open stream keeps
            request_id.set(new_request_id(context.invocation_metadata()))
            metrics.watchers.inc()
        try:
            _check_decoded(request)
            await fn(request, context)
        except (asyncio.CancelledError, aio.AbortError):
            raise
        except Exception as error:
            await _fail(context, error, fn.__qualname__)
        finally:
            if metrics is not None:
                metrics.watchers.dec()
                code, reason = failure.get()
                metrics.observe(method, code, None, reason)

    return call


def service(
    name: str,
    unaries: dict[str, tuple[BoundUnary, type[Message]]],
    streams: dict[str, tuple[BoundStreaming, type[Message]]],
    metrics: Metrics | None = None,
) -> grpc.GenericRpcHandler[Any, Any]:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method, (fn, request_type) in unaries.items():
        handlers[method] = grpc.unary_unary_rpc_method_handler(
            fn if metrics is None else _counted_unary(method, fn, metrics),
            request_deserializer=decoder(request_type),
            response_serializer=encode,
        )
    for method, (stream_fn, request_type) in streams.items():
        handlers[method] = grpc.unary_stream_rpc_method_handler(
            _stream(method, stream_fn, metrics),
            request_deserializer=decoder(request_type),
            response_serializer=encode,
        )
    return grpc.method_handlers_generic_handler(name, handlers)
