"""Tasks for the operator-view tests: output on stdout and stderr, logging, lots of lines."""

from __future__ import annotations

import logging
import os
import sys
import time

from jobctl import task

log = logging.getLogger("tests.ops_tasks")


@task(name="chatty")
def chatty(lines: int = 3, interval: float = 0.0, fail: bool = False) -> int:
    """Print numbered lines, one on stderr, and log through `logging`."""
    log.info("starting %d lines", lines)
    for number in range(1, lines + 1):
        print(f"line {number}")
        if interval:
            time.sleep(interval)
    print("to stderr", file=sys.stderr)
    log.warning("almost done")
    os.write(1, b"raw fd write\n")
    if fail:
        raise RuntimeError("chatty failed")
    return lines


@task(name="spew")
def spew(lines: int = 1000) -> int:
    """Print many lines quickly."""
    for number in range(1, lines + 1):
        print(f"spew {number:06d} " + "x" * 40)
    return lines


@task(name="fail_once")
def fail_once(marker: str) -> str:
    """Fail on the first attempt (printing so), succeed on the next (the marker file remembers)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        print("first attempt")
        raise RuntimeError("first attempt fails")
    print("second attempt")
    return "ok"


@task(name="gated")
def gated(marker: str, timeout: float = 30.0) -> str:
    """Print a line, wait until the marker file exists, print another."""
    print("before the gate", flush=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    print("after the gate")
    return "through"
