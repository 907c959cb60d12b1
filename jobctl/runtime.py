"""What a worker executes: claim the row, run the task, report progress, finalize the record."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
import traceback
from typing import Any

from .config import get_settings

log = logging.getLogger("jobctl.runtime")


class JobCancelled(BaseException):
    """Raised inside a running task when its job is cancelled (so `except Exception` does not swallow it)."""


class _Reporter:
    """Coalesces progress writes for the running job: a few per second, the last one always written."""

    def __init__(self, rq_job: Any, interval: float) -> None:
        self.rq_job = rq_job
        self.interval = interval
        self.latest: dict[str, Any] | None = None
        self.written: dict[str, Any] | None = None
        self.last_write = 0.0
        self.lock = threading.Lock()

    def update(self, current: int, total: int | None, message: str | None) -> None:
        if total is None and self.latest is not None:
            total = self.latest.get("total")
        value = {"current": int(current), "total": total, "message": message or ""}
        with self.lock:
            self.latest = value
            if time.monotonic() - self.last_write >= self.interval:
                self._write()

    def flush(self) -> None:
        with self.lock:
            if self.latest is not None and self.latest != self.written:
                self._write()

    def _write(self) -> None:
        if self.rq_job is None:
            return
        self.rq_job.meta["progress"] = self.latest
        try:
            self.rq_job.save_meta()
        except Exception as exc:  # progress is best effort; the final value lands in SQL too
            log.warning("could not write progress: %s", exc)
            return
        self.written = self.latest
        self.last_write = time.monotonic()


_reporter: _Reporter | None = None


def progress(current: int, total: int | None = None, message: str | None = None) -> None:
    """Report the running job's progress; cheap to call often. A no-op outside a job."""
    if _reporter is not None:
        _reporter.update(current, total, message)


class _CancelWatcher(threading.Thread):
    """Polls for a cancel request; signals the task, then kills the work-horse after a grace period."""

    def __init__(self, conn: Any, task_id: str, grace: float, in_horse: bool) -> None:
        super().__init__(name="jobctl-cancel-watcher", daemon=True)
        self.conn = conn
        self.task_id = task_id
        self.grace = grace
        self.in_horse = in_horse
        self.done = threading.Event()
        self.cancelled = False

    def run(self) -> None:
        from .queue import stop_requested

        while not self.done.wait(0.2):
            try:
                if not stop_requested(self.conn, self.task_id):
                    continue
            except Exception:
                continue
            self.cancelled = True
            os.kill(os.getpid(), signal.SIGTERM)
            if self.done.wait(self.grace):
                return
            if self.in_horse:
                os.kill(os.getpid(), signal.SIGKILL)
            return


def _raise_cancelled(signum: int, frame: Any) -> None:
    raise JobCancelled("cancelled")


def describe_error(exc: BaseException) -> str:
    """The error text stored for a failed job: one summary line, then the traceback."""
    from rq.timeouts import JobTimeoutException

    if isinstance(exc, JobTimeoutException):
        return f"timed out: {exc}"
    if getattr(exc, "without_traceback", False):  # an error that says all there is (a command's exit)
        return str(exc)
    summary = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    tb = "".join(traceback.format_exception(exc)).rstrip()
    return f"{summary}\n\n{tb}"


class _Heartbeat:
    """Keeps the running attempt's liveness key fresh until its outcome is recorded (see liveness.py)."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.rq_id: str | None = None

    def start(self, rq_id: str, lost_after: float) -> None:
        from . import liveness, queue

        self.rq_id = rq_id
        try:
            conn = queue.get_redis()
            liveness.beat_job(conn, rq_id, lost_after)
        except Exception as exc:  # Redis down: the reconciler waits for heartbeats to come back
            log.warning("could not write the heartbeat of %s: %s", rq_id, exc)

        def beat() -> None:
            while not self.stopped.wait(liveness.beat_interval(lost_after)):
                try:
                    liveness.beat_job(queue.get_redis(), rq_id, lost_after)
                except Exception:
                    continue

        threading.Thread(target=beat, name="jobctl-heartbeat", daemon=True).start()

    def stop(self) -> None:
        from . import liveness, queue

        self.stopped.set()
        if self.rq_id is not None:
            with contextlib.suppress(Exception):  # otherwise the key expires by itself
                liveness.end_job(queue.get_redis(), self.rq_id)


FINAL_WRITE_DELAYS = (0.5, 1.0, 2.0, 4.0, 4.0, 4.0)


def _durably(write: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a final write, retrying while the database is unreachable; None if it never answered.

    The RQ job then ends with the outcome (result or exception), and the reconciler records it.
    """
    from .errors import BackendError

    for delay in (*FINAL_WRITE_DELAYS, None):
        try:
            return write(*args, **kwargs)
        except BackendError as exc:
            if delay is None:
                log.error("could not record the outcome (%s); leaving it to reconciliation", exc)
                return None
            log.warning("could not record the outcome (%s); retrying in %gs", exc, delay)
            time.sleep(delay)
    return None


def run_job(job_id: int, attempt: int) -> Any:
    """The one function RQ runs for jobctl: claim the row, run its task, record the outcome."""
    heartbeat = _Heartbeat()
    try:
        return _run_claimed(job_id, attempt, heartbeat)
    finally:
        heartbeat.stop()


def _run_claimed(job_id: int, attempt: int, heartbeat: _Heartbeat) -> Any:
    global _reporter
    from rq import get_current_job

    from . import queue, store
    from .models import JobStatus
    from .tasks import get_task, load_task_modules

    settings = get_settings()
    rq_job = get_current_job()
    worker_name = getattr(rq_job, "worker_name", None) or os.environ.get("RQ_WORKER_ID")
    job = store.claim(job_id, attempt, worker_name)
    if job is None:
        log.info("job %s attempt %s is no longer pending; not running it", job_id, attempt)
        return None
    heartbeat.start(queue.rq_job_id(job_id, attempt), settings.lost_after)

    load_task_modules(settings.task_modules)
    spec = get_task(job.task)
    if spec is None:
        store.finish(job_id, attempt, JobStatus.FAILED, error=f"unknown task {job.task!r}: not registered")
        raise LookupError(f"unknown task {job.task!r}")

    reporter = _Reporter(rq_job, settings.progress_interval)
    in_main = threading.current_thread() is threading.main_thread()
    in_horse = rq_job is not None and os.environ.get("RQ_JOB_ID") == rq_job.id
    watcher = None
    previous_handler = None
    if rq_job is not None and in_main:
        previous_handler = signal.signal(signal.SIGTERM, _raise_cancelled)
        watcher = _CancelWatcher(rq_job.connection, rq_job.id, settings.cancel_grace, in_horse)
        watcher.start()
    from . import timeouts
    from .reconcile import settle_attempt

    hard = job.timeout or settings.job_timeout
    deadlines = timeouts.Deadlines(
        soft=timeouts.effective_soft(job.soft_timeout, settings.soft_timeout, hard),
        hard=hard,
        grace=max(1.0, settings.cancel_grace),
        in_main=in_main,
        in_horse=in_horse,
        on_hard=lambda: settle_attempt(queue.rq_job_id(job_id, attempt), timeouts.hard_timeout_error(hard)),
    ).start()
    _reporter = reporter
    from .logs import start_capture

    capture = start_capture(job_id, attempt, queue.rq_job_id(job_id, attempt)) if in_main else None
    outcome: BaseException | None = None
    result: Any = None
    try:
        result = spec.func(**job.args)
        json.dumps(result)
    except BaseException as exc:
        outcome = exc
    finally:
        deadlines.stop()
        if watcher is not None:
            watcher.done.set()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        _reporter = None
        reporter.flush()
        if capture is not None:
            capture.stop()
    final_progress = reporter.latest

    if outcome is None:
        _durably(store.finish, job_id, attempt, JobStatus.COMPLETED, result=result, progress=final_progress)
        _release_dependents(job_id)
        return result
    if isinstance(outcome, JobCancelled) or (watcher is not None and watcher.cancelled):
        # The row was marked cancelled before the signal was sent; nothing to record.
        raise JobCancelled(f"job {job_id} was cancelled")
    error = timeouts.error_text(outcome, hard) or describe_error(outcome)
    if isinstance(outcome, TypeError) and "JSON serializable" in str(outcome):
        error = f"result is not JSON: {outcome}"
    from .backoff import plan_retry

    plan = plan_retry(job, attempt, outcome)
    if plan is not None:
        next_id = queue.rq_job_id(job_id, attempt + 1)
        requeued = _durably(
            store.requeue_after_failure,
            job_id,
            attempt,
            error=error,
            progress=final_progress,
            task_id=next_id,
            scheduled_for=plan.due,
        )
        if requeued is None:
            raise outcome  # not recorded: the reconciler retries or fails it from RQ's failure
        if requeued:
            job.attempts = attempt
            job.scheduled_for = plan.due
            queue.enqueue([job])
            raise outcome
    _durably(store.finish, job_id, attempt, JobStatus.FAILED, error=error, progress=final_progress)
    _release_dependents(job_id)
    raise outcome


def _release_dependents(job_id: int) -> None:
    """Start or cancel the jobs waiting for this one (best effort: workers sweep for any missed)."""
    from . import dependencies

    try:
        dependencies.after_end([job_id], own_waits=False)  # it ran: it was not waiting
    except Exception as exc:
        log.warning("job %s: could not resolve the jobs waiting for it (%s)", job_id, exc)


def fail_attempt(task_id: str, reason: str) -> bool:
    """Mark the row behind an RQ job failed when its process died without finishing it."""
    from . import queue, store
    from .models import JobStatus

    parsed = queue.parse_rq_job_id(task_id)
    if parsed is None:
        return False
    job_id, attempt = parsed
    return store.finish(job_id, attempt, JobStatus.FAILED, error=reason)
