"""RQ's worker, writing its own bookkeeping to Redis only when it changes.

RQ's worker writes its state, heartbeat and current job's working time several times per job, most of
them repeats (idle after one job and again before the next; a heartbeat after taking a job and again
before the next), writes the job's heartbeat again as the job ends, and asks Redis whether workers are
suspended before every job. What `rq info` and the dashboard read stays right within a second.
"""

from __future__ import annotations

import time
from typing import Any

from rq import Worker
from rq.utils import now

BEAT_EVERY = 1.0  # seconds: RQ's heartbeats closer together than this are left out


class SparseBookkeeping(Worker):
    """RQ's `Worker` without its repeated Redis writes (see the module's docstring)."""

    _beat_at = -BEAT_EVERY  # when this worker's key last had its expiry set (monotonic), and for how long
    _beat_ttl = 0
    _suspension_checked_at = -BEAT_EVERY

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # A beat within a second of the last one that would not push the key's expiry later by a
        # second or more is left out.
        ttl = timeout or self.worker_ttl + 60
        at = time.monotonic()
        if (
            pipeline is None
            and at - self._beat_at < BEAT_EVERY
            and self._beat_at + self._beat_ttl >= at + ttl - BEAT_EVERY
        ):
            return
        super().heartbeat(timeout, pipeline)
        self._beat_at, self._beat_ttl = at, ttl

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline)

    def set_current_job_working_time(self, current_job_working_time: float, pipeline: Any = None) -> None:
        if pipeline is None and current_job_working_time == self.current_job_working_time:
            return
        super().set_current_job_working_time(current_job_working_time, pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        # A suspension (`rq suspend`) is seen within a second.
        at = time.monotonic()
        if at - self._suspension_checked_at < BEAT_EVERY:
            return
        super().check_for_suspension(burst)
        self._suspension_checked_at = time.monotonic()

    def handle_execution_ended(self, job: Any, queue: Any, heartbeat_ttl: int) -> None:
        # RQ's second beat covers the job's success callback (jobctl's jobs have none); a job that ends
        # within a second of its start keeps the one written then.
        job.ended_at = now()
        if job.started_at is None or (job.ended_at - job.started_at).total_seconds() >= BEAT_EVERY:
            job.heartbeat(job.ended_at, heartbeat_ttl)
