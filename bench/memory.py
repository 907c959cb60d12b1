"""Worker memory: a forking worker's resident size after 100 jobs and after 10,000, vs plain RQ.

    python -m bench.memory [--jobs 10000] [--first 100] [--backend sqlite|postgres|both]

Starts one real `jobctl worker` (RQ's forking worker: each job runs in a work-horse forked from
it), submits no-op jobs in bulk with `jobctl submit --from FILE`, and reads the worker process's
VmRSS from /proc/PID/status once `--first` jobs have completed and again at intermediate points up
to `--jobs`. Each horse exits after its job, so only the parent worker can accumulate memory; it is
the process measured. The same is then done with a plain `rq worker` on a no-op job as reference.
Target (issue 7): growth from the first sample to the last within 10 %.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from bench.harness import backends, bench_parser, environment, jobctl, rq, start, stop, wait_until

BATCH = 2000  # jobs per `submit --from` (and per enqueue_many) after the first sample
QUEUE = "bench"


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS of a process and its two parts, RssAnon (heap) and RssFile (mapped files, e.g. the code
    of shared libraries as it is first run), in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def checkpoints(first: int, total: int) -> list[int]:
    """Where to sample: after `first` jobs, then every tenth of the way to `total`."""
    step = max(1, total // 10)
    return sorted({first, *range(step, total + 1, step), total})


def run_samples(
    pid: int,
    marks: list[int],
    feed: Callable[[int, int], None],
    done: Callable[[], int],
    label: str,
) -> list[tuple[int, int]]:
    """Feed jobs up to each mark, wait until that many completed, and read the worker's RSS."""
    samples: list[tuple[int, int]] = []
    fed = 0
    for mark in marks:
        while fed < mark:
            size = min(BATCH, mark - fed)
            feed(fed, size)
            fed += size
        t0 = time.monotonic()
        wait_until(lambda mark=mark: done() >= mark, timeout=3600, interval=0.2)
        time.sleep(0.5)  # let the worker finish its bookkeeping for the last job before measuring
        kib = memory_kib(pid)
        samples.append((mark, kib["VmRSS"]))
        print(
            f"  {label:14} {mark:>6} jobs  VmRSS {kib['VmRSS'] / 1024:6.1f} MiB  (anon "
            f"{kib['RssAnon'] / 1024:5.1f}, file {kib['RssFile'] / 1024:5.1f})  {time.monotonic() - t0:5.1f}s"
        )
    return samples


def growth(samples: list[tuple[int, int]]) -> str:
    (n0, first), (n1, last) = samples[0], samples[-1]
    return (
        f"after {n0}: {first / 1024:.1f} MiB, after {n1}: {last / 1024:.1f} MiB, "
        f"growth {100 * (last - first) / first:+.1f} %"
    )


def measure_jobctl(kind: str, env: dict[str, str], marks: list[int]) -> list[tuple[int, int]]:
    from jobctl import listing, store

    data_dir = Path(env["JOBCTL_DATA_DIR"])

    def feed(start_at: int, size: int) -> None:
        path = data_dir / "jobs.jsonl"
        path.write_text(
            "".join(
                json.dumps({"name": f"mem {i}", "task": "bench.noop", "queue": QUEUE}) + "\n"
                for i in range(start_at, start_at + size)
            )
        )
        subprocess.run(jobctl("submit", "--from", str(path)), env=env, check=True, stdout=subprocess.DEVNULL)

    def done() -> int:
        with store.get_engine().connect() as conn:
            query = sa.select(sa.func.count()).where(store.JOB.c.status.in_(["completed", "failed"]))
            return int(conn.execute(query).scalar() or 0)

    worker = start(jobctl("worker", "-q", QUEUE, "--max-jobs", str(10 * marks[-1])), env)
    try:
        samples = run_samples(worker.pid, marks, feed, done, f"jobctl/{kind}")
        assert worker.poll() is None, "the worker exited during the run"
    finally:
        stop(worker)
    failed = len(listing.list_jobs(statuses=["failed"], limit=10))
    assert failed == 0, f"{failed} no-op jobs failed"
    return samples


def measure_plain(env: dict[str, str], marks: list[int]) -> list[tuple[int, int]]:
    from rq import Queue
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    from jobctl import queue

    conn = queue.get_redis()
    plain_q = Queue("plain", connection=conn, serializer=queue.serializer())
    finished = FinishedJobRegistry(queue=plain_q)
    failed = FailedJobRegistry(queue=plain_q)

    def feed(_start_at: int, size: int) -> None:
        plain_q.enqueue_many(
            [Queue.prepare_data("bench.plain.noop", result_ttl=3600, timeout=1800) for _ in range(size)]
        )

    def done() -> int:
        return finished.get_job_count(cleanup=False) + failed.get_job_count(cleanup=False)

    cmd = rq("worker", "-u", env["REDIS_URL"], "-S", "rq.serializers.JSONSerializer", "plain")
    worker = start(cmd, env)
    try:
        samples = run_samples(worker.pid, marks, feed, done, "rq worker")
        assert worker.poll() is None, "the worker exited during the run"
    finally:
        stop(worker)
    assert failed.get_job_count(cleanup=False) == 0, "plain no-op jobs failed"
    return samples


def measure(kind: str, jobs: int, first: int) -> None:
    marks = checkpoints(first, jobs)
    print(f"\n{kind}: one forking worker, {jobs} no-op jobs, VmRSS of the worker process")
    print("  (each job runs in a work-horse forked for it, which exits with the job: not measured)")
    with environment(kind) as env:
        ours = measure_jobctl(kind, env, marks)
        plain = measure_plain(env, marks)
    print(f"  jobctl worker  {growth(ours)}")
    print(f"  rq worker      {growth(plain)}")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--first", type=int, default=100, help="the first sample, after this many jobs")
    args = parser.parse_args()
    for kind in backends(args.backend):
        measure(kind, args.jobs, args.first)


if __name__ == "__main__":
    main()
