"""The watcher's polling logic on real Redis and SQL: what each tick reads, what changed, the exit code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from jobctl import lifecycle, queue, runtime, service, store
from jobctl.errors import NotFoundError, UsageError
from jobctl.models import Job
from jobctl.watching import Counts, WatchedJob, Watcher, display_order, estimate_eta, percent


@dataclass
class Trips:
    """Round trips actually sent: Redis writes on the socket, SQL statements executed."""

    redis: int = 0
    sql: int = 0


@pytest.fixture
def trips(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Trips]:
    """Count every Redis request (a pipeline is one) and every SQL statement this process sends."""
    from redis.connection import AbstractConnection

    counted = Trips()
    original = AbstractConnection.send_packed_command

    def send(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        counted.redis += 1
        original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send)
    engine = store.get_engine()

    def on_sql(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        # SQLite's explicit BEGIN (see store._sqlite_begin) is not a query of its own.
        if not statement.lstrip().upper().startswith("BEGIN"):
            counted.sql += 1

    sa.event.listen(engine, "before_cursor_execute", on_sql)
    yield counted
    sa.event.remove(engine, "before_cursor_execute", on_sql)


def submit(n: int, task: str = "noop", **args: object) -> list[int]:
    requests = [service.JobRequest(name=f"job {i}", task=task, args=dict(args)) for i in range(n)]
    jobs = service.submit_jobs(requests)
    return [j.id for j in jobs if j.id is not None]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def counting(trips: Trips) -> Iterator[Trips]:
    before = Trips(trips.redis, trips.sql)
    delta = Trips()
    yield delta
    delta.redis, delta.sql = trips.redis - before.redis, trips.sql - before.sql


def test_a_quiet_tick_is_one_redis_round_trip_and_no_sql(trips: Trips) -> None:
    clock = FakeClock()
    ids = submit(30)
    watcher = Watcher(ids, clock=clock, fallback_interval=3.0)
    changes = watcher.start()
    assert [c.kind for c in changes] == ["status"] * 30
    assert [watcher.rows[i].position for i in ids] == list(range(1, 31))
    for _ in range(3):
        clock.now += 0.5
        with counting(trips) as cost:
            assert watcher.tick() == []
        assert (cost.redis, cost.sql) == (1, 0)
    clock.now += 3
    with counting(trips) as cost:
        assert watcher.tick() == []
    # The fallback: one light query of statuses; no full row read since none moved.
    assert (cost.redis, cost.sql, watcher.stats.sql_rows) == (1, 1, 0)
    assert watcher.counts() == Counts(pending=30)
    assert not watcher.finished


def test_only_rows_that_changed_are_read_back_in_one_query(trips: Trips) -> None:
    ids = submit(10)
    watcher = Watcher(ids)
    watcher.start()
    for job_id in ids[:3]:
        assert service.cancel_job(job_id).ok
    with counting(trips) as cost:
        changes = watcher.tick()
    assert (cost.redis, cost.sql) == (1, 1)
    assert watcher.stats.sql_rows == 3
    seen = [(c.kind, c.row.id, c.row.status) for c in changes]
    assert seen == [("status", i, "cancelled") for i in ids[:3]]
    with counting(trips) as cost:
        assert watcher.tick() == []
    assert (cost.redis, cost.sql) == (1, 0)  # the cancelled rows are final: never read again
    assert watcher.exit_code() == 1 and not watcher.finished
    for job_id in ids[3:]:
        service.cancel_job(job_id)
    watcher.tick()
    assert watcher.finished and watcher.counts() == Counts(cancelled=10)
    with counting(trips) as cost:
        watcher.tick()
    assert (cost.redis, cost.sql) == (0, 0)


def test_a_row_redis_knows_nothing_of_resolves_at_the_fallback(trips: Trips) -> None:
    clock = FakeClock()
    (done, vanished) = submit(2)
    watcher = Watcher([done, vanished], clock=clock, fallback_interval=3.0)
    watcher.start()
    # Run one job outside RQ (its RQ job stays `queued`): only the slow fallback can see it end.
    assert runtime.run_job(done, 1) is None
    clock.now += 1
    with counting(trips) as cost:
        watcher.tick()
    assert cost.sql == 0 and watcher.rows[done].status == "pending"
    # A vanished RQ key is a change Redis does show: read back at once.
    queue.get_redis().delete(f"rq:job:{queue.rq_job_id(vanished, 1)}")
    store.cancel(vanished)
    watcher.tick()
    assert watcher.rows[vanished].status == "cancelled"
    assert watcher.rows[done].status == "pending"
    clock.now += 3
    changes = watcher.tick()
    assert [(c.row.id, c.row.status) for c in changes] == [(done, "completed")]
    assert watcher.finished and watcher.exit_code() == 1


def test_a_started_job_not_yet_claimed_is_read_again_until_sql_agrees(trips: Trips) -> None:
    clock = FakeClock()
    (job_id,) = submit(1, task="sleep")
    watcher = Watcher([job_id], clock=clock)
    watcher.start()
    conn = queue.get_redis()
    key = f"rq:job:{queue.rq_job_id(job_id, 1)}"
    conn.hset(key, "status", "started")  # what RQ writes just before the work-horse claims the row
    assert watcher.tick() == [] and watcher.rows[job_id].status == "pending"
    with counting(trips) as cost:
        watcher.tick()
    assert cost.sql == 0  # not due yet
    lifecycle.claim(job_id, 1, "w1")
    clock.now += 0.3
    changes = watcher.tick()
    assert [(c.kind, c.row.status) for c in changes] == [("status", "processing")]
    assert watcher.rows[job_id].job.worker == "w1"
    clock.now += 1
    with counting(trips) as cost:
        watcher.tick()
    assert cost.sql == 0  # settled: no more re-reads until the fallback (3 s)


def test_progress_on_a_pending_row_means_it_was_claimed(trips: Trips) -> None:
    (job_id,) = submit(1, task="sleep")
    watcher = Watcher([job_id], clock=FakeClock())
    watcher.start()
    lifecycle.claim(job_id, 1, "w1")
    conn = queue.get_redis()
    meta = '{"progress": {"current": 1, "total": 4, "message": "a"}}'
    conn.hset(f"rq:job:{queue.rq_job_id(job_id, 1)}", "meta", meta)
    changes = watcher.tick()
    assert [(c.kind, c.row.status) for c in changes] == [("progress", "processing"), ("status", "processing")]
    row = watcher.rows[job_id]
    assert row.progress == {"current": 1, "total": 4, "message": "a"} and percent(row.progress) == 25


def test_a_retried_attempt_is_followed_under_its_new_rq_id(trips: Trips) -> None:
    clock = FakeClock()
    (job_id,) = service.submit_jobs([service.JobRequest(name="flaky", task="boom", retries=1)])
    assert job_id.id is not None
    watcher = Watcher([job_id.id], clock=clock)
    watcher.start()
    with pytest.raises(ValueError):
        runtime.run_job(job_id.id, 1)  # fails; attempt 2 is queued under a new RQ id
    clock.now += 5
    watcher.tick()
    row = watcher.rows[job_id.id]
    assert row.status == "pending" and row.job.task_id == queue.rq_job_id(job_id.id, 2)
    assert row.job.error and row.error_line() == "ValueError: boom"
    watcher.tick()
    assert row.position == 2  # attempt 1, run outside RQ, is still queued ahead of it
    service.cancel_job(job_id.id)  # discards attempt 2: its RQ status moves
    watcher.tick()
    assert row.status == "cancelled" and watcher.finished


def test_without_ids_it_follows_new_and_retried_jobs_but_not_finished_ones(trips: Trips) -> None:
    clock = FakeClock()
    (old,) = submit(1)
    runtime.run_job(old, 1)  # completed before the watch began
    (first,) = submit(1)
    watcher = Watcher(None, clock=clock)
    assert [c.row.id for c in watcher.start()] == [first]
    (second,) = submit(1)
    with counting(trips) as cost:
        changes = watcher.tick()
    assert [c.row.id for c in changes] == [second]
    assert (cost.redis, cost.sql) == (1, 1)  # the new-id scan is the only SQL
    for job_id in (first, second):
        service.cancel_job(job_id)
    watcher.tick()
    assert watcher.finished and watcher.exit_code() == 1
    assert service.retry_job(first).ok
    clock.now += 5
    watcher.tick()
    assert watcher.rows[first].status == "pending" and not watcher.finished
    assert old not in watcher.rows


def test_follow_never_finishes_and_keeps_memory_bounded(trips: Trips) -> None:
    watcher = Watcher(None, follow=True, keep_finished=3)
    assert watcher.start() == [] and not watcher.finished
    ids = submit(5)
    watcher.tick()
    for job_id in ids:
        service.cancel_job(job_id)
    watcher.tick()
    assert not watcher.finished
    assert len(watcher.rows) == 3 and watcher.counts() == Counts(cancelled=5)


def test_unknown_ids_and_follow_with_ids_are_refused(env: dict[str, str]) -> None:
    (job_id,) = submit(1)
    with pytest.raises(NotFoundError, match=r"^job 99 not found$"):
        Watcher([job_id, 99]).start()
    with pytest.raises(NotFoundError, match=r"^jobs 0, 98 not found$"):
        Watcher([0, job_id, 98]).start()
    with pytest.raises(UsageError):
        Watcher([job_id], follow=True)
    watcher = Watcher([job_id, job_id])
    watcher.start()
    assert list(watcher.rows) == [job_id]


def _row(job_id: int, status: str, position: int | None = None, finished_at: float = 0.0) -> WatchedJob:
    row = WatchedJob(Job(id=job_id, name="x", task="noop", queue="default", status=status))
    if position is not None:
        row.live = queue.LiveState("queued", None, None, position - 1)
    row.finished_at = finished_at
    return row


def test_eta_percent_and_display_order() -> None:
    assert estimate_eta({"current": 2, "total": 10}, 4.0) == 16.0
    assert estimate_eta({"current": 10, "total": 10}, 4.0) == 0.0
    assert estimate_eta({"current": 0, "total": 10}, 4.0) is None
    assert estimate_eta({"current": 3, "total": None}, 4.0) is None
    assert estimate_eta({"current": 3, "total": 10}, None) is None
    assert percent({"current": 1, "total": 4}) == 25
    assert percent({"current": 9, "total": 4}) == 100
    assert percent({"current": 1, "total": 0}) is None and percent(None) is None
    rows = [
        _row(1, "completed", finished_at=5.0),
        _row(2, "pending", position=2),
        _row(3, "processing"),
        _row(4, "failed", finished_at=9.0),
        _row(5, "pending", position=1),
    ]
    assert [r.id for r in display_order(rows)] == [3, 5, 2, 4, 1]
