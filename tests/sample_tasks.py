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


@task(name="pid")
def pid(seconds: float = 0.0) -> int:
    """The id of the process the task runs in (after sleeping `seconds`, printing a line)."""
    import os

    print(f"running in {os.getpid()}")
    time.sleep(seconds)
    return os.getpid()


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


@task(name="flaky")
def flaky(path: str, failures: int = 1, error: str = "ConnectionError") -> int:
    """Fail the first `failures` runs (counted in the file at `path`) with `error`, then succeed."""
    from pathlib import Path

    counter = Path(path)
    runs = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(runs + 1))
    if runs < failures:
        raise {"ConnectionError": ConnectionError, "ValueError": ValueError}[error](f"failure {runs + 1}")
    return runs + 1


@task(name="soft_aware")
def soft_aware(seconds: float = 30.0) -> str:
    """Sleep; when the soft time limit interrupts, clean up and return."""
    from jobctl import SoftTimeout

    try:
        time.sleep(seconds)
    except SoftTimeout:
        return "cleaned up"
    return "finished"


@task(name="swallow")
def swallow(seconds: float = 30.0) -> str:
    """Swallow every exception, RQ's timeout included, and keep going (the worker must kill it)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except Exception:
            continue
    return "finished"
