"""Reconciliation: one pass that makes the SQL records and Redis agree, so no job is stranded.

Every `jobctl worker` runs a pass every `JOBCTL_RECONCILE_INTERVAL` seconds and `jobctl health` runs one.
A pass looks at the rows that are not terminal:

- a `pending` row whose attempt is not waiting in Redis (its enqueue failed, Redis lost it, or the
  worker that took it died before starting it) is enqueued again;
- a `processing` row whose RQ job already ended (the worker could not write the outcome, e.g. the
  database was down) gets the outcome RQ recorded;
- a `processing` row whose process is gone (no heartbeat for `JOBCTL_LOST_AFTER`, or, on the same host,
  the process no longer exists) fails with `worker lost`, or is queued again if it has retries left.

Every write is a compare-and-set on the row's status and attempt, so passes are idempotent and a late
writer never overwrites a newer state; a Redis lock keeps passes from running twice at the same time.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from . import lifecycle, liveness, queue, registries, store
from .config import get_settings
from .models import Job, JobStatus, utcnow
from .priority import rq_queue_name

log = logging.getLogger("jobctl.reconcile")
log.addHandler(logging.NullHandler())  # workers show these; `jobctl health` shows its summary instead

LOCK_KEY = "jobctl:reconcile:lock"
SUSPECT_KEY = "jobctl:suspect:{}"
MAX_PENDING_GRACE = 10.0


@dataclass
class Report:
    """What one pass changed, by job id."""

    requeued: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    finalized: list[int] = field(default_factory=list)
    tidied: list[str] = field(default_factory=list)
    skipped: bool = False

    @property
    def changed(self) -> int:
        return len(self.requeued) + len(self.lost) + len(self.finalized) + len(self.tidied)

    def summary(self) -> str:
        """One line for `jobctl health` and the worker log."""
        if self.skipped:
            return "another pass was running"
        if not self.changed:
            return "SQL and Redis agree"
        parts = []
        for label, ids in (("requeued", self.requeued), ("lost", self.lost), ("finalized", self.finalized)):
            if ids:
                shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
                parts.append(f"{label} {len(ids)} ({shown})")
        if self.tidied:
            parts.append(f"closed {len(self.tidied)} stale RQ entries")
        return "; ".join(parts)


# ---------------------------------------------------------------- settling one attempt


def settle_failure(job: Job, attempt: int, error: str, progress: dict[str, Any] | None = None) -> str:
    """Record a failed attempt: queue the next one if retries remain, else fail the row.

    Returns "retried", "failed", or "" when the row had already moved on (nothing written).
    """
    from .backoff import plan_retry

    assert job.id is not None
    # The log first: once the row shows the attempt ended, its log is there too.
    _keep_log(job.id, attempt)
    plan = plan_retry(job, attempt)
    if plan is not None:
        next_id = queue.rq_job_id(job.id, attempt + 1)
        if lifecycle.requeue_after_failure(
            job.id, attempt, error=error, progress=progress, task_id=next_id, scheduled_for=plan.due
        ):
            job.attempts = attempt
            job.scheduled_for = plan.due
            try:
                queue.enqueue([job])
            except Exception as exc:  # the row is pending without a queue entry: the next pass enqueues it
                log.warning("job %s: could not queue attempt %s: %s", job.id, attempt + 1, exc)
            return "retried"
    if not lifecycle.finish(job.id, attempt, JobStatus.FAILED, error=error, progress=progress):
        return ""
    return "failed"


def _keep_log(job_id: int, attempt: int) -> None:
    """An attempt settled for its dead process: keep the lines it streamed, as it did not store them."""
    from .logs import keep_stream

    try:
        keep_stream(job_id, attempt)
    except Exception as exc:  # the stream stays readable in Redis for a day
        log.warning("job %s attempt %s: could not store its log: %s", job_id, attempt, exc)


def settle_attempt(task_id: str, reason: str) -> str:
    """Fail (or retry) the attempt behind an RQ job id whose process died; "" if the row moved on."""
    parsed = queue.parse_rq_job_id(task_id)
    if parsed is None:
        return ""
    job_id, attempt = parsed
    return _settle_running(job_id, attempt, reason)


def _settle_running(job_id: int, attempt: int, error: str, progress: dict[str, Any] | None = None) -> str:
    """`settle_failure` for the row as it is now, if it is still running `attempt` ("" if it moved on);
    its own progress is kept unless `progress` is given."""
    job = store.get_job(job_id)
    if job is None or job.status != JobStatus.PROCESSING.value or job.attempts != attempt:
        return ""
    return settle_failure(job, attempt, error, progress=progress if progress is not None else job.progress)


def _rq_error(outcome: registries.Outcome) -> str:
    if outcome.status in ("stopped", "canceled"):
        return f"stopped in RQ ({outcome.status}) before the job recorded an outcome"
    text = (outcome.error or "").strip()
    if not text:
        return "failed in RQ without an error message"
    lines = [line for line in text.splitlines() if line.strip()]
    summary = lines[-1].strip() if lines else text
    return summary if summary == text else f"{summary}\n\n{text}"


# ---------------------------------------------------------------- one pass


def run_pass() -> Report:
    """Run one reconciliation pass unless another process is running one; BackendError if a backend fails."""
    return _locked_pass()


@queue.guarded
def _locked_pass() -> Report:
    settings = get_settings()
    conn = queue.get_redis()
    # Short enough that a worker killed in the middle of a pass does not hold up the next one for long.
    timeout = max(5.0, min(30.0, 2 * settings.reconcile_interval))
    lock = conn.lock(LOCK_KEY, timeout=timeout, blocking=False)
    if not lock.acquire():
        return Report(skipped=True)
    try:
        return _Pass(conn, settings.lost_after).run()
    finally:
        with contextlib.suppress(Exception):
            lock.release()


class _Pass:
    def __init__(self, conn: Any, lost_after: float) -> None:
        self.conn = conn
        self.lost_after = lost_after
        self.report = Report()
        # Right after Redis restarted or was flushed, missing heartbeats prove nothing yet.
        self.trust_absence = liveness.redis_age(conn) >= lost_after
        seconds, micros = conn.time()
        self.redis_now = seconds + micros / 1e6

    def run(self) -> Report:
        now = utcnow()
        grace = timedelta(seconds=min(self.lost_after, MAX_PENDING_GRACE))
        rows = store.active_rows()
        processing = [r for r in rows if r.status == JobStatus.PROCESSING.value]
        # A row stored a moment ago may not be enqueued yet: leave it to the submitter for a while.
        # A blocked row waits on other jobs with no queue entry by design (see dependencies.py).
        pending = [
            r
            for r in rows
            if r.status == JobStatus.PENDING.value and not r.blocked and r.updated_at < now - grace
        ]
        ids = {r.id: queue.rq_job_id(r.id, r.attempts) for r in processing}
        ids.update({r.id: queue.rq_job_id(r.id, r.attempts + 1) for r in pending})
        states = registries.attempt_states(list(ids.values()))
        workers = {r.worker for r in processing if r.worker}
        workers |= {s.worker for r in pending if (s := states[ids[r.id]]).status == "started" and s.worker}
        job_beats, worker_beats = liveness.read_beats(
            self.conn, [ids[r.id] for r in processing], sorted(workers)
        )
        for row in processing:
            self._check_processing(row, ids[row.id], states[ids[row.id]], job_beats, worker_beats, now)
        self._check_pending(pending, ids, states, worker_beats)
        self._close_leftovers(now)
        if self.report.changed:
            log.warning("reconciliation: %s", self.report.summary())
        return self.report

    # ------------------------------------------------------------ processing rows

    def _check_processing(
        self,
        row: store.ActiveRow,
        rq_id: str,
        state: registries.AttemptState,
        job_beats: dict[str, liveness.Beat],
        worker_beats: dict[str, liveness.Beat],
        now: Any,
    ) -> None:
        # Only the RQ execution that claimed the row speaks for it (a duplicate entry may have run too).
        same_run = row.worker is None or state.worker in (None, row.worker)
        if state.status in registries.ENDED and same_run and self._finalize(row, rq_id):
            return
        job_beat = job_beats.get(rq_id)
        worker_beat = worker_beats.get(row.worker or "")
        if job_beat is not None and job_beat.alive:
            return
        if worker_beat is not None and worker_beat.alive and worker_beat.job == rq_id:
            return
        proven_gone = job_beat is not None or (worker_beat is not None and worker_beat.process_gone())
        if not proven_gone:
            # No heartbeat at all: it expired (the process stopped beating) or was never written yet.
            if not self.trust_absence or row.started_at is None:
                return
            if row.started_at > now - timedelta(seconds=self.lost_after):
                return
        who = f"worker {row.worker}" if row.worker else "its worker"
        reason = f"worker lost: {who} stopped responding while running this job (no heartbeat)"
        if proven_gone:
            reason = f"worker lost: the process running this job on {who} is gone"
        settled = _settle_running(row.id, row.attempts, reason)
        if settled:
            self.report.lost.append(row.id)
            log.warning("job %s attempt %s: %s; %s", row.id, row.attempts, reason, settled)
            with contextlib.suppress(Exception):
                registries.close(rq_id, reason)

    def _finalize(self, row: store.ActiveRow, rq_id: str) -> bool:
        outcome = registries.ended_outcome(rq_id)
        if outcome is None:
            return False
        # It ended a moment ago: the worker that ran it records the outcome itself (a failure with the
        # exception in hand, which decides a retry). Left to it for a while.
        grace = timedelta(seconds=min(self.lost_after, MAX_PENDING_GRACE))
        if outcome.ended_at is not None and outcome.ended_at > utcnow() - grace:
            return True
        if outcome.status == "finished":
            done = lifecycle.finish(
                row.id, row.attempts, JobStatus.COMPLETED, result=outcome.result, progress=outcome.progress
            )
            settled = "completed" if done else ""
        else:
            settled = _settle_running(row.id, row.attempts, _rq_error(outcome), progress=outcome.progress)
        if settled:
            self.report.finalized.append(row.id)
            log.warning(
                "job %s attempt %s: recorded from RQ (%s): %s", row.id, row.attempts, outcome.status, settled
            )
        return True

    # ------------------------------------------------------------ RQ's started and popped lists

    def _close_leftovers(self, now: Any) -> None:
        """RQ still lists as started, or as popped, attempts that ended in SQL or were superseded, and whose
        process is gone (killed after recording its outcome, or before starting a row cancelled since):
        close them, so RQ and rq-dashboard agree."""
        held = registries.started_attempts(popped=True)
        parsed = {rq_id: found for rq_id in held if (found := queue.parse_rq_job_id(rq_id))}
        rows = store.get_jobs(sorted({job_id for job_id, _ in parsed.values()}))
        settled_before = now - timedelta(seconds=self.lost_after)
        candidates = []
        for rq_id, (job_id, attempt) in parsed.items():
            row = rows.get(job_id)
            if row is None or row.updated_at > settled_before:
                continue
            current = {JobStatus.PROCESSING.value: row.attempts, JobStatus.PENDING.value: row.attempts + 1}
            if current.get(row.status) == attempt:
                continue  # the attempt the row is on: the rules above look after it
            candidates.append((rq_id, row))
        if not candidates:
            return
        states = registries.attempt_states([rq_id for rq_id, _ in candidates])
        workers = sorted({s.worker for s in states.values() if s.worker})
        job_beats, worker_beats = liveness.read_beats(self.conn, [rq_id for rq_id, _ in candidates], workers)
        for rq_id, row in candidates:
            job_beat, worker_beat = job_beats.get(rq_id), worker_beats.get(states[rq_id].worker or "")
            if (job_beat is not None and job_beat.alive) or (
                worker_beat is not None and worker_beat.alive and worker_beat.job == rq_id
            ):
                continue  # still running somewhere (an orphan): it closes its own entry
            completed = row.status == JobStatus.COMPLETED.value and row.attempts == parsed[rq_id][1]
            reason = f"job {row.id} is {row.status} (attempt {row.attempts})"
            registries.close(rq_id, reason, completed=completed, queue_name=held[rq_id])
            self.report.tidied.append(rq_id)

    # ------------------------------------------------------------ pending rows

    def _check_pending(
        self,
        rows: list[store.ActiveRow],
        ids: dict[int, str],
        states: dict[str, registries.AttemptState],
        worker_beats: dict[str, liveness.Beat],
    ) -> None:
        waiting: dict[str, queue.Waiting] = {}
        started_workers = {states[ids[r.id]].worker for r in rows if states[ids[r.id]].status == "started"}
        registered = registries.registered_workers(w for w in started_workers if w)
        missing: list[store.ActiveRow] = []
        for row in rows:
            rq_id = ids[row.id]
            state = states[rq_id]
            if state.status is None or state.status in registries.ENDED:
                missing.append(row)
                continue
            if state.status == "started":
                beat = worker_beats.get(state.worker or "")
                alive = (beat is not None and beat.alive) or (beat is None and state.worker in registered)
                if not alive and self.trust_absence:
                    missing.append(row)
                continue
            rq_queue = rq_queue_name(row.queue, row.priority)
            if rq_queue not in waiting:
                waiting[rq_queue] = queue.waiting(rq_queue)
            w = waiting[rq_queue]
            if (
                (state.status == "queued" and rq_id in w.queued)
                or (state.status == "scheduled" and rq_id in w.scheduled)
                or (state.status == "deferred" and rq_id in w.deferred)
            ):
                continue
            # Popped but never started, or in no list at all: give a worker time to move it along.
            if self._suspect_for(rq_id) > self.lost_after:
                if rq_id in w.popped:
                    registries.forget_popped(rq_queue, rq_id)
                missing.append(row)
        # Read whole, as they are now: a row claimed or cancelled since the pass began is left alone.
        current = store.get_jobs([row.id for row in missing])
        stranded = [
            job
            for row in missing
            if (job := current.get(row.id)) is not None
            and job.status == JobStatus.PENDING.value
            and job.attempts == row.attempts
        ]
        if not stranded:
            return
        queue.enqueue(stranded)
        for job in stranded:
            assert job.id is not None
            self.conn.delete(SUSPECT_KEY.format(ids[job.id]))
            self.report.requeued.append(job.id)
            log.warning("job %s: attempt %s was not in Redis; queued it again", job.id, job.attempts + 1)

    def _suspect_for(self, rq_id: str) -> float:
        """Seconds since this pass family first saw `rq_id` in an in-between state."""
        key = SUSPECT_KEY.format(rq_id)
        self.conn.set(key, repr(self.redis_now), nx=True, ex=max(60, int(self.lost_after * 10)))
        first = self.conn.get(key)
        return self.redis_now - float(first) if first else 0.0
