"""TokenService: Issue, Refresh and Revoke over a real store, real keys and a fake clock."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace

import pytest
from rotor.clock import FakeClock
from rotor.core.crypto import Signer, b64url, generate_private_key, public_jwk
from rotor.core.errors import (
    AudienceNotAllowed,
    AudienceRequired,
    InvalidRequest,
    RefreshTokenExpired,
    RefreshTokenInvalid,
    RefreshTokenReused,
    RefreshTokenRevoked,
    RefreshTokenWrongClient,
    ScopeNotAllowed,
    SubjectNotAllowed,
    TokenNotOwned,
)
from rotor.core.keys import KeyManager
from rotor.core.model import Client, EventType, KeyState, SigningKey
from rotor.core.tokens import IssuedTokens, TokenPolicy, TokenService, refresh_token_hash
from rotor.store.sqlite import SqliteStore

from .support import T0, read_events, verify

ISSUER = "https://tokens.test"
ACCESS_TTL = 300.0
MAX_TTL = 3600.0
REFRESH_TTL = 86400.0
FAMILY_TTL = 30 * 86400.0
SKEW = 60.0
TOKEN_POLICY = TokenPolicy(
    issuer=ISSUER,
    access_ttl=ACCESS_TTL,
    max_access_ttl=MAX_TTL,
    refresh_ttl=REFRESH_TTL,
    refresh_family_ttl=FAMILY_TTL,
    clock_skew=SKEW,
)


def a_client(client_id: str = "svc-a", **changes: object) -> Client:
    client = Client(
        client_id=client_id,
        tenant="",
        secret_hash="unused: TokenService never authenticates",
        scopes=("read", "write", "delete"),
        audiences=("https://api.internal",),
    )
    return replace(client, **changes)  # type: ignore[arg-type]


CLIENT = a_client()
OTHER = a_client("svc-b")
ADMIN = a_client("ops", admin=True)
MULTI = a_client("svc-m", audiences=("https://api.internal", "https://billing.internal"))
ANY_SUBJECT = a_client("gateway", allow_any_subject=True)


@pytest.fixture
async def tokens(keys: KeyManager, store: SqliteStore, clock: FakeClock) -> TokenService:
    await keys.apply_due("")
    async with store.transaction() as tx:  # registered: Revoke checks a token's client is in its key's tenant
        for client in (CLIENT, OTHER, ADMIN, ANY_SUBJECT):
            await tx.insert_client(client)
    return TokenService(store, keys.keyring, clock, TOKEN_POLICY)


def make_service(keys: KeyManager, store: SqliteStore, clock: FakeClock, **policy: float) -> TokenService:
    return TokenService(store, keys.keyring, clock, replace(TOKEN_POLICY, **policy))  # type: ignore[arg-type]


def count_rows(store: SqliteStore, table: str) -> int:
    """Rows in `table`, read straight from the database file."""
    conn = sqlite3.connect(store.path)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


async def signing_key(store: SqliteStore, kid: str) -> SigningKey:
    key = await store.get_key(kid)
    assert key is not None
    return key


async def claims_of(store: SqliteStore, issued: IssuedTokens) -> dict[str, object]:
    return verify(issued.access_token, await signing_key(store, issued.key_id))


async def issue(tokens: TokenService, client: Client = CLIENT, **request: object) -> IssuedTokens:
    args: dict[str, object] = {"audiences": (), "scopes": (), "ttl": None, "subject": ""}
    args.update(request)
    return await tokens.issue(client, **args)  # type: ignore[arg-type]


# -- Issue -------------------------------------------------------------------------


class TestIssue:
    async def test_access_token_carries_the_rfc9068_claims(
        self, tokens: TokenService, store: SqliteStore, clock: FakeClock
    ) -> None:
        clock.advance(0.75)  # claims are whole seconds
        issued = await issue(tokens, scopes=("read", "write"))
        claims = await claims_of(store, issued)
        jti = claims.pop("jti")
        assert claims == {
            "iss": ISSUER,
            "sub": "svc-a",
            "aud": "https://api.internal",
            "exp": int(T0) + int(ACCESS_TTL),
            "iat": int(T0),
            "nbf": int(T0),
            "client_id": "svc-a",
            "scope": "read write",
        }
        assert isinstance(jti, str) and len(jti) >= 22
        assert issued.expires_at == int(T0) + int(ACCESS_TTL)
        assert (issued.scopes, issued.audiences) == (("read", "write"), ("https://api.internal",))
        assert issued.key_id == (await store.list_keys("", [KeyState.ACTIVE]))[0].kid

    async def test_scope_claim_is_omitted_when_no_scope_is_asked(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        claims = await claims_of(store, await issue(tokens))
        assert "scope" not in claims

    async def test_audience_is_a_list_when_several_are_asked(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        issued = await issue(tokens, MULTI, audiences=("https://billing.internal", "https://api.internal"))
        claims = await claims_of(store, issued)
        assert claims["aud"] == ["https://billing.internal", "https://api.internal"]

    async def test_the_only_registered_audience_is_used_when_none_is_asked(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        issued = await issue(tokens)
        assert issued.audiences == ("https://api.internal",)
        assert (await claims_of(store, issued))["aud"] == "https://api.internal"

    async def test_ttl_sets_the_lifetime_up_to_the_maximum(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        assert (await claims_of(store, await issue(tokens, ttl=42.0)))["exp"] == int(T0) + 42
        assert (await claims_of(store, await issue(tokens, ttl=MAX_TTL)))["exp"] == int(T0 + MAX_TTL)

    async def test_jti_is_unique(self, tokens: TokenService, store: SqliteStore) -> None:
        issued = await asyncio.gather(*(issue(tokens) for _ in range(50)))
        assert len({(await claims_of(store, i))["jti"] for i in issued}) == 50

    async def test_subject_defaults_to_the_client_and_may_name_it(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        assert (await claims_of(store, await issue(tokens, subject="svc-a")))["sub"] == "svc-a"

    async def test_client_allowed_any_subject_may_name_another(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        issued = await issue(tokens, ANY_SUBJECT, subject="user:alice")
        claims = await claims_of(store, issued)
        assert (claims["sub"], claims["client_id"]) == ("user:alice", "gateway")

    @pytest.mark.parametrize(
        ("client", "request_", "error"),
        [
            pytest.param(CLIENT, {"scopes": ("read", "admin")}, ScopeNotAllowed, id="scope-not-registered"),
            pytest.param(
                CLIENT, {"audiences": ("https://evil",)}, AudienceNotAllowed, id="audience-not-registered"
            ),
            pytest.param(MULTI, {}, AudienceRequired, id="audience-required-with-several"),
            pytest.param(a_client(audiences=()), {}, AudienceNotAllowed, id="client-without-audience"),
            pytest.param(CLIENT, {"subject": "user:alice"}, SubjectNotAllowed, id="subject-not-allowed"),
            pytest.param(CLIENT, {"ttl": 0.0}, InvalidRequest, id="ttl-zero"),
            pytest.param(CLIENT, {"ttl": -5.0}, InvalidRequest, id="ttl-negative"),
            pytest.param(CLIENT, {"ttl": float("nan")}, InvalidRequest, id="ttl-nan"),
            pytest.param(CLIENT, {"ttl": MAX_TTL + 1}, InvalidRequest, id="ttl-above-max"),
            pytest.param(CLIENT, {"scopes": ("bad scope",)}, InvalidRequest, id="malformed-scope"),
        ],
    )
    async def test_least_privilege_refusals(
        self,
        tokens: TokenService,
        store: SqliteStore,
        client: Client,
        request_: dict[str, object],
        error: type[Exception],
    ) -> None:
        with pytest.raises(error):
            await issue(tokens, client, **request_)
        assert count_rows(store, "refresh_families") == 0  # a refusal writes no grant

    async def test_without_refresh_ttl_no_refresh_token_is_issued(
        self, keys: KeyManager, store: SqliteStore, clock: FakeClock, tokens: TokenService
    ) -> None:
        issued = await issue(make_service(keys, store, clock, refresh_ttl=0.0))
        assert (issued.refresh_token, issued.refresh_expires_at) == ("", None)
        assert issued.access_token
        assert count_rows(store, "refresh_families") == count_rows(store, "refresh_tokens") == 0

    async def test_refresh_token_is_opaque_and_stored_only_as_a_hash(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        issued = await issue(tokens)
        assert len(issued.refresh_token) >= 43 and "." not in issued.refresh_token
        assert issued.refresh_expires_at == T0 + REFRESH_TTL
        assert await store.get_refresh_token(issued.refresh_token) is None
        row = await store.get_refresh_token(refresh_token_hash(issued.refresh_token))
        assert row is not None and row.client_id == "svc-a"


# -- Refresh -----------------------------------------------------------------------


async def refresh(
    tokens: TokenService, token: str, client: Client = CLIENT, scopes: tuple[str, ...] = ()
) -> IssuedTokens:
    return await tokens.refresh(client, refresh_token=token, scopes=scopes)


async def family_of(store: SqliteStore, token: str) -> str:
    row = await store.get_refresh_token(refresh_token_hash(token))
    assert row is not None
    return row.family_id


class TestRefresh:
    async def test_refresh_returns_a_new_access_token_and_rotates_the_refresh_token(
        self, tokens: TokenService, store: SqliteStore, clock: FakeClock
    ) -> None:
        first = await issue(tokens, scopes=("read",))
        clock.advance(100)
        second = await refresh(tokens, first.refresh_token)
        assert second.refresh_token not in ("", first.refresh_token)
        assert await family_of(store, second.refresh_token) == await family_of(store, first.refresh_token)
        claims = await claims_of(store, second)
        assert (claims["sub"], claims["aud"], claims["scope"], claims["iat"]) == (
            "svc-a",
            "https://api.internal",
            "read",
            int(T0 + 100),
        )
        assert second.refresh_expires_at == T0 + 100 + REFRESH_TTL
        used = await store.get_refresh_token(refresh_token_hash(first.refresh_token))
        assert used is not None and used.used_at == T0 + 100

    async def test_reused_refresh_token_revokes_family(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        first = await issue(tokens)
        second = await refresh(tokens, first.refresh_token)
        with pytest.raises(RefreshTokenReused):
            await refresh(tokens, first.refresh_token)
        with pytest.raises(RefreshTokenRevoked):
            await refresh(tokens, second.refresh_token)
        family = await store.get_family(await family_of(store, first.refresh_token))
        assert family is not None and family.revoked_at is not None

    async def test_refresh_by_another_client_revokes_family(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        issued = await issue(tokens)
        with pytest.raises(RefreshTokenWrongClient):
            await refresh(tokens, issued.refresh_token, client=OTHER)
        with pytest.raises(RefreshTokenRevoked):
            await refresh(tokens, issued.refresh_token)

    @pytest.mark.parametrize(
        ("waited", "expired"),
        [
            pytest.param(REFRESH_TTL - 1, False, id="just-before-expiry"),
            pytest.param(REFRESH_TTL, True, id="at-expiry"),
            pytest.param(REFRESH_TTL + 3600, True, id="after-expiry"),
        ],
    )
    async def test_refresh_token_expires_after_refresh_ttl(
        self, tokens: TokenService, clock: FakeClock, waited: float, expired: bool
    ) -> None:
        issued = await issue(tokens)
        clock.advance(waited)
        if expired:
            with pytest.raises(RefreshTokenExpired):
                await refresh(tokens, issued.refresh_token)
        else:
            assert (await refresh(tokens, issued.refresh_token)).refresh_token

    async def test_family_expires_however_often_it_is_refreshed(
        self, keys: KeyManager, store: SqliteStore, clock: FakeClock, tokens: TokenService
    ) -> None:
        service = make_service(keys, store, clock, refresh_ttl=100.0, refresh_family_ttl=250.0)
        current = await issue(service)
        clock.advance(90)
        current = await refresh(service, current.refresh_token)
        assert current.refresh_expires_at == T0 + 190
        clock.advance(90)
        current = await refresh(service, current.refresh_token)
        assert current.refresh_expires_at == T0 + 250  # capped at the family's end
        clock.set(T0 + 250)
        with pytest.raises(RefreshTokenExpired):
            await refresh(service, current.refresh_token)

    async def test_narrowing_scopes_this_access_token_only(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        first = await issue(tokens, scopes=("read", "write"))
        narrowed = await refresh(tokens, first.refresh_token, scopes=("write",))
        assert narrowed.scopes == ("write",)
        assert (await claims_of(store, narrowed))["scope"] == "write"
        full = await refresh(tokens, narrowed.refresh_token)
        assert full.scopes == ("read", "write")
        assert (await claims_of(store, full))["scope"] == "read write"

    async def test_widening_scopes_is_refused_and_does_not_use_the_token(self, tokens: TokenService) -> None:
        first = await issue(tokens, scopes=("read",))
        with pytest.raises(ScopeNotAllowed):
            await refresh(tokens, first.refresh_token, scopes=("read", "write"))
        assert (await refresh(tokens, first.refresh_token)).scopes == ("read",)

    async def test_unknown_refresh_token_is_invalid(self, tokens: TokenService) -> None:
        with pytest.raises(RefreshTokenInvalid):
            await refresh(tokens, "not-a-token-we-issued")

    async def test_empty_refresh_token_is_an_invalid_request(self, tokens: TokenService) -> None:
        with pytest.raises(InvalidRequest):
            await refresh(tokens, "")

    async def test_concurrent_refreshes_of_one_token_have_exactly_one_winner(
        self, tokens: TokenService
    ) -> None:
        issued = await issue(tokens)
        outcomes = await asyncio.gather(
            *(refresh(tokens, issued.refresh_token) for _ in range(50)), return_exceptions=True
        )
        winners = [o for o in outcomes if isinstance(o, IssuedTokens)]
        losers = [o for o in outcomes if not isinstance(o, IssuedTokens)]
        assert len(winners) == 1
        assert all(isinstance(o, RefreshTokenReused | RefreshTokenRevoked) for o in losers), losers
        assert any(isinstance(o, RefreshTokenReused) for o in losers)
        with pytest.raises(RefreshTokenRevoked):
            await refresh(tokens, winners[0].refresh_token)


# -- Revoke ------------------------------------------------------------------------


async def revoke(tokens: TokenService, token: str, client: Client = CLIENT, reason: str = "done") -> bool:
    return await tokens.revoke(client, token=token, reason=reason)


def foreign_token(claims: dict[str, object], kid: str) -> str:
    """A token that looks like ours (same kid) but is signed by a key we never had."""
    private = generate_private_key("EdDSA")
    assert public_jwk(private, "EdDSA")["kid"] != kid
    return Signer.for_key(kid, "EdDSA", private).sign(claims)


class TestRevokeAccessToken:
    async def test_revoking_an_access_token_denylists_its_jti_and_tells_watchers(
        self, tokens: TokenService, store: SqliteStore, clock: FakeClock
    ) -> None:
        issued = await issue(tokens)
        claims = await claims_of(store, issued)
        clock.advance(10)
        seen = await store.last_sequence()
        assert await revoke(tokens, issued.access_token, reason="leaked") is True
        row = await store.get_revoked_token(str(claims["jti"]))
        assert row is not None
        assert (row.client_id, row.expires_at, row.revoked_at, row.reason) == (
            "svc-a",
            claims["exp"],
            T0 + 10,
            "leaked",
        )
        [event] = await read_events(store, seen)
        assert event.type is EventType.TOKEN_REVOKED and event.revoked is not None
        assert (event.revoked.jti, event.revoked.expires_at) == (claims["jti"], claims["exp"])
        snapshot = await store.snapshot("", clock.now())
        assert [r.jti for r in snapshot.revoked] == [claims["jti"]]

    async def test_revoking_an_access_token_twice_is_true_and_writes_one_event(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        issued = await issue(tokens)
        seen = await store.last_sequence()
        assert await revoke(tokens, issued.access_token) is True
        assert await revoke(tokens, issued.access_token) is True
        assert len(await read_events(store, seen)) == 1

    async def test_another_client_may_not_revoke_the_token_but_an_admin_may(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        issued = await issue(tokens)
        with pytest.raises(TokenNotOwned):
            await revoke(tokens, issued.access_token, client=OTHER)
        jti = str((await claims_of(store, issued))["jti"])
        assert await store.get_revoked_token(jti) is None
        assert await revoke(tokens, issued.access_token, client=ADMIN) is True
        assert await store.get_revoked_token(jti) is not None

    @pytest.mark.parametrize(
        "make_token",
        [
            pytest.param(lambda claims, kid: "a.b.c", id="garbage-jws"),
            pytest.param(lambda claims, kid: "not-a-token-at-all", id="garbage"),
            pytest.param(lambda claims, kid: foreign_token(claims, kid), id="foreign-signature"),
            pytest.param(lambda claims, kid: foreign_token(claims, "unknown-kid"), id="unknown-kid"),
            pytest.param(
                lambda claims, kid: ".".join(
                    [
                        b64url(json.dumps({"alg": "none", "kid": kid}).encode()),
                        b64url(json.dumps(claims).encode()),
                        "",
                    ]
                ),
                id="alg-none",
            ),
            pytest.param(
                lambda claims, kid: f"{b64url(b'[' * 5000)}.{b64url(b'{}')}.AAAA", id="deeply-nested-header"
            ),
            pytest.param(
                lambda claims, kid: f"{b64url(b'{}')}.{b64url(b'[' * 5000)}.AAAA", id="deeply-nested-claims"
            ),
            pytest.param(lambda claims, kid: f"{b64url(b'{}' * 2000)}.e30.AAAA", id="huge-header"),
        ],
    )
    async def test_tokens_that_are_not_ours_are_not_revoked(
        self, tokens: TokenService, store: SqliteStore, make_token: object
    ) -> None:
        issued = await issue(tokens)
        claims = await claims_of(store, issued)
        token = make_token(claims, issued.key_id)  # type: ignore[operator]
        seen = await store.last_sequence()
        assert await revoke(tokens, token) is False
        assert await store.get_revoked_token(str(claims["jti"])) is None
        assert await store.last_sequence() == seen

    async def test_token_of_another_issuer_is_not_revoked(
        self, tokens: TokenService, keys: KeyManager, store: SqliteStore
    ) -> None:
        signer = keys.keyring.signer("")
        token = await signer.sign(
            {"iss": "https://elsewhere", "jti": "j" * 22, "exp": int(T0) + 60, "client_id": "svc-a"}
        )
        assert await revoke(tokens, token) is False
        assert await store.get_revoked_token("j" * 22) is None

    @pytest.mark.parametrize(
        ("after_exp", "revoked"),
        [
            pytest.param(SKEW - 1, True, id="within-clock-skew"),
            pytest.param(SKEW, False, id="expired-past-skew"),
        ],
    )
    async def test_expired_access_token_is_not_revoked(
        self, tokens: TokenService, store: SqliteStore, clock: FakeClock, after_exp: float, revoked: bool
    ) -> None:
        issued = await issue(tokens)
        clock.set(issued.expires_at + after_exp)
        seen = await store.last_sequence()
        assert await revoke(tokens, issued.access_token) is revoked
        assert (await store.last_sequence() > seen) is revoked

    async def test_token_of_a_retired_key_can_still_be_revoked(
        self, tokens: TokenService, keys: KeyManager, store: SqliteStore
    ) -> None:
        issued = await issue(tokens)
        await keys.rotate("", immediate=True, reason="x")
        assert (await signing_key(store, issued.key_id)).state is KeyState.RETIRED
        assert await revoke(tokens, issued.access_token) is True
        assert await store.get_revoked_token(str((await claims_of(store, issued))["jti"])) is not None

    async def test_token_of_a_revoked_key_is_already_dead(
        self, tokens: TokenService, keys: KeyManager, store: SqliteStore
    ) -> None:
        issued = await issue(tokens)
        jti = str((await claims_of(store, issued))["jti"])
        await keys.revoke(issued.key_id, reason="x", actor="ops")
        seen = await store.last_sequence()
        assert await revoke(tokens, issued.access_token) is True
        assert await store.get_revoked_token(jti) is None  # nothing to deny: its key no longer verifies
        assert await store.last_sequence() == seen

    @pytest.mark.parametrize(
        ("token", "reason"),
        [
            pytest.param("", "x", id="empty-token"),
            pytest.param("x" * (16 * 1024 + 1), "x", id="oversized-token"),
            pytest.param("x.y.z", "r" * 1025, id="oversized-reason"),
        ],
    )
    async def test_malformed_revocations_are_invalid_requests(
        self, tokens: TokenService, token: str, reason: str
    ) -> None:
        with pytest.raises(InvalidRequest):
            await revoke(tokens, token, reason=reason)


class TestRevokeRefreshToken:
    async def test_revoking_a_refresh_token_ends_its_family(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        issued = await issue(tokens)
        assert await revoke(tokens, issued.refresh_token) is True
        with pytest.raises(RefreshTokenRevoked):
            await refresh(tokens, issued.refresh_token)
        assert await revoke(tokens, issued.refresh_token) is True  # already revoked: still true
        family = await store.get_family(await family_of(store, issued.refresh_token))
        assert family is not None and family.revoked_at == T0

    async def test_revoking_a_used_refresh_token_ends_the_family_and_its_newest_token(
        self, tokens: TokenService
    ) -> None:
        first = await issue(tokens)
        second = await refresh(tokens, first.refresh_token)
        assert await revoke(tokens, first.refresh_token) is True
        with pytest.raises(RefreshTokenRevoked):
            await refresh(tokens, second.refresh_token)

    async def test_another_client_may_not_revoke_a_refresh_token_but_an_admin_may(
        self, tokens: TokenService
    ) -> None:
        issued = await issue(tokens)
        with pytest.raises(TokenNotOwned):
            await revoke(tokens, issued.refresh_token, client=OTHER)
        assert (await refresh(tokens, issued.refresh_token)).refresh_token  # untouched
        second = await issue(tokens)
        assert await revoke(tokens, second.refresh_token, client=ADMIN) is True
        with pytest.raises(RefreshTokenRevoked):
            await refresh(tokens, second.refresh_token)

    async def test_expired_refresh_token_is_not_revoked(self, tokens: TokenService, clock: FakeClock) -> None:
        issued = await issue(tokens)
        clock.advance(REFRESH_TTL)
        assert await revoke(tokens, issued.refresh_token) is False


# -- Introspect (RFC 7662) -------------------------------------------------------------


class TestIntrospect:
    async def test_an_active_access_token_is_described_by_its_claims(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        issued = await issue(tokens, scopes=("read",))
        claims = await claims_of(store, issued)
        found = await tokens.introspect(OTHER, token=issued.access_token)  # any client of the tenant
        assert found is not None
        assert (found.token_type, found.client_id, found.subject, found.scopes, found.audiences) == (
            "Bearer",
            "svc-a",
            "svc-a",
            ("read",),
            ("https://api.internal",),
        )
        assert (found.expires_at, found.issued_at, found.jti, found.kid, found.issuer) == (
            claims["exp"],
            claims["iat"],
            claims["jti"],
            issued.key_id,
            ISSUER,
        )

    async def test_expiry_ends_activity_at_exp(self, tokens: TokenService, clock: FakeClock) -> None:
        issued = await issue(tokens)
        clock.advance(ACCESS_TTL - 1)
        assert await tokens.introspect(CLIENT, token=issued.access_token) is not None
        clock.advance(1)
        assert await tokens.introspect(CLIENT, token=issued.access_token) is None

    async def test_forged_tampered_and_foreign_tokens_are_inactive(
        self, tokens: TokenService, store: SqliteStore
    ) -> None:
        issued = await issue(tokens)
        claims = await claims_of(store, issued)
        head, _, signature = issued.access_token.split(".")
        tampered = f"{head}.{b64url(json.dumps({**claims, 'scope': 'delete'}).encode())}.{signature}"
        other_issuer = foreign_token({**claims, "iss": "https://elsewhere"}, issued.key_id)
        for token in (
            tampered,
            foreign_token(claims, issued.key_id),
            other_issuer,
            "a.b.c",
            "not-a-token",
            f"{head}.{b64url(json.dumps({**claims, 'exp': 'never'}).encode())}.{signature}",
        ):
            assert await tokens.introspect(CLIENT, token=token) is None, token[:40]

    async def test_a_refresh_token_is_visible_to_its_client_and_admins_only_until_used(
        self, tokens: TokenService
    ) -> None:
        issued = await issue(tokens, scopes=("read",))
        found = await tokens.introspect(CLIENT, token=issued.refresh_token)
        assert found is not None and found.token_type == "refresh_token" and found.scopes == ("read",)
        assert await tokens.introspect(ADMIN, token=issued.refresh_token) is not None
        assert await tokens.introspect(OTHER, token=issued.refresh_token) is None
        await tokens.refresh(CLIENT, refresh_token=issued.refresh_token, scopes=())
        assert await tokens.introspect(CLIENT, token=issued.refresh_token) is None

    async def test_an_empty_token_is_an_invalid_request(self, tokens: TokenService) -> None:
        with pytest.raises(InvalidRequest) as refused:
            await tokens.introspect(CLIENT, token="")
        assert refused.value.error_reason == "FIELD_REQUIRED"
