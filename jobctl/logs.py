"""Job logs: what a task prints and logs, captured in its work-horse, streamed through Redis, kept in SQL.

While an attempt runs, its lines go to a Redis stream `jobctl:log:<rq id>` (entry ids `0-<line number>`,
trimmed to the newest JOBCTL_LOG_MAX_BYTES, and an `end` entry when the attempt is over). When it ends,
the same tail is stored in the `job_log` table, which `jobctl logs` reads for finished jobs (follow.py).
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import fcntl
import logging
import os
import select
import sys
import threading
import time
from typing import Any

import sqlalchemy as sa

STREAM_KEY = "jobctl:log:{}"
LINE_MAX = 64 * 1024  # longer lines are split
FLUSH_INTERVAL = 0.1  # seconds between two writes of new lines to Redis
# A task's output is streamed from this many seconds on; one that ends sooner has it read once, at its
# end. No longer than the stream's own batching, so an attempt killed outright loses, as before, at
# most about its last tenth of a second of output.
STREAM_AFTER = FLUSH_INTERVAL
PIPE_SIZE = 1 << 20  # what a task may print before its output is read (up to fs.pipe-max-size)
STREAM_TTL = 86_400  # a stream outlives its attempt by a day when its tail could not be stored in SQL
STREAM_TTL_STORED = 600  # ... and by ten minutes (for followers) when it was
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("jobctl.logs")


def stream_key(rq_id: str) -> str:
    """The Redis stream of one attempt's log lines."""
    return STREAM_KEY.format(rq_id)


def job_log_table() -> sa.Table:
    """The `job_log` table (one row per attempt that printed anything)."""
    from .models import JobLog

    table: sa.Table = JobLog.__table__  # type: ignore[attr-defined]
    return table


# ---------------------------------------------------------------- capture (in the work-horse)


class LogCapture:
    """Redirects the process's stdout and stderr (file descriptors 1 and 2) and the root logger into
    the attempt's log while the task runs; `stop()` restores them and returns the tail to store."""

    def __init__(self, rq_id: str, max_bytes: int) -> None:
        self.key = stream_key(rq_id)
        self.max_bytes = max_bytes
        self.kept: collections.deque[tuple[int, str, int]] = collections.deque()  # (line no, text, bytes)
        self.kept_bytes = 0
        self.dropped = 0
        self.pending: list[tuple[int, str]] = []
        self.trim_to = 0
        self.seq = 0
        self.last_flush = 0.0
        self.stopping = threading.Event()
        self.stop_requested_at = 0.0
        self.saved_fds: tuple[int, int] | None = None
        self.read_fd = -1
        self.read_done: threading.Event | None = None  # set by the reader thread as it ends
        self.reader_lock = threading.Lock()
        self.saved_logging: tuple[list[logging.Handler], int] | None = None
        self.saved_buffering: list[tuple[Any, bool]] = []
        self.handler: logging.Handler | None = None

    def start(self) -> None:
        """Start capturing. Nothing reads the output yet: see `start_reader`."""
        _flush_std()
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.saved_fds = (os.dup(1), os.dup(2))
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.read_fd = read_fd
        for stream in (sys.stdout, sys.stderr):
            # Output reaches the log as it is printed, even when the worker's stdout is a file.
            with contextlib.suppress(Exception):
                self.saved_buffering.append((stream, bool(stream.line_buffering)))
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        self._capture_logging()

    def start_reader(self) -> None:
        """Stream the output to Redis as it comes, from now until `stop`. The attendant calls this
        once the task has run STREAM_AFTER seconds; a task that ends sooner has its output read
        once, by `stop`, without a thread (a task that prints more than the pipe holds meanwhile
        waits for the reader)."""
        with self.reader_lock:
            if self.read_done is not None or self.saved_fds is None:
                return
            # A low-level thread: `threading.Thread.start` would wait until it runs.
            self.read_done = threading.Event()
            _thread.start_new_thread(self._read_until_done, (self.read_done,))

    def _capture_logging(self) -> None:
        root = logging.getLogger()
        streams = {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}
        # Handlers already writing to the terminal would print every record twice into the log.
        echoing: list[logging.Handler] = [
            h
            for h in root.handlers
            if type(h) is logging.StreamHandler and getattr(h, "stream", None) in streams
        ]
        self.saved_logging = (echoing, root.level)
        for handler in echoing:
            root.removeHandler(handler)
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        root.addHandler(self.handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    def stop(self) -> tuple[str, int] | None:
        """Stop capturing and write the last lines and the end marker. Returns the tail to store with
        the outcome (see `keep_tail`) and the bytes dropped before it; None if nothing was printed."""
        if self.saved_fds is None:
            return None
        _flush_std()
        root = logging.getLogger()
        if self.handler is not None:
            root.removeHandler(self.handler)
        if self.saved_logging is not None:
            echoing, level = self.saved_logging
            for handler in echoing:
                root.addHandler(handler)
            if root.level != level:  # setLevel clears every logger's cache
                root.setLevel(level)
        for stream, line_buffering in self.saved_buffering:
            with contextlib.suppress(Exception):
                stream.reconfigure(line_buffering=line_buffering)
        with self.reader_lock:  # no reader starts from now on
            saved_out, saved_err = self.saved_fds
            self.saved_fds = None
        os.dup2(saved_out, 1)  # closes the pipe's write end: the reader sees the end of the output
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        self.stop_requested_at = time.monotonic()
        self.stopping.set()
        if self.read_done is not None:
            self.read_done.wait(5)
        else:
            self._read_once()
        with contextlib.suppress(OSError):
            os.close(self.read_fd)
        if not self.seq:
            return None
        self._end(STREAM_TTL)  # until the tail is stored
        return self.text(), self.dropped

    def _read_until_done(self, done: threading.Event) -> None:
        try:
            self._read()
        finally:
            done.set()

    def _read(self) -> None:
        buffer = b""
        while True:
            ready, _, _ = select.select([self.read_fd], [], [], FLUSH_INTERVAL)
            if ready:
                chunk = os.read(self.read_fd, 65536)
                if not chunk:
                    break  # every write end is closed
                buffer = self._add_lines(buffer + chunk)
            # A process the task left behind may keep the pipe open: stop reading soon after the task.
            if self.stopping.is_set() and (not ready or time.monotonic() - self.stop_requested_at > 0.5):
                break
            if self.pending and time.monotonic() - self.last_flush >= FLUSH_INTERVAL:
                self._flush()
        if buffer:
            self._add(buffer)
        self._flush()

    def _read_once(self) -> None:
        """Read what the task printed, once it has ended, without waiting: a process it left behind
        may still hold the pipe open."""
        os.set_blocking(self.read_fd, False)
        buffer = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                buffer = self._add_lines(buffer + chunk)
        if buffer:
            self._add(buffer)
        self._flush()

    def _add_lines(self, buffer: bytes) -> bytes:
        """Add the whole lines in `buffer` (overlong ones cut); returns the unfinished rest."""
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            self._add(line)
        while len(buffer) > LINE_MAX:
            self._add(buffer[:LINE_MAX])
            buffer = buffer[LINE_MAX:]
        return buffer

    def _add(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        size = len(raw) + 1
        self.seq += 1
        self.pending.append((self.seq, text))
        self.kept.append((self.seq, text, size))
        self.kept_bytes += size
        while self.kept_bytes > self.max_bytes and len(self.kept) > 1:
            _, _, gone = self.kept.popleft()
            self.kept_bytes -= gone
            self.dropped += gone
            self.trim_to = self.kept[0][0]

    def _flush(self) -> None:
        from .queue import get_redis

        self.last_flush = time.monotonic()
        if not self.pending:
            return
        lines, self.pending = self.pending, []
        if self.trim_to:
            lines = [(n, t) for n, t in lines if n >= self.trim_to]
        try:
            with get_redis().pipeline(transaction=False) as pipe:
                for number, text in lines:
                    pipe.xadd(self.key, {"l": text}, id=f"0-{number}")
                if self.trim_to:
                    pipe.xtrim(self.key, minid=f"0-{self.trim_to}", approximate=False)
                pipe.expire(self.key, STREAM_TTL)
                pipe.execute()
        except Exception as exc:  # Redis down: followers miss these lines; the SQL tail keeps them
            log.debug("could not stream log lines: %s", exc)

    def _end(self, ttl: int) -> None:
        from .queue import get_redis

        try:
            with get_redis().pipeline(transaction=False) as pipe:
                pipe.xadd(self.key, {"end": "1"}, id=f"0-{self.seq + 1}")
                pipe.expire(self.key, ttl)
                pipe.execute()
        except Exception as exc:
            log.debug("could not end the log stream: %s", exc)

    def text(self) -> str:
        """The kept tail, one line per line."""
        return "".join(text + "\n" for _, text, _ in list(self.kept))


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def start_capture(job_id: int, rq_id: str) -> LogCapture | None:
    """Capture the running task's output, or None when logs are off (JOBCTL_LOG_MAX_BYTES=0)."""
    from .config import get_settings

    max_bytes = get_settings().log_max_bytes
    if max_bytes <= 0:
        return None
    capture = LogCapture(rq_id, max_bytes)
    try:
        capture.start()
    except OSError as exc:  # out of file descriptors: run the task without a log
        log.warning("could not capture the output of job %s: %s", job_id, exc)
        return None
    return capture


# ---------------------------------------------------------------- SQL


def store_log(job_id: int, attempt: int, text: str, dropped: int) -> None:
    """Keep an attempt's log tail (replacing any earlier copy of it)."""
    from . import store
    from .models import utcnow

    table = job_log_table()
    with store.begin() as conn:
        conn.execute(sa.delete(table).where(table.c.job_id == job_id, table.c.attempt == attempt))
        conn.execute(
            sa.insert(table).values(
                job_id=job_id, attempt=attempt, text=text, dropped=dropped, created_at=utcnow()
            )
        )


def keep_tail(job_id: int, attempt: int, text: str, dropped: int) -> None:
    """Store the tail an attempt's capture kept; its Redis stream then only serves followers a while."""
    from .queue import get_redis, rq_job_id

    try:
        store_log(job_id, attempt, text, dropped)
    except Exception as exc:  # the stream keeps the lines for a day; `jobctl logs` reads it then
        log.warning("could not store the log of job %s: %s", job_id, exc)
        return
    with contextlib.suppress(Exception):
        get_redis().expire(stream_key(rq_job_id(job_id, attempt)), STREAM_TTL_STORED)


def keep_stream(job_id: int, attempt: int) -> None:
    """Store what an attempt's Redis stream holds, for an attempt whose process died before storing
    its own log (killed, or lost with its worker)."""
    from .follow import stream_lines
    from .queue import rq_job_id

    lines, _ = stream_lines(rq_job_id(job_id, attempt))
    if lines:
        keep_tail(job_id, attempt, "".join(text + "\n" for _, text in lines), dropped=0)
