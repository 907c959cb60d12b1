"""Tasks the tests register through JOBCTL_TASKS."""

from __future__ import annotations

import time

from jobctl import progress, task


@task(name="noop")
def noop() -> None:
    """Do nothing."""


@task(name="sleep")
def sleep(seconds: float = 1.0, steps: int = 1) -> dict[str, float]:
    """Sleep, reporting progress each step."""
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        progress(step, steps, f"slept {step}")
    return {"slept": seconds}


@task
def echo(text: str, times: int = 1) -> str:
    """Return `text` repeated."""
    return text * times


@task(name="boom")
def boom(message: str = "boom") -> None:
    """Always fail."""
    raise ValueError(message)


@task(name="stubborn")
def stubborn(seconds: float = 30.0) -> str:
    """Ignore the cancel signal and keep sleeping (the worker must kill it)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return "finished"


@task(name="count")
def count(seconds: float = 1.0, steps: int = 1) -> int:
    """Report progress with no total (an indeterminate bar), one step at a time."""
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        progress(step, None, f"counted {step}")
    return steps
