"""`jobctl stats`: counts by status, throughput over time, queue depths, workers, duration percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from . import listing, store
from .durations import parse_duration, parse_since
from .errors import BackendError, UsageError
from .models import JobStatus, UTCDateTime

BUCKETS = 24
NICE_BUCKETS = (60, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 172_800, 604_800)
PERCENTILES = (50, 95)


@dataclass
class Throughput:
    """Jobs that ended in each bucket of the window, by outcome."""

    start: datetime
    bucket_seconds: int
    completed: list[int]
    failed: list[int]
    cancelled: list[int]


@dataclass
class QueueDepth:
    """One queue: jobs waiting in Redis, and the SQL rows pending or processing on it."""

    name: str
    queued: int | None
    pending: int
    processing: int


@dataclass
class TaskDurations:
    """Run time percentiles of one task's completed jobs, in seconds (nearest rank)."""

    task: str
    count: int
    p50: float
    p95: float
    max: float


@dataclass
class Stats:
    """Everything `jobctl stats` shows."""

    since: datetime
    now: datetime
    counts: dict[str, int]
    throughput: Throughput
    queues: list[QueueDepth]
    workers: dict[str, int] | None
    durations: list[TaskDurations]
    notes: list[str] = field(default_factory=list)
    label: str = ""  # `last 24h`, or `since 2026-05-01 09:00 UTC`

    def to_public(self) -> dict[str, Any]:
        """The figures as JSON-ready data (timestamps ISO-8601 UTC, durations in seconds)."""
        data = asdict(self)
        data["since"] = self.since.isoformat()
        data["now"] = self.now.isoformat()
        data["throughput"]["start"] = self.throughput.start.isoformat()
        return data


def bucket_size(window: float, buckets: int = BUCKETS) -> int:
    """A round bucket length (a minute, an hour, ...) that splits `window` seconds into about `buckets`."""
    wanted = window / buckets
    for size in NICE_BUCKETS:
        if size >= wanted:
            return size
    return math.ceil(wanted / NICE_BUCKETS[-1]) * NICE_BUCKETS[-1]


@store.guarded
def collect(since: str = "24h", now: datetime | None = None) -> Stats:
    """Figures for the jobs created (counts) or ended (throughput, durations) since `since`."""
    now = now or datetime.now(UTC)
    start = parse_since(since, now)
    window = max(1.0, (now - start).total_seconds())
    size = bucket_size(window)
    engine = store.get_engine()
    dialect = engine.dialect.name
    job = store.JOB
    created = job.c.created_at >= start
    with engine.connect() as conn:
        counts = {s.value: 0 for s in JobStatus}
        for status, n in conn.execute(
            sa.select(job.c.status, sa.func.count()).where(created).group_by(job.c.status)
        ):
            counts[status] = int(n)
        throughput = _throughput(conn, dialect, start, size, math.ceil(window / size))
        durations = _durations(conn, dialect, start)
        active = conn.execute(
            sa.select(job.c.queue, job.c.status, sa.func.count())
            .where(job.c.status.in_([JobStatus.PENDING.value, JobStatus.PROCESSING.value]))
            .group_by(job.c.queue, job.c.status)
        ).all()
    stats = Stats(start, now, counts, throughput, [], None, durations, label=window_label(since, start))
    stats.queues, stats.workers = _live(stats, active)
    return stats


def _throughput(conn: Any, dialect: str, start: datetime, size: int, count: int) -> Throughput:
    job = store.JOB
    offset = listing.seconds_between(sa.literal(start, UTCDateTime()), job.c.completed_at, dialect) / size
    index = sa.cast(offset, sa.Integer) if dialect == "sqlite" else sa.func.floor(offset)
    rows = conn.execute(
        sa.select(index.label("bucket"), job.c.status, sa.func.count())
        .where(job.c.completed_at >= start, job.c.status.in_(["completed", "failed", "cancelled"]))
        .group_by(index, job.c.status)
    ).all()
    series: dict[str, list[int]] = {s: [0] * count for s in ("completed", "failed", "cancelled")}
    for bucket, status, n in rows:
        slot = min(max(int(bucket), 0), count - 1)  # a job ending this very second lands in the last one
        series[status][slot] += int(n)
    return Throughput(start, size, series["completed"], series["failed"], series["cancelled"])


def _durations(conn: Any, dialect: str, start: datetime) -> list[TaskDurations]:
    job = store.JOB
    seconds = listing.seconds_between(job.c.started_at, job.c.completed_at, dialect)
    ranked = (
        sa.select(
            job.c.task,
            seconds.label("seconds"),
            sa.func.row_number().over(partition_by=job.c.task, order_by=seconds).label("rank"),
            sa.func.count().over(partition_by=job.c.task).label("n"),
        )
        .where(
            job.c.status == JobStatus.COMPLETED.value,
            job.c.completed_at >= start,
            job.c.started_at.is_not(None),
        )
        .subquery()
    )
    # Nearest rank: the ceil(p * n / 100)-th smallest, in integer arithmetic both databases share.
    wanted = [ranked.c.rank == (p * ranked.c.n + 99) // 100 for p in PERCENTILES]
    wanted.append(ranked.c.rank == ranked.c.n)
    rows = conn.execute(
        sa.select(ranked.c.task, ranked.c.n, ranked.c.rank, ranked.c.seconds).where(sa.or_(*wanted))
    ).all()
    found: dict[str, dict[int, float]] = {}
    totals: dict[str, int] = {}
    for task, n, rank, secs in rows:
        found.setdefault(task, {})[int(rank)] = max(0.0, float(secs))
        totals[task] = int(n)
    out = []
    for task in sorted(found):
        n = totals[task]
        at = found[task]
        p50, p95 = (at[(p * n + 99) // 100] for p in PERCENTILES)
        out.append(TaskDurations(task, n, round(p50, 3), round(p95, 3), round(at[n], 3)))
    return out


def _live(stats: Stats, active: Sequence[Any]) -> tuple[list[QueueDepth], dict[str, int] | None]:
    """Queue depths and workers from Redis; without Redis, the SQL side alone and a note."""
    from . import queue

    by_queue: dict[str, dict[str, int]] = {}
    for name, status, n in active:
        by_queue.setdefault(name, {})[status] = int(n)
    depths: dict[str, int] | None
    workers: dict[str, int] | None
    try:
        depths = queue.queue_depths(by_queue)
        found = queue.list_workers()
        busy = sum(1 for w in found if w.state == "busy")
        workers = {"total": len(found), "busy": busy, "idle": len(found) - busy}
    except BackendError as exc:
        stats.notes.append(f"Redis not reached ({exc}): queue depths and workers unknown")
        depths, workers = None, None
    names = sorted(set(by_queue) | set(depths or {}))
    queues = [
        QueueDepth(
            name,
            None if depths is None else depths.get(name, 0),
            by_queue.get(name, {}).get("pending", 0),
            by_queue.get(name, {}).get("processing", 0),
        )
        for name in names
    ]
    return queues, workers


def window_label(since: str, start: datetime) -> str:
    """`last 24h` for a duration as typed, `since 2026-05-01 09:00 UTC` for a time."""
    try:
        parse_duration(since)
    except UsageError:
        return f"since {start:%Y-%m-%d %H:%M} UTC"
    return f"last {since.strip()}"
