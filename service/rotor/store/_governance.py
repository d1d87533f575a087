"""Transaction methods both SQL backends share: the audit chain and client-wide revocations.

Mixed into each backend's transaction class, whose `_one`, `_count` and
`_changed` run rotor.store._sql's statements in that backend's dialect.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rotor.core.audit import chain_hash
from rotor.core.model import AuditEntry, ClientRevocation
from rotor.store import _sql, rows


class GovernanceTx:
    # appended to the head's SELECT where the backend needs a row lock to serialize appenders
    LOCK_HEAD = ""

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        raise NotImplementedError  # the backend's

    async def _count(self, sql: str, params: Iterable[Any], what: str = "row") -> int:
        raise NotImplementedError

    async def _changed(self, sql: str, params: Iterable[Any], what: str = "row") -> bool:
        raise NotImplementedError

    async def append_audit(
        self,
        occurred_at: float,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        tenant: str,
        details_json: str,
    ) -> AuditEntry:
        head = await self._one(_sql.AUDIT_HEAD + self.LOCK_HEAD)
        sequence, prev_hash = int(head[0]) + 1, str(head[1])
        digest = chain_hash(
            prev_hash, sequence, occurred_at, actor, action, target, outcome, tenant, details_json
        )
        entry = AuditEntry(
            sequence, occurred_at, actor, action, target, outcome, tenant, details_json, prev_hash, digest
        )
        await self._changed(_sql.INSERT_AUDIT, rows.audit_values(entry), "audit entry")
        await self._changed(_sql.ADVANCE_AUDIT_HEAD, (sequence, digest))
        return entry

    async def revoke_client_families(self, client_id: str, at: float, reason: str) -> int:
        return await self._count(_sql.REVOKE_CLIENT_FAMILIES, (at, reason, client_id))

    async def put_client_revocation(self, revocation: ClientRevocation) -> None:
        await self._changed(_sql.UPSERT_CLIENT_REVOCATION, rows.client_revocation_values(revocation))
