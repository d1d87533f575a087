"""Caller input checks: lengths, counts, characters, and short messages whatever the input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rotor.core import validation
from rotor.core.errors import InvalidRequest
from rotor.core.validation import MAX_AUDIENCES, MAX_NAME, MAX_REASON, MAX_SCOPES, MAX_TOKEN


def refused(check: Callable[[], object], reason: str, field: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        check()
    error = raised.value
    assert (error.error_reason, error.field) == (reason, field)
    assert len(error.message) < 200  # whatever the input, the message stays short
    return error


# -- scopes ----------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["read", "tokens:write", "a", "x" * MAX_NAME, "!#[]~", "https://api/read"])
def test_valid_scopes_are_accepted(scope: str) -> None:
    assert validation.scopes([scope]) == (scope,)


def test_scopes_are_deduplicated_in_request_order() -> None:
    assert validation.scopes(["write", "read", "write", "admin", "read"]) == ("write", "read", "admin")


def test_no_scopes_is_empty() -> None:
    assert validation.scopes([]) == ()


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        pytest.param("", "EMPTY_VALUE", id="empty"),
        pytest.param("read write", "INVALID_VALUE", id="space"),
        pytest.param('say"hi', "INVALID_VALUE", id="double-quote"),
        pytest.param("back\\slash", "INVALID_VALUE", id="backslash"),
        pytest.param("café", "INVALID_VALUE", id="non-ascii"),
        pytest.param("tab\there", "INVALID_VALUE", id="tab"),
        pytest.param("nul\x00", "INVALID_VALUE", id="nul"),
        pytest.param("x" * (MAX_NAME + 1), "VALUE_TOO_LONG", id="too-long"),
        pytest.param("x" * 1_000_000, "VALUE_TOO_LONG", id="huge"),
    ],
)
def test_invalid_scopes_are_refused(scope: str, reason: str) -> None:
    refused(lambda: validation.scopes(["ok", scope]), reason, "scope")


def test_at_most_max_scopes() -> None:
    assert len(validation.scopes([f"s{i}" for i in range(MAX_SCOPES)])) == MAX_SCOPES
    refused(lambda: validation.scopes([f"s{i}" for i in range(MAX_SCOPES + 1)]), "TOO_MANY_VALUES", "scope")


def test_scope_limit_counts_what_was_sent_not_what_is_left() -> None:
    refused(lambda: validation.scopes(["same"] * (MAX_SCOPES + 1)), "TOO_MANY_VALUES", "scope")


def test_a_scope_generator_is_not_read_past_the_limit() -> None:
    def endless() -> object:
        while True:
            yield "s"

    refused(lambda: validation.scopes(endless()), "TOO_MANY_VALUES", "scope")  # type: ignore[arg-type]


# -- audiences ---------------------------------------------------------------------------


@pytest.mark.parametrize("audience", ["https://api.internal", "spiffe://prod/ns/svc", "api", "ünïcode"])
def test_valid_audiences_are_accepted(audience: str) -> None:
    assert validation.audiences([audience]) == (audience,)


def test_audiences_are_deduplicated_in_request_order() -> None:
    assert validation.audiences(["b", "a", "b"]) == ("b", "a")


@pytest.mark.parametrize(
    ("audience", "reason"),
    [
        pytest.param("", "EMPTY_VALUE", id="empty"),
        pytest.param("two words", "INVALID_VALUE", id="space"),
        pytest.param("new\nline", "INVALID_VALUE", id="newline"),
        pytest.param("del\x7f", "INVALID_VALUE", id="delete"),
        pytest.param("x" * (MAX_NAME + 1), "VALUE_TOO_LONG", id="too-long"),
    ],
)
def test_invalid_audiences_are_refused(audience: str, reason: str) -> None:
    refused(lambda: validation.audiences([audience]), reason, "audience")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("api\u00a0internal", id="no-break-space"),
        pytest.param("api\u2028internal", id="line-separator"),
        pytest.param("api\x85internal", id="c1-next-line"),
    ],
)
def test_unicode_whitespace_and_controls_are_refused(value: str) -> None:
    refused(lambda: validation.audiences([value]), "INVALID_VALUE", "audience")


def test_at_most_max_audiences() -> None:
    assert len(validation.audiences([f"a{i}" for i in range(MAX_AUDIENCES)])) == MAX_AUDIENCES
    refused(
        lambda: validation.audiences([f"a{i}" for i in range(MAX_AUDIENCES + 1)]),
        "TOO_MANY_VALUES",
        "audience",
    )


# -- subject, token, reason, identifier ------------------------------------------------------


@pytest.mark.parametrize("subject", ["", "user:alice", "x" * MAX_NAME])
def test_valid_subjects_are_accepted(subject: str) -> None:
    assert validation.subject(subject) == subject


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        pytest.param("alice smith", "INVALID_VALUE", id="space"),
        pytest.param("alice\r\n", "INVALID_VALUE", id="crlf"),
        pytest.param("x" * (MAX_NAME + 1), "VALUE_TOO_LONG", id="too-long"),
        pytest.param("x" * 1_000_000, "VALUE_TOO_LONG", id="huge"),
    ],
)
def test_invalid_subjects_are_refused(subject: str, reason: str) -> None:
    refused(lambda: validation.subject(subject), reason, "subject")


def test_token_is_required_and_bounded() -> None:
    assert validation.token("t" * MAX_TOKEN, "refresh_token") == "t" * MAX_TOKEN
    refused(lambda: validation.token("", "refresh_token"), "FIELD_REQUIRED", "refresh_token")
    refused(lambda: validation.token("t" * (MAX_TOKEN + 1), "token"), "VALUE_TOO_LONG", "token")
    refused(lambda: validation.token("t" * 4_000_000, "token"), "VALUE_TOO_LONG", "token")


def test_reason_is_optional_and_bounded() -> None:
    assert validation.reason("") == ""
    assert validation.reason("r" * MAX_REASON) == "r" * MAX_REASON
    refused(lambda: validation.reason("r" * (MAX_REASON + 1)), "VALUE_TOO_LONG", "reason")


@pytest.mark.parametrize("value", ["", "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs", "x" * MAX_NAME])
def test_valid_identifiers_are_accepted(value: str) -> None:
    assert validation.identifier(value, "kid") == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("with space", id="space"),
        pytest.param("nul\x00", id="nul"),
        pytest.param("x" * (MAX_NAME + 1), id="too-long"),
        pytest.param("\x01" * 1_000_000, id="huge-controls"),
    ],
)
def test_invalid_identifiers_are_refused(value: str) -> None:
    error = refused(lambda: validation.identifier(value, "operation_id"), "INVALID_VALUE", "operation_id")
    assert error.message.startswith("operation_id ")


@pytest.mark.parametrize(
    "client_id",
    ["svc-a", "a", "x" * 128, "svc.a:b@c/d+e-f", "0day"],
)
def test_valid_client_ids(client_id: str) -> None:
    assert validation.CLIENT_ID.fullmatch(client_id)


@pytest.mark.parametrize("client_id", ["", "-leading", ".leading", "has space", "x" * 129, "café", "a\nb"])
def test_invalid_client_ids(client_id: str) -> None:
    assert not validation.CLIENT_ID.fullmatch(client_id)
