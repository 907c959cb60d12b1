"""Time limits inside a running job: the soft limit raises `SoftTimeout` in the task so it can clean up;
past the hard limit (RQ's death penalty raises there) a task that kept going has its process killed."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("jobctl.timeouts")

# SIGALRM is RQ's hard-limit timer and SIGTERM jobctl's cancel signal; SIGUSR1 is free in work-horses.
SOFT_SIGNAL = signal.SIGUSR1


class SoftTimeout(Exception):
    """Raised inside a task when its soft time limit passes: clean up, then return or re-raise."""


def effective_soft(soft: int | None, default_soft: int | None, hard: int) -> int | None:
    """The soft limit that applies: the job's, else the default; none unless it comes before the hard one."""
    value = soft if soft is not None else default_soft
    if not value or value >= hard:
        return None
    return value


class Deadlines:
    """Raises SoftTimeout in the task at `soft` seconds; at `hard + grace` calls `on_hard` (which
    records the failure) and kills the work-horse, for tasks that swallowed RQ's timeout exception."""

    def __init__(
        self,
        *,
        soft: int | None,
        hard: int,
        grace: float,
        in_main: bool,
        in_horse: bool,
        on_hard: Callable[[], Any],
    ) -> None:
        self.soft = soft if in_main else None  # a signal handler can only be set in the main thread
        self.hard = hard
        self.grace = grace
        self.in_horse = in_horse
        self.on_hard = on_hard
        self.done = threading.Event()
        self.fired_soft = False
        self._previous: Any = None
        self._thread = threading.Thread(target=self._run, name="jobctl-deadlines", daemon=True)

    def start(self) -> Deadlines:
        """Arm the limits (a no-op outside a work-horse without a soft limit)."""
        if self.soft is not None:
            self._previous = signal.signal(SOFT_SIGNAL, self._raise_soft)
        if self.soft is not None or self.in_horse:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Disarm: the task returned or raised."""
        self.done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            # A soft signal already sent is handled (and ignored, as done is set) before the
            # handler is put back: the default action of SIGUSR1 would end the process.
            self._thread.join()
        if self._previous is not None:
            signal.signal(SOFT_SIGNAL, self._previous)
            self._previous = None

    def _raise_soft(self, signum: int, frame: Any) -> None:
        if not self.done.is_set():
            raise SoftTimeout(f"soft time limit of {self.soft} s exceeded")

    def _run(self) -> None:
        if self.soft is not None:
            if self.done.wait(self.soft):
                return
            self.fired_soft = True
            os.kill(os.getpid(), SOFT_SIGNAL)
        if not self.in_horse:
            return
        if self.done.wait(max(0.0, self.hard - (self.soft or 0)) + self.grace):
            return
        log.warning("the task ignored its hard time limit of %s s; killing its process", self.hard)
        try:
            self.on_hard()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)


def hard_timeout_error(seconds: int) -> str:
    """The error stored for an attempt stopped by its hard time limit."""
    return f"timed out after {seconds} s (hard time limit)"


def error_text(exc: BaseException, hard: int) -> str | None:
    """The stored error for an attempt that hit its hard time limit, None for any other failure."""
    from rq.timeouts import JobTimeoutException

    return hard_timeout_error(hard) if isinstance(exc, JobTimeoutException) else None
