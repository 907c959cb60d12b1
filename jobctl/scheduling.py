"""Recurring jobs: schedules kept in SQL (a cron expression or an interval, and the job to create), fired
by every worker's ticker. Each firing is one transaction that moves `next_run_at` on by compare-and-set
and inserts the job row, so with any number of workers a due time fires exactly once; the job is then
queued like any other (JSON, jobctl's dispatch function; RQ's own cron, which pickles, is not used).
A schedule that was not fired for a while (no worker running) fires once, then keeps to its times.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from . import store, timespec
from .errors import NotFoundError, RefusedError, UsageError
from .models import ACTIVE, Job, Schedule, utcnow

if TYPE_CHECKING:
    from .service import JobRequest

log = logging.getLogger("jobctl.scheduling")

SCHEDULE = Schedule.__table__  # type: ignore[attr-defined]
JOB = store.JOB
MAX_NAME = 255
# What a schedule keeps of its job request (the row fields its firings copy).
JOB_FIELDS = (
    "description",
    "queue",
    "timeout",
    "retries",
    "priority",
    "at_front",
    "retry_delay",
    "retry_on",
    "soft_timeout",
    "unique_key",
)


def check_cron(expr: str) -> str:
    """A cron expression: 5 fields (minute hour day month weekday), an optional 6th for seconds, or
    an @-name such as @hourly."""
    from croniter import croniter

    text = " ".join(str(expr).split())
    fields = text.split(" ")
    if not text or not (text.startswith("@") or len(fields) in (5, 6)) or not croniter.is_valid(text):
        raise UsageError(f"invalid cron expression {expr!r}: use 5 fields, as in '*/5 * * * *'")
    return text


def next_fire(cron: str | None, every: int | None, zone_name: str, after: datetime) -> datetime:
    """The first firing time strictly after `after` (UTC), cron times read in `zone_name`."""
    if every:
        return after + timedelta(seconds=every)
    from croniter import croniter

    assert cron is not None
    zone = timespec.zone(zone_name)
    nxt = croniter(cron, after.astimezone(zone)).get_next(datetime)
    return nxt.astimezone(after.tzinfo)


@dataclass
class ScheduleSpec:
    """When a schedule fires: a cron expression or an interval, and the zone cron times are read in."""

    cron: str | None = None
    every: str | None = None
    tz: str | None = None


def add_schedule(name: str, spec: ScheduleSpec, request: JobRequest) -> Schedule:
    """Store a new schedule; its first firing is the next due time from now."""
    from .service import validate_request

    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME or "\x00" in name:
        raise UsageError(f"invalid schedule name {name!r}: give 1 to {MAX_NAME} characters")
    if (spec.cron is None) == (spec.every is None):
        raise UsageError("give either --cron EXPR or --every DURATION")
    if request.at or request.delay or request.after or request.after_any:
        raise UsageError("a schedule's jobs start at each firing: --at, --in and --after do not apply")
    cron = check_cron(spec.cron) if spec.cron is not None else None
    every = None
    if spec.every is not None:
        every = round(timespec.parse_duration(spec.every, what="--every interval"))
        if every < 1:
            raise UsageError(f"--every must be at least 1 second, got {spec.every!r}")
    zone_name = spec.tz or timespec.system_zone_name() or "UTC"
    timespec.zone(zone_name)  # refuse an unknown zone now, not at firing time
    request.name = request.name or name
    validate_request(request)
    row: dict[str, Any] = {"name": request.name, "description": request.description, "queue": request.queue}
    row.update(timeout=request.timeout, retries=request.retries, **request.control)
    now = utcnow()
    values = {
        "name": name,
        "cron": cron,
        "every": every,
        "timezone": zone_name,
        "task": request.task,
        "args": request.args,
        "options": {"job_name": request.name, **{k: row.get(k) for k in JOB_FIELDS}},
        "enabled": True,
        "next_run_at": next_fire(cron, every, zone_name, now.replace(microsecond=0)),
        "created_at": now,
        "updated_at": now,
    }
    return Schedule.model_validate({**values, "id": _insert(name, values)})


@store.guarded
def _insert(name: str, values: dict[str, Any]) -> int:
    taken = RefusedError(f"schedule {name!r} already exists (remove it first)")
    try:
        with store.begin() as conn:
            if conn.execute(sa.select(SCHEDULE.c.id).where(SCHEDULE.c.name == name)).first():
                raise taken
            return int(conn.execute(sa.insert(SCHEDULE).returning(SCHEDULE.c.id), values).scalar_one())
    except sa_exc.IntegrityError:
        raise taken from None


@store.guarded
def list_schedules() -> list[Schedule]:
    """Every schedule, by name."""
    with store.get_engine().connect() as conn:
        rows = conn.execute(sa.select(SCHEDULE).order_by(SCHEDULE.c.name)).all()
    return [Schedule.model_validate(dict(r._mapping)) for r in rows]


@store.guarded
def remove_schedule(name: str) -> Schedule:
    """Delete a schedule (jobs it already created stay); NotFoundError when there is none by that name."""
    with store.begin() as conn:
        row = conn.execute(sa.select(SCHEDULE).where(SCHEDULE.c.name == name)).first()
        if row is None:
            raise NotFoundError(f"schedule {name!r} not found")
        conn.execute(sa.delete(SCHEDULE).where(SCHEDULE.c.id == row.id))
    return Schedule.model_validate(dict(row._mapping))


def describe(schedule: Schedule) -> str:
    """`cron */5 * * * * (Europe/Berlin)` or `every 30s`."""
    if schedule.every:
        return f"every {schedule.every}s"
    return f"cron {schedule.cron} ({schedule.timezone})"


# ---------------------------------------------------------------- firing


@store.guarded
def fire_due(now: datetime | None = None) -> list[Job]:
    """Fire every schedule that is due: one job per due time, whichever worker gets there first."""
    now = now or utcnow()
    with store.get_engine().connect() as conn:
        due = conn.execute(
            sa.select(SCHEDULE)
            .where(SCHEDULE.c.enabled, SCHEDULE.c.next_run_at <= now)
            .order_by(SCHEDULE.c.next_run_at)
        ).all()
    fired: list[Job] = []
    for row in due:
        schedule = Schedule.model_validate(dict(row._mapping))
        try:
            job = _fire(schedule, now)
        except Exception as exc:  # one broken schedule must not stop the others
            log.warning("schedule %r: could not fire (%s)", schedule.name, exc)
            continue
        if job is not None:
            fired.append(job)
    if fired:
        from . import queue

        try:
            queue.enqueue(fired)
        except Exception as exc:  # stored as pending: reconciliation queues them
            log.warning("could not queue scheduled jobs %s: %s", [j.id for j in fired], exc)
    return fired


def _fire(schedule: Schedule, now: datetime) -> Job | None:
    """Claim this due time (compare-and-set on next_run_at) and insert its job, in one transaction."""
    from .queue import rq_job_id

    try:
        following = _following(schedule, now)
    except Exception as exc:
        raise RuntimeError(f"cannot compute its next time: {exc}") from exc
    options: dict[str, Any] = dict(schedule.options or {})
    job_name = options.pop("job_name", None) or schedule.name
    with store.begin() as conn:
        claimed = conn.execute(
            sa.update(SCHEDULE)
            .where(SCHEDULE.c.id == schedule.id, SCHEDULE.c.next_run_at == schedule.next_run_at)
            .values(next_run_at=following, last_run_at=now, updated_at=now)
        ).rowcount
        if claimed != 1:
            return None  # another worker fired this due time
        key = options.get("unique_key")
        if key and _active_key_holder(conn, key) is not None:
            log.info("schedule %r: skipped a firing: an active job holds key %r", schedule.name, key)
            return None
        row = {
            "name": job_name,
            "task": schedule.task,
            "args": schedule.args,
            "schedule": schedule.name,
            "scheduled_for": schedule.next_run_at,  # the due time this job is the firing of
            **{k: options.get(k) for k in JOB_FIELDS if k in options},
        }
        row["description"] = row.get("description") or ""
        (job,) = store.insert_rows(conn, [row], lambda job_id: rq_job_id(job_id, 1))
        conn.execute(sa.update(SCHEDULE).where(SCHEDULE.c.id == schedule.id).values(last_job_id=job.id))
    log.info("schedule %r fired: job %s; next at %s", schedule.name, job.id, following.isoformat())
    return job


def _following(schedule: Schedule, now: datetime) -> datetime:
    """The due time after this firing: the first one past `now` (missed ones are not made up)."""
    if schedule.every:
        # Keep the cadence: the next multiple of the interval after the time that was due.
        late = (now - schedule.next_run_at).total_seconds()
        return schedule.next_run_at + timedelta(seconds=schedule.every * (int(late // schedule.every) + 1))
    return next_fire(schedule.cron, None, schedule.timezone, now.replace(microsecond=0))


def _active_key_holder(conn: Any, key: str) -> int | None:
    return conn.execute(
        sa.select(JOB.c.id).where(JOB.c.unique_key == key, JOB.c.status.in_([s.value for s in ACTIVE]))
    ).scalar()
