"""Reconciliation at scale: one pass over a backlog of waiting jobs, as every worker runs it.

    python -m bench.reconcile_scale [--rows 50000] [--runs 5] [--backend sqlite|postgres|both]

Stores --rows pending jobs (queued in Redis, as `submit --from` leaves them), makes them old enough
for the pass to check each one, then times `reconcile.run_pass()` (median of --runs; the first pass
warms up). A pass reads every active row's few state columns, each attempt's RQ status in batches
of one Lua call per 5,000 jobs, and only the rows it acts on whole. With nothing to repair it
changes nothing; the time is what a worker's monitor thread spends every JOBCTL_RECONCILE_INTERVAL.
"""

from __future__ import annotations

import time
from datetime import timedelta

import sqlalchemy as sa

from bench.harness import environment, median, run_each_backend


def measure(kind: str, rows: int, runs: int) -> None:
    with environment(kind):
        from jobctl import reconcile, service, store
        from jobctl.models import utcnow

        for start in range(0, rows, 10_000):
            batch = range(start, min(start + 10_000, rows))
            service.submit_jobs([service.JobRequest(name=f"n{i}", task="bench.noop") for i in batch])
        with store.begin() as conn:
            conn.execute(sa.update(store.JOB).values(updated_at=utcnow() - timedelta(minutes=10)))
        report = reconcile.run_pass()
        assert report.changed == 0, report.summary()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            report = reconcile.run_pass()
            times.append(time.perf_counter() - t0)
            assert report.changed == 0 and not report.skipped, report.summary()
        per_pass = median(times)
        print(f"\n{kind}: {rows} pending jobs, {runs} passes")
        per_job = per_pass / rows * 1e6
        print(f"  reconciliation pass   median {per_pass:6.3f} s   {per_job:5.1f} µs per active job")


def main() -> None:
    run_each_backend(__doc__, measure, rows=50_000, runs=5)


if __name__ == "__main__":
    main()
