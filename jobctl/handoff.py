"""An attempt's outcome, how it is recorded, and how a forking worker and its work-horse share the work.

A forking `jobctl worker` claims the row itself, before it forks, and records the outcome once the
work-horse has exited, both on the worker's long-lived database connection: the work-horse only runs
the task and sends back how it ended through a pipe. When the next job is already waiting, the
outcome and the next claim share one transaction (one commit); otherwise the outcome is recorded
before the worker waits for work. The horse never touches the database connections it inherits (see
`store.get_engine`); if the pipe cannot take its outcome (a very large result or log), or no worker claimed
for it (a plain `rq worker`), the process that ran the task records it itself.

If the worker dies before recording, the row stays `processing` until the reconciler records what RQ
kept of the attempt (its result or error), as for any outcome that could not be written at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Job, JobStatus

log = logging.getLogger("jobctl.runtime")

COMPLETED, FAILED, RETRY, CANCELLED = "completed", "failed", "retry", "cancelled"
# The horse writes its outcome only if it fits in the empty pipe, so it never blocks on it: 32 KiB
# always does, and the pipe is enlarged where the system allows (for results and log tails).
PIPE_MESSAGE_MAX = 32 * 1024
PIPE_SIZES = (2 << 20, 1 << 20)  # an unprivileged process may go up to 1 MiB (fs.pipe-max-size)


@dataclass
class Outcome:
    """How an attempt ended: `completed` (with its result), `failed`, `retry` (due at `retry_due`) or
    `cancelled` (already recorded by the cancel)."""

    kind: str
    result: Any = None
    error: str | None = None
    progress: dict[str, Any] | None = None
    retry_due: datetime | None = None
    log: tuple[str, int] | None = None  # the captured output's tail and the bytes dropped before it

    def encode(self) -> bytes:
        due = self.retry_due.isoformat() if self.retry_due is not None else None
        fields = {"kind": self.kind, "result": self.result, "error": self.error, "progress": self.progress}
        return json.dumps({**fields, "retry_due": due, "log": self.log}, ensure_ascii=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> Outcome:
        fields = json.loads(data)
        due, log = fields.pop("retry_due"), fields.pop("log")
        retry_due = datetime.fromisoformat(due) if due else None
        return cls(**fields, retry_due=retry_due, log=(log[0], log[1]) if log else None)


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


def record(job: Job, attempt: int, outcome: Outcome) -> None:
    """Write `outcome` to the row (compare-and-set on the attempt), then start or cancel the jobs
    waiting for it; queue the next attempt of a retry."""
    from . import lifecycle, queue
    from .models import JobStatus

    assert job.id is not None
    if outcome.log is not None:  # first: once the row shows the attempt ended, its log is there too
        from .logs import keep_tail

        keep_tail(job.id, attempt, *outcome.log)
    if outcome.kind == CANCELLED:
        return  # the cancel wrote the row before it stopped the task
    if outcome.kind == RETRY:
        requeued = _durably(
            lifecycle.requeue_after_failure,
            job.id,
            attempt,
            error=outcome.error or "",
            progress=outcome.progress,
            task_id=queue.rq_job_id(job.id, attempt + 1),
            scheduled_for=outcome.retry_due,
        )
        if requeued is None:
            return  # not recorded: the reconciler retries or fails it from RQ's failure
        if requeued:
            job.attempts = attempt
            job.scheduled_for = outcome.retry_due
            queue.enqueue([job])
            return
    status = JobStatus.COMPLETED if outcome.kind == COMPLETED else JobStatus.FAILED
    done = _durably(
        lifecycle.finish,
        job.id,
        attempt,
        status,
        result=outcome.result,
        error=outcome.error,
        progress=outcome.progress,
    )
    if done is not None:
        _release_dependents(job.id)


def _release_dependents(job_id: int, waiting: list[int] | None = None) -> None:
    """Start or cancel the jobs waiting for this one (`waiting`, if already read); best effort:
    workers sweep for any missed."""
    from . import dependencies

    try:
        if waiting is None:
            dependencies.after_end([job_id], own_waits=False)  # it ran: it was not waiting
        else:
            dependencies.resolve(waiting)
    except Exception as exc:
        log.warning("job %s: could not resolve the jobs waiting for it (%s)", job_id, exc)


class Handoff:
    """One attempt shared by a forking worker (claims, records) and its work-horse (runs the task)."""

    def __init__(self, job_id: int, attempt: int, worker: str) -> None:
        self.job_id, self.attempt, self.worker = job_id, attempt, worker
        self.claimed = False
        self.job: Job | None = None
        self.read_fd = self.write_fd = -1
        self.outcome: Outcome | None = None
        self.recorded = False
        self.local = False  # run in the worker's own process
        self.capacity = PIPE_MESSAGE_MAX

    def claim(self, after: Handoff | None = None) -> None:
        """In the worker: claim the row, after recording the outcome of the attempt it ran before
        (`after`), in the same transaction when that outcome is a plain success or failure. If the
        database cannot be reached, the horse tries to claim the row itself."""
        from . import lifecycle
        from .errors import BackendError

        finished = after.finishing() if after is not None else None
        try:
            if finished is None:
                if after is not None:
                    after.settle()
                self.job = lifecycle.claim(self.job_id, self.attempt, self.worker)
            else:
                assert after is not None
                waiting, self.job = lifecycle.finish_then_claim(
                    finished, self.job_id, self.attempt, self.worker
                )
                after.recorded = True
                if waiting:
                    _release_dependents(after.job_id, waiting)
        except BackendError as exc:
            if after is not None:
                after.settle()  # retried while the database is away
            log.warning("job %s: could not claim it before starting it (%s)", self.job_id, exc)
            return
        self.claimed = True

    def before_fork(self) -> None:
        if self.claimed and self.job is not None:
            self.read_fd, self.write_fd = os.pipe()
            for size in PIPE_SIZES:  # room for a full log tail, as far as the system allows
                with contextlib.suppress(OSError, AttributeError):
                    self.capacity = fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, size)
                    break

    def in_parent(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def in_horse(self) -> None:
        global _current
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1
        _current = self

    def in_process(self) -> None:
        """The worker runs the task itself: the outcome is handed over in memory."""
        global _current
        self.local = True
        _current = self

    def send(self, outcome: Outcome) -> bool:
        """In the horse: pass `outcome` to the worker; False if it must be recorded here instead."""
        if self.local:
            self.outcome = outcome
            return True
        if self.write_fd < 0:
            return False
        try:
            data = outcome.encode()
        except (TypeError, ValueError):
            return False
        if len(data) > self.capacity:  # it would not fit: the worker reads only once the horse exits
            return False
        try:
            os.write(self.write_fd, data)
        except OSError:
            return False
        finally:
            os.close(self.write_fd)
            self.write_fd = -1
        return True

    def collect(self) -> Outcome | None:
        """In the worker, once the horse has exited: the outcome it sent, or None if it sent none (it
        was killed, or recorded the outcome itself)."""
        if self.write_fd >= 0:  # the fork never happened
            os.close(self.write_fd)
            self.write_fd = -1
        if self.read_fd < 0:
            return self.outcome
        # The horse wrote its whole message before exiting; a process the task forked may still hold
        # the pipe open, so read what is there without waiting for the end of it.
        os.set_blocking(self.read_fd, False)
        chunks = []
        try:
            while chunk := os.read(self.read_fd, 65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        finally:
            os.close(self.read_fd)
            self.read_fd = -1
        if chunks and self.job is not None:
            try:
                self.outcome = Outcome.decode(b"".join(chunks))
            except (ValueError, TypeError) as exc:  # cut short: the horse died while writing it
                log.warning("job %s: unreadable outcome from its work-horse (%s)", self.job_id, exc)
        return self.outcome

    def finishing(self) -> tuple[int, int, JobStatus, dict[str, Any]] | None:
        """The row write for a plain outcome not yet recorded (see `lifecycle.finish_then_claim`)."""
        from .models import JobStatus

        outcome = self.collect()
        if self.recorded or outcome is None or outcome.kind not in (COMPLETED, FAILED) or outcome.log:
            return None
        status = JobStatus.COMPLETED if outcome.kind == COMPLETED else JobStatus.FAILED
        values = {"result": outcome.result, "error": outcome.error, "progress": outcome.progress}
        return self.job_id, self.attempt, status, values

    def settle(self) -> bool:
        """In the worker, once the horse has exited: record the outcome it sent (once); False if it
        sent none."""
        outcome = self.collect()
        if outcome is None or self.job is None:
            return False
        if not self.recorded:
            self.recorded = True
            record(self.job, self.attempt, outcome)
        return True


_current: Handoff | None = None


def take(job_id: int, attempt: int) -> Handoff | None:
    """Where the task runs: the worker's hand-off for this attempt, if it claimed the row for it."""
    global _current
    handoff, _current = _current, None
    if handoff is None or not handoff.claimed or (handoff.job_id, handoff.attempt) != (job_id, attempt):
        return None
    return handoff
