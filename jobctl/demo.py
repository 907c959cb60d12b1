"""The zero-setup showcase behind `jobctl demo`: its workers, its jobs, and what became of them."""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import queue, service, store
from .config import get_settings
from .errors import JobctlError
from .models import Job, JobStatus

DEMO_QUEUE = "demo"  # its own queue: the demo's workers never take anyone else's jobs
WORKERS = 2
DEADLINE = 120.0  # seconds; the jobs need about 10 with two workers


@dataclass(frozen=True)
class DemoJob:
    """One job the demo submits, and the outcome it is designed to have."""

    name: str
    steps: int
    min_delay: float
    max_delay: float
    seed: int
    fails: bool = False

    def args(self) -> dict[str, Any]:
        """The `process` task's arguments: a fixed seed, so every run is the same."""
        return {
            "steps": self.steps,
            "min_delay": self.min_delay,
            "max_delay": self.max_delay,
            "failure_rate": 1.0 if self.fails else 0.0,
            "seed": self.seed,
        }


DEMO_JOBS = (
    DemoJob("resize 8 photos", 8, 0.2, 0.5, seed=1),
    DemoJob("train a tiny model", 12, 0.3, 0.7, seed=2),
    DemoJob("send 5 emails", 5, 0.1, 0.3, seed=3),
    DemoJob("upload to a flaky server", 6, 0.3, 0.6, seed=8, fails=True),  # seed 8: fails at step 4
    DemoJob("crunch numbers", 20, 0.1, 0.3, seed=5),
)


@dataclass
class Outcome:
    """What became of one demo job, against what it was designed to do."""

    job: Job
    spec: DemoJob

    @property
    def expected(self) -> str:
        return JobStatus.FAILED.value if self.spec.fails else JobStatus.COMPLETED.value

    @property
    def as_designed(self) -> bool:
        return self.job.status == self.expected


@dataclass
class DemoRun:
    """The demo's worker processes and jobs; `stop` leaves nothing of it running."""

    log_dir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    problem: str | None = None
    _logs: list[IO[bytes]] = field(default_factory=list)
    _done: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def prepare(cls) -> DemoRun:
        """Reach Redis and the database first (starting the embedded ones), so errors come before workers."""
        store.ping()
        queue.ping()
        log_dir = get_settings().data_dir.expanduser().resolve() / "demo"
        log_dir.mkdir(parents=True, exist_ok=True)
        return cls(log_dir)

    def start_workers(self, count: int = WORKERS) -> None:
        """Start `jobctl worker --burst` processes on the demo queue; they leave once it is empty."""
        for n in range(1, count + 1):
            log = open(self.log_dir / f"worker-{n}.log", "wb")  # noqa: SIM115 - closed in stop()
            self._logs.append(log)
            # Own session: a Ctrl-C meant for the demo reaches its workers only as the demo decides.
            # --burst: should the demo itself be killed, its workers still finish the queue and exit.
            cmd = [sys.executable, "-m", "jobctl", "worker", "--queue", DEMO_QUEUE, "--burst"]
            worker = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
            self.workers.append(worker)

    def submit(self) -> list[Job]:
        """Submit the demo's jobs in one batch."""
        requests = [
            service.JobRequest(
                name=spec.name,
                task="process",
                args=spec.args(),
                description="jobctl demo",
                queue=DEMO_QUEUE,
            )
            for spec in DEMO_JOBS
        ]
        self.jobs = service.submit_jobs(requests)
        return self.jobs

    @property
    def ids(self) -> list[int]:
        return [j.id for j in self.jobs if j.id is not None]

    @contextlib.contextmanager
    def guarded(self, deadline: float = DEADLINE) -> Iterator[None]:
        """Interrupt the main thread if every worker exits with jobs unfinished, or at the deadline."""
        self._done.clear()
        thread = threading.Thread(target=self._guard, args=(time.monotonic() + deadline,), daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._done.set()
            thread.join(5)

    def _guard(self, deadline: float) -> None:
        while not self._done.wait(0.5):
            if time.monotonic() > deadline:
                self.problem = f"the demo's jobs did not finish within {deadline:.0f} s"
            elif all(w.poll() is not None for w in self.workers) and not self._all_terminal():
                codes = ", ".join(str(w.returncode) for w in self.workers)
                self.problem = (
                    f"the demo's workers exited (exit codes {codes}) before its jobs finished; "
                    f"see {self.log_dir}"
                )
            if self.problem:
                _thread.interrupt_main()
                return

    def _all_terminal(self) -> bool:
        rows = store.get_jobs(self.ids)
        return all(rows[i].job_status.is_terminal for i in self.ids if i in rows)

    def outcomes(self) -> list[Outcome]:
        """Each demo job's row, with the outcome it was designed to have."""
        rows = store.get_jobs(self.ids)
        return [Outcome(rows[job.id], spec) for job, spec in zip(self.jobs, DEMO_JOBS, strict=True) if job.id]

    def cancel_unfinished(self) -> None:
        """Cancel the demo's jobs that have not ended (an interrupted demo leaves nothing queued)."""
        with contextlib.suppress(JobctlError):
            rows = store.get_jobs(self.ids)
            for job_id in self.ids:
                if job_id in rows and not rows[job_id].job_status.is_terminal:
                    service.cancel_job(job_id)

    def running_workers(self, wait: float = 0.0) -> int:
        """How many workers still run, after waiting up to `wait` seconds for them to leave on their own."""
        deadline = time.monotonic() + wait
        while any(w.poll() is None for w in self.workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        return sum(w.poll() is None for w in self.workers)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the workers (SIGTERM: each finishes its current job), killing any that do not exit in time."""
        for worker in self.workers:
            if worker.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            try:
                worker.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)  # the worker and any work-horse of its group
                worker.wait(10)
        for log in self._logs:
            log.close()
        self._logs.clear()


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP interrupt like Ctrl-C, so the demo stops its workers whatever stops it."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
