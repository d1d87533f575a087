"""Domain errors and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from rotor.api.errors import DOMAIN, OAUTH_ERROR_OF, STATUS_OF, rich_status
from rotor.core import errors
from rotor.core.errors import RotorError, quote

UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")


def every_subclass(cls: type[RotorError]) -> list[type[RotorError]]:
    found: list[type[RotorError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *every_subclass(sub)]
    return found


DOMAIN_ERRORS = every_subclass(RotorError)


def test_the_module_defines_errors() -> None:
    assert len(DOMAIN_ERRORS) >= 25


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda e: e.__name__)
def test_every_domain_error_has_a_status(error: type[RotorError]) -> None:
    assert error in STATUS_OF


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda e: e.__name__)
def test_every_domain_error_has_an_oauth_error_for_the_http_door(error: type[RotorError]) -> None:
    status, code = OAUTH_ERROR_OF[error]
    assert 400 <= status < 600 and status != 500 and re.fullmatch(r"[a-z_]+", code)


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda e: e.__name__)
def test_every_reason_is_upper_snake(error: type[RotorError]) -> None:
    assert UPPER_SNAKE.fullmatch(error.reason), error.reason


def test_reasons_are_distinct() -> None:
    reasons = [e.reason for e in DOMAIN_ERRORS]
    assert len(reasons) == len(set(reasons))


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidClient, grpc.StatusCode.UNAUTHENTICATED),
        (errors.RefreshTokenInvalid, grpc.StatusCode.UNAUTHENTICATED),
        (errors.RefreshTokenExpired, grpc.StatusCode.UNAUTHENTICATED),
        (errors.RefreshTokenRevoked, grpc.StatusCode.UNAUTHENTICATED),
        (errors.RefreshTokenReused, grpc.StatusCode.UNAUTHENTICATED),
        (errors.RefreshTokenWrongClient, grpc.StatusCode.UNAUTHENTICATED),
        (errors.ScopeNotAllowed, grpc.StatusCode.PERMISSION_DENIED),
        (errors.AudienceNotAllowed, grpc.StatusCode.PERMISSION_DENIED),
        (errors.SubjectNotAllowed, grpc.StatusCode.PERMISSION_DENIED),
        (errors.AdminRequired, grpc.StatusCode.PERMISSION_DENIED),
        (errors.TokenNotOwned, grpc.StatusCode.PERMISSION_DENIED),
        (errors.SelfApproval, grpc.StatusCode.PERMISSION_DENIED),
        (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.KeyNotFound, grpc.StatusCode.NOT_FOUND),
        (errors.OperationNotFound, grpc.StatusCode.NOT_FOUND),
        (errors.TenantNotFound, grpc.StatusCode.NOT_FOUND),
        (errors.OperationAlreadyApplied, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.OperationExpired, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.TooManyWatchers, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_status_codes_follow_the_contracts_table(error: type[RotorError], code: grpc.StatusCode) -> None:
    assert STATUS_OF[error] == code


def test_no_domain_error_maps_to_internal_or_unknown() -> None:
    assert not {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN} & set(STATUS_OF.values())


def test_invalid_request_carries_its_own_reason_and_field() -> None:
    error = errors.InvalidRequest("ttl must be positive", "INVALID_TTL", "ttl")
    assert (error.error_reason, error.field, error.message) == ("INVALID_TTL", "ttl", "ttl must be positive")
    assert errors.InvalidRequest("x").error_reason == "INVALID_REQUEST"


def test_rich_status_is_a_google_rpc_status_with_one_error_info() -> None:
    encoded = rich_status(
        grpc.StatusCode.PERMISSION_DENIED, "scope 'admin' is not registered", "SCOPE_NOT_ALLOWED"
    )
    status = status_pb2.Status.FromString(encoded)
    assert status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert status.message == "scope 'admin' is not registered"
    [detail] = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.domain, info.reason) == (DOMAIN, "SCOPE_NOT_ALLOWED") == ("rotor", "SCOPE_NOT_ALLOWED")


def test_rich_status_carries_metadata() -> None:
    status = status_pb2.Status.FromString(
        rich_status(grpc.StatusCode.INVALID_ARGUMENT, "bad", "INVALID_TTL", {"field": "ttl"})
    )
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert dict(info.metadata) == {"field": "ttl"}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x" * 1_000_000, id="ascii"),
        pytest.param("é" * 1_000_000, id="printable-unicode"),
    ],
)
def test_quote_of_a_huge_input_is_short(value: str) -> None:
    quoted = quote(value)
    assert len(quoted) <= 60
    assert "1000000 characters" in quoted


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("\x00" * 1_000_000, id="control-characters"),
        pytest.param("\U0010ffff" * 1_000_000, id="non-bmp"),
        pytest.param("'\"" * 500_000, id="quotes"),
    ],
)
def test_quote_of_a_huge_escaped_input_is_short(value: str) -> None:
    assert len(quote(value)) <= 60


@pytest.mark.parametrize("value", ["", "svc-a", "x" * 32])
def test_quote_of_a_short_input_is_its_repr(value: str) -> None:
    assert quote(value) == repr(value)


def test_the_readme_lists_every_reason_under_its_status() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = {
        line.split("|")[1].split()[0]: line
        for line in readme.splitlines()
        if line.startswith("| ") and "`" in line
    }
    for error, status in STATUS_OF.items():
        if error is errors.InvalidRequest:
            continue  # its reason is given per case (FIELD_REQUIRED, VALUE_TOO_LONG, ...)
        assert f"`{error.reason}`" in rows.get(status.name, ""), (
            f"{error.reason} is not listed under {status.name}"
        )
