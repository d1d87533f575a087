"""A real Rotor server in this process, on 127.0.0.1:0, called through rotor_client over gRPC.

`make_rotor(keys={...}, tokens={...}, clock=..., heartbeat_interval=...)` starts a RotorServer
on its own SQLite store under tmp_path (keys and tokens override the test policy below; the
rest goes to RotorServer); `rotor` is one with the test policy. Everything opened here
(servers, channels, streams) is closed at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from rotor.app import RotorServer
from rotor.config import Config, LimitsConfig, Pkcs11Config, TenantConfig, TlsConfig

from .support import BASE_KEYS, BASE_TOKENS, ISSUER, Credentials, Rotor

MakeRotor = Callable[..., Awaitable[Rotor]]


@pytest.fixture
async def make_rotor(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeRotor]:
    """Factory: await make_rotor(keys={...}, tokens={...}, limits={...}, http_listen=..., tenants={...},
    status_access=..., pkcs11=..., data_dir=..., **RotorServer options) -> a started Rotor.

    `pkcs11` (the `softhsm` fixture's config) makes new keys on that token; `data_dir` reuses
    another server's directory (and so its SQLite store and KEK)."""
    monkeypatch.delenv("ROTOR_KEK", raising=False)  # the key file under data_dir, as the tests expect
    started: list[Rotor] = []

    async def make(
        *,
        keys: dict[str, Any] | None = None,
        tokens: dict[str, Any] | None = None,
        http_listen: str = "",
        tls: TlsConfig | None = None,
        tenants: dict[str, TenantConfig] | None = None,
        limits: dict[str, Any] | None = None,
        listen: str = "127.0.0.1:0",
        status_access: str = "admin",
        pkcs11: Pkcs11Config | None = None,
        data_dir: str | None = None,
        **server_options: Any,
    ) -> Rotor:
        key_store = {"key_store": "pkcs11"} if pkcs11 is not None else {}
        config = Config(
            listen=listen,
            http_listen=http_listen,
            tls=tls or TlsConfig(),
            data_dir=data_dir or str(tmp_path / f"data{len(started)}"),
            issuer=ISSUER,
            keys=replace(BASE_KEYS, **{**key_store, **(keys or {})}),
            pkcs11=pkcs11 or Pkcs11Config(),
            tokens=replace(BASE_TOKENS, **(tokens or {})),
            tenants=tenants or {},
            limits=LimitsConfig(**(limits or {})),
            status_access=status_access,
        )
        server = RotorServer(config, **server_options)
        await server.start()
        rotor = Rotor(server)
        started.append(rotor)
        return rotor

    yield make
    for rotor in started:
        await rotor.close()


@pytest.fixture
async def rotor(make_rotor: MakeRotor) -> Rotor:
    return await make_rotor()


@pytest.fixture
async def svc(rotor: Rotor) -> Credentials:
    """An ordinary client: audience "api", scopes orders.read and orders.write."""
    return await rotor.add_client("svc-orders")


@pytest.fixture
async def ops(rotor: Rotor) -> Credentials:
    """An admin client."""
    return await rotor.add_client("ops-admin", admin=True)
