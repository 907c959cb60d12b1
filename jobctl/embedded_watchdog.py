"""Looks after the embedded Redis for as long as jobctl processes use it. Standard library only: a script.

Every jobctl process that uses the embedded server holds a shared flock on `users.lock` for its
whole life (the kernel drops it when the process dies, however it dies). Twice a second this
watchdog looks, under `start.lock`: with no user left it stops the server and exits (users that
exit normally stop it themselves; this covers killed ones), and a server that died while users
remain is started again from its data, so running workers reconnect.
"""

from __future__ import annotations

# Only light modules at import time: the watchdog starts while a jobctl command waits for it.
import contextlib
import fcntl
import os
import signal
import socket
import sys
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing would slow the start down
if TYPE_CHECKING:
    from os import PathLike

    StrPath = str | PathLike[str]

START_LOCK = "start.lock"
USERS_LOCK = "users.lock"
SERVER_PID = "redis.pid"
WATCHDOG_PID = "watchdog.pid"
SERVER_ARGS = "redis-server.json"  # the command line the server was last started with
POLL = 0.5


def _in(work: StrPath, name: str) -> str:
    return os.path.join(os.fspath(work), name)


def reply(sock: StrPath, command: bytes = b"PING", timeout: float = 1.0) -> bytes | None:
    """The server's first reply line to `command` on `sock`, or None when nothing answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(os.fspath(sock))
            conn.sendall(command + b"\r\n")
            return conn.recv(256).split(b"\r\n", 1)[0]
    except OSError:
        return None


def answers(sock: StrPath) -> bool:
    """True when a Redis server on `sock` answers PING."""
    return reply(sock) == b"+PONG"


def read_pid(path: StrPath) -> int | None:
    """The process id stored in `path`, or None."""
    try:
        with open(path, "rb") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def command_line(pid: int) -> str | None:
    """The command line (or process title) of `pid`, or None when no such process runs."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            return None
    except OSError:
        pass
    import subprocess  # no /proc (macOS)

    try:
        cmd = ["ps", "-o", "command=", "-p", str(pid)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def server_pid(work: StrPath, sock: StrPath) -> int | None:
    """The pid of the redis-server serving `sock`, from its pidfile, checked against the live process."""
    pid = read_pid(_in(work, SERVER_PID))
    if pid is None:
        return None
    title = command_line(pid)
    # redis-server sets its title to "redis-server unixsocket:<path>"; a reused pid will not match.
    return pid if title and "redis-server" in title and os.fspath(sock) in title else None


def alive(pid: int) -> bool:
    """True while process `pid` exists (and is not a zombie we could reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    title = command_line(pid)
    return title is not None and title.strip() != ""


def stop_server(work: StrPath, sock: StrPath, timeout: float = 15.0) -> None:
    """Ask the server to flush its append-only file and exit; wait until its process is gone."""
    pid = server_pid(work, sock)
    answer = reply(sock, b"SHUTDOWN", timeout=timeout)
    if answer is not None and answer.startswith(b"-") and pid is not None:
        # It refused (e.g. it could not write its data); SIGTERM is the same request, retried once.
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            return
        if pid is None and not answers(sock):
            return
        time.sleep(0.01)


def launch(args: list[str], work: StrPath, sock: StrPath, timeout: float = 30.0) -> str | None:
    """Start redis-server (it daemonizes) and wait until it answers; None, or why it did not start."""
    import subprocess

    for stale in (os.fspath(sock), _in(work, SERVER_PID)):  # left by a server that died
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=work)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode != 0:
        return last_line(done.stderr + done.stdout) or f"exit code {done.returncode}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(sock):
            return None
        pid = read_pid(_in(work, SERVER_PID))
        if pid is not None and not alive(pid):
            break
        time.sleep(0.005)
    try:
        with open(_in(work, "redis.log"), errors="replace") as log:
            reason = last_line(log.read())
    except OSError:
        reason = ""
    return reason or "it did not answer"


def last_line(text: str) -> str:
    """The last non-blank line of `text`."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def watch(work: StrPath, sock: StrPath) -> None:
    """Until no user is left: restart a server that died; then stop the server and return."""
    backoff, next_restart = 1.0, 0.0
    with open(_in(work, USERS_LOCK), "a+") as users, open(_in(work, START_LOCK), "a+") as start:
        while True:
            fcntl.flock(start, fcntl.LOCK_EX)  # no process starts, joins or stops it meanwhile
            try:
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # users hold it shared
                    if answers(sock) or server_pid(work, sock) is not None:
                        backoff = 1.0
                    elif time.monotonic() >= next_restart:
                        restart(work, sock)
                        next_restart, backoff = time.monotonic() + backoff, min(backoff * 2, 60.0)
                else:
                    try:
                        if answers(sock) or server_pid(work, sock) is not None:
                            stop_server(work, sock)
                        # Gone before the locks are released, so the next starter starts a new watchdog.
                        with contextlib.suppress(OSError):
                            if read_pid(_in(work, WATCHDOG_PID)) == os.getpid():
                                os.unlink(_in(work, WATCHDOG_PID))
                        return
                    finally:
                        fcntl.flock(users, fcntl.LOCK_UN)
            finally:
                fcntl.flock(start, fcntl.LOCK_UN)
            time.sleep(POLL)


def restart(work: StrPath, sock: StrPath) -> None:
    """Start the server again with the command line it last ran with."""
    import json

    try:
        with open(_in(work, SERVER_ARGS)) as fh:
            args = json.load(fh)
    except (OSError, ValueError):
        return
    problem = launch(args, work, sock)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} the embedded Redis had stopped while in use: "
          f"{'started it again' if problem is None else 'could not start it: ' + problem}",
          file=sys.stderr, flush=True)  # fmt: skip


def main(argv: list[str]) -> int:
    """`embedded_watchdog.py WORKDIR SOCKET`: detach, record the pid, watch."""
    work, sock = argv[1], argv[2]
    child = os.fork()
    if child > 0:
        # The starter waits for this first process only, so the pid is on disk before it goes on.
        with open(_in(work, WATCHDOG_PID), "w") as fh:
            fh.write(f"{child}\n")
        return 0
    os.setsid()
    watch(work, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
