"""Following jobs as they run: one pipelined Redis read per tick, SQL only for jobs that changed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from . import queue, store
from .errors import NotFoundError, UsageError
from .models import TERMINAL, Job, JobStatus

MAX_ID = 2**63 - 1
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
RECHECK_FIRST = 0.25  # seconds before a row that disagrees with Redis is read again (then doubling)
SQL_CHUNK = 500  # ids per IN (...) query, well under SQLite's variable limit

# The SQL statuses that agree with what RQ says of the current attempt. While they disagree
# (RQ marks a job `started` a moment, or seconds, before the work-horse claims the row) the row
# is re-read, backing off; terminal rows are final and never re-read.
SETTLED: dict[str | None, frozenset[str]] = {
    "queued": frozenset({"pending"}),
    "scheduled": frozenset({"pending"}),
    "deferred": frozenset({"pending"}),
    "started": frozenset({"processing"}),
    "failed": frozenset({"pending"}),  # a retry's next attempt is queued
}

ChangeKind = Literal["status", "progress"]


def _progress_key(progress: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if not progress:
        return None
    return (progress.get("current"), progress.get("total"), progress.get("message") or "")


@dataclass
class WatchedJob:
    """One watched job: its latest SQL row and what Redis last said of it."""

    job: Job
    live: queue.LiveState | None = None
    rq_status: str | None = None
    last_progress: dict[str, Any] | None = None
    recheck_at: float | None = None  # while SQL and Redis disagree: when to read the row again
    recheck_step: float = RECHECK_FIRST
    finished_at: float | None = None
    reported_progress: tuple[Any, ...] | None = None
    reported_status: str | None = None
    fresh: bool = True  # the row was just read: take Redis's next answer as the baseline
    # Plain copies of the row's id and status: read many times per refresh, and a model's
    # instrumented attributes are slow at that rate with hundreds of jobs.
    id: int = field(init=False)
    status: str = field(init=False)
    terminal: bool = field(init=False)

    def __post_init__(self) -> None:
        self.set_job(self.job)

    def set_job(self, job: Job) -> None:
        """Take a freshly read row."""
        assert job.id is not None
        self.job = job
        self.id = job.id
        self.status = job.status
        self.terminal = job.status in TERMINAL_VALUES

    @property
    def progress(self) -> dict[str, Any] | None:
        """Live progress while active; the row's final progress once it ended (else the last seen)."""
        if self.terminal and self.job.progress:
            return self.job.progress
        return self.last_progress or self.job.progress

    @property
    def position(self) -> int | None:
        """1-based place in its queue while pending and queued, else None."""
        if self.status != JobStatus.PENDING.value or self.live is None or self.live.position is None:
            return None
        return self.live.position + 1

    def elapsed(self, now: datetime | None = None) -> float | None:
        """Seconds since the job started (until it ended), None before it started."""
        started = self.job.started_at
        if started is None:
            return None
        end = self.job.completed_at if self.terminal and self.job.completed_at else now or datetime.now(UTC)
        return max(0.0, (end - started).total_seconds())

    def eta(self, now: datetime | None = None) -> float | None:
        """Seconds left at the average rate so far, None when unknown."""
        if self.terminal or self.status != JobStatus.PROCESSING.value:
            return None
        return estimate_eta(self.progress, self.elapsed(now))

    def error_line(self) -> str:
        """The first non-empty line of the error, or ''."""
        for line in (self.job.error or "").splitlines():
            if line.strip():
                return line.strip()
        return ""


def estimate_eta(progress: dict[str, Any] | None, elapsed: float | None) -> float | None:
    """Remaining seconds if the rest goes as fast as what is done: None without a total or any step."""
    if not progress or elapsed is None:
        return None
    current, total = progress.get("current"), progress.get("total")
    if not isinstance(current, int | float) or not isinstance(total, int | float) or current <= 0:
        return None
    if current >= total:
        return 0.0
    return elapsed * (total - current) / current


def percent(progress: dict[str, Any] | None) -> float | None:
    """0-100 when the progress has a positive total, else None."""
    if not progress:
        return None
    current, total = progress.get("current"), progress.get("total")
    if not isinstance(current, int | float) or not isinstance(total, int | float) or total <= 0:
        return None
    return max(0.0, min(100.0, 100.0 * current / total))


@dataclass
class Change:
    """Something a plain (non-terminal) watcher prints one line for."""

    kind: ChangeKind
    row: WatchedJob


@dataclass
class Counts:
    """How many watched jobs are in each state (the summary line)."""

    running: int = 0
    pending: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def active(self) -> int:
        return self.running + self.pending

    def add(self, status: str) -> None:
        """Count one job in `status`."""
        if status == JobStatus.PROCESSING.value:
            self.running += 1
        elif status == JobStatus.PENDING.value:
            self.pending += 1
        elif status == JobStatus.COMPLETED.value:
            self.completed += 1
        elif status == JobStatus.FAILED.value:
            self.failed += 1
        elif status == JobStatus.CANCELLED.value:
            self.cancelled += 1


@dataclass
class TickStats:
    """What the last tick cost: Redis reads, SQL queries, rows re-read, and whether it was a fallback."""

    redis_reads: int = 0
    sql_queries: int = 0
    sql_rows: int = 0
    fallback: bool = False


@dataclass
class Watcher:
    """Polls the watched jobs: which changed, what to re-read from SQL, when to stop, and the exit code."""

    ids: Sequence[int] | None = None
    follow: bool = False
    fallback_interval: float = 3.0
    keep_finished: int = 1000
    clock: Callable[[], float] = time.monotonic
    rows: dict[int, WatchedJob] = field(default_factory=dict)
    stats: TickStats = field(default_factory=TickStats)
    _last_id: int = 0
    _next_fallback: float = 0.0
    _forgotten: Counts = field(default_factory=Counts)

    def __post_init__(self) -> None:
        if self.follow and self.ids:
            raise UsageError("--follow watches every job as it is submitted: give no IDs with it")

    # ------------------------------------------------------------ public

    def start(self) -> list[Change]:
        """Read the watched rows and their Redis state once; raises NotFoundError for unknown ids."""
        self.stats = TickStats()
        if self.ids is not None:
            wanted = list(dict.fromkeys(self.ids))
            found = self._read_rows([i for i in wanted if 1 <= i <= MAX_ID])
            missing = [i for i in wanted if i not in found]
            if missing:
                names = ", ".join(str(i) for i in missing)
                noun = "job" if len(missing) == 1 else "jobs"
                raise NotFoundError(f"{noun} {names} not found")
            jobs = [found[i] for i in wanted]
        else:
            # The highest id first: a job submitted after it shows up in the next tick's scan.
            self._last_id = store.max_job_id()
            jobs = store.active_jobs()
            self.stats.sql_queries += 2
        now = self.clock()
        for job in jobs:
            self.rows[job.id or 0] = WatchedJob(job)
        self._next_fallback = now + self.fallback_interval
        self._read_redis(now)
        changes: list[Change] = []
        for row in self.rows.values():
            self._note_terminal(row, now)
            changes.extend(self._changes(row))
        return changes

    def tick(self) -> list[Change]:
        """One refresh: new jobs, one pipelined Redis read, SQL for the rows whose state moved."""
        self.stats = TickStats()
        now = self.clock()
        changes: list[Change] = []
        if self.ids is None:
            self._discover()
        stale = self._read_redis(now)
        if now >= self._next_fallback:
            # Catches what Redis cannot show: a key that expired or vanished, a row the reconciler
            # failed while RQ still says `started`, a finished job retried by hand.
            self._next_fallback = now + self.fallback_interval
            self.stats.fallback = True
            unread = [r for r in self.rows.values() if not r.terminal and r.id not in stale]
            stale |= self._moved_in_sql(unread)
            if self.ids is None:
                self._reactivate(now)
        if stale:
            fresh = self._read_rows(sorted(stale))
            for job_id, job in fresh.items():
                self._update_row(self.rows[job_id], job, now)
        for row in self.rows.values():
            if not row.terminal or row.reported_status != row.status:
                self._note_terminal(row, now)
                changes.extend(self._changes(row))
        self._forget_old()
        return changes

    @property
    def finished(self) -> bool:
        """True when every watched job is terminal (never with `follow`)."""
        return not self.follow and all(r.terminal for r in self.rows.values())

    def counts(self) -> Counts:
        """Jobs per state, including finished ones no longer kept in `rows`."""
        c = Counts(**vars(self._forgotten))
        for row in self.rows.values():
            c.add(row.status)
        return c

    def exit_code(self) -> int:
        """0 when every watched job completed, 1 when any failed or was cancelled."""
        c = self.counts()
        return 1 if c.failed or c.cancelled else 0

    # ------------------------------------------------------------ internals

    def _read_rows(self, ids: Sequence[int]) -> dict[int, Job]:
        out: dict[int, Job] = {}
        for start in range(0, len(ids), SQL_CHUNK):
            chunk = ids[start : start + SQL_CHUNK]
            out.update(store.get_jobs(chunk))
            self.stats.sql_queries += 1
        self.stats.sql_rows += len(out)
        return out

    def _read_redis(self, now: float) -> set[int]:
        """Refresh live state of active rows; returns the ids whose SQL row should be re-read."""
        active = [r for r in self.rows.values() if not r.terminal]
        if not active:
            return set()
        live = queue.live_state([r.job for r in active])
        self.stats.redis_reads += 1
        stale: set[int] = set()
        for row in active:
            state = live.get(row.id)
            rq_status = state.rq_status if state else None
            moved = not row.fresh and rq_status != row.rq_status
            # Progress is written only after the worker claimed the row: a pending row with progress started.
            claimed = row.status == JobStatus.PENDING.value and state is not None and bool(state.progress)
            due = row.recheck_at is not None and now >= row.recheck_at
            if moved or claimed or due:
                stale.add(row.id)
            row.live = state
            row.rq_status = rq_status
            if state is not None and state.progress:
                row.last_progress = state.progress
            if row.fresh:
                row.fresh = False
                self._settle(row, now)
        return stale

    def _update_row(self, row: WatchedJob, job: Job, now: float) -> None:
        if job.task_id != row.job.task_id:
            # A new attempt: what Redis said was about the previous one.
            row.fresh = True
            row.live = None
            if job.status == JobStatus.PENDING.value or job.started_at != row.job.started_at:
                row.last_progress = None
        row.set_job(job)
        self._settle(row, now)

    def _settle(self, row: WatchedJob, now: float) -> None:
        """Schedule re-reads, backing off, while the row disagrees with Redis (started, not yet claimed)."""
        expected = SETTLED.get(row.rq_status)
        if row.terminal or expected is None or row.status in expected:
            row.recheck_at = None
            row.recheck_step = RECHECK_FIRST
        else:
            row.recheck_at = now + row.recheck_step
            row.recheck_step = min(row.recheck_step * 2, self.fallback_interval)

    def _note_terminal(self, row: WatchedJob, now: float) -> None:
        if row.terminal and row.finished_at is None:
            row.finished_at = now

    def _changes(self, row: WatchedJob) -> list[Change]:
        out: list[Change] = []
        if row.reported_status is None:
            row.reported_status = row.status
            row.reported_progress = _progress_key(row.progress)
            return [Change("status", row)]
        key = _progress_key(row.progress)
        if key is not None and key != row.reported_progress:
            row.reported_progress = key
            out.append(Change("progress", row))
        if row.status != row.reported_status:
            row.reported_status = row.status
            out.append(Change("status", row))
        return out

    def _discover(self) -> None:
        new = store.jobs_after(self._last_id)
        self.stats.sql_queries += 1
        for job in new:
            assert job.id is not None
            self._last_id = max(self._last_id, job.id)
            if job.id not in self.rows:
                self.rows[job.id] = WatchedJob(job)

    def _moved_in_sql(self, rows: Sequence[WatchedJob]) -> set[int]:
        """Rows whose status, attempt or RQ id differ in SQL from what we hold (a light query)."""
        moved: set[int] = set()
        for start in range(0, len(rows), SQL_CHUNK):
            chunk = {r.id: r for r in rows[start : start + SQL_CHUNK]}
            states = store.job_states(list(chunk))
            self.stats.sql_queries += 1
            for job_id, state in states.items():
                job = chunk[job_id].job
                if state != (job.status, job.task_id, job.attempts):
                    moved.add(job_id)
        return moved

    def _reactivate(self, now: float) -> None:
        """Rows that became active again (a retry) after they had ended or before the watch began."""
        active = store.active_job_ids()
        self.stats.sql_queries += 1
        wanted = [i for i in active if i not in self.rows or self.rows[i].terminal]
        for job_id, job in self._read_rows(wanted).items():
            row = self.rows.get(job_id)
            if row is None:
                self.rows[job_id] = WatchedJob(job)
            else:
                row.finished_at = None
                self._update_row(row, job, now)

    def _forget_old(self) -> None:
        """Without IDs, keep memory bounded: forget the oldest finished rows past `keep_finished`."""
        if self.ids is not None:
            return
        finished = [r for r in self.rows.values() if r.terminal]
        excess = len(finished) - self.keep_finished
        if excess <= 0:
            return
        finished.sort(key=lambda r: r.finished_at or 0.0)
        for row in finished[:excess]:
            self._forgotten.add(row.status)
            del self.rows[row.id]


def display_order(rows: Iterable[WatchedJob]) -> list[WatchedJob]:
    """Which rows matter most when not all fit: running, then pending by queue place, then latest ended."""

    def key(row: WatchedJob) -> tuple[Any, ...]:
        if row.status == JobStatus.PROCESSING.value:
            return (0, row.id)
        if row.status == JobStatus.PENDING.value:
            return (1, row.position if row.position is not None else MAX_ID, row.id)
        return (2, -(row.finished_at or 0.0), -row.id)

    return sorted(rows, key=key)
