"""The task the chaos suite runs: it notes in a ledger file when each attempt starts and ends."""

from __future__ import annotations

import os
import time

from jobctl import progress, task


def _note(event: str) -> None:
    from rq import get_current_job

    ledger = os.environ.get("JOBCTL_CHAOS_LEDGER")
    current = get_current_job()
    if not ledger or current is None:
        return
    # One short line per write with O_APPEND: lines from many processes never interleave.
    line = f"{event} {current.id} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@task(name="chaos")
def chaos(ms: int = 200, steps: int = 4) -> dict[str, int]:
    """Sleep `ms` milliseconds in `steps` steps, noting the start and the end in the ledger."""
    _note("start")
    for step in range(1, steps + 1):
        time.sleep(ms / 1000 / steps)
        progress(step, steps)
    _note("end")
    return {"ms": ms}
