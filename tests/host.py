"""What the tests share with every other process on the machine: loopback ports, and things that
only one process may use at a time (the dev server's fixed port, an `npm ci` in the checkout).

`make test` runs the suite over several pytest-xdist workers, and other checkouts may run theirs
at the same time, so neither may assume it is alone.

`free_port()`: binding port 0 and closing the socket hands out a port of the kernel's ephemeral
range, from which every other bind to port 0 (any in-process server on 127.0.0.1:0, in another
worker) draws too: one can take the port before the process it was meant for binds it. So the
ports come from below the ephemeral range instead, a block per xdist worker, each handed out once
per session and only when nothing holds it.

`exclusive(name)`: an flock on a file in the temporary directory, held for the block, waited for
with a deadline.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

FIRST_PORT = 15000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker() -> tuple[int, int]:
    """This xdist worker's index and the number of workers ((0, 1) without xdist)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(name.removeprefix("gw")) if name.removeprefix("gw").isdigit() else 0
    return index % max(count, 1), max(count, 1)


def _candidates() -> Iterator[int]:
    """This worker's block of ports, from a random place in it (another session's walk is elsewhere)."""
    last = _ephemeral_low() - 1
    if last - FIRST_PORT < 1000:  # an unusual ephemeral range: let the kernel choose
        while True:
            yield 0
    index, count = _worker()
    size = (last - FIRST_PORT + 1) // count
    first = FIRST_PORT + index * size
    start = random.randrange(size)
    for n in itertools.count():
        yield first + (start + n) % size


_ports = _candidates()


def free_port() -> int:
    """A loopback port nothing listens on, for a server that must be told its port up front."""
    for port in _ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # held, or in TIME_WAIT: try the next
            return int(s.getsockname()[1])
    raise AssertionError("unreachable")


@contextlib.contextmanager
def exclusive(name: str, timeout: float = 600.0) -> Iterator[None]:
    """Holds the machine-wide lock `name` for the block; fails after `timeout` seconds of waiting."""
    path = Path(tempfile.gettempdir()) / f"rotor-tests-{name}.lock"
    with open(path, "a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{path} still held by another test after {timeout:.0f}s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
