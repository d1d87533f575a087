"""`rotor serve --workers N`: N server processes sharing one port (SO_REUSEPORT) and one store.

The parent prepares what must happen once (the store's migrations, the dev
key-encryption key), then starts the workers and watches them: a worker that
dies is started again (a worker that keeps dying stops them all), and SIGTERM
or SIGINT is passed on to every worker, whose graceful stop the parent awaits.
Each worker is `rotor` itself, run with the same arguments and WORKER_ENV set.
The workers write their metrics to one directory (PROMETHEUS_MULTIPROC_DIR, a
fresh one the parent makes and removes unless the environment names one), so
that a scrape of /metrics on any worker counts the whole server.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("rotor.workers")

WORKER_ENV = "ROTOR_WORKER"  # set in each worker: its index, 0..N-1
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # where the workers write their metrics
RESTART_DELAY = 1.0  # seconds before a dead worker is started again
MAX_RESTARTS = 5  # within RESTART_WINDOW: more means something is wrong with every start
RESTART_WINDOW = 60.0
STOP_TIMEOUT = 30.0


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a worker."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


class Supervisor:
    """Starts and watches the worker processes."""

    def __init__(self, argv: Sequence[str], count: int) -> None:
        self._argv = list(argv)
        self._count = count
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._restarts: list[float] = []
        self._stopping = False
        self._metrics_dir = os.environ.get(MULTIPROCESS_ENV) or ""
        self._own_metrics_dir = False

    def _start(self, index: int) -> None:
        env = {**os.environ, WORKER_ENV: str(index), MULTIPROCESS_ENV: self._metrics_dir}
        argv = [sys.executable, "-m", "rotor.cli", *self._argv]  # our own arguments, not input
        self._workers[index] = subprocess.Popen(argv, env=env)  # noqa: S603
        log.info("worker %d started (pid %d)", index, self._workers[index].pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("stopping %d workers (%s)", len(self._workers), signal.Signals(signum).name)
        self._stopping = True
        for proc in self._workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        if not self._metrics_dir:
            self._metrics_dir = tempfile.mkdtemp(prefix="rotor-metrics-")
            self._own_metrics_dir = True
        else:
            os.makedirs(self._metrics_dir, exist_ok=True)
        try:
            return self._run()
        finally:
            if self._own_metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _dead(self, pid: int) -> None:
        """A worker is gone: its live gauges (watchers, rotator leader) stop counting."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for index in range(self._count):
            self._start(index)
        failed = False
        while not self._stopping:
            time.sleep(0.2)
            for index, proc in list(self._workers.items()):
                code = proc.poll()
                if code is None or self._stopping:
                    continue
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW] + [now]
                if len(self._restarts) > MAX_RESTARTS:
                    log.error(
                        "workers keep exiting (%d restarts in %.0f s); stopping", MAX_RESTARTS, RESTART_WINDOW
                    )
                    failed = True
                    self._on_signal(signal.SIGTERM, None)
                    break
                log.warning("worker %d (pid %d) exited with %d; starting it again", index, proc.pid, code)
                self._dead(proc.pid)
                time.sleep(RESTART_DELAY)
                self._start(index)
        return self._wait() if not failed else max(self._wait(), 1)

    def _wait(self) -> int:
        deadline = time.monotonic() + STOP_TIMEOUT
        worst = 0
        for index, proc in self._workers.items():
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0f s; killing it", index, STOP_TIMEOUT)
                proc.kill()
                code = proc.wait()
            worst = worst or (code if code > 0 else 0)
        log.info("all workers stopped")
        return worst
