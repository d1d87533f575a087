"""A pytest plugin: the shared acceptance suite with every server on PostgreSQL.

    make acceptance-postgres    # PYTHONPATH=tests pytest ../shared/acceptance -p acceptance_postgres

The suite writes each server's config itself; this plugin adds
`database_url` to it, naming a schema of its own per server work directory
(so a restarted server finds its data again, and servers never share any).
Rotor creates the schema on first start; the plugin drops them all at the end.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest

DATABASE = os.environ.get("ROTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = "rotor_acceptance_"
_schemas: set[str] = set()


def schema_for(workdir: Any) -> str:
    return PREFIX + hashlib.sha256(str(workdir).encode()).hexdigest()[:16]


def pytest_plugin_registered(plugin: object) -> None:
    server = getattr(plugin, "Server", None)
    if server is None or not hasattr(plugin, "BASE_CONFIG") or getattr(server, "_on_postgres", False):
        return
    original = server.__init__

    def on_postgres(self: Any, api: Any, workdir: Any, overrides: dict[str, Any] | None = None) -> None:
        schema = schema_for(workdir)
        _schemas.add(schema)
        original(
            self, api, workdir, {**(overrides or {}), "database_url": f"{DATABASE}?search_path={schema}"}
        )

    server.__init__ = on_postgres
    server._on_postgres = True


def pytest_report_header() -> str:
    return f"acceptance on PostgreSQL: {urlsplit(DATABASE).hostname}{urlsplit(DATABASE).path}, a schema per server"


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _schemas:
        return
    url = urlsplit(DATABASE)
    drops = "".join(f'DROP SCHEMA IF EXISTS "{s}" CASCADE;' for s in sorted(_schemas))
    subprocess.run(
        [
            "psql",
            "-h",
            url.hostname or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            "-d",
            url.path.lstrip("/") or "test",
            "-q",
            "-c",
            drops,
        ],
        check=False,
        capture_output=True,
    )
