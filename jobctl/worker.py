"""Running RQ workers for jobctl: the worker class, the pool, and the scheduler they carry."""

from __future__ import annotations

import os
import signal
from typing import Any

from rq import Worker
from rq.worker_pool import WorkerPool

from .config import get_settings
from .queue import DISPATCH, get_queue, get_redis, guarded, queue_names, serializer
from .runtime import fail_attempt


class JobctlWorker(Worker):
    """RQ's forking worker, refusing foreign functions and recording deaths RQ does not report to jobs."""

    default_max_jobs: int | None = None

    def work(self, *args: Any, **kwargs: Any) -> bool:
        if kwargs.get("max_jobs") is None and self.default_max_jobs:
            kwargs["max_jobs"] = self.default_max_jobs
        kwargs["with_scheduler"] = True
        return super().work(*args, **kwargs)

    def execute_job(self, job: Any, queue: Any) -> None:
        if job.func_name != DISPATCH:
            self.log.error("refusing job %s: %r is not jobctl's dispatch function", job.id, job.func_name)
            self.handle_job_failure(
                job, queue=queue, exc_string=f"refused: {job.func_name!r} is not jobctl's dispatch function"
            )
            return
        super().execute_job(job, queue)

    def handle_work_horse_killed(self, job: Any, retpid: Any, ret_val: Any, rusage: Any) -> None:
        reason = "the job's process died"
        if ret_val and os.WIFSIGNALED(ret_val):
            reason += f" (killed by {signal.Signals(os.WTERMSIG(ret_val)).name})"
        fail_attempt(job.id, reason)
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)

    def request_force_stop(self, signum: int, frame: Any) -> None:
        current = self.get_current_job_id() if self.horse_pid else None
        try:
            super().request_force_stop(signum, frame)
        except SystemExit:
            if current:
                fail_attempt(current, "the worker was stopped before the job finished (cold shutdown)")
            raise


def _preload() -> None:
    """Import and check everything a job needs once, so each forked work-horse starts warm."""
    from . import store
    from .tasks import load_task_modules

    load_task_modules(get_settings().task_modules)
    store.get_engine()  # imports SQLAlchemy and verifies the schema before any fork


@guarded
def run_workers(
    queues: list[str], *, concurrency: int = 1, burst: bool = False, max_jobs: int | None = None
) -> None:
    """Run `concurrency` workers (with the scheduler) on `queues` until stopped or, with `burst`, idle."""
    settings = get_settings()
    names = queue_names(queues)
    conn = get_redis()
    conn.ping()
    _preload()
    worker_class = type(
        "JobctlWorker", (JobctlWorker,), {"default_max_jobs": max_jobs or settings.worker_max_jobs}
    )
    if concurrency <= 1:
        worker = worker_class(
            [get_queue(n, conn) for n in names], connection=conn, serializer=serializer()
        )
        worker.work(burst=burst, logging_level="INFO")
        return
    pool = WorkerPool(
        names, connection=conn, num_workers=concurrency, worker_class=worker_class, serializer=serializer()
    )
    pool.start(burst=burst, logging_level="INFO")
