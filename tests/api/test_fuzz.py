"""Fuzzing every rotor.v1 RPC: no request, however odd, gets INTERNAL, UNKNOWN, a bare or long error.

Hypothesis draws each request field of TokenService and KeyAdmin (text of any code
point and length, repeated fields of any size, durations, timestamps and integers at
their extremes, unknown tenants, kids and operation ids next to live ones, fresh and
mangled tokens), and calls it anonymously, as an ordinary client and as either of two
admins; a second family of tests sends random bytes as the request of every method,
and random `authorization` headers. For every answer: the status is never INTERNAL or
UNKNOWN; every error carries a google.rpc.Status with ErrorInfo(domain "rotor", an
UPPER_SNAKE reason) and a message of at most 1024 characters (only a request over gRPC's
4 MiB limit may be refused by gRPC itself, with no Status); the server logs no ERROR and no
traceback; and it still answers health SERVING. State-changing admin calls may succeed.

One server serves the whole module, on an event loop in a thread of its own, called
with the synchronous gRPC API. ROTOR_FUZZ_EXAMPLES sets the examples per test (100).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import rotor_client
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from rotor.app import MAX_MESSAGE, RotorServer
from rotor.config import Config, TenantConfig
from rotor.core.clients import register_client
from rotor.core.fleet import OUTCOMES
from rotor.v1 import key_admin_pb2, keys_pb2, token_service_pb2

from .support import BASE_KEYS, BASE_TOKENS, ISSUER, status_error_info

# Hypothesis caches what it learns under its home directory: keep that out of the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "rotor-hypothesis")
EXAMPLES = int(os.environ.get("ROTOR_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
TENANT = "acme"
MAX_MESSAGE_TEXT = 1024  # characters of an error message; its encoded Status stays under twice as many bytes
UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Target:
    """The module's server, a channel to it, its callers, and what the fuzzing learnt on the way."""

    server: RotorServer
    loop: asyncio.AbstractEventLoop
    channel: grpc.Channel
    credentials: dict[str, tuple[tuple[str, str], ...]]
    operations: list[str] = field(default_factory=list)

    def metadata(self, who: str) -> tuple[tuple[str, str], ...]:
        return self.credentials.get(who, ())

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def serving(self) -> bool:
        health = health_pb2_grpc.HealthStub(self.channel)
        return bool(health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == 1)

    def kids(self) -> list[str]:
        admin = rotor_client.KeyAdminStub(self.channel)
        return [
            k.kid
            for tenant in ("", TENANT)
            for k in admin.ListKeys(
                rotor_client.ListKeysRequest(tenant=tenant, include_expired=True),
                metadata=self.metadata("admin"),
                timeout=30,
            ).keys
        ]

    def grant(self) -> rotor_client.TokenResponse:
        """A fresh grant of svc (waiting out its Issue rate limit, should the fuzzing reach it)."""
        tokens = rotor_client.TokenServiceStub(self.channel)
        for _ in range(100):
            try:
                response: rotor_client.TokenResponse = tokens.Issue(
                    rotor_client.IssueRequest(), metadata=self.metadata("svc"), timeout=30
                )
                return response
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                time.sleep(0.05)
        raise AssertionError("svc stayed rate limited for 5 s")


CLIENTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("svc", "svc-fuzz", {}),
    ("admin", "ops-fuzz", {"admin": True}),
    ("approver", "ops-approver", {"admin": True}),
    ("tenant", "acme-fuzz", {"tenant": TENANT}),
)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    config = Config(
        listen="127.0.0.1:0",
        data_dir=str(tmp_path_factory.mktemp("fuzz") / "data"),
        issuer=ISSUER,
        keys=replace(BASE_KEYS, require_approval=True),
        tokens=BASE_TOKENS,
        tenants={TENANT: TenantConfig()},
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-rotor", daemon=True)
    thread.start()
    server = RotorServer(config, heartbeat_interval=0.2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("ROTOR_KEK", raising=False)
            asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            target = Target(server, loop, channel, {})
            for who, name, options in CLIENTS:
                registration = target.run(
                    register_client(
                        server.store,
                        server.clock,
                        name,
                        scopes=("orders.read",),
                        audiences=("api",),
                        **options,
                    )
                )
                target.credentials[who] = rotor_client.basic_auth(name, registration.secret)
            yield target
            target.run(server.stop(1.0))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


# -- outcomes ------------------------------------------------------------------------------------


def status_of(err: grpc.RpcError) -> status_pb2.Status | None:
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


def assert_well_formed(outcome: bytes | grpc.RpcError, request_size: int, what: str) -> None:
    """A response, or an error as the contract describes every error."""
    if not isinstance(outcome, grpc.RpcError):
        return
    code, message = outcome.code(), outcome.details() or ""
    where = f"{what}: {code.name} {message[:200]!r}"
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), where
    assert message, f"{where}: an error with no message"
    assert len(message) <= MAX_MESSAGE_TEXT, f"{where}: a message of {len(message)} characters"
    status = status_of(outcome)
    if status is None:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and request_size > MAX_MESSAGE, (
            f"{where}: no google.rpc.Status"
        )
        return
    assert status.code == code.value[0] and status.message == message, f"{where}: {status}"
    assert status.ByteSize() <= 2 * MAX_MESSAGE_TEXT, f"{where}: a Status of {status.ByteSize()} bytes"
    info = status_error_info(status)
    assert info is not None, f"{where}: no ErrorInfo"
    assert info.domain == "rotor" and UPPER_SNAKE.fullmatch(info.reason), f"{where}: {info}"


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Callable[[], None]:
    """A check that the server logged no ERROR and no traceback since the last check."""
    caplog.set_level(logging.WARNING)

    def check() -> None:
        loud = [
            r
            for r in caplog.records
            if r.name.startswith(("rotor", "grpc", "asyncio")) and (r.levelno >= logging.ERROR or r.exc_info)
        ]
        assert not loud, "\n".join(f"{r.name} {r.levelname}: {r.getMessage()[:300]}" for r in loud)
        caplog.clear()

    return check


def call(
    target: Target,
    path: str,
    request: bytes,
    who: str,
    streaming: bool,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes | grpc.RpcError:
    """One call with raw bytes as the request; a stream's first message or its error."""
    metadata = (*target.metadata(who), *extra)
    if streaming:
        stream = target.channel.unary_stream(path)(request, metadata=metadata, timeout=30)
        try:
            return bytes(next(stream))
        except grpc.RpcError as err:
            return err
        finally:
            stream.cancel()
    try:
        return bytes(target.channel.unary_unary(path)(request, metadata=metadata, timeout=30))
    except grpc.RpcError as err:
        return err


def settle(
    target: Target, quiet: Callable[[], None], outcome: bytes | grpc.RpcError, size: int, what: str
) -> None:
    assert_well_formed(outcome, size, what)
    quiet()
    assert target.serving(), f"health is not SERVING after {what}"


# -- field strategies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    """A value only the running server knows (a kid, a fresh token), picked when the call is made."""

    kind: str
    pick: int = 0

    def resolve(self, target: Target) -> str:
        match self.kind:
            case "kid":
                kids = target.kids()
                return kids[self.pick % len(kids)]
            case "operation":
                if not target.operations:
                    return "no-operation-yet"
                return target.operations[self.pick % len(target.operations)]
            case "access_token" | "refresh_token":
                token: str = getattr(target.grant(), self.kind)
                return token
            case "mangled_access_token" | "mangled_refresh_token":
                token = getattr(target.grant(), self.kind.removeprefix("mangled_"))
                at = self.pick % len(token)
                return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]
            case _:
                raise AssertionError(self.kind)


ODD_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",
    "\u200f",
    "\ufeff",
    "\U0010ffff",
    "\n",
    "\\",
    "../../etc/passwd",
    "' OR 1=1 --",
    "%",
    "_",
    "*",
    "null",
    "{}",
    "-1",
    "18446744073709551616",
    "api",
    "orders.read",
    "orders.read orders.write",
    TENANT,
    "svc-fuzz",
    "ops-fuzz",
    "ops-approver",
    "acme-fuzz",
    "🔑",
]
LENGTHS = [255, 256, 257, 1024, 1025, 16 * 1024, 16 * 1024 + 1, 100_000]
INT64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-1000, 1000),
    st.sampled_from([2**63 - 1, -(2**63), 315_576_000_000, 315_576_000_001, -315_576_000_001, 600, 601]),
)
INT32 = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([2**31 - 1, -(2**31), 999_999_999, 1_000_000_000, -999_999_999, -1_000_000_000, 0]),
)
UINT64 = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 64), st.just(2**63))


def text(*live: str) -> st.SearchStrategy[Any]:
    """Any text: live values of the given kinds (drawn first), short arbitrary text, odd values
    on purpose, and long runs."""
    return st.one_of(
        *(st.builds(Live, st.just(kind), st.integers(0, 1000)) for kind in live),
        st.text(max_size=40),
        st.sampled_from(ODD_TEXT),
        st.builds(
            lambda chunk, n: (chunk * n)[:n], st.text(min_size=1, max_size=3), st.sampled_from(LENGTHS)
        ),
    )


def repeated() -> st.SearchStrategy[list[str]]:
    """Lists of any size: a few values of any text, or many copies of one short value."""
    return st.one_of(
        st.lists(text(), max_size=6),
        st.builds(
            lambda value, n: [value] * n,
            st.one_of(st.text(max_size=8), st.sampled_from(ODD_TEXT)),
            st.integers(0, 5000),
        ),
    )


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


DURATION = optional(st.builds(duration_pb2.Duration, seconds=INT64, nanos=INT32))
TIMESTAMP = optional(st.builds(timestamp_pb2.Timestamp, seconds=INT64, nanos=INT32))
TENANTS = st.one_of(st.sampled_from(["", TENANT]), text())


@dataclass(frozen=True)
class Method:
    """One RPC: its path, request type, a strategy for its fields, and whether it streams."""

    service: str
    name: str
    request: type[Message]
    fields: st.SearchStrategy[dict[str, Any]]
    streaming: bool = False
    caller: str = ""  # the caller it is meant for: listed first, so drawn (and shrunk to) most

    @property
    def path(self) -> str:
        return f"/rotor.v1.{self.service}/{self.name}"

    @property
    def callers(self) -> st.SearchStrategy[str]:
        first = self.caller or ("svc" if self.service == "TokenService" else "admin")
        return st.sampled_from([first, *(c for c in CALLERS if c != first)])


def fields(**strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(strategies)


METHODS = [
    Method(
        "TokenService",
        "Issue",
        token_service_pb2.IssueRequest,
        fields(audience=repeated(), scope=repeated(), ttl=DURATION, subject=text()),
    ),
    Method(
        "TokenService",
        "Refresh",
        token_service_pb2.RefreshRequest,
        fields(
            refresh_token=text("refresh_token", "mangled_refresh_token", "access_token"), scope=repeated()
        ),
    ),
    Method(
        "TokenService",
        "Revoke",
        token_service_pb2.RevokeRequest,
        fields(
            token=text("access_token", "refresh_token", "mangled_access_token", "mangled_refresh_token"),
            reason=text(),
        ),
    ),
    Method("TokenService", "GetKeySet", token_service_pb2.GetKeySetRequest, fields(tenant=TENANTS)),
    Method(
        "TokenService",
        "WatchKeyRotations",
        token_service_pb2.WatchKeyRotationsRequest,
        fields(tenant=TENANTS, after_sequence=UINT64),
        streaming=True,
    ),
    Method(
        "TokenService",
        "ReportVerifications",
        token_service_pb2.ReportVerificationsRequest,
        fields(
            tenant=TENANTS,
            watcher=text(),
            sequence=UINT64,
            kids=repeated(),
            counts=st.lists(
                st.builds(
                    keys_pb2.VerificationCount,
                    outcome=st.one_of(st.sampled_from(sorted(OUTCOMES)), text()),
                    kid=text(),
                    count=UINT64,
                ),
                max_size=300,
            ),
        ),
    ),
    Method(
        "KeyAdmin",
        "RotateKeys",
        key_admin_pb2.RotateKeysRequest,
        fields(tenant=TENANTS, reason=text(), immediate=st.booleans()),
    ),
    Method("KeyAdmin", "RevokeKey", key_admin_pb2.RevokeKeyRequest, fields(kid=text("kid"), reason=text())),
    Method(
        "KeyAdmin",
        "ApproveOperation",
        key_admin_pb2.ApproveOperationRequest,
        fields(operation_id=text("operation")),
        caller="approver",
    ),
    Method(
        "KeyAdmin",
        "ListKeys",
        key_admin_pb2.ListKeysRequest,
        fields(tenant=TENANTS, include_expired=st.booleans()),
    ),
    Method(
        "KeyAdmin",
        "ListAuditEvents",
        key_admin_pb2.ListAuditEventsRequest,
        fields(
            tenant=TENANTS,
            page_size=st.one_of(INT32, st.integers(-2, 1002)),
            page_token=st.one_of(text(), st.integers(-(2**64), 2**64).map(str)),
            since=TIMESTAMP,
        ),
    ),
    Method(
        "KeyAdmin",
        "RevokeClientTokens",
        key_admin_pb2.RevokeClientTokensRequest,
        fields(client_id=text(), reason=text()),
    ),
    Method("KeyAdmin", "GetRotationStatus", key_admin_pb2.GetRotationStatusRequest, fields(tenant=TENANTS)),
]
CALLERS = ("svc", "admin", "approver", "tenant", "anonymous")
WATCHER_NAME = optional(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300))


def build(method: Method, drawn: dict[str, Any], target: Target) -> Message:
    values = {
        name: value.resolve(target) if isinstance(value, Live) else value
        for name, value in drawn.items()
        if value is not None
    }
    return method.request(**values)


def learn(target: Target, method: Method, outcome: bytes | grpc.RpcError) -> None:
    """Keep the operation ids RevokeKey hands out, for ApproveOperation to draw."""
    if method.name == "RevokeKey" and isinstance(outcome, bytes):
        operation_id = key_admin_pb2.RevokeKeyResponse.FromString(outcome).operation_id
        if operation_id:
            target.operations.append(operation_id)


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
@FUZZ
@given(data=st.data())
def test_any_request_fields_get_a_well_formed_answer(
    target: Target, quiet: Callable[[], None], method: Method, data: st.DataObject
) -> None:
    who = data.draw(method.callers, label="caller")
    request = build(method, data.draw(method.fields, label="fields"), target)
    blob = request.SerializeToString()
    watcher = data.draw(WATCHER_NAME, label="x-rotor-watcher") if method.streaming else None
    extra = (("x-rotor-watcher", watcher),) if watcher is not None else ()
    outcome = call(target, method.path, blob, who, method.streaming, extra)
    learn(target, method, outcome)
    settle(target, quiet, outcome, len(blob), f"{method.name} as {who}")


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def wire_records(draw: st.DrawFn) -> bytes:
    """Bytes shaped like protobuf records, with any field number, wire type and (lying) length."""
    records = []
    for _ in range(draw(st.integers(0, 6))):
        number, wire_type = draw(st.integers(0, 2**29)), draw(st.integers(0, 7))
        payload = draw(st.binary(max_size=32))
        match wire_type:
            case 0:
                body = varint(draw(st.integers(0, 2**64 - 1)))
            case 2:
                body = varint(draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32)))) + payload
            case _:
                body = payload[: {1: 8, 5: 4}.get(wire_type, len(payload))]
        records.append(varint(number << 3 | wire_type) + body)
    return b"".join(records)


RAW = st.one_of(st.binary(max_size=256), wire_records())


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
@FUZZ
@given(blob=RAW, who=st.sampled_from(CALLERS))
@example(blob=b"\x0a" * (1 << 20), who="admin")
@example(blob=b"\x00" * (MAX_MESSAGE + 1), who="svc")
def test_random_bytes_as_the_request_get_a_well_formed_answer(
    target: Target, quiet: Callable[[], None], method: Method, blob: bytes, who: str
) -> None:
    outcome = call(target, method.path, blob, who, method.streaming)
    learn(target, method, outcome)
    settle(target, quiet, outcome, len(blob), f"{method.name} ({len(blob)} random bytes) as {who}")


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
AUTHORIZATION = st.one_of(
    st.text(PRINTABLE, max_size=100),
    st.text(PRINTABLE, max_size=100).map(lambda rest: "Basic " + rest),
    st.binary(max_size=200).map(lambda raw: "Basic " + base64.b64encode(raw).decode()),
    st.tuples(st.sampled_from(["svc-fuzz", "ops-fuzz", "nobody", ""]), st.text(max_size=50)).map(
        lambda pair: "Basic " + base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()
    ),
    st.integers(1025, 3000).map(lambda n: "Basic " + "A" * n),
)


@FUZZ
@given(
    header=AUTHORIZATION,
    method=st.sampled_from([m for m in METHODS if m.name in ("Issue", "ListKeys", "WatchKeyRotations")]),
)
def test_any_authorization_header_gets_a_well_formed_answer(
    target: Target, quiet: Callable[[], None], header: str, method: Method
) -> None:
    blob = method.request().SerializeToString()
    outcome = call(target, method.path, blob, "anonymous", method.streaming, (("authorization", header),))
    settle(target, quiet, outcome, len(blob), f"{method.name} with authorization {header[:80]!r}")


@pytest.mark.parametrize("method", ["RevokeKey", "ApproveOperation"])
def test_an_unknown_kid_or_operation_id_is_quoted_by_a_short_prefix(target: Target, method: str) -> None:
    name = "\U00010080" * 256  # the longest identifier accepted, of characters four UTF-8 bytes long
    request = (
        key_admin_pb2.RevokeKeyRequest(kid=name)
        if method == "RevokeKey"
        else key_admin_pb2.ApproveOperationRequest(operation_id=name)
    )
    outcome = call(target, f"/rotor.v1.KeyAdmin/{method}", request.SerializeToString(), "admin", False)
    assert isinstance(outcome, grpc.RpcError) and outcome.code() == grpc.StatusCode.NOT_FOUND, outcome
    message = outcome.details() or ""
    assert name[:64] not in message, f"the message quotes {message.count(name[0])} characters of the input"
    assert len(message.encode()) <= MAX_MESSAGE_TEXT
