"""Reading job logs: an attempt's stored tail (else its Redis stream), and following jobs as they run."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from . import store
from .logs import job_log_table, stream_key


@dataclass
class AttemptLog:
    """The lines of one attempt, where they came from, and how many bytes were dropped from the start."""

    job_id: int
    attempt: int
    lines: list[str]
    dropped: int = 0
    source: str = "none"  # "database", "redis" or "none"


def _tail(lines: list[str], tail: int | None) -> list[str]:
    if tail is None:
        return lines
    return lines[-tail:] if tail > 0 else []


@store.guarded
def read_attempt(job_id: int, attempt: int, tail: int | None = None) -> AttemptLog:
    """An attempt's log: the stored tail, else what its Redis stream still holds."""
    from . import queue

    table = job_log_table()
    with store.get_engine().connect() as conn:
        row = conn.execute(
            sa.select(table.c.text, table.c.dropped).where(
                table.c.job_id == job_id, table.c.attempt == attempt
            )
        ).first()
    if row is not None:
        return AttemptLog(job_id, attempt, _tail(row.text.splitlines(), tail), row.dropped, "database")
    try:
        lines = [text for _, text in stream_lines(queue.rq_job_id(job_id, attempt), tail=tail)[0]]
    except Exception:
        return AttemptLog(job_id, attempt, [])
    return AttemptLog(job_id, attempt, lines, source="redis" if lines else "none")


def stream_lines(rq_id: str, after: int = 0, tail: int | None = None) -> tuple[list[tuple[int, str]], bool]:
    """Lines of an attempt's stream after line number `after` (or its last `tail`), and whether it ended."""
    from .queue import get_redis

    conn: Any = get_redis()  # replies are bytes: the client does not decode
    key = stream_key(rq_id)
    if tail is not None and after == 0:
        entries = list(reversed(conn.xrevrange(key, "+", "-", count=tail + 1)))
    else:
        entries = conn.xrange(key, f"0-{after + 1}", "+")
    return _decode(entries, tail)


def _decode(entries: Sequence[Any], tail: int | None = None) -> tuple[list[tuple[int, str]], bool]:
    lines: list[tuple[int, str]] = []
    ended = False
    for entry_id, fields in entries:
        number = int(entry_id.decode().split("-", 1)[1])
        if b"end" in fields:
            ended = True
        elif b"l" in fields:
            lines.append((number, fields[b"l"].decode("utf-8", "replace")))
    if tail is not None:
        lines = lines[-tail:] if tail else []
    return lines, ended


@dataclass
class LogEvent:
    """One thing `logs -f` shows: a line of a job, or news about it (an attempt starting, the job ending)."""

    job_id: int
    line: str | None = None
    attempt: int | None = None
    ended: str | None = None  # the terminal status


@dataclass
class _Followed:
    job_id: int
    attempt: int = 0
    after: int = 0
    done: bool = False


def follow(
    job_ids: Sequence[int], tail: int | None = None, poll: float = 0.5, block_ms: int = 250
) -> Iterator[LogEvent]:
    """Lines of the jobs as they are written, until every job has ended (several jobs interleave)."""
    from redis import exceptions as rexc

    from . import queue

    try:
        yield from _follow(job_ids, tail, poll, block_ms)
    except (rexc.ConnectionError, rexc.TimeoutError) as exc:
        raise queue.redis_error(queue.redis_url(), exc) from None


def _follow(job_ids: Sequence[int], tail: int | None, poll: float, block_ms: int) -> Iterator[LogEvent]:
    from . import queue

    followed = {i: _Followed(i) for i in job_ids}
    rows = store.get_jobs(list(followed))
    for state in followed.values():
        job = rows[state.job_id]
        if store.is_terminal(job.status):
            if job.attempts:
                log_ = read_attempt(state.job_id, job.attempts, tail)
                yield from (LogEvent(state.job_id, line=line) for line in log_.lines)
            state.done = True
            yield LogEvent(state.job_id, ended=job.status)
        elif job.attempts:
            state.attempt = job.attempts
            lines, _ = stream_lines(queue.rq_job_id(state.job_id, state.attempt), tail=tail)
            yield from _emit(state, lines)
    conn: Any = queue.get_redis()  # replies are bytes: the client does not decode
    next_poll = time.monotonic() + poll
    while not all(s.done for s in followed.values()):
        live = {
            stream_key(queue.rq_job_id(s.job_id, s.attempt)): s
            for s in followed.values()
            if not s.done and s.attempt
        }
        if live:
            replies = conn.xread({k: f"0-{s.after}" for k, s in live.items()}, block=block_ms, count=1000)
            for key, entries in replies or []:
                state = live[key.decode() if isinstance(key, bytes) else key]
                yield from _emit(state, _decode(entries)[0])
        else:
            time.sleep(block_ms / 1000)
        if time.monotonic() < next_poll:
            continue
        next_poll = time.monotonic() + poll
        rows = store.get_jobs([s.job_id for s in followed.values() if not s.done])
        for job_id, job in rows.items():
            yield from _check_row(followed[job_id], job)


def _check_row(state: _Followed, job: Any) -> Iterator[LogEvent]:
    """React to what the row says: a new attempt started, or the job ended."""
    from . import queue

    terminal = store.is_terminal(job.status)
    if state.attempt and (terminal or job.attempts != state.attempt):
        # Whatever the attempt wrote before it ended (its stream is complete once the row moved on).
        lines, _ = stream_lines(queue.rq_job_id(state.job_id, state.attempt), after=state.after)
        yield from _emit(state, lines)
    if job.attempts and job.attempts != state.attempt and job.status != "pending":
        state.attempt, state.after = job.attempts, 0
        if job.attempts > 1:
            yield LogEvent(state.job_id, attempt=job.attempts)
        lines, _ = stream_lines(queue.rq_job_id(state.job_id, state.attempt))
        yield from _emit(state, lines)
    if terminal:
        state.done = True
        yield LogEvent(state.job_id, ended=job.status)


def _emit(state: _Followed, lines: list[tuple[int, str]]) -> Iterator[LogEvent]:
    for number, text in lines:
        if number > state.after:
            state.after = number
            yield LogEvent(state.job_id, line=text)
