"""Submit → processing → completed latency with an idle worker waiting, against plain RQ in the same run.

    python -m bench.latency [--jobs 50] [--backend sqlite|postgres|both]

jobctl: `service.submit_jobs` (row + enqueue) to the row's `started_at` / `completed_at`.
Plain RQ: `Queue.enqueue` of a no-op to `started_at` / `ended_at` of the RQ job.
Both workers are `rq`-forking workers waiting on BLPOP; runs alternate job by job.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from bench.harness import (
    backends,
    bench_parser,
    environment,
    jobctl,
    median,
    p95,
    rq,
    start,
    stop,
    wait_until,
)


def measure(kind: str, jobs: int) -> None:
    with environment(kind) as env:
        from rq import Queue, Worker

        from jobctl import queue, service, store

        conn = queue.get_redis()
        jobctl_worker = start(jobctl("worker", "-q", "bench"), env)
        rq_worker = start(
            rq("worker", "-u", env["REDIS_URL"], "-S", "rq.serializers.JSONSerializer", "plain"), env
        )
        wait_until(lambda: len(Worker.all(connection=conn)) >= 2, 30)
        time.sleep(1)
        plain_q = Queue("plain", connection=conn, serializer=queue.serializer())
        ours_start, ours_done, plain_start, plain_done = [], [], [], []
        try:
            for _ in range(jobs):
                t0 = datetime.now(UTC)
                (job,) = service.submit_jobs(
                    [service.JobRequest(name="lat", task="bench.noop", queue="bench")]
                )
                assert job.id is not None
                wait_until(lambda job=job: store.is_terminal(store.get_job(job.id).status))  # type: ignore[union-attr]
                row = store.get_job(job.id)
                assert row is not None and row.started_at and row.completed_at
                ours_start.append((row.started_at - t0).total_seconds() * 1000)
                ours_done.append((row.completed_at - t0).total_seconds() * 1000)

                t0 = datetime.now(UTC)
                rq_job = plain_q.enqueue("bench.plain.noop")
                wait_until(lambda rq_job=rq_job: rq_job.get_status(refresh=True) in ("finished", "failed"))
                rq_job.refresh()
                assert rq_job.started_at is not None and rq_job.ended_at is not None
                plain_start.append((rq_job.started_at.replace(tzinfo=UTC) - t0).total_seconds() * 1000)
                plain_done.append((rq_job.ended_at.replace(tzinfo=UTC) - t0).total_seconds() * 1000)
        finally:
            stop(jobctl_worker)
            stop(rq_worker)
        print(f"\n{kind}: {jobs} jobs each, idle worker waiting (ms)")
        print(f"  {'':28} {'median':>8} {'p95':>8}")
        print(f"  {'jobctl submit→processing':28} {median(ours_start):8.1f} {p95(ours_start):8.1f}")
        print(f"  {'jobctl submit→completed':28} {median(ours_done):8.1f} {p95(ours_done):8.1f}")
        print(f"  {'plain RQ enqueue→started':28} {median(plain_start):8.1f} {p95(plain_start):8.1f}")
        print(f"  {'plain RQ enqueue→finished':28} {median(plain_done):8.1f} {p95(plain_done):8.1f}")
        print(f"  ratio jobctl/plain (completed, median): {median(ours_done) / median(plain_done):.2f}")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    for kind in backends(args.backend):
        measure(kind, args.jobs)


if __name__ == "__main__":
    main()
