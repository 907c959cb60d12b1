"""Scheduling: `--in` / `--at` parsing and due times, scheduled jobs on real workers, cancelling them,
and recurring schedules that fire once per due time with several workers."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobctl import listing
from jobctl.errors import UsageError
from jobctl.timespec import due_time, parse_duration, parse_seconds, parse_when
from tests.conftest import show, submit, wait_for

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)  # 14:00 in Berlin (summer time)
BERLIN = ZoneInfo("Europe/Berlin")
ECHO = "tests.sample_tasks.echo"


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


# ---------------------------------------------------------------- parsing (no backends)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("1.5", 1.5),
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2M", 120),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5", "5x", "1m1m", "m", "nan", "inf", "5 m s"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(text)


def test_whole_seconds_within_bounds() -> None:
    assert parse_seconds("10m", what="timeout") == 600
    assert parse_seconds(5, what="timeout") == 5
    assert parse_seconds(None, what="timeout") is None
    with pytest.raises(UsageError, match="between"):
        parse_seconds("8d", what="timeout")
    with pytest.raises(UsageError, match="between"):
        parse_seconds("0", what="timeout")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T09:00", datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),  # Berlin winter time, UTC+1
        ("2026-12-01 09:00", datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),
        ("2026-12-01T09:00Z", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
        ("2026-12-01T09:00:00+05:00", datetime(2026, 12, 1, 4, 0, tzinfo=UTC)),
        ("2026-12-01 09:00 UTC", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
        ("2026-12-01 09:00 America/New_York", datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),
        ("tomorrow 09:00", datetime(2026, 6, 16, 7, 0, tzinfo=UTC)),
        ("Tomorrow 9:30", datetime(2026, 6, 16, 7, 30, tzinfo=UTC)),
        ("today 18:00", datetime(2026, 6, 15, 16, 0, tzinfo=UTC)),
        ("18:00", datetime(2026, 6, 15, 16, 0, tzinfo=UTC)),
        ("09:00", datetime(2026, 6, 16, 7, 0, tzinfo=UTC)),  # passed today: tomorrow
        ("in 10m", NOW + timedelta(minutes=10)),
        ("+1h30m", NOW + timedelta(minutes=90)),
        ("now", NOW),
    ],
)
def test_times_in_the_local_zone_unless_given(text: str, expected: datetime) -> None:
    assert parse_when(text, now=NOW, tz=BERLIN) == expected


@pytest.mark.parametrize(
    "text", ["", "yesterday", "tomorrow", "25:00", "2026-13-01", "next week", "12:00 Mars/Olympus"]
)
def test_bad_times_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_when(text, now=NOW, tz=BERLIN)


def test_due_time_from_in_or_at_and_refuses_the_past() -> None:
    assert due_time(None, None, now=NOW) is None
    assert due_time(None, "10s", now=NOW) == NOW + timedelta(seconds=10)
    assert due_time("2026-06-15T13:00Z", None, now=NOW) == NOW + timedelta(hours=1)
    with pytest.raises(UsageError, match="in the past"):
        due_time("2026-06-15T11:00Z", None, now=NOW)
    with pytest.raises(UsageError, match="either --at or --in"):
        due_time("tomorrow 09:00", "1m", now=NOW)


# ---------------------------------------------------------------- the CLI


def test_bad_schedule_options_are_one_line_usage_errors(cli) -> None:
    for args, message in [
        (("--at", "2001-01-01T00:00"), "in the past"),
        (("--in", "soon"), "invalid --in duration"),
        (("--in", "1m", "--at", "tomorrow 09:00"), "either --at or --in"),
        (("--at", "tomorrow 25:00"), "not a time of day"),
        (("--timeout", "forever"), "invalid timeout"),
    ]:
        out = cli("submit", "x", "-t", "noop", *args)
        assert out.exit_code == 2, (args, out)
        assert out.stderr.startswith("Error: ") and message in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1
    assert json.loads(cli("list", "--json").stdout) == []


def test_scheduled_job_waits_in_rqs_schedule_then_runs_when_due(cli, start_worker) -> None:
    from jobctl import queue

    start_worker(wait=False)  # it comes up while the jobs wait for their time
    before = datetime.now(UTC)
    later = submit(cli, "later", "-t", "noop", "--in", "3s")
    at = submit(cli, "at", "-t", "noop", "--at", (before + timedelta(seconds=3)).isoformat())
    dropped = submit(cli, "dropped", "-t", "noop", "--in", "3s")

    job = show(cli, later)
    assert job["status"] == "pending"
    assert when(job["scheduled_for"]) >= before + timedelta(seconds=3)
    assert queue.waiting("default").scheduled >= {f"jobctl-{i}-1" for i in (later, at, dropped)}
    assert "pending (due in" in cli("list").stdout
    assert "due" in cli("show", str(later)).stdout

    out = cli("cancel", str(dropped))
    assert out.exit_code == 0, out
    assert f"jobctl-{dropped}-1" not in queue.waiting("default").scheduled  # removed from the schedule

    for job_id in (later, at):
        done = wait_for(lambda j=job_id: show(cli, j)["status"] == "completed" and show(cli, j), 30, 0.2)
        # It never starts before its due time (RQ's scheduler moves it onto the queue when due).
        assert when(done["started_at"]) >= when(done["scheduled_for"])
    gone = show(cli, dropped)  # due with the others, which ran: it was taken off the schedule
    assert gone["status"] == "cancelled" and gone["started_at"] is None


# ---------------------------------------------------------------- recurring schedules


def test_schedule_commands(cli) -> None:
    out = cli("schedule", "add", "nightly", "--cron", "0 3 * * *", "--tz", "UTC", "-t", ECHO, "-a", "text=hi")
    assert out.exit_code == 0, out
    assert "next run" in out.stderr
    listed = json.loads(cli("schedule", "list", "--json").stdout)
    assert [(s["name"], s["cron"], s["timezone"], s["task"], s["args"]) for s in listed] == [
        ("nightly", "0 3 * * *", "UTC", ECHO, {"text": "hi"})
    ]
    next_run = when(listed[0]["next_run_at"])
    assert (next_run.hour, next_run.minute) == (3, 0) and next_run > datetime.now(UTC)
    assert "nightly" in cli("schedule", "list").stdout

    for args, code, message in [
        (("nightly", "--every", "1h", "-t", "noop"), 1, "already exists"),
        (("bad", "--cron", "every day", "-t", "noop"), 2, "invalid cron expression"),
        (("bad", "-t", "noop"), 2, "--cron EXPR or --every"),
        (("bad", "--every", "1h", "--cron", "* * * * *", "-t", "noop"), 2, "--cron EXPR or --every"),
        (("bad", "--every", "1h", "-t", "nosuchtask"), 2, "nosuchtask"),
        (("bad", "--every", "1h", "-t", ECHO), 2, "text"),
        (("bad", "--every", "1h", "--tz", "Nowhere/Land", "-t", "noop"), 2, "unknown time zone"),
    ]:
        out = cli("schedule", "add", *args)
        assert out.exit_code == code, (args, out)
        assert out.stderr.startswith("Error: ") and message in out.stderr, out.stderr

    out = cli("schedule", "remove", "nightly", "ghost")
    assert out.exit_code == 3
    assert "removed schedule 'nightly'" in out.stderr and "Error: schedule 'ghost' not found" in out.stderr
    assert json.loads(cli("schedule", "list", "--json").stdout) == []


def test_a_due_schedule_fires_once_however_many_fire_at_once(env) -> None:
    from jobctl import scheduling, service

    schedule = scheduling.add_schedule(
        "burst", scheduling.ScheduleSpec(every="1h"), service.JobRequest(name="burst", task="noop")
    )
    due = schedule.next_run_at + timedelta(seconds=1)
    fired: list[int] = []
    errors: list[BaseException] = []

    def fire() -> None:
        try:
            fired.extend(j.id for j in scheduling.fire_due(now=due))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fire) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(fired) == 1
    (job,) = listing.list_jobs()
    assert job.schedule == "burst" and job.scheduled_for == schedule.next_run_at and job.task == "noop"
    (after,) = scheduling.list_schedules()
    assert after.next_run_at == schedule.next_run_at + timedelta(hours=1)
    assert after.last_job_id == job.id
    # A worker that was down for a day fires once, then keeps to the cadence.
    assert len(scheduling.fire_due(now=due + timedelta(days=1))) == 1
    (later,) = scheduling.list_schedules()
    assert later.next_run_at == schedule.next_run_at + timedelta(hours=25)


def test_recurring_jobs_run_once_per_due_time_with_several_workers(cli, start_worker) -> None:
    start_worker(wait=False)
    start_worker(wait=False)
    out = cli("schedule", "add", "tick", "--cron", "* * * * * */1", "-t", ECHO, "-a", "text=tock")
    assert out.exit_code == 0, out

    def fired() -> list[dict]:
        jobs = json.loads(cli("list", "--json").stdout)
        return [j for j in jobs if j["schedule"] == "tick" and j["status"] == "completed"]

    jobs = wait_for(lambda: len(done := fired()) >= 3 and done, 40, 0.3)
    assert cli("schedule", "remove", "tick").exit_code == 0
    due_times = [j["scheduled_for"] for j in jobs]
    assert len(set(due_times)) == len(due_times), due_times  # no due time fired twice
    assert all(j["result"] == "tock" and j["name"] == "tick" for j in jobs)
    assert json.loads(cli("schedule", "list", "--json").stdout) == []  # removed; its jobs stay
    assert all(show(cli, j["id"])["status"] == "completed" for j in jobs)
