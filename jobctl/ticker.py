"""The job-control timer every `jobctl worker` runs in its own process: fires due recurring schedules,
sweeps dependency waits, and restarts RQ's scheduler in this worker when the one that moved due jobs
is gone (RQ itself only retries every 10 minutes)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("jobctl.ticker")

TICK = 1.0  # recurring schedules fire within about a second of their time
SWEEP_EVERY = 5.0


class Ticker(threading.Thread):
    """Runs `tick()` every TICK seconds until stopped."""

    def __init__(
        self,
        worker: Any,
        burst: bool = False,
        lock: Any = None,
    ) -> None:
        super().__init__(name="jobctl-ticker", daemon=True)
        self.worker = worker
        self.burst = burst
        # The worker's fork lock: no work-horse is forked while a round holds a database transaction.
        self.lock = lock if lock is not None else threading.Lock()
        self.stopped = threading.Event()
        self.next_sweep = time.monotonic() + SWEEP_EVERY

    def run(self) -> None:
        while not self.stopped.wait(TICK):
            with self.lock:
                self.tick()

    def tick(self) -> None:
        """One round: schedules every tick; dependency sweep and scheduler check every few seconds."""
        from . import dependencies, scheduling

        try:
            scheduling.fire_due()
        except Exception as exc:  # the database or Redis is down: try again next tick
            log.debug("schedules not fired: %s", exc)
        if time.monotonic() < self.next_sweep:
            return
        self.next_sweep = time.monotonic() + SWEEP_EVERY
        try:
            dependencies.sweep()
        except Exception as exc:
            log.debug("dependency sweep failed: %s", exc)
        try:
            self.keep_scheduler()
        except Exception as exc:
            log.debug("scheduler check failed: %s", exc)

    def keep_scheduler(self) -> None:
        """Take over RQ's scheduler (it moves `--at`/`--in` jobs and retry backoffs onto their queues)
        when no live scheduler holds this worker's queues."""
        scheduler = getattr(self.worker, "scheduler", None)
        if scheduler is None or self.burst or self.stopped.is_set() or self._worker_stopping():
            return
        process = getattr(scheduler, "_process", None)
        if process is not None and process.is_alive():
            return
        scheduler.acquire_locks(auto_start=True)

    def _worker_stopping(self) -> bool:
        # RQ marks a warm shutdown with _shutdown_requested_date (idle) or _stop_requested (busy).
        worker = self.worker
        requested = getattr(worker, "_shutdown_requested_date", None)
        return bool(getattr(worker, "_stop_requested", False) or requested is not None)

    def stop(self) -> None:
        """Stop ticking (the current round finishes), and stop a scheduler this ticker started after
        the worker had stopped its own (a live scheduler child would keep the worker from exiting)."""
        self.stopped.set()
        if self.is_alive():
            self.join(5)
        scheduler = getattr(self.worker, "scheduler", None)
        process = getattr(scheduler, "_process", None)
        if process is not None and process.is_alive():
            self.worker.stop_scheduler()
