"""`rotor audit verify` and `rotor audit export` on a real server's store, honest and tampered with.

One module-wide history (clients added, keys rotated with the CLI, tokens and a family revoked,
a client disabled, an admin call refused) is written by a `rotor serve` process; each tampering
test works on its own copy of that store, edited with the sqlite3 module as an intruder would.
"""

from __future__ import annotations

import json
import pathlib
import re
import shlex
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import rotor_client
from rotor.core.audit import chain_hash

from .conftest import MakeServer
from .support import (
    BASE_CONFIG,
    RotorProcess,
    bash,
    basic,
    env_with_bin,
    merged,
    rotor_exe,
    run_rotor,
    to_toml,
)

EXPORT_FIELDS = {
    "sequence",
    "occurred_at",
    "actor",
    "action",
    "target",
    "outcome",
    "tenant",
    "details_json",
    "hash",
    "prev_hash",
}
COLUMNS = "sequence, occurred_at, actor, action, target, outcome, tenant, details_json, prev_hash, hash"


@dataclass(frozen=True)
class Store:
    """A config file and the SQLite file it points at."""

    workdir: pathlib.Path
    config_path: pathlib.Path

    @property
    def db(self) -> pathlib.Path:
        return self.workdir / "data" / "rotor.db"

    def audit(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`rotor audit ARGS... --config FILE`."""
        return run_rotor("audit", *args, "--config", str(self.config_path), cwd=self.workdir)

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            found = conn.execute(statement, params).fetchall()
            conn.commit()
            return found
        finally:
            conn.close()

    def rows(self) -> list[tuple[Any, ...]]:
        return self.sql(f"SELECT {COLUMNS} FROM audit_events ORDER BY sequence")


def verified(done: subprocess.CompletedProcess[str]) -> int:
    """The entry count `audit verify` reports (it must have succeeded)."""
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    match = re.search(r"(\d+) entries", done.stdout)
    assert match, f"verify did not say how many entries: {done.stdout!r}"
    return int(match.group(1))


def broken_at(done: subprocess.CompletedProcess[str]) -> str:
    """What `audit verify` said when it failed: one line, no traceback."""
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"verify passed a tampered log:\n{output}"
    assert "Traceback" not in output, output
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return output


def names_sequence(output: str, sequence: int) -> bool:
    return re.search(rf"\bsequence {sequence}\b", output) is not None


def admin_env(client: dict[str, str]) -> dict[str, str]:
    return env_with_bin(ROTOR_CLIENT_ID=client["client_id"], ROTOR_CLIENT_SECRET=client["client_secret"])


def make_history(server: RotorProcess) -> None:
    """Security events of every kind, through the CLI and gRPC, on a running server."""
    admin = server.add_client("ops", "--admin")
    svc = server.add_client("svc", "--scope", "orders.read", "--audience", "api")
    server.add_client("acme-billing", "--tenant", "acme", "--audience", "api")
    for extra in ([], ["--immediate"]):
        rotate = ("keys", "rotate", *extra, "--reason", "drill", "--target", server.address)
        done = run_rotor(*rotate, cwd=server.workdir, env=admin_env(admin))
        assert done.returncode == 0, done.stderr
    refused = run_rotor("keys", "list", "--target", server.address, cwd=server.workdir, env=admin_env(svc))
    assert refused.returncode != 0  # an admin.denied entry
    tokens = server.tokens()
    first = tokens.Issue(rotor_client.IssueRequest(), metadata=basic(svc), timeout=30)
    second = tokens.Issue(rotor_client.IssueRequest(), metadata=basic(svc), timeout=30)
    for token in (first.access_token, second.refresh_token):
        revoked = tokens.Revoke(rotor_client.RevokeRequest(token=token, reason="leaked"), metadata=basic(svc))
        assert revoked.revoked
    done = server.cli("clients", "disable", "svc")
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """The data directory of a stopped server that wrote a varied audit log."""
    workdir = tmp_path_factory.mktemp("history")
    server = RotorProcess(workdir)
    try:
        server.start()
        make_history(server)
        assert server.terminate() == 0, server.log()
    finally:
        server.close()
    yield workdir / "data"


@pytest.fixture
def store(history: pathlib.Path, tmp_path: pathlib.Path) -> Store:
    """A private copy of the history's store, with a config that points at it."""
    shutil.copytree(history, tmp_path / "data")
    config_path = tmp_path / "rotor.toml"
    config_path.write_text(to_toml(merged(BASE_CONFIG, {"data_dir": str(tmp_path / "data")})))
    return Store(tmp_path, config_path)


# -- verify ---------------------------------------------------------------------------


def test_verify_passes_an_untouched_log_and_says_how_many_entries(store: Store) -> None:
    """After real activity, verify exits 0 and counts every entry, of every kind."""
    rows = store.rows()
    assert verified(store.audit("verify")) == len(rows)
    actions = {r[3] for r in rows}
    for expected in (
        "client.created",
        "key.published",
        "key.activated",
        "key.retired",
        "key.expired",
        "admin.denied",
        "token.revoked",
        "family.revoked",
        "client.disabled",
    ):
        assert expected in actions, f"no {expected} entry in {sorted(actions)}"


def test_an_edited_target_makes_verify_fail_naming_its_sequence(store: Store) -> None:
    """UPDATE one row's target: verify exits non-zero naming that row; undoing the edit heals it."""
    rows = store.rows()
    victim = rows[len(rows) // 2]
    store.sql("UPDATE audit_events SET target = 'someone-else' WHERE sequence = ?", (victim[0],))
    assert names_sequence(broken_at(store.audit("verify")), victim[0])
    store.sql("UPDATE audit_events SET target = ? WHERE sequence = ?", (victim[4], victim[0]))
    assert verified(store.audit("verify")) == len(rows)


@pytest.mark.parametrize("column", ["occurred_at", "actor", "action", "outcome", "tenant", "details_json"])
def test_an_edit_of_any_field_makes_verify_fail_naming_its_sequence(store: Store, column: str) -> None:
    """Whatever field is changed, verify names the edited entry."""
    victim = store.rows()[3][0]
    new_value: Any = 1.0 if column == "occurred_at" else "x"
    store.sql(f"UPDATE audit_events SET {column} = ? WHERE sequence = ?", (new_value, victim))
    assert names_sequence(broken_at(store.audit("verify")), victim)


def test_a_row_rehashed_after_an_edit_breaks_the_next_entry(store: Store) -> None:
    """An intruder who recomputes the edited row's hash is caught at the next entry's prev_hash."""
    rows = store.rows()
    sequence, at, actor, action, _, outcome, tenant, details_json, prev_hash, _ = rows[4]
    forged = chain_hash(prev_hash, sequence, at, actor, action, "forged", outcome, tenant, details_json)
    store.sql("UPDATE audit_events SET target = 'forged', hash = ? WHERE sequence = ?", (forged, sequence))
    assert names_sequence(broken_at(store.audit("verify")), sequence + 1)


def test_a_deleted_middle_row_makes_verify_fail_naming_the_missing_sequence(store: Store) -> None:
    """DELETE a row in the middle: verify names the sequence that is missing."""
    rows = store.rows()
    missing = rows[len(rows) // 2][0]
    store.sql("DELETE FROM audit_events WHERE sequence = ?", (missing,))
    output = broken_at(store.audit("verify"))
    assert names_sequence(output, missing) and "missing" in output


def test_a_deleted_first_row_makes_verify_fail_naming_sequence_one(store: Store) -> None:
    """DELETE the first entry: verify names sequence 1."""
    store.sql("DELETE FROM audit_events WHERE sequence = 1")
    assert names_sequence(broken_at(store.audit("verify")), 1)


def test_a_deleted_last_row_is_caught_by_the_head(store: Store) -> None:
    """DELETE the newest entries: the chain that is left is whole, but the head says more; verify
    names the first deleted sequence."""
    rows = store.rows()
    last = rows[-1][0]
    store.sql("DELETE FROM audit_events WHERE sequence = ?", (last,))
    assert names_sequence(broken_at(store.audit("verify")), last)
    store.sql("DELETE FROM audit_events WHERE sequence >= ?", (last - 3,))
    assert names_sequence(broken_at(store.audit("verify")), last - 3)


def test_a_rewritten_last_row_is_caught_by_the_heads_hash(store: Store) -> None:
    """Edit the newest entry and recompute its hash (no later entry to break): the head's hash
    does not match, and verify names that entry."""
    sequence, at, actor, action, _, outcome, tenant, details_json, prev_hash, _ = store.rows()[-1]
    forged = chain_hash(prev_hash, sequence, at, actor, action, "forged", outcome, tenant, details_json)
    store.sql("UPDATE audit_events SET target = 'forged', hash = ? WHERE sequence = ?", (forged, sequence))
    assert names_sequence(broken_at(store.audit("verify")), sequence)


def test_an_edit_while_the_server_runs_makes_verify_fail(make_server: MakeServer) -> None:
    """Tampering with the live store (WAL): verify, also run while the server serves, names the row."""
    server = make_server()
    server.add_client("ops", "--admin")
    server.add_client("svc")
    live = Store(server.workdir, server.config_path)
    rows = live.rows()
    assert verified(live.audit("verify")) == len(rows)
    victim = rows[-1][0]  # the last client's client.created
    live.sql("UPDATE audit_events SET actor = 'intruder' WHERE sequence = ?", (victim,))
    assert names_sequence(broken_at(live.audit("verify")), victim)
    assert server.running()


# -- export ---------------------------------------------------------------------------


def test_export_writes_one_json_object_per_entry(store: Store) -> None:
    """export --since 2026-01-01T00:00:00Z: one JSON object a line, in order, with every field;
    occurred_at is ISO 8601 UTC; the values are the stored ones."""
    done = store.audit("export", "--since", "2026-01-01T00:00:00Z")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = store.rows()
    assert len(lines) == len(rows) and all(line.strip() for line in lines)
    for line, stored in zip(lines, rows, strict=True):
        entry = json.loads(line)
        assert set(entry) == EXPORT_FIELDS, sorted(entry)
        assert isinstance(entry["sequence"], int)
        at = datetime.fromisoformat(entry["occurred_at"].replace("Z", "+00:00"))
        assert at.tzinfo is not None and at.utcoffset() == UTC.utcoffset(None)
        assert abs(at.timestamp() - stored[1]) < 1
        by_column = dict(zip(COLUMNS.split(", "), stored, strict=True))
        assert {k: v for k, v in entry.items() if k != "occurred_at"} == {
            k: v for k, v in by_column.items() if k != "occurred_at"
        }
        json.loads(entry["details_json"])


def test_export_since_the_future_prints_nothing(store: Store) -> None:
    """--since a moment after every entry: exit 0 and no output."""
    done = store.audit("export", "--since", "2999-01-01T00:00:00Z")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_export_since_a_moment_keeps_the_entries_at_or_after_it(store: Store) -> None:
    """--since a whole second (the newest entry's) keeps exactly the entries from then on."""
    rows = store.rows()
    cut = int(rows[-1][1])
    since = datetime.fromtimestamp(cut, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = store.audit("export", "--since", since)
    assert done.returncode == 0, done.stderr
    exported = [json.loads(line)["sequence"] for line in done.stdout.splitlines()]
    assert exported == [r[0] for r in rows if r[1] >= cut]
    assert 0 < len(exported) < len(rows), "the history spans less than a second: nothing was cut"


def test_export_piped_into_head_stops_quietly(store: Store) -> None:
    """`rotor audit export | head -1`: the reader hangs up early; export ends without a traceback."""
    [(last,)] = store.sql("SELECT sequence FROM audit_head")
    filler = [
        (last + i, 1.8e9, "cli", "client.created", f"c{i}", "success", "", "{}", "0" * 64, "0" * 64)
        for i in range(1, 3001)
    ]
    conn = sqlite3.connect(store.db)
    with conn:  # far more than a pipe holds (export does not verify: the chain does not matter here)
        conn.executemany(f"INSERT INTO audit_events ({COLUMNS}) VALUES ({', '.join('?' * 10)})", filler)
    conn.close()
    done = bash(
        f"{shlex.quote(rotor_exe())} audit export --config {shlex.quote(str(store.config_path))} | head -1",
        env=env_with_bin(),
        cwd=store.workdir,
    )
    assert json.loads(done.stdout)["sequence"] == 1
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01T00:00:00Z", "2026-01-01T25:00:00Z", "1e9"])
def test_export_with_a_bad_since_is_a_one_line_error(store: Store, since: str) -> None:
    """A --since that is not an ISO 8601 time: non-zero exit, one line naming --since, no output."""
    done = store.audit("export", "--since", since)
    assert done.returncode != 0 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "--since" in done.stderr, done.stderr
