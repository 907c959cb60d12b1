"""List at scale: filtered, newest-first pages over many stored rows, with the query plan.

    python -m bench.list_scale [--rows 1000000] [--backend sqlite|postgres|both]

Prints the time of the `list` query (median of 5) for each filter at several offsets, the plan the
database chose, and the time of the whole `jobctl list` command for comparison with its start-up.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import time

import sqlalchemy as sa

from bench.harness import add_backend_option, backends, environment, jobctl, median

STATUSES = ("completed", "failed", "cancelled", "pending", "processing")


def fill(rows: int) -> None:
    """Store `rows` jobs with mixed statuses, tasks and queues, straight through SQL."""
    from jobctl import store
    from jobctl.models import utcnow

    rng = random.Random(7)
    now = utcnow()
    batch_size = 20_000
    with store.begin() as conn:
        for start in range(0, rows, batch_size):
            conn.execute(
                sa.insert(store.JOB),
                [
                    {
                        "name": f"job {i}",
                        "description": "",
                        "task": rng.choice(("a", "b", "c")),
                        "args": {},
                        "queue": rng.choice(("default", "emails")),
                        "status": rng.choices(STATUSES, (80, 10, 5, 4, 1))[0],
                        "attempts": 1,
                        "retries": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(start, min(rows, start + batch_size))
                ],
            )


def measure(kind: str, rows: int) -> None:
    with environment(kind) as env:
        from jobctl import store

        t0 = time.perf_counter()
        fill(rows)
        print(f"\n{kind}: {rows} rows stored in {time.perf_counter() - t0:.1f}s")
        engine = store.get_engine()
        if kind == "postgres":
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE job")
        filters = {
            "no filter": {},
            "-s failed": {"statuses": ["failed"]},
            "-t b": {"task": "b"},
            "-q emails": {"queue": "emails"},
            "-s pending -s processing": {"statuses": ["pending", "processing"]},
        }
        for label, kwargs in filters.items():
            for offset in (0, 10_000, rows // 2):
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    store.list_jobs(limit=100, offset=offset, **kwargs)
                    times.append((time.perf_counter() - t0) * 1000)
                print(f"  {label:26} offset {offset:>8}: {median(times):8.1f} ms")
        with engine.connect() as conn:
            sql = "SELECT * FROM job WHERE status IN ('failed') ORDER BY id DESC LIMIT 100"
            plan = conn.exec_driver_sql(
                ("EXPLAIN QUERY PLAN " if kind == "sqlite" else "EXPLAIN ") + sql
            ).all()
        print("  plan for -s failed:", " | ".join(str(tuple(r)[-1]) for r in plan))
        t0 = time.perf_counter()
        subprocess.run(jobctl("list", "-s", "failed"), env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"  whole `jobctl list -s failed` command: {(time.perf_counter() - t0) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    add_backend_option(parser)
    args = parser.parse_args()
    for kind in backends(args.backend):
        measure(kind, args.rows)


if __name__ == "__main__":
    main()
