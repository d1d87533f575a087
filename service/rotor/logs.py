"""Logging: one event per line, JSON by default (`log_format`, `log_level` in the config).

Each line carries the request id and the authenticated client id of the RPC
it belongs to, when there is one. Nothing logged here ever holds a secret or
a token: messages name clients, kids, families and jtis, never credentials.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import re
import secrets
import sys
from datetime import UTC, datetime
from typing import Any

from rotor.metrics import caller

# the id of the RPC being handled: the caller's x-request-id when it is sane, else a fresh one
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("rotor_request_id", default="")
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "text")


_PROCESS = secrets.token_hex(4)  # fresh ids: this process's random prefix and a count
_COUNT = itertools.count(1)


def new_request_id(metadata: Any) -> str:
    """The x-request-id the caller sent, if it is a short plain token; else a fresh id, unique
    within this process and, by its random prefix, almost surely across processes."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and _SANE_ID.fullmatch(value):
            return value
    return f"{_PROCESS}{next(_COUNT):08x}"


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", "request_id"?, "client_id"?, "exc"?} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid, client = request_id.get(), caller.get()
        if rid:
            entry["request_id"] = rid
        if client:
            entry["client_id"] = client
        worker = getattr(record, "worker", None)
        if worker is not None:
            entry["worker"] = worker
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines, with the request and client ids when there are some."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid, client = request_id.get(), caller.get()
        if rid:
            line += f" [request {rid}{' client ' + client if client else ''}]"
        return line


def setup(log_format: str = "json", level: str = "info", worker: int | None = None) -> None:
    """Configure the root logger for `rotor serve` (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        if worker is not None:
            handler.addFilter(_WorkerFilter(worker))
    else:
        handler.setFormatter(TextFormatter("" if worker is None else f"[worker {worker}] "))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _WorkerFilter(logging.Filter):
    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True
