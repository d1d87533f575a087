"""Constants and helpers shared by the unit tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import jwt
from rotor.core.lifecycle import KeyPolicy
from rotor.core.model import LIVE_STATES, Event, KeyState, SigningKey
from rotor.store.sqlite import SqliteStore

T0 = 1_800_000_000.0
ROTATION = 86400.0
PUBLISH_LEAD = 600.0
MAX_ACCESS_TTL = 3600.0
CLOCK_SKEW = 60.0
VERIFY_WINDOW = MAX_ACCESS_TTL + CLOCK_SKEW
POLICY = KeyPolicy(
    rotation_period=ROTATION, publish_lead=PUBLISH_LEAD, max_access_ttl=MAX_ACCESS_TTL, clock_skew=CLOCK_SKEW
)
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k", "oth")


async def read_events(store: SqliteStore, after: int = 0, tenant: str | None = None) -> list[Event]:
    """Every event after `after`, decoded."""
    return [e.decode() for e in await store.events_after(after, tenant, limit=10_000)]


async def live_public(store: SqliteStore, tenant: str = "") -> list[dict[str, Any]]:
    """The tenant's key set as an event payload carries it."""
    return [k.public_dict() for k in await store.list_keys(tenant, LIVE_STATES)]


async def keys_by_state(store: SqliteStore, tenant: str = "") -> dict[KeyState, list[str]]:
    out: dict[KeyState, list[str]] = {state: [] for state in KeyState}
    for key in await store.list_keys(tenant):
        out[key.state].append(key.kid)
    return out


def verify(token: str, key: SigningKey) -> dict[str, Any]:
    """The claims of `token` once PyJWT has checked its signature against `key`'s public JWK.

    Time claims are left to the test (PyJWT would compare them with the wall
    clock, not the fake one).
    """
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(json.loads(key.public_jwk)),
        algorithms=[key.alg],
        options={"verify_aud": False, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    return claims
