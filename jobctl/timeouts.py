"""Time limits inside a running job: the soft limit raises `SoftTimeout` in the task so it can clean up;
past the hard limit (RQ's death penalty raises there) a task that kept going has its process killed."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
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
    records the failure) and kills the work-horse, for tasks that swallowed RQ's timeout exception.

    It has no thread of its own: the thread attending the task (runtime's attendant) asks it how long
    until the next limit (`next_due`) and lets it act when one passes (`poll`)."""

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
        self.in_horse = in_horse  # only a work-horse is killed at the hard limit
        self.on_hard = on_hard
        self.done = False
        self.fired_soft = False
        self.fired_hard = False
        self.started = 0.0
        self._lock = threading.Lock()
        self._previous: Any = None

    def start(self) -> Deadlines:
        """Arm the limits."""
        if self.soft is not None:
            self._previous = signal.signal(SOFT_SIGNAL, self._raise_soft)
        self.started = time.monotonic()
        return self

    def next_due(self) -> float | None:
        """Seconds until the next limit passes (0 if one has); None when no limit is left."""
        if self.done or not self.started:
            return None
        now = time.monotonic()
        if self.soft is not None and not self.fired_soft:
            return max(0.0, self.started + self.soft - now)
        if self.in_horse and not self.fired_hard:
            return max(0.0, self.started + self.hard + self.grace - now)
        return None

    def poll(self) -> None:
        """Act on a limit that has passed: signal the soft one, or record and kill at the hard one."""
        with self._lock:
            if self.done or self.next_due() != 0.0:
                return
            if self.soft is not None and not self.fired_soft:
                self.fired_soft = True
                os.kill(os.getpid(), SOFT_SIGNAL)
                return
            self.fired_hard = True
        log.warning("the task ignored its hard time limit of %s s; killing its process", self.hard)
        try:
            self.on_hard()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)

    def stop(self) -> None:
        """Disarm: the task returned or raised."""
        with self._lock:  # no soft signal is sent after this; one sent before is ignored (done)
            self.done = True
        if self._previous is not None:
            signal.signal(SOFT_SIGNAL, self._previous)
            self._previous = None

    def _raise_soft(self, signum: int, frame: Any) -> None:
        if not self.done:
            raise SoftTimeout(f"soft time limit of {self.soft} s exceeded")


def hard_timeout_error(seconds: int) -> str:
    """The error stored for an attempt stopped by its hard time limit."""
    return f"timed out after {seconds} s (hard time limit)"


def error_text(exc: BaseException, hard: int) -> str | None:
    """The stored error for an attempt that hit its hard time limit, None for any other failure."""
    from rq.timeouts import JobTimeoutException

    return hard_timeout_error(hard) if isinstance(exc, JobTimeoutException) else None
