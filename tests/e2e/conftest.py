"""Fixtures for the e2e tests: `rotor serve` processes, killed at teardown whatever happened."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .support import RotorProcess

MakeServer = Callable[..., RotorProcess]


@pytest.fixture
def make_server(tmp_path: pathlib.Path) -> Iterator[MakeServer]:
    """Factory: make_server(overrides, start=True, env=None) -> a RotorProcess on its own data dir and
    port (`env`: variables it gets, such as a token's SOFTHSM2_CONF and PIN)."""
    servers: list[RotorProcess] = []

    def make(
        overrides: dict[str, Any] | None = None, start: bool = True, env: dict[str, str] | None = None
    ) -> RotorProcess:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = RotorProcess(workdir, overrides, env)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.close()
