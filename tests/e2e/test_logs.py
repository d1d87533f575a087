"""The server's log: one JSON object per line by default, with request and client ids, never a secret."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import grpc
import pytest
import rotor_client

from .support import RotorProcess, basic


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Any:
    server = RotorProcess(tmp_path).start()
    yield server
    server.close()


def lines(server: RotorProcess) -> list[str]:
    return [line for line in server.log_path.read_text().splitlines() if line.strip()]


def test_every_line_is_a_json_event_and_rpc_events_carry_request_and_client_ids(server: RotorProcess) -> None:
    """A refresh-token replay logs a JSON line naming the caller's x-request-id and client id."""
    client = server.add_client("svc", "--audience", "api")
    tokens = server.tokens()
    metadata = (*basic(client), ("x-request-id", "replay-42"))
    issued = tokens.Issue(rotor_client.IssueRequest(audience=["api"]), metadata=metadata, timeout=30)
    tokens.Refresh(
        rotor_client.RefreshRequest(refresh_token=issued.refresh_token), metadata=metadata, timeout=30
    )
    with pytest.raises(grpc.RpcError):
        tokens.Refresh(
            rotor_client.RefreshRequest(refresh_token=issued.refresh_token), metadata=metadata, timeout=30
        )
    server.terminate()
    events = [json.loads(line) for line in lines(server)]  # every line parses
    assert all({"ts", "level", "logger", "msg"} <= event.keys() for event in events)
    replay = [e for e in events if e.get("request_id") == "replay-42" and "revoked" in e["msg"]]
    assert replay and replay[0]["client_id"] == "svc" and replay[0]["level"] == "warning", events[-5:]
    log = server.log_path.read_text()
    for secret in (client["client_secret"], issued.access_token, issued.refresh_token):
        assert secret not in log, "a secret or token reached the log"


def test_text_logs_when_asked(tmp_path: pathlib.Path) -> None:
    """log_format = "text" gives plain lines."""
    server = RotorProcess(tmp_path, {"log_format": "text", "log_level": "warning"}).start()
    try:
        server.terminate()
        assert all(not line.startswith("{") for line in lines(server))
    finally:
        server.close()
