"""Checks on caller input shared by every operation: lengths, counts, characters.

Limits are generous for real use and small enough that no field can make a
response, a log line or an error message huge.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from rotor.core.errors import InvalidRequest, quote

MAX_SCOPES = 100
MAX_AUDIENCES = 20
MAX_NAME = 256  # a scope, an audience, a subject, a client id
MAX_TOKEN = 16 * 1024
MAX_REASON = 1024

# RFC 6749 §3.3 scope-token: printable ASCII but space, '"' and '\'.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def _scope_token(value: str) -> bool:
    return _SCOPE_TOKEN.fullmatch(value) is not None


def visible(value: str) -> bool:
    """Printable text with no whitespace or control character, in any script."""
    return value.isprintable() and " " not in value


CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}")
TENANT = re.compile(r"[A-Za-z0-9._-]{1,128}")  # a tenant's name ("" is the default tenant)


def scopes(values: Iterable[str], field: str = "scope") -> tuple[str, ...]:
    """Valid, de-duplicated scopes in request order."""
    return _names(
        values, field, _scope_token, MAX_SCOPES, "a scope token (printable ASCII, no space, '\"' or '\\')"
    )


def audiences(values: Iterable[str], field: str = "audience") -> tuple[str, ...]:
    """Valid, de-duplicated audiences in request order."""
    return _names(values, field, visible, MAX_AUDIENCES, "printable, with no whitespace")


def _names(
    values: Iterable[str], field: str, valid: Callable[[str], bool], limit: int, rule: str
) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for i, value in enumerate(values):
        if i >= limit:
            raise InvalidRequest(f"{field}: at most {limit} entries are allowed", "TOO_MANY_VALUES", field)
        if not value:
            raise InvalidRequest(f"{field}[{i}] is empty", "EMPTY_VALUE", field)
        if len(value) > MAX_NAME:
            raise InvalidRequest(
                f"{field}[{i}] is {len(value)} characters; the limit is {MAX_NAME}", "VALUE_TOO_LONG", field
            )
        if not valid(value):
            raise InvalidRequest(f"{field}[{i}] {quote(value)} is not {rule}", "INVALID_VALUE", field)
        out[value] = None
    return tuple(out)


def subject(value: str) -> str:
    if len(value) > MAX_NAME:
        raise InvalidRequest(
            f"subject is {len(value)} characters; the limit is {MAX_NAME}", "VALUE_TOO_LONG", "subject"
        )
    if value and not visible(value):
        raise InvalidRequest(
            f"subject {quote(value)} must be printable, with no whitespace", "INVALID_VALUE", "subject"
        )
    return value


def token(value: str, field: str) -> str:
    if not value:
        raise InvalidRequest(f"{field} is required", "FIELD_REQUIRED", field)
    if len(value) > MAX_TOKEN:
        raise InvalidRequest(
            f"{field} is {len(value)} characters; no token of ours is longer than {MAX_TOKEN}",
            "VALUE_TOO_LONG",
            field,
        )
    return value


def reason(value: str) -> str:
    if len(value) > MAX_REASON:
        raise InvalidRequest(
            f"reason is {len(value)} characters; the limit is {MAX_REASON}", "VALUE_TOO_LONG", "reason"
        )
    return value


def identifier(value: str, field: str) -> str:
    """A kid, an operation id or a tenant name: short and printable."""
    if len(value) > MAX_NAME or (value and not visible(value)):
        raise InvalidRequest(f"{field} {quote(value)} is not a valid identifier", "INVALID_VALUE", field)
    return value
