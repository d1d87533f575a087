"""SIGTERM: calls in flight finish, open streams end with UNAVAILABLE, exit code 0."""

from __future__ import annotations

import time

import grpc
import rotor_client
from rotor.v1 import keys_pb2

from .conftest import MakeServer
from .support import basic, error_info


def test_sigterm_finishes_calls_in_flight_ends_streams_and_exits_0(make_server: MakeServer) -> None:
    server = make_server()
    # Never authenticated yet: each client's first calls wait for a scrypt check of its secret
    # (concurrent calls of one client share one; two run at a time), so the burst takes a while
    # to serve and many calls are in flight when the signal comes.
    clients = [server.add_client(f"svc-{i}", "--audience", "api") for i in range(8)]
    tokens = server.tokens()
    stream = tokens.WatchKeyRotations(rotor_client.WatchKeyRotationsRequest(), timeout=60)
    assert next(stream).type == keys_pb2.KEY_EVENT_TYPE_SNAPSHOT

    calls = [
        tokens.Issue.future(rotor_client.IssueRequest(), metadata=basic(client), timeout=30)
        for _ in range(5)
        for client in clients
    ]
    deadline = time.monotonic() + 30
    while not any(c.done() for c in calls):
        assert time.monotonic() < deadline, "no call finished within 30 s"
        time.sleep(0.005)
    answered_before = sum(c.done() for c in calls)
    assert answered_before < len(calls), "every call was answered before the signal: nothing to prove"

    signalled = time.monotonic()
    assert server.terminate(timeout=30) == 0, server.log()
    assert time.monotonic() - signalled < 15, "the graceful stop took longer than its grace"

    codes = [c.exception().code() if c.exception() else grpc.StatusCode.OK for c in calls]  # type: ignore[union-attr]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert codes.count(grpc.StatusCode.OK) > answered_before, (
        f"only the {answered_before} calls answered before SIGTERM succeeded: calls in flight were dropped"
    )

    try:
        for event in stream:
            assert event.type == keys_pb2.KEY_EVENT_TYPE_HEARTBEAT, event
        raise AssertionError("the stream ended with OK")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, f"{e.code()}: {e.details()}"
        info = error_info(e)
        assert info is not None and info.reason == "SHUTTING_DOWN", (e.details(), info)
    assert "Traceback" not in server.log(), server.log()
