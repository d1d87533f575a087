"""Signing keys on a PKCS#11 token (SoftHSM2): made there, never extractable, destroyed when the
sealed store would clear its sealed half; a token that fails makes Issue and Refresh UNAVAILABLE
SIGNER_UNAVAILABLE without changing anything, and the server recovers with the token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import grpc
import jwt
import pytest
import rotor_client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rotor.core.crypto import CryptoError
from softhsm import SoftHsm

from .conftest import MakeRotor
from .support import AUDIENCE, Credentials, Rotor, assert_error, failure, key_state

# the PKCS#8 DER prefix of an Ed25519 private key (what the sealed store seals)
ED25519_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 60.0) -> None:
    """Wait for `condition`; fail the test after `within` seconds (a bound, not a measurement)."""
    for _ in range(int(within / 0.05)):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


def private_key_files(root: Path) -> list[Path]:
    """Files under `root` that hold a key-encryption key or an Ed25519 private key in PKCS#8."""
    found = [path for path in root.rglob("*") if path.is_file() and ED25519_PKCS8_PREFIX in path.read_bytes()]
    return found + [path for path in root.rglob("kek.key")]


async def list_keys(rotor: Rotor, admin: Credentials, include_expired: bool = True) -> list[rotor_client.Key]:
    response = await rotor.admin.ListKeys(
        rotor_client.ListKeysRequest(include_expired=include_expired), metadata=admin.metadata, timeout=30
    )
    return list(response.keys)


async def refresh(rotor: Rotor, client: Credentials, token: str) -> rotor_client.TokenResponse:
    request = rotor_client.RefreshRequest(refresh_token=token)
    return await rotor.tokens.Refresh(request, metadata=client.metadata, timeout=30)


def verified(rotor_key_set: rotor_client.KeySet, token: str) -> dict[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    (key,) = [k for k in rotor_key_set.keys if k.kid == kid]
    public = jwt.PyJWK(json.loads(key.public_jwk_json))
    claims: dict[str, object] = jwt.decode(
        token, public.key, algorithms=[key.alg], audience=AUDIENCE, options={"verify_exp": False}
    )
    return claims


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "ES384", "PS256", "RS256"])
async def test_tokens_signed_on_the_token_verify_with_the_published_key(
    make_rotor: MakeRotor, softhsm: SoftHsm, algorithm: str
) -> None:
    rotor = await make_rotor(pkcs11=softhsm.config, keys={"algorithm": algorithm, "rsa_bits": 2048})
    svc = await rotor.add_client("svc-orders")
    issued = await rotor.issue(svc)
    assert verified(await rotor.key_set(), issued.access_token)["sub"] == "svc-orders"
    assert jwt.get_unverified_header(issued.access_token)["alg"] == algorithm


async def test_the_token_holds_exactly_the_keys_that_may_sign_and_the_store_no_private_key(
    make_rotor: MakeRotor, softhsm: SoftHsm
) -> None:
    rotor = await make_rotor(pkcs11=softhsm.config)
    admin = await rotor.add_client("ops-admin", admin=True)
    for immediate in (False, True, True):  # a pending key, then two rotations that retire and expire
        await rotor.admin.RotateKeys(
            rotor_client.RotateKeysRequest(reason="test", immediate=immediate),
            metadata=admin.metadata,
            timeout=30,
        )
    keys = await list_keys(rotor, admin)
    active = next(k for k in keys if key_state(k) == "ACTIVE")
    await rotor.admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=active.kid, reason="test"), metadata=admin.metadata, timeout=30
    )
    keys = await list_keys(rotor, admin)
    assert {k.key_store for k in keys} == {"pkcs11"}
    assert {key_state(k) for k in keys} >= {"ACTIVE", "RETIRED", "REVOKED", "EXPIRED"}
    may_sign = {k.kid for k in keys if key_state(k) in ("PENDING", "ACTIVE")}
    assert softhsm.private_labels() == may_sign
    for kid in may_sign:
        assert softhsm.attributes(kid) == {"token": True, "sensitive": True, "extractable": False}

    # the token refuses to hand the private half out, so there are no key bytes to look for:
    # the store holds only each object's label, and no file holds a private key or a KEK
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    with softhsm._session() as session:  # type: ignore[no-untyped-call]
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=next(iter(may_sign)))
        with pytest.raises(pkcs11.AttributeSensitive):
            key[Attribute.VALUE]
    for stored in await rotor.server.store.list_keys(""):
        assert stored.sealed_private in (None, stored.kid.encode())
    assert private_key_files(Path(rotor.config.data_dir)) == []


async def test_a_token_that_fails_makes_signing_unavailable_changes_nothing_and_recovers(
    make_rotor: MakeRotor, softhsm: SoftHsm
) -> None:
    rotor = await make_rotor(pkcs11=softhsm.config, http_listen="127.0.0.1:0")
    svc = await rotor.add_client("svc-orders")
    grant = await rotor.issue(svc)
    health = health_pb2_grpc.HealthStub(rotor.channel())

    async def ready() -> bool:
        url = f"http://127.0.0.1:{rotor.server.http_port}/readyz"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            return response.status == 200

    async def serving() -> bool:
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    sequence = await rotor.server.store.last_sequence()
    families = await grants(rotor)

    async def issue_refused() -> bool:
        try:
            await rotor.issue(svc)
        except grpc.aio.AioRpcError as e:
            assert_error(e, grpc.StatusCode.UNAVAILABLE, "SIGNER_UNAVAILABLE")
            return True
        return False  # the open session may answer from memory until the check sees the token gone

    with softhsm.away():
        await until(issue_refused, "Issue never answered SIGNER_UNAVAILABLE while the token was away")
        err = await failure(refresh(rotor, svc, grant.refresh_token))
        assert_error(err, grpc.StatusCode.UNAVAILABLE, "SIGNER_UNAVAILABLE")
        await until(lambda: _not(ready), "/readyz never answered 503 while the token was away")
        await until(lambda: _not(serving), "gRPC health never went NOT_SERVING while the token was away")
    await until(ready, "/readyz never came back with the token")
    await until(serving, "gRPC health never came back with the token")

    # the refused refresh did not use the refresh token up, and the refused Issues left no grant
    assert await grants(rotor) == families
    refreshed = await refresh(rotor, svc, grant.refresh_token)
    assert verified(await rotor.key_set(), refreshed.access_token)["sub"] == "svc-orders"
    assert verified(await rotor.key_set(), (await rotor.issue(svc)).access_token)["sub"] == "svc-orders"
    assert await rotor.server.store.last_sequence() == sequence  # no key event either


async def grants(rotor: Rotor) -> tuple[int, int, int]:
    """Refresh families, refresh tokens, and those used, in the server's SQLite store."""
    return count_grants(rotor.config.sqlite_path)


def count_grants(path: Path) -> tuple[int, int, int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        (families,) = db.execute("SELECT count(*) FROM refresh_families").fetchone()
        tokens, used = db.execute("SELECT count(*), count(used_at) FROM refresh_tokens").fetchone()
    return families, tokens, used


async def _not(condition: Callable[[], Awaitable[bool]]) -> bool:
    return not await condition()


async def test_a_sealed_deployment_moves_to_the_token_by_config(
    make_rotor: MakeRotor, softhsm: SoftHsm, tmp_path: Path
) -> None:
    """Its sealed keys keep verifying (the active one keeps signing) until they expire; the next key
    is made on the token."""
    data_dir = str(tmp_path / "moving")
    sealed = await make_rotor(data_dir=data_dir)
    svc = await sealed.add_client("svc-orders")
    admin = await sealed.add_client("ops-admin", admin=True)
    before = await sealed.issue(svc)
    await sealed.stop()

    moved = await make_rotor(data_dir=data_dir, pkcs11=softhsm.config)
    assert {k.key_store for k in await list_keys(moved, admin)} == {"sealed"}
    still = await moved.issue(svc)  # the sealed active key signs on until its retirement
    assert (
        jwt.get_unverified_header(still.access_token)["kid"]
        == jwt.get_unverified_header(before.access_token)["kid"]
    )
    await moved.admin.RotateKeys(
        rotor_client.RotateKeysRequest(reason="next key", immediate=True), metadata=admin.metadata, timeout=30
    )
    keys = await list_keys(moved, admin)
    by_kid = {k.kid: (key_state(k), k.key_store) for k in keys}
    old_kid = jwt.get_unverified_header(before.access_token)["kid"]
    assert by_kid[old_kid] == ("RETIRED", "sealed")
    new = await moved.issue(svc)
    new_kid = jwt.get_unverified_header(new.access_token)["kid"]
    assert by_kid[new_kid] == ("ACTIVE", "pkcs11")
    assert softhsm.private_labels() == {new_kid}
    key_set = await moved.key_set()
    for token in (before.access_token, still.access_token, new.access_token):
        assert verified(key_set, token)["sub"] == "svc-orders"


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        pytest.param(
            {"module": "/nonexistent/libpkcs11.so"}, "is not a PKCS#11 library that loads", id="module"
        ),
        pytest.param({"token_label": "no-such-token"}, "no token labelled 'no-such-token'", id="token"),
        pytest.param({"pin": "0000"}, "the PIN for token 'rotor' is wrong", id="pin"),
        pytest.param({"pin": ""}, "set the environment variable ROTOR_PKCS11_PIN", id="no-pin"),
    ],
)
async def test_start_up_refuses_a_token_it_cannot_use_with_one_clear_line(
    make_rotor: MakeRotor,
    softhsm: SoftHsm,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, str],
    refusal: str,
) -> None:
    if "pin" in change:
        monkeypatch.setenv("ROTOR_PKCS11_PIN", change["pin"])
    config = replace(softhsm.config, **{k: v for k, v in change.items() if k != "pin"})
    with pytest.raises(CryptoError) as refused:
        await make_rotor(pkcs11=config)
    message = str(refused.value)
    assert refusal in message
    assert "\n" not in message and len(message) < 300


def test_start_up_refuses_an_algorithm_the_token_cannot_do(softhsm: SoftHsm) -> None:
    from rotor.core.hsm import Pkcs11SetupError, open_token

    with pytest.raises(
        Pkcs11SetupError, match=r"token 'rotor' cannot do HS256 .*choose another keys.algorithm"
    ):
        open_token(softhsm.module, softhsm.label, softhsm.pin, ("EdDSA", "HS256"))
