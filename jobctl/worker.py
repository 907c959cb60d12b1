"""Running RQ workers for jobctl: the worker class, the pool, and the scheduler they carry."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import signal
import threading
import time
from typing import Any

import redis
from rq.defaults import DEFAULT_WORKER_TTL
from rq.exceptions import DeserializationError
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker_pool import WorkerPool

from . import liveness
from .bookkeeping import SparseBookkeeping
from .config import get_settings
from .handoff import Handoff
from .queue import DISPATCH, get_queue, get_redis, guarded, queue_names, serializer

log = logging.getLogger("jobctl.worker")
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _log_like_rq() -> None:
    """Show jobctl's own worker-side messages (reconciliation, lost jobs) next to RQ's, in its format."""
    logger = logging.getLogger("jobctl")
    if not any(isinstance(h, logging.StreamHandler) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


# Work-horses are forked while the monitor thread may be in the middle of a query: a fork during an
# SQLite transaction leaves the child holding lock state it can never release ("database is locked").
_FORK_LOCK = threading.Lock()


class _Monitor(threading.Thread):
    """In the worker's own process (threads do not survive into work-horses): the worker's heartbeat,
    and a reconciliation pass every JOBCTL_RECONCILE_INTERVAL (jittered so workers do not line up)."""

    def __init__(self, worker: JobctlWorker) -> None:
        super().__init__(name="jobctl-monitor", daemon=True)
        self.worker = worker
        self.stopped = threading.Event()

    def run(self) -> None:
        from . import reconcile

        settings = get_settings()
        next_pass = time.monotonic() + random.uniform(0.1, 1.0) * settings.reconcile_interval
        while not self.stopped.is_set():
            try:
                self.beat(settings.lost_after)
            except Exception as exc:  # Redis down: the work loop waits for it; so does this
                log.debug("heartbeat not written: %s", exc)
            if time.monotonic() >= next_pass:
                next_pass = time.monotonic() + random.uniform(0.75, 1.0) * settings.reconcile_interval
                with _FORK_LOCK:  # never fork in the middle of a query
                    try:
                        reconcile.run_pass()
                    except Exception as exc:
                        log.warning("reconciliation pass failed: %s", exc)
            self.stopped.wait(liveness.beat_interval(settings.lost_after))

    def beat(self, lost_after: float) -> None:
        worker = self.worker
        conn = get_redis()
        liveness.beat_worker(conn, worker.name, worker.jobctl_current, lost_after)
        if worker.birth_date is not None and not conn.hexists(worker.key, "birth"):
            worker.register_again()  # Redis restarted without its data and forgot this worker

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        with contextlib.suppress(Exception):
            liveness.end_worker(get_redis(), self.worker.name)


class JobctlWorker(SparseBookkeeping):
    """RQ's forking worker that refuses foreign jobs, records deaths RQ does not report to jobs,
    survives Redis outages, and carries jobctl's heartbeat and reconciliation."""

    default_max_jobs: int | None = None
    forks = True
    max_connection_wait_time = 5.0  # RQ waits up to 60 s between reconnection attempts
    jobctl_current: str | None = None
    _handoff: Handoff | None = None  # the attempt running now
    _unsettled: Handoff | None = None  # the attempt that ran last, until its outcome is recorded
    _redis_lost = False
    _jobs_done = 0

    def work(self, *args: Any, **kwargs: Any) -> bool:
        if kwargs.get("max_jobs") is None and self.default_max_jobs:
            kwargs["max_jobs"] = self.default_max_jobs
        kwargs["with_scheduler"] = True
        max_jobs = kwargs.get("max_jobs")
        _log_like_rq()
        monitor = _Monitor(self)
        monitor.start()
        from .ticker import Ticker  # recurring schedules, dependency sweep, RQ scheduler takeover

        ticker = Ticker(self, burst=bool(kwargs.get("burst")), lock=_FORK_LOCK)
        ticker.start()
        worked = False
        try:
            while True:
                self._redis_lost = False
                try:
                    worked = super().work(*args, **kwargs) or worked
                except REDIS_DOWN:  # raised while registering its death
                    self._redis_lost = True
                    with contextlib.suppress(Exception):
                        self.unsubscribe()
                if not self._redis_lost or self._shutdown_requested_date is not None:
                    return worked
                if max_jobs is not None:
                    kwargs["max_jobs"] = max_jobs - self._jobs_done
                    if kwargs["max_jobs"] <= 0:
                        return worked
                if not self._wait_for_redis():
                    return worked
                with contextlib.suppress(*REDIS_DOWN):
                    self.connection.delete(self.key)  # our own registration from before the outage
        finally:
            self._settle_last()
            ticker.stop()
            monitor.stop()

    def _wait_for_redis(self) -> bool:
        """Wait until Redis answers again; False if a stop signal came first."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.log.warning("Worker %s: Redis is unreachable; waiting for it to come back", self.name)
        try:
            delay = 0.5
            while not stop.is_set():
                try:
                    self.connection.ping()
                    self.log.warning("Worker %s: Redis is back; carrying on", self.name)
                    return True
                except REDIS_DOWN:
                    stop.wait(delay)
                    delay = min(delay * 2, self.max_connection_wait_time)
            return False
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _noting_redis_loss(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except REDIS_DOWN:
            self._redis_lost = True
            raise

    def check_for_suspension(self, burst: bool) -> None:
        self._noting_redis_loss(super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        self._noting_redis_loss(super().run_maintenance_tasks)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        dequeue = super().dequeue_job_and_maintain_ttl
        if self._unsettled is not None and timeout is not None:
            found = self._noting_redis_loss(dequeue, None, max_idle_time)  # a job already waiting?
            if found is not None:
                return found
            self._settle_last()  # nothing waiting: record the last outcome before blocking
        found = self._noting_redis_loss(dequeue, timeout, max_idle_time)
        if found is None:
            self._settle_last()
        return found

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        self._noting_redis_loss(super().heartbeat, timeout, pipeline)

    def register_again(self) -> None:
        """Write this worker's registration again (after Redis lost it)."""
        from rq import worker_registration

        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping=self.serialize())
            worker_registration.register(self, pipe)
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()

    @staticmethod
    def refusal(job: Any) -> str | None:
        """Why this worker must not run `job`, or None. Nothing the job names is imported or unpickled."""
        try:
            func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
        except DeserializationError:
            return "its payload is not JSON (jobctl never loads pickled data)"
        if func_name != DISPATCH:
            return f"{func_name!r} is not jobctl's dispatch function"
        callbacks = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
        if instance is not None or any(callbacks):
            return "it names an object or callbacks, which jobctl never enqueues"
        if kwargs or len(args) != 2 or not all(type(a) is int for a in args):
            return "its arguments are not (job id, attempt)"
        return None

    def execute_job(self, job: Any, queue: Any) -> None:
        refusal = self.refusal(job)
        if refusal is not None:
            self.log.error("refusing job %s: %s", job.id, refusal)
            self.handle_job_failure(job, queue=queue, exc_string=f"refused: {refusal}")
            return
        self.jobctl_current = job.id
        try:
            self.run_attempt(job, queue)
        except REDIS_DOWN:
            self._redis_lost = True
            self._reap_horse_without_redis(job)
            raise
        finally:
            self.jobctl_current = None
            self._jobs_done += 1

    def run_attempt(self, job: Any, queue: Any) -> None:
        """Claim the job's row, run it (`perform`), and keep its outcome to record with the next claim."""
        job_id, attempt = job.args
        handoff = Handoff(job_id, attempt, self.name)
        previous, self._unsettled = self._unsettled, None
        handoff.claim(after=previous)  # one commit: the last job's outcome and this claim
        self._handoff = handoff
        try:
            self.perform(job, queue)
        finally:
            self._handoff = None
            self._unsettled = handoff  # recorded with the next claim, or before waiting (_settle_last)

    def perform(self, job: Any, queue: Any) -> None:
        """Run the claimed job in a forked work-horse."""
        super().execute_job(job, queue)

    def _settle_last(self) -> None:
        """Record the outcome of the job that ran last, if the next claim has not."""
        handoff, self._unsettled = self._unsettled, None
        if handoff is not None:
            handoff.settle()

    def fork_work_horse(self, job: Any, queue: Any) -> None:
        # Not while a thread is in the middle of a query (see _FORK_LOCK).
        with _FORK_LOCK:
            if self._handoff is not None:
                self._handoff.before_fork()
            super().fork_work_horse(job, queue)
            if self._handoff is not None:
                self._handoff.in_parent()

    def main_work_horse(self, job: Any, queue: Any) -> None:
        # The horse's Redis connections are new and serve one job: no health-check PING before each
        # one's first command (the worker's long-lived connections keep theirs).
        self.connection.connection_pool.connection_kwargs["health_check_interval"] = 0
        if self._handoff is not None:
            self._handoff.in_horse()
        super().main_work_horse(job, queue)

    def _reap_horse_without_redis(self, job: Any) -> None:
        """Redis failed while a horse ran: wait for the horse, and record its death if it was killed."""
        if not self.horse_pid:
            return
        _, status, _ = self.wait_for_horse()
        self._horse_pid = 0
        if status is not None and os.WIFSIGNALED(status):
            self.handle_work_horse_killed(job, None, status, None)

    def handle_work_horse_killed(self, job: Any, retpid: Any, ret_val: Any, rusage: Any) -> None:
        reason = "the job's process died"
        if ret_val and os.WIFSIGNALED(ret_val):
            try:
                reason += f" (killed by {signal.Signals(os.WTERMSIG(ret_val)).name})"
            except ValueError:
                reason += f" (killed by signal {os.WTERMSIG(ret_val)})"
        elif ret_val is None and job.timeout and job.started_at:
            elapsed = (now() - job.started_at).total_seconds()
            if elapsed >= job.timeout:
                reason = f"timed out after {job.timeout} s: the job's process did not stop and was killed"
        self._settle_lost(job.id, reason)
        with contextlib.suppress(*REDIS_DOWN):
            super().handle_work_horse_killed(job, retpid, ret_val, rusage)

    def _shutdown(self) -> None:
        # RQ stops at once, by raising StopRequested wherever the worker is, unless it is busy with a
        # job. From taking a job off the queue to starting it, the worker claims its row: stopping there
        # would leave the row running until reconciliation. The job is run first, as a started one is.
        if self.jobctl_current is not None and self.get_state() != WorkerStatus.BUSY:
            self._stop_requested = True
            self.set_shutdown_requested_date()
            if self.scheduler:
                self.stop_scheduler()
            return
        super()._shutdown()

    def request_force_stop(self, signum: int, frame: Any) -> None:
        current = self.jobctl_current if self.horse_pid or not self.forks else None
        try:
            super().request_force_stop(signum, frame)
        except SystemExit:
            if current:
                self._settle_lost(current, "the worker was stopped before the job finished (cold shutdown)")
            raise

    def _settle_lost(self, task_id: str, reason: str) -> None:
        """The running attempt's process is gone (killed, or taken down by a cold shutdown): record the
        outcome it sent before, which is the job's own, else fail the attempt for `reason` (or retry it,
        if it has retries left) like any lost attempt."""
        from . import reconcile

        try:
            if self._handoff is None or not self._handoff.settle():
                reconcile.settle_attempt(task_id, reason)
        except Exception as exc:  # database down: a later reconciliation pass settles the attempt
            self.log.warning("job %s: could not record that its process is gone (%s)", task_id, exc)


class InProcessWorker(JobctlWorker):
    """Runs each job in the worker's own process, like RQ's SimpleWorker: no fork per job, so much
    higher throughput for short jobs, but a task's memory and global state outlive it, and a running
    task that ignores its cancel or time limit cannot be killed without stopping the worker."""

    forks = False

    def work(self, *args: Any, **kwargs: Any) -> bool:
        from . import runtime

        runtime.worker_heartbeat_names_job = True
        return super().work(*args, **kwargs)

    def perform(self, job: Any, queue: Any) -> None:
        assert self._handoff is not None
        self._handoff.in_process()
        self.prepare_execution(job)
        self.perform_job(job, queue)
        self.set_state(WorkerStatus.IDLE)

    def get_heartbeat_ttl(self, job: Any) -> int:
        # The worker cannot write RQ's heartbeat while it runs the job (jobctl's own heartbeat
        # thread goes on): RQ's TTL covers the job's time limit.
        return DEFAULT_WORKER_TTL if job.timeout == -1 else int(job.timeout or DEFAULT_WORKER_TTL) + 60


def _preload() -> None:
    """Import and check everything a job needs once, so each forked work-horse starts warm."""
    import importlib
    import pkgutil

    from . import __path__ as package_path
    from . import dependencies, lifecycle, store
    from .tasks import load_task_modules

    # The runtime imports its helpers lazily (task modules stay light); a horse importing them
    # afresh for every job would cost more than the job.
    for module in pkgutil.iter_modules(package_path):
        if module.name not in _NOT_FOR_WORKERS:
            importlib.import_module(f"{__package__}.{module.name}")
    load_task_modules(get_settings().task_modules)
    store.get_engine()  # verifies the schema before any fork
    lifecycle.warm_up()
    dependencies.warm_up()
    store.close_idle_connections()  # a pool's worker processes are forked from this one too
    # A task's records at INFO go to its log (logs.py); set here once, not in every work-horse. The
    # worker's root logger has no handlers of its own, so nothing more is printed.
    root = logging.getLogger()
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    # What is loaded now lives as long as the worker: moved out of the collector's sight, a work-horse's
    # collections no longer touch (and so copy) the memory it shares with its parent.
    gc.collect()
    gc.freeze()


_NOT_FOR_WORKERS = frozenset({"cli", "migrations", "__main__", "dashboard", "demo"})


@guarded
def run_workers(
    queues: list[str],
    *,
    concurrency: int = 1,
    burst: bool = False,
    max_jobs: int | None = None,
    fork: bool = True,
) -> None:
    """Run `concurrency` workers (with the scheduler) on `queues` until stopped or, with `burst`, idle;
    each job in a forked work-horse, or with `fork=False` in the worker's own process."""
    from .priority import worker_queues

    settings = get_settings()
    names = worker_queues(queue_names(queues))  # each queue's high, then normal, then low jobs
    conn = get_redis()
    conn.ping()
    _preload()
    base = JobctlWorker if fork else InProcessWorker
    worker_class = type(base.__name__, (base,), {"default_max_jobs": max_jobs or settings.worker_max_jobs})
    if concurrency <= 1:
        worker = worker_class([get_queue(n, conn) for n in names], connection=conn, serializer=serializer())
        worker.work(burst=burst, logging_level="INFO")
        return
    pool = WorkerPool(
        names, connection=conn, num_workers=concurrency, worker_class=worker_class, serializer=serializer()
    )
    pool.start(burst=burst, logging_level="INFO")
