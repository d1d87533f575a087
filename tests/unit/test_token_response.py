"""The TokenResponse Issue and Refresh write by hand is the message protobuf would encode."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rotor.api.convert import timestamp, token_response_bytes
from rotor.core.tokens import IssuedTokens
from rotor.v1 import token_service_pb2

TEXT = st.text(max_size=300)


def token_response(t: IssuedTokens) -> token_service_pb2.TokenResponse:
    """The message, built field by field: what the hand-written bytes must equal once encoded."""
    msg = token_service_pb2.TokenResponse(
        access_token=t.access_token,
        token_type="Bearer",
        expires_at=timestamp(t.expires_at),
        refresh_token=t.refresh_token,
        scope=list(t.scopes),
        audience=list(t.audiences),
        key_id=t.key_id,
    )
    if t.refresh_expires_at is not None:
        msg.refresh_expires_at.CopyFrom(timestamp(t.refresh_expires_at))
    return msg


def issued(**changes: object) -> IssuedTokens:
    fields: dict[str, object] = {
        "access_token": "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJzdmMifQ.c2ln",
        "expires_at": 1_800_000_300,
        "refresh_token": "r" * 43,
        "refresh_expires_at": 1_800_086_400.25,
        "scopes": ("read", "write"),
        "audiences": ("payments",),
        "key_id": "kid-1",
    }
    return IssuedTokens(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "tokens",
    [
        issued(),
        issued(refresh_token="", refresh_expires_at=None),
        issued(scopes=(), audiences=("a", "b", "")),
        issued(refresh_expires_at=1_800_000_000.0),
        issued(access_token="é" * 200, key_id=""),
    ],
    ids=["full", "no-refresh-token", "no-scope-several-audiences", "whole-second", "non-ascii-long"],
)
def test_hand_written_response_is_the_serialized_message(tokens: IssuedTokens) -> None:
    assert token_response_bytes(tokens) == token_response(tokens).SerializeToString()


@given(
    access_token=TEXT,
    expires_at=st.integers(0, 2**40),
    refresh_token=TEXT,
    refresh_expires_at=st.none() | st.floats(0, 2**40, allow_nan=False),
    scopes=st.lists(TEXT, max_size=4).map(tuple),
    audiences=st.lists(TEXT, max_size=4).map(tuple),
    key_id=TEXT,
)
def test_any_response_encodes_as_the_message_does(
    access_token: str,
    expires_at: int,
    refresh_token: str,
    refresh_expires_at: float | None,
    scopes: tuple[str, ...],
    audiences: tuple[str, ...],
    key_id: str,
) -> None:
    tokens = IssuedTokens(
        access_token, expires_at, refresh_token, refresh_expires_at, scopes, audiences, key_id
    )
    assert token_response_bytes(tokens) == token_response(tokens).SerializeToString()
