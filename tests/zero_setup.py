"""Helpers for jobctl with nothing configured: embedded Redis and SQLite in a private data directory.

Test modules wrap `zero_setup_env` and `spawner` in fixtures of their own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import BackgroundProcess, reset_caches, wait_for

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PREFIXES = ("JOBCTL_", "POSTGRES_", "REDIS_")


def clear_backend_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every Redis, database and jobctl variable from the environment."""
    for name in list(os.environ):
        if name.startswith(CONFIG_PREFIXES) or name == "DATABASE_URL":
            monkeypatch.delenv(name, raising=False)


def processes_using(path: Path) -> dict[int, str]:
    """Live processes (pid → command line) whose command line or environment names `path`.

    With a data directory (or a HOME) made for one test, these are exactly the processes that test
    caused: the embedded server (its socket is on its command line), the watchdog, and workers.
    """
    marker = str(path).encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if cmdline and (marker in cmdline or marker in environ):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def server_pid(data_dir: Path) -> int | None:
    """The embedded redis-server's pid for `data_dir`, if it is running."""
    from jobctl.embedded import layout
    from jobctl.embedded_watchdog import server_pid as live_server_pid

    lay = layout(data_dir)
    return live_server_pid(lay.work, lay.sock)


def assert_nothing_left(data_dir: Path, timeout: float = 10) -> None:
    """Wait until no process started for `data_dir` runs (the watchdog stops within moments)."""
    deadline = time.monotonic() + timeout
    while processes_using(data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = processes_using(data_dir)
    assert not left, f"processes left behind: {left}"


def kill_leftovers(data_dir: Path) -> None:
    """Kill the embedded server and watchdog of `data_dir` by their pidfiles, and any straggler."""
    from jobctl.embedded_watchdog import SERVER_PID, WATCHDOG_PID, read_pid

    work = data_dir / "redis"
    for pid in (read_pid(work / SERVER_PID), read_pid(work / WATCHDOG_PID), *processes_using(data_dir)):
        if pid is not None and pid in processes_using(data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def zero_setup_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No Redis or database configured; a fresh, short data directory. Yields the data directory."""
    clear_backend_settings(monkeypatch)
    # Short, so the socket lives in the data directory itself (the long-path fallback is tested apart),
    # and with a space, as in macOS's "Application Support", for paths in URLs and command lines.
    data_dir = Path(tempfile.mkdtemp(prefix="jobctl test-", dir="/tmp"))
    monkeypatch.setenv("JOBCTL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("JOBCTL_TASKS", "tests.sample_tasks")
    monkeypatch.setenv("JOBCTL_PROGRESS_INTERVAL", "0.05")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    monkeypatch.chdir(tmp_path)
    reset_caches()
    yield data_dir
    from jobctl import embedded

    embedded.release_embedded_redis(data_dir)  # only this one: the session may use another
    reset_caches()
    kill_leftovers(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)


def jobctl(
    *args: str, timeout: float = 60, input: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `jobctl ARGS...` in a subprocess with the current environment plus `extra`."""
    return subprocess.run(
        [sys.executable, "-m", "jobctl", *args],
        capture_output=True, text=True, timeout=timeout, input=input, env={**os.environ, **extra},
    )  # fmt: skip


def spawner(tmp_path: Path) -> Iterator[Callable[..., BackgroundProcess]]:
    """Start `python ARGS...` processes (e.g. `-m jobctl worker`); each is stopped at the end."""
    started: list[BackgroundProcess] = []

    def _start(*args: str, ready: str | None = None, **env: str) -> BackgroundProcess:
        log = tmp_path / f"background-{len(started)}.log"
        proc = BackgroundProcess([sys.executable, *args], log, {**os.environ, **env})
        started.append(proc)
        if ready is not None:
            wait_for(lambda: ready in proc.output() or proc.proc.poll() is not None, 30)
            assert proc.proc.poll() is None, proc.output()
        return proc

    yield _start
    for proc in started:
        proc.stop(signal.SIGTERM, timeout=10)
