"""What runs a job: the task with its progress, output capture, time limits and cancel watch; its outcome."""

from __future__ import annotations

import _thread
import contextlib
import json
import logging
import os
import signal
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from .config import get_settings
from .handoff import CANCELLED, COMPLETED, FAILED, RETRY, Outcome, record, take

if TYPE_CHECKING:
    from .logs import LogCapture
    from .models import Job
    from .timeouts import Deadlines

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


CANCEL_SIGNAL_IN_PROCESS = signal.SIGUSR2
# Set by a jobctl worker that runs jobs in its own process: its heartbeat names the running job.
worker_heartbeat_names_job = False


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


class _Attendant:
    """One thread beside a running attempt: keeps its heartbeat fresh (see liveness.py) and, while the
    task runs, applies its time limits (timeouts.Deadlines), starts streaming its output once it has
    run a moment (logs.LogCapture.start_reader) and polls for a cancel request; on one it signals the
    task, then kills the work-horse after the grace period.

    Told everything first (`begin`, `watch_cancel`, `keep_deadlines`), then started once (`start`): its
    first look is due a poll interval later, so a short job's attendant never wakes before it ends. A
    low-level thread, as nothing waits for it: `threading.Thread.start` would wait until it runs.
    """

    CANCEL_POLL = 0.2
    # An attempt that ends sooner writes no heartbeat: until then, its start time vouches for it
    # (the reconciler waits JOBCTL_LOST_AFTER from the start for a first heartbeat).
    FIRST_BEAT_AFTER = 1.0

    def __init__(self) -> None:
        self.rq_id: str | None = None
        self.lost_after = 0.0
        self.stopped = threading.Event()
        self.task_done = threading.Event()
        self.wakeup = threading.Event()
        self.watch: tuple[Any, str, float, bool] | None = None  # (connection, RQ job id, grace, in_horse)
        self.signal = signal.SIGTERM
        self.cancelled = False
        self.beat_lock = threading.Lock()
        self.beaten = False
        self.deadlines: Deadlines | None = None
        self.capture: LogCapture | None = None
        self.capture_due = 0.0

    def begin(self, rq_id: str, lost_after: float, *, beats: bool = True) -> None:
        """Attend to `rq_id`: heartbeats (unless not `beats`), and cancel requests once watched."""
        self.rq_id = rq_id if beats else None
        self.lost_after = lost_after

    def watch_cancel(self, conn: Any, rq_id: str, grace: float, in_horse: bool, sig: int) -> None:
        """Poll for a cancel request of `rq_id` until `task_ended()`; stop the task with `sig`."""
        self.watch = (conn, rq_id, grace, in_horse)
        self.signal = signal.Signals(sig)

    def keep_deadlines(self, deadlines: Deadlines) -> None:
        """Let the task's time limits act when they pass (until `task_ended()`)."""
        self.deadlines = deadlines

    def keep_log(self, capture: LogCapture) -> None:
        """Start streaming the task's output once it has run STREAM_AFTER seconds."""
        self.capture = capture

    def start(self) -> None:
        if self.capture is not None:
            from .logs import STREAM_AFTER

            self.capture_due = time.monotonic() + STREAM_AFTER
        _thread.start_new_thread(self.run, ())

    def task_ended(self) -> None:
        self.task_done.set()

    def run(self) -> None:
        from .liveness import beat_interval

        interval = beat_interval(self.lost_after)
        next_beat = time.monotonic() + min(interval, self.FIRST_BEAT_AFTER)
        while True:
            poll = self.CANCEL_POLL if self._watching() else interval
            if self.rq_id is not None:
                poll = min(poll, max(0.0, next_beat - time.monotonic()))
            due = self.deadlines.next_due() if self.deadlines is not None else None
            if self.capture is not None:
                poll = min(poll, max(0.0, self.capture_due - time.monotonic()))
            self.wakeup.wait(poll if due is None else min(poll, due))
            self.wakeup.clear()
            if self.stopped.is_set():
                return
            if self.capture is not None and time.monotonic() >= self.capture_due:
                self.capture.start_reader()
                self.capture = None
            if self.deadlines is not None and not self.task_done.is_set():
                self.deadlines.poll()
            if self.rq_id is not None and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + interval
                self._beat()
            if self._watching() and self._cancel_requested():
                self._stop_task()

    def _beat(self) -> None:
        from . import liveness, queue

        assert self.rq_id is not None
        with self.beat_lock:
            if self.stopped.is_set():
                return
            try:
                liveness.beat_job(queue.get_redis(), self.rq_id, self.lost_after)
            except Exception as exc:  # Redis down: the reconciler waits for heartbeats to come back
                log.debug("could not write the heartbeat of %s: %s", self.rq_id, exc)
                return
            self.beaten = True

    def _watching(self) -> bool:
        return self.watch is not None and not self.task_done.is_set() and not self.cancelled

    def _cancel_requested(self) -> bool:
        from .queue import stop_requested

        assert self.watch is not None
        try:
            return stop_requested(self.watch[0], self.watch[1])
        except Exception:
            return False

    def _stop_task(self) -> None:
        assert self.watch is not None
        _, _, grace, in_horse = self.watch
        self.cancelled = True
        os.kill(os.getpid(), self.signal)
        if not self.task_done.wait(grace) and in_horse:
            os.kill(os.getpid(), signal.SIGKILL)

    def stop(self) -> None:
        """Withdraw the heartbeat (the outcome is recorded, or left to reconciliation)."""
        from . import liveness, queue

        with self.beat_lock:
            self.stopped.set()
        self.task_done.set()
        self.wakeup.set()
        if self.rq_id is not None and self.beaten:
            with contextlib.suppress(Exception):  # otherwise the key expires by itself
                liveness.end_job(queue.get_redis(), self.rq_id)


def run_job(job_id: int, attempt: int) -> Any:
    """The one function RQ runs for jobctl: run the attempt's task and hand its outcome to the jobctl
    worker that claimed the row (handoff.py); under any other RQ worker, claim and record here."""
    attendant = _Attendant()
    try:
        return _run_claimed(job_id, attempt, attendant)
    finally:
        attendant.stop()


def _run_claimed(job_id: int, attempt: int, attendant: _Attendant) -> Any:
    from rq import get_current_job

    from . import lifecycle, queue

    settings = get_settings()
    rq_job = get_current_job()
    in_horse = rq_job is not None and os.environ.get("RQ_JOB_ID") == rq_job.id
    handoff = take(job_id, attempt)
    if handoff is not None:
        job = handoff.job  # the worker claimed the row before it ran this
    else:
        worker_name = getattr(rq_job, "worker_name", None) or os.environ.get("RQ_WORKER_ID")
        job = lifecycle.claim(job_id, attempt, worker_name)
    if job is None:
        log.info("job %s attempt %s is no longer pending; not running it", job_id, attempt)
        return None
    # A jobctl worker's own heartbeat names the job it runs; a work-horse, which can outlive its
    # worker, keeps one of its own.
    beats = in_horse or not worker_heartbeat_names_job
    attendant.begin(queue.rq_job_id(job_id, attempt), settings.lost_after, beats=beats)

    outcome, exc = _run_task(job, attempt, rq_job, in_horse, attendant)
    if handoff is None or not handoff.send(outcome):
        record(job, attempt, outcome)
    if exc is None:
        return outcome.result
    raise exc


def _run_task(
    job: Job, attempt: int, rq_job: Any, in_horse: bool, attendant: _Attendant
) -> tuple[Outcome, BaseException | None]:
    """Run the claimed attempt's task: how it ended, and the exception to end the RQ job with."""
    global _reporter
    from . import queue
    from .tasks import get_task, load_task_modules

    settings = get_settings()
    job_id = job.id
    assert job_id is not None
    load_task_modules(settings.task_modules)
    spec = get_task(job.task)
    if spec is None:
        error = f"unknown task {job.task!r}: not registered"
        return Outcome(FAILED, error=error), LookupError(f"unknown task {job.task!r}")

    reporter = _Reporter(rq_job, settings.progress_interval)
    in_main = threading.current_thread() is threading.main_thread()
    previous_handler = None
    # A work-horse is stopped with SIGTERM; a worker running jobs in its own process keeps SIGTERM
    # for its warm shutdown.
    cancel_signal = signal.SIGTERM if in_horse else CANCEL_SIGNAL_IN_PROCESS
    if rq_job is not None and in_main:
        previous_handler = signal.signal(cancel_signal, _raise_cancelled)
        attendant.watch_cancel(rq_job.connection, rq_job.id, settings.cancel_grace, in_horse, cancel_signal)
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
    attendant.keep_deadlines(deadlines)
    _reporter = reporter
    from .logs import start_capture

    capture = start_capture(job_id, queue.rq_job_id(job_id, attempt)) if in_main else None
    if capture is not None:
        attendant.keep_log(capture)
    attendant.start()
    failure: BaseException | None = None
    result: Any = None
    try:
        result = spec.func(**job.args)
        json.dumps(result)
    except BaseException as exc:
        failure = exc
    finally:
        deadlines.stop()
        attendant.task_ended()
        if previous_handler is not None:
            signal.signal(cancel_signal, previous_handler)
        _reporter = None
        reporter.flush()
        tail = capture.stop() if capture is not None else None
    progress = reporter.latest

    if failure is None:
        return Outcome(COMPLETED, result=result, progress=progress, log=tail), None
    if isinstance(failure, JobCancelled) or attendant.cancelled:
        # The row was marked cancelled before the signal was sent; nothing to record.
        return Outcome(CANCELLED, log=tail), JobCancelled(f"job {job_id} was cancelled")
    error = timeouts.error_text(failure, hard) or describe_error(failure)
    if isinstance(failure, TypeError) and "JSON serializable" in str(failure):
        error = f"result is not JSON: {failure}"
    from .backoff import plan_retry

    plan = plan_retry(job, attempt, failure)
    if plan is not None:
        return Outcome(RETRY, error=error, progress=progress, retry_due=plan.due, log=tail), failure
    return Outcome(FAILED, error=error, progress=progress, log=tail), failure
